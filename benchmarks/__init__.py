"""Benchmarks: derivs against the anchors, side by side in one process.

Run from the repository root: ``python -m benchmarks seeds [--quick]``.
Results are written to ``benchmarks/results/`` as markdown and JSON.
"""
