"""Global sparsity detection for PyTorch: an interpreter of the captured ATen graph.

``f`` is captured once with ``make_fx`` (fake tensors, core ATen
decompositions, so a few dozen ops cover most models) and each node is
interpreted with the index-set algebra of :mod:`._algebra`, as for jaxprs:
pointwise ops (ATen's own ``pointwise`` tag) unite their broadcast operands,
view and indexing ops are run on integer element ids, reductions, matrix
products and convolutions have their own rules, and nodes that do not depend
on the input are evaluated so that index tensors and constant matrices are
known. Ops without a rule are dense over their inputs, with a warning.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from . import _algebra as A
from ._errors import UnsupportedOpError, no_rule

aten = torch.ops.aten

ZERO = {"sign", "floor", "ceil", "round", "trunc", "zeros_like", "ones_like", "full_like",
        "empty_like", "full", "zeros", "ones", "arange", "scalar_tensor", "empty", "bernoulli",
        "rand", "randn", "rand_like", "randn_like", "randint", "eq", "ne", "lt", "le", "gt",
        "ge", "argmax", "argmin", "isnan", "isinf", "isfinite", "logical_not", "logical_and",
        "logical_or", "detach", "sort_indices", "heaviside"}
# Ops that copy one source element to each output element, and which of their
# arguments carry data (the rest are indices, sizes, flags).
STRUCTURAL = {
    "view": (0,), "_unsafe_view": (0,), "reshape": (0,), "permute": (0,), "transpose": (0,),
    "t": (0,), "expand": (0,), "slice": (0,), "select": (0,), "unsqueeze": (0,),
    "squeeze": (0,), "flip": (0,), "roll": (0,), "constant_pad_nd": (0,), "index": (0,),
    "index_select": (0,), "gather": (0,), "narrow": (0,), "clone": (0,), "alias": (0,),
    "lift_fresh_copy": (0,), "contiguous": (0,), "unfold": (0,), "as_strided": (0,),
    "repeat": (0,), "diagonal": (0,), "split": (0,), "split_with_sizes": (0,), "unbind": (0,),
    "chunk": (0,), "movedim": (0,), "expand_copy": (0,), "permute_copy": (0,),
    "view_copy": (0,), "slice_scatter": (0, 1), "select_scatter": (0, 1),
    "diagonal_scatter": (0, 1), "scatter": (0, 3), "copy": (1,), "cat": "list",
    "stack": "list", "index_put": (0, 2), "_to_copy": (0,), "to": (0,), "masked_fill": (0,),
    "scatter_add": (0, 3), "scatter_reduce": (0, 3), "index_add": (0, 3), "tile": (0,), "repeat_interleave": (0,), "tril": (0,), "triu": (0,), "where": (1, 2),
}
REDUCE = {"sum", "mean", "amax", "amin", "prod", "max", "min", "var", "std", "var_mean",
          "logsumexp", "linalg_vector_norm", "norm", "nansum", "nanmean", "std_mean"}
ALONG = {"_softmax", "_log_softmax", "softmax", "log_softmax", "_softmax_backward_data",
         "_log_softmax_backward_data", "sort"}
POOLS = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
         "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
         "max_pool1d_with_indices"}
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"}
LINALG = {"linalg_solve", "linalg_solve_ex", "linalg_inv", "linalg_inv_ex", "linalg_lu_factor_ex",
          "linalg_lu_solve", "linalg_cholesky_ex", "cholesky_solve", "triangular_solve",
          "linalg_solve_triangular", "linalg_qr", "linalg_eigh", "_linalg_eigh", "linalg_svd",
          "_linalg_svd", "linalg_det", "_linalg_det", "linalg_slogdet", "_linalg_slogdet",
          "logdet", "_linalg_solve_ex", "linalg_lu", "lu_unpack", "_fft_r2c", "_fft_c2r",
          "_fft_c2c", "fft_fft", "fft_rfft", "fft_ifft", "fft_irfft", "view_as_real",
          "view_as_complex", "real", "imag"}


def _op_name(target) -> str:
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def _meta(node):
    return node.meta.get("val")


def _is_float(v) -> bool:
    return isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())


def _size(v) -> int:
    return int(np.prod(tuple(v.shape), dtype=np.int64)) if isinstance(v, torch.Tensor) else 1


class Detector:
    def __init__(self, gm: torch.fx.GraphModule, n: int, unknown: str,
                 consts_known: bool = True):
        self.gm = gm
        self.n = n
        self.unknown = unknown
        # False when no guard sees what f reads (NOTE [unguardable]): even tensors f
        # makes from Python or NumPy data may come from state that later changes.
        self.consts_known = consts_known
        self.conservative: list[str] = []

    def run(self, in_deps: list, in_values: list | None = None):
        """``in_deps``: per placeholder, its index sets (None: independent of the
        input); ``in_values``: per placeholder, a known value (lifted tensors f
        reads) or None."""
        from ..backends.torch_engine import made_by_f

        env: dict = {}
        it = iter(in_deps)
        values = iter(in_values or [])
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = (next(it), next(values, None))
            elif node.op == "get_attr":
                # A tensor f creates from guarded Python or NumPy data (torch.tensor,
                # copied by lift_fresh_copy) is part of f: its zeros are structural.
                # Any other constant is a tensor f reads where no guard sees it (NOTE
                # [unguardable]): it may change, so its values are not used.
                v = getattr(self.gm, node.target)
                env[node] = (None, v if made_by_f(node) and self.consts_known else None)
            elif node.op == "call_function":
                env[node] = self.call(node, env)
                if _inplace(node.target) and isinstance(node.args[0], torch.fx.Node):
                    # A mutation left by a decomposition: later readers of the mutated
                    # tensor see old or new elements (united: conservative).
                    old, _ = env[node.args[0]]
                    new = env[node][0]
                    if not isinstance(old, tuple) and not isinstance(new, tuple):
                        env[node.args[0]] = (A.union([old, new]), None)
            elif node.op == "output":
                outs = node.args[0]
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                return [env[o][0] if isinstance(o, torch.fx.Node) else None for o in outs]
        raise RuntimeError("graph without output")

    def call(self, node, env):
        def deps_of(a):
            return env[a][0] if isinstance(a, torch.fx.Node) else None

        def val_of(a):
            if isinstance(a, torch.fx.Node):
                return env[a][1]
            if isinstance(a, (list, tuple)):
                vals = [val_of(x) for x in a]
                return None if any(v is None and isinstance(x, torch.fx.Node)
                                   for v, x in zip(vals, a)) else type(a)(vals)
            return a

        args, kwargs = node.args, node.kwargs
        if node.target is operator.getitem:
            d, v = env[args[0]]
            return (d[args[1]] if d is not None else None,
                    v[args[1]] if v is not None else None)
        flat_nodes = [a for a in _flat(args) + _flat(list(kwargs.values()))
                      if isinstance(a, torch.fx.Node)]
        live = [a for a in flat_nodes if _has_deps(env[a][0])]
        target = node.target
        if not live:  # independent of the input: evaluate (indices, constant matrices)
            if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
                return None, None
            try:
                vals = val_of(list(args))
                kv = {k: val_of(v) for k, v in kwargs.items()}
                if vals is None or any(v is None for v in kv.values()):
                    return None, None
                return None, target(*vals, **kv)
            except Exception:
                return None, None
        out = _meta(node)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if not any(_is_float(o) for o in outs):
            return None, None
        deps = self.rule(node, args, kwargs, deps_of, val_of, outs)
        if isinstance(out, (list, tuple)):
            return tuple(d if _is_float(o) else None for d, o in zip(deps, outs)), None
        return deps[0], None

    def rule(self, node, args, kwargs, deps_of, val_of, outs):
        target = node.target
        name = _op_name(target).split(".")[0]
        if _inplace(target):
            name = name[:-1]
        shape = tuple(outs[0].shape)
        if name in ZERO:
            return [None] * len(outs)
        tensor_args = [a for a in _flat(args) if isinstance(a, torch.fx.Node)
                       and isinstance(_meta(a), torch.Tensor)]
        if name in STRUCTURAL:
            return self.structural(node, name, args, kwargs, deps_of, val_of, outs)
        if name == "mul":
            return [A.product([deps_of(a) for a in tensor_args],
                              [tuple(_meta(a).shape) for a in tensor_args],
                              [_numpy(val_of(a)) for a in tensor_args], shape)]
        if torch.Tag.pointwise in getattr(target, "tags", ()):
            return [A.elementwise([deps_of(a) for a in tensor_args],
                                  [tuple(_meta(a).shape) for a in tensor_args], shape)] * len(outs)
        if name in REDUCE:
            return self.reduce(node, name, args, kwargs, deps_of, outs)
        if name in ALONG:
            x = args[0]
            dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", -1)
            d = A.union([deps_of(a) for a in tensor_args])
            if name in ("_softmax_backward_data", "_log_softmax_backward_data"):
                dim = args[2]
            return [A.along(d, tuple(_meta(x).shape), [dim])] * len(outs)
        if name in CUMULATIVE:
            x = args[0]
            return [A.cumulative(deps_of(x), tuple(_meta(x).shape), args[1])] * len(outs)
        if name in ("mm", "bmm", "addmm", "mv", "dot", "addmv", "baddbmm", "addbmm"):
            return [self.matmul(name, args, deps_of, val_of, shape)]
        if name == "convolution" and not args[6]:
            return [self.convolution(args, deps_of, val_of, shape)]
        if name in POOLS:
            return [self.pool(name, args, deps_of, outs[0])] + [None] * (len(outs) - 1)
        if name == "native_layer_norm":
            x, normalized = args[0], args[1]
            xs = tuple(_meta(x).shape)
            axes = list(range(len(xs) - len(normalized), len(xs)))
            out = A.along(deps_of(x), xs, axes)
            extra = [A.broadcast(deps_of(a), tuple(_meta(a).shape), xs)
                     for a in args[2:4] if isinstance(a, torch.fx.Node)]
            stats = A.reduce(deps_of(x), xs, axes)
            return [A.union([out] + extra), stats, stats]
        if name in _BATCH_NORMS:
            return self.batch_norm(name, args, kwargs, deps_of, outs)
        if name in LINALG:  # dense by design: listed (no warning), as the pattern is
            self.conservative.append(f"the ATen op '{name}' (dense by design)")
            return [A.dense([deps_of(a) for a in tensor_args], _size(o)) for o in outs]
        return self.fallback(_op_name(target), [deps_of(a) for a in tensor_args], outs)

    def batch_norm(self, name, args, kwargs, deps_of, outs):
        """Batch norm: with running statistics (eval) elementwise in the input; with
        batch statistics (training) each channel mixes over the batch and the other
        axes. Parameters and statistics that depend on the input: dense."""
        x = args[0]
        xs = tuple(_meta(x).shape)
        training = {"native_batch_norm": 5, "_native_batch_norm_legit_functional": 5,
                    "_native_batch_norm_legit": 5}.get(name)
        training = bool(args[training]) if training is not None and len(args) > training \
            else name != "_native_batch_norm_legit_no_training"
        params = [a for a in args[1:5] if isinstance(a, torch.fx.Node)]
        if any(_has_deps(deps_of(a)) for a in params):
            return self.fallback(_op_name(name), [deps_of(a) for a in [x] + params], outs)
        axes = [d for d in range(len(xs)) if d != 1]
        out = (A.along(deps_of(x), xs, axes) if training
               else A.elementwise([deps_of(x)], [xs], xs))
        stats = A.reduce(deps_of(x), xs, axes) if training else None
        return [out] + [stats if _is_float(o) else None for o in outs[1:]]

    def pool(self, name, args, deps_of, out):
        """Window reductions over the trailing ``len(kernel)`` dimensions."""
        x = args[0]
        xs, os_ = tuple(_meta(x).shape), tuple(out.shape)
        kernel = list(args[1])
        k = len(kernel)

        def arg(i, default):
            v = args[i] if len(args) > i else default
            v = list(v) if isinstance(v, (list, tuple)) else [v] * k
            if len(v) == 1:  # one value for every dimension, as PyTorch allows
                v = v * k
            return v if v else list(default) if isinstance(default, list) else [default] * k
        stride = arg(2, kernel)
        padding = arg(3, 0)
        dilation = arg(4, 1) if name.startswith("max_pool") else [1] * k
        lead = len(xs) - k
        tables = [A.window_positions(xs[d], os_[d], 1, 1, 0) for d in range(lead)]
        tables += [A.window_positions(xs[lead + d], os_[lead + d], kernel[d], stride[d],
                                      padding[d], 1, dilation[d]) for d in range(k)]
        table = A.windows(xs, tables)
        return A.window_sum(deps_of(x), np.arange(_size(_meta(x))), np.arange(_size(out)), table)

    def fallback(self, name, deps, outs):
        no_rule(f"the ATen op '{name}'", self.unknown, self.conservative)
        return [A.dense(deps, _size(o)) for o in outs]

    def structural(self, node, name, args, kwargs, deps_of, val_of, outs):
        spec = STRUCTURAL[name]
        args = list(args)
        kwargs = dict(kwargs)
        if name in ("_to_copy", "to"):  # a dtype or device change: same elements
            return [deps_of(args[0])]
        if name == "copy":  # copy(self, src): src broadcast into self's shape
            return [A.broadcast(deps_of(args[1]), tuple(_meta(args[1]).shape),
                                tuple(outs[0].shape))]
        if name == "masked_fill" and val_of(args[1]) is None:  # either x or the fill value
            ts = [args[0]] + [a for a in args[2:3] if isinstance(a, torch.fx.Node)]
            return [A.elementwise([deps_of(a) for a in ts], [tuple(_meta(a).shape) for a in ts],
                                  tuple(outs[0].shape))]
        if (name == "index_put" and (args[3] if len(args) > 3 else kwargs.get("accumulate"))) \
                or name in ("scatter_add", "scatter_reduce", "index_add"):
            return [self.accumulate(name, args, deps_of, val_of, outs)]
        if name == "where":  # where(cond, a, b): exact if cond is known
            if val_of(args[0]) is None:
                ts = [a for a in args if isinstance(a, torch.fx.Node)]
                return [A.elementwise([deps_of(a) for a in ts],
                                      [tuple(_meta(a).shape) for a in ts], tuple(outs[0].shape))]
        if spec == "list":
            data_nodes = list(args[0])
            slots = [("list", i) for i in range(len(data_nodes))]
        else:
            data_nodes = [args[i] if i < len(args) else None for i in spec]
            slots = [("arg", i) for i in spec]
            pairs = [(s, d) for s, d in zip(slots, data_nodes) if isinstance(d, torch.fx.Node)]
            slots = [s for s, _ in pairs]
            data_nodes = [d for _, d in pairs]
        sizes = [_size(_meta(d)) for d in data_nodes]
        offset = 0
        new_args = list(args)
        if spec == "list":
            new_args[0] = list(args[0])
        for (kind, i), d, s in zip(slots, data_nodes, sizes):
            ids = torch.arange(offset, offset + s, dtype=torch.int64).reshape(
                tuple(_meta(d).shape))
            offset += s
            if kind == "list":
                new_args[0][i] = ids
            else:
                new_args[i] = ids
        data_set = set(id(d) for d in data_nodes)
        for i, a in enumerate(new_args):
            if isinstance(a, torch.fx.Node) and id(a) not in data_set:
                v = val_of(a)
                if v is None:
                    return self._unknown_index(name, data_nodes, deps_of, outs)
                new_args[i] = v
            elif isinstance(a, (list, tuple)) and spec != "list":
                v = val_of(a)
                if v is None:
                    return self._unknown_index(name, data_nodes, deps_of, outs)
                new_args[i] = v
        kwargs = {k: val_of(v) for k, v in kwargs.items()}
        if name == "constant_pad_nd":
            new_args = new_args[:2] + [-1]
        if name == "masked_fill":
            new_args[2] = -1
        try:
            res = node.target(*new_args, **kwargs)
        except Exception:
            return self.fallback(_op_name(node.target), [deps_of(d) for d in data_nodes], outs)
        res = list(res) if isinstance(res, (list, tuple)) else [res]
        stacked = A.stack([deps_of(d) for d in data_nodes], sizes, self.n)
        return [A.take(stacked, r.numpy()) for r in res]

    def accumulate(self, name, args, deps_of, val_of, outs):
        """Scatter-adds: each source element joins the element it lands on, found by
        indexing the ids of the destination the same way."""
        base, out_shape = args[0], tuple(outs[0].shape)
        size = _size(outs[0])
        ids = torch.arange(size).reshape(out_shape)
        if name == "index_put":
            idx, src = val_of(args[1]), args[2]
            target = None if idx is None else ids[tuple(idx)]
        elif name == "index_add":  # index_add(self, dim, index, source)
            dim, idx, src = args[1], val_of(args[2]), args[3]
            target = None if idx is None else ids.index_select(dim, idx)
        else:  # scatter_add / scatter_reduce(self, dim, index, src, ...)
            dim, idx, src = args[1], val_of(args[2]), args[3]
            target = None if idx is None else ids.gather(dim, idx)
        if target is None:
            landed = A.dense([deps_of(src)], size)
        else:
            src_d = deps_of(src)
            src_shape = tuple(_meta(src).shape)
            if src_d is not None and src_shape != tuple(target.shape):
                if name in ("scatter_add", "scatter_reduce"):  # only the index's extent is read
                    sel = np.arange(int(np.prod(src_shape))).reshape(src_shape)[
                        tuple(slice(0, k) for k in target.shape)]
                    src_d = A.take(src_d, sel)
                else:
                    src_d = A.broadcast(src_d, src_shape, tuple(target.shape))
            landed = A.group(src_d, target.numpy(), size)
        return A.union([deps_of(base), landed])

    def _unknown_index(self, name, data_nodes, deps_of, outs):
        """Indices that depend on values derivs cannot know: any element may land
        anywhere (correct, conservative)."""
        if name in ("index_put", "scatter", "slice_scatter", "select_scatter"):
            base = deps_of(data_nodes[0])
            rest = A.dense([deps_of(d) for d in data_nodes[1:]], _size(outs[0]))
            return [A.union([base, rest])]
        return [A.dense([deps_of(d) for d in data_nodes], _size(o)) for o in outs]

    def reduce(self, node, name, args, kwargs, deps_of, outs):
        x = args[0]
        in_shape = tuple(_meta(x).shape)
        dims = None
        if len(args) > 1 and isinstance(args[1], (list, tuple, int)) and name not in (
                "linalg_vector_norm", "norm"):
            dims = args[1]
        dims = kwargs.get("dim", dims)
        if name in ("linalg_vector_norm", "norm"):
            dims = args[2] if len(args) > 2 else kwargs.get("dim")
        if dims is None or dims == []:
            dims = list(range(len(in_shape)))
        dims = [dims] if isinstance(dims, int) else list(dims)
        d = A.reduce(deps_of(x), in_shape, dims) if in_shape else deps_of(x)
        return [d] * len(outs)

    def matmul(self, name, args, deps_of, val_of, shape):
        bias = None
        if name in ("addmm", "addmv", "baddbmm", "addbmm"):
            bias, args = args[0], args[1:]
        a, b = args[0], args[1]
        sa, sb = tuple(_meta(a).shape), tuple(_meta(b).shape)
        if name == "dot":
            la, lb, dims = (1, 1, sa[0]), (1, sa[0], 1), (1, 1, 1)
        elif name in ("mv", "addmv"):
            la, lb, dims = (1,) + sa, (1, sb[0], 1), (1, sa[0], 1)
        elif name in ("mm", "addmm"):
            la, lb, dims = (1,) + sa, (1,) + sb, (1, sa[0], sb[1])
        else:
            la, lb, dims = sa, sb, (sa[0], sa[1], sb[2])
        out_ids = np.arange(int(np.prod(dims))).reshape(dims)
        if name == "addbmm":  # sums over the batch too
            out_ids = np.broadcast_to(np.arange(sa[1] * sb[2]).reshape(1, sa[1], sb[2]), dims)

        def mask(node, canon):
            v = val_of(node)
            return np.ones(canon, bool) if v is None else (v.detach().cpu().numpy() != 0).reshape(canon)

        d = A.contract(deps_of(a), deps_of(b), np.arange(np.prod(la)).reshape(la),
                       np.arange(np.prod(lb)).reshape(lb), out_ids, mask(a, la), mask(b, lb))
        if name == "addbmm":
            d = A.take(d, np.arange(int(np.prod(shape)))) if d is not None else None
        if bias is not None:
            d = A.union([d, A.broadcast(deps_of(bias), tuple(_meta(bias).shape), shape)])
        return d

    def convolution(self, args, deps_of, val_of, shape):
        x, w, bias, stride, padding, dilation, _, _, groups = args[:9]
        xs, ws = tuple(_meta(x).shape), tuple(_meta(w).shape)
        batched = len(xs) == len(ws)
        if not batched:
            xs = (1,) + xs
        nsp = len(ws) - 2
        out_shape = shape if batched else (1,) + shape
        tables = [A.window_positions(xs[2 + d], out_shape[2 + d], ws[2 + d], stride[d],
                                     padding[d], 1, dilation[d]) for d in range(nsp)]
        table = A.windows(xs[2:], tables)
        wv = val_of(w)
        wmask = (np.ones(ws, bool) if wv is None else wv.detach().cpu().numpy() != 0)
        lhs_ids = np.arange(int(np.prod(xs))).reshape(xs[0], xs[1], -1)
        rhs_ids = np.arange(int(np.prod(ws))).reshape(ws[0], ws[1], -1)
        out_ids = np.arange(int(np.prod(out_shape))).reshape(out_shape[0], out_shape[1], -1)
        d = A.convolution(deps_of(x), deps_of(w), lhs_ids, rhs_ids, out_ids, table,
                          wmask.reshape(ws[0], ws[1], -1), groups)
        if isinstance(bias, torch.fx.Node) and deps_of(bias) is not None:
            chan = np.broadcast_to(np.arange(out_shape[1]).reshape(1, -1, *([1] * nsp)),
                                   out_shape)
            d = A.union([d, A.take(deps_of(bias), chan)])
        return d


def _inplace(target) -> bool:
    name = _op_name(target)
    return name.endswith("_") and not name.endswith("__")


def _numpy(v):
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else None


def _has_deps(d) -> bool:
    if isinstance(d, tuple):
        return any(x is not None for x in d)
    return d is not None


_BATCH_NORMS = {"native_batch_norm", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit_functional", "_native_batch_norm_legit"}


def _flat(xs) -> list:
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out


_DECOMP = None


def _decompositions():
    global _DECOMP
    if _DECOMP is None:
        from torch._decomp import core_aten_decompositions

        _DECOMP = dict(core_aten_decompositions())
    return _DECOMP


def detect(fun: Callable, args: tuple, argnum: int, unknown: str = "warn", reads=None):
    """Sets of the flattened output on the flattened ``args[argnum]`` (see the
    JAX detector for the return value), and a check that the pattern still holds.

    ``f`` is captured as the engine captures it (``torch_engine._capture``): the
    tensors it reads are lifted, and their values are used as known constants
    (zeros of a constant matrix are structural) unless they require grad. The
    pattern then depends on those values: it holds while the capture's state
    guard holds and no such tensor was changed in place (its version counter).
    ``reads``: the function whose state ``fun`` reads (``fun`` may wrap it)."""
    from ..backends.torch_engine import BUILD_LOCK, Unliftable, capture, outside_functorch

    def target(*a):
        return _one_tensor(fun(*a))

    try:
        with BUILD_LOCK, outside_functorch():
            cap = capture(target, args, {}, reads=fun if reads is None else reads,
                          table=_decompositions(), pure=False)
    except Unliftable:  # state the guards cannot follow: the tensors as constants
        return _detect_constants(fun, args, argnum, unknown)
    except (TypeError, ValueError):  # f's own errors and derivs' (BatchNorm) speak
        raise
    except Exception as e:  # noqa: BLE001 - not traceable (data-dependent shapes ...)
        return _dense(fun, args, argnum, unknown, e)
    known = [None if t.requires_grad else t for t in cap.lifted]
    versions = [(t, t._version) for t in known if t is not None]

    def valid() -> bool:
        return cap.valid() and all(t._version == v for t, v in versions)

    return _run(cap.graph, fun, args, argnum, unknown, known, valid, True)


def _one_tensor(out):
    if not isinstance(out, torch.Tensor):
        raise TypeError("sparsity detection needs f to return one tensor (use has_aux=True "
                        "to return (output, aux)).")
    return out


def _run(gm, fun: Callable, args: tuple, argnum: int, unknown: str, known: list, valid,
         consts_known: bool):
    """The detector over ``gm`` (placeholders: the tensor arguments, then ``known``
    values of lifted tensors, None where unknown); the dense answer where a rule
    fails or sizes depend on data, never a short pattern."""
    tensor_slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    in_shape = tuple(args[argnum].shape)
    n = int(np.prod(in_shape, dtype=np.int64))
    deps = [A.identity(n) if i == argnum else None for i in tensor_slots]
    det = Detector(gm, n, unknown, consts_known)
    out_node = next(iter(reversed(gm.graph.nodes))).args[0]
    out_node = out_node[0] if isinstance(out_node, (list, tuple)) else out_node
    try:
        (out,) = det.run(deps + [None] * len(known), [None] * len(deps) + list(known))
        out_shape = tuple(int(d) for d in _meta(out_node).shape)
    except UnsupportedOpError:
        raise
    except Exception as e:  # noqa: BLE001 - data-dependent sizes (masked_select), a rule
        return _dense(fun, args, argnum, unknown, e)  # that fails: dense, never a miss
    return out, out_shape, in_shape, det.conservative, valid


DENSE_LIMIT = 10**8  # pattern entries up to which an untraceable f is taken as dense


def _dense(fun: Callable, args: tuple, argnum: int, unknown: str, error: Exception):
    """The conservative answer for an ``f`` that cannot be traced: every output
    depends on every input (with a ``SparsityWarning``, or an error under
    ``unknown="error"``); re-raises when that matrix would be too large."""
    import scipy.sparse as sp

    with torch.no_grad():
        out = fun(*args)
    in_shape = tuple(args[argnum].shape)
    m, n = int(np.prod(tuple(out.shape), dtype=np.int64)), int(np.prod(in_shape, dtype=np.int64))
    if m * n > DENSE_LIMIT:
        raise error
    conservative: list[str] = []
    no_rule(f"f as a whole (it cannot be traced: {type(error).__name__})", unknown,
            conservative)
    return sp.csr_array(np.ones((m, n), dtype=bool)), tuple(out.shape), in_shape, \
        conservative, None


def _detect_constants(fun: Callable, args: tuple, argnum: int, unknown: str):
    """Detection for state the guards cannot follow: the tensors f reads become
    graph constants whose values are not used (``Detector.run``), so the pattern
    holds whatever they later hold and needs no freshness check."""
    tensor_slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def flat_fn(*tensors):
        full = list(args)
        for i, t in zip(tensor_slots, tensors):
            full[i] = t
        return _one_tensor(fun(*full))

    examples = [torch.empty(args[i].shape, dtype=args[i].dtype) for i in tensor_slots]
    from ..backends.torch_engine import BUILD_LOCK, clean_dispatch_state, outside_functorch

    from ..backends import _guards

    with BUILD_LOCK, outside_functorch(), clean_dispatch_state(), _guards.preserving(fun):
        # Tensors f closes over stay real: they become graph constants (get_attr).
        gm = make_fx(torch.func.functionalize(flat_fn), _decompositions(), tracing_mode="fake",
                     _allow_non_fake_inputs=True)(*examples)
    return _run(gm, fun, args, argnum, unknown, [], None, False)
