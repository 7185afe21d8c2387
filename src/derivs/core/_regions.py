"""Elementwise regions of a graph, framework-free (NOTE [elementwise regions] in the
PyTorch engine's ``_pointwise.py``; the JAX engine's interpreter does the same).

A region is rooted at a live value ``r``; a pointwise op joins ``r``'s region when
every live input it has is ``r`` or already in ``r``'s region and its output has
``r``'s shape and dtype (constants may broadcast into it). Each member is then a
function of ``r`` alone, element by element: output element ``i`` reads only
element ``i`` of ``r`` (and constants). Regions grow greedily in graph order, so a
residual ``h + gelu(h)`` is one region of ``h``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any


def elementwise_regions(items: Iterable[tuple[Hashable, Sequence[Hashable], bool]],
                        key: Callable[[Hashable], Any]) -> dict:
    """``member -> root`` for ``items`` in graph order: ``(value, live inputs,
    pointwise)``; ``key(value)`` is what must match between a member and its root
    (shape and dtype).

    >>> items = [("h", ["x"], False), ("a", ["h"], True), ("b", ["a", "h"], True),
    ...          ("c", ["b", "y"], True)]
    >>> elementwise_regions(items, key=lambda v: ())
    {'a': 'h', 'b': 'h'}
    """
    root_of: dict = {}
    for value, inputs, pointwise in items:
        if not pointwise or not inputs:
            continue
        roots = {root_of.get(a, a) for a in inputs}
        if len(roots) != 1:
            continue
        (root,) = roots
        if key(value) == key(root):
            root_of[value] = root
    return root_of


def by_root(root_of: dict) -> dict:
    """``root -> [members in graph order]``."""
    out: dict = {}
    for member, root in root_of.items():
        out.setdefault(root, []).append(member)
    return out
