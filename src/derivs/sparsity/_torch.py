"""PyTorch side of sparse derivatives: detection entry points, compressed passes
(``torch.func.vmap`` of JVPs, VJPs or Hessian-vector products over the color
seeds) and native outputs (sparse COO/CSR tensors). Autograd flows through the
values of the result."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from . import _torch_detect

name = "torch"


def _bind(fun, args, argnum, has_aux):
    """``x -> f(..., x, ...)`` (with aux when ``has_aux``: torch.func wants tensors
    there, so no placeholder aux is returned otherwise)."""
    def f_x(x):
        full = list(args)
        full[argnum] = x
        return fun(*full)
    return f_x


def detect(kind, fun, args, argnum, has_aux, unknown):
    if kind == "jacobian":
        target = (lambda *a: fun(*a)[0]) if has_aux else fun
    else:  # the Hessian pattern is the Jacobian pattern of the gradient
        grad = torch.func.grad(fun, argnums=argnum, has_aux=has_aux)
        target = (lambda *a: grad(*a)[0]) if has_aux else grad
    return _torch_detect.detect(target, args, argnum, unknown)


def compressed(mode, fun, args, argnum, has_aux, seeds):
    """The stack of compressed products, one row per seed, and ``aux`` (or None)."""
    x = args[argnum]
    f_x = _bind(fun, args, argnum, has_aux)
    seeds = torch.as_tensor(seeds, dtype=x.dtype, device=x.device)
    aux_dims = (0, None) if has_aux else 0
    if mode == "row":  # seeds live in the output space
        out, vjp, *aux = torch.func.vjp(f_x, x, has_aux=has_aux)
        cot = seeds.reshape((-1,) + tuple(out.shape))
        (rows,) = torch.func.vmap(vjp)(cot)
        return rows.reshape(cot.shape[0], -1), (aux[0] if has_aux else None)
    g = f_x if mode == "column" else torch.func.grad(f_x, has_aux=has_aux)

    def one(s):  # a JVP of f (column) or of its gradient (a Hessian-vector product)
        _, t, *aux = torch.func.jvp(g, (x,), (s,), has_aux=has_aux)
        return (t, aux[0]) if has_aux else t
    seeds = seeds.reshape((-1,) + tuple(x.shape))
    res = torch.func.vmap(one, out_dims=aux_dims)(seeds)
    t, aux = res if has_aux else (res, None)
    return t.reshape(seeds.shape[0], -1), aux


def assemble(stack, gather, pattern, fmt, dtype):
    data = stack.reshape(-1)[torch.as_tensor(gather, device=stack.device)]
    m, n = pattern.shape
    dev = stack.device
    if fmt in ("native", "coo"):
        idx = torch.as_tensor(np.stack([pattern.rows, pattern.cols]), device=dev)
        return torch.sparse_coo_tensor(idx, data, (m, n), is_coalesced=True,
                                       check_invariants=False)
    if fmt == "csr":
        return torch.sparse_csr_tensor(torch.as_tensor(pattern.indptr, device=dev),
                                       torch.as_tensor(pattern.cols, device=dev), data, (m, n),
                                       check_invariants=False)
    if fmt == "scipy":
        return sp.csr_array((data.detach().cpu().numpy(), pattern.cols, pattern.indptr),
                            shape=(m, n))
    dense = torch.zeros((m, n), dtype=data.dtype, device=dev)
    dense = dense.index_put((torch.as_tensor(pattern.rows, device=dev),
                             torch.as_tensor(pattern.cols, device=dev)), data)
    return dense.reshape(pattern.out_shape + pattern.in_shape)


def is_tracing(args) -> bool:
    return False


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy()


def dense(kind, fun, args, argnum, has_aux):
    if kind == "hessian":
        return torch.func.hessian(fun, argnums=argnum)(*args) if not has_aux else \
            torch.func.jacfwd(torch.func.grad(fun, argnums=argnum, has_aux=True),
                              argnums=argnum, has_aux=True)(*args)
    with torch.no_grad():
        out = fun(*args)
    out = out[0] if has_aux else out
    fwd = args[argnum].numel() <= out.numel()
    jac = torch.func.jacfwd if fwd else torch.func.jacrev
    return jac(fun, argnums=argnum, has_aux=has_aux)(*args)
