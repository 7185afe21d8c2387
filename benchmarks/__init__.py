"""Benchmarks: derivs against the anchors, side by side in one process.

Run from the repository root: ``python -m benchmarks seeds [--quick]``.
Results are written as markdown, JSON and a PNG plot to ``benchmarks/out/`` (untracked;
``--out DIR`` to change it); ``benchmarks/results/`` holds the committed references.
"""
