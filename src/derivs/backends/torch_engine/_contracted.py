"""The Bi-Laplacian's stacked rules by contractions (NOTE [contracted Bi-Laplacian]
in ``core._stacked``), for the family program (``_family``).

A stack of such a layout holds, per intermediate, the gradient rows g (G), the
Hessian rows H_ij, i <= j, and the rows T_j = d_j (Laplacian); its top is ``c``
times the Bi-Laplacian. The rules here read the stack as g (G, ...), the full
Hessian (G, G, ...) and T (G, ...), apply the closed formulas with broadcasting
and sums over the direction axes, and write the rows back: a few passes over a
G x G block instead of one gathered product per Faa di Bruno entry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...core._stacked import Contracted
from .._common import add as _add


class Maps:
    """A contracted layout's index maps as tensors on one device."""

    def __init__(self, k: Contracted, device):
        self.k, self.G = k, k.groups
        self.P = k.groups * (k.groups + 1) // 2
        self.full = torch.as_tensor(k.full, device=device)
        self.pairs = torch.as_tensor(k.pairs, device=device)
        ordered = np.array_equal(k.third, np.arange(self.G))
        self.third = None if ordered else torch.as_tensor(k.third, device=device)
        self.order = None if ordered else torch.as_tensor(np.argsort(k.third), device=device)

    def split(self, c: torch.Tensor):
        """``g, H, T`` of a stack (a prefix of the rows: H and T may be None)."""
        G, P = self.G, self.P
        g = c[:G]
        H = T = None
        if c.shape[0] > G:
            H = c[G:G + P][self.full].reshape((G, G) + tuple(c.shape[1:]))
        if c.shape[0] > G + P:
            T = c[G + P:]
            T = T if self.third is None else T[self.third]
        return g, H, T

    def join(self, g: torch.Tensor | None, H: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """The stack of ``g`` (None: zero rows), the full Hessian ``H`` and ``T``."""
        G = self.G
        shape = torch.broadcast_shapes(H.shape[2:], T.shape[1:],
                                       *(() if g is None else (g.shape[1:],)))
        pairs = H.reshape((G * G,) + tuple(H.shape[2:]))[self.pairs]
        T = T if self.order is None else T[self.order]
        head = (torch.zeros((G,) + shape, dtype=H.dtype, device=H.device) if g is None
                else g.expand((G,) + shape))
        return torch.cat([head, pairs.expand((self.P,) + shape), T.expand((G,) + shape)])


def _trace(H: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(H, dim1=0, dim2=1).sum(-1)


def unary(maps: Maps, c: torch.Tensor, top, d: list, want_c: bool):
    """``(stack, top)`` of ``phi(v)`` from v's stack ``c`` and top, with ``d`` =
    ``[phi', phi'', phi''', phi'''']`` at v."""
    scale = maps.k.c
    g, H, T = maps.split(c)
    S = (g * g).sum(0)
    inner = d[3] * (S * S)
    L = P = None
    if H is not None:
        L = _trace(H)
        P = (g.unsqueeze(1) * H).sum(0)  # P_j = sum_i g_i H_ij
        inner = inner + d[2] * (2 * S * L + 4 * (g * P).sum(0)) \
            + d[1] * (L * L + 2 * (H * H).sum((0, 1)))
    if T is not None:
        inner = inner + 4 * d[1] * (g * T).sum(0)
    out_top = scale * inner if scale != 1 else inner
    if top is not None:
        out_top = out_top + d[0] * top
    if not want_c:
        return None, out_top
    # one fused op per Hessian-sized term: on CPU each full-size temporary is a
    # fresh allocation (and its page faults)
    if H is None:
        Hn = (d[1] * g).unsqueeze(0) * g.unsqueeze(1)
    else:
        Hn = torch.addcmul(d[0] * H, (d[1] * g).unsqueeze(0), g.unsqueeze(1))
    Tn = d[2] * S * g
    if H is not None:
        Tn = Tn + d[1] * (L * g + 2 * P)
    if T is not None:
        Tn = Tn + d[0] * T
    return maps.join(d[0] * g, Hn, Tn), out_top


def bilinear(maps: Maps, product: Callable, A: torch.Tensor, B: torch.Tensor,
             want_c: bool):
    """The cross terms of ``product(a, b)`` (bilinear, applied over leading stack
    axes) from the stacks ``A``, ``B`` of both factors (lifted to the output's
    rank): ``(rows to add, with zero gradient rows, or None; top to add)``. The
    terms linear in one stack are the caller's (one op over the whole stack)."""
    scale = maps.k.c
    ga, Ha, Ta = maps.split(A)
    gb, Hb, Tb = maps.split(B)
    top = None
    if Ha is not None and Hb is not None:
        top = _add(top, 2 * product(_trace(Ha), _trace(Hb))
                  + 4 * product(Ha, Hb).sum((0, 1)))
    if Ta is not None:
        top = _add(top, 4 * product(Ta, gb).sum(0))
    if Tb is not None:
        top = _add(top, 4 * product(ga, Tb).sum(0))
    if top is not None and scale != 1:
        top = scale * top
    if not want_c:
        return None, top
    outer = product(ga.unsqueeze(1), gb.unsqueeze(0))  # product(g^a_i, g^b_j)
    Hn = outer + outer.transpose(0, 1)
    T = None
    if Ha is not None:
        T = _add(T, product(_trace(Ha), gb) + 2 * product(Ha, gb.unsqueeze(1)).sum(0))
    if Hb is not None:
        T = _add(T, product(ga, _trace(Hb)) + 2 * product(ga.unsqueeze(1), Hb).sum(0))
    if T is None:
        T = torch.zeros_like(Hn[0])
    return maps.join(None, Hn, T), top
