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
    return _torch_detect.detect(target, args, argnum, unknown, reads=fun)


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


def sharded(x) -> bool:
    """PyTorch tensors take the pattern-order layout wherever they live."""
    return False


def evaluator(mode, fun, argnum, has_aux, coloring, shape):
    """``args -> (nonzero values in pattern order, aux)``.

    The compressed passes go through ``torch.func`` transforms, whose Python
    dispatch costs far more than the arithmetic at moderate sizes. So the pass and
    the gather are captured once per signature as a plain ATen graph (``make_fx``),
    simplified (aliases, no-op copies and dead code removed) and run directly,
    with autograd intact. Functions that cannot be captured that way (closures
    over tensors, whose values a graph would freeze; ``has_aux``; data-dependent
    control flow) run the transforms eagerly."""
    seeds = coloring.seeds(np.float64)
    gather_np = np.asarray(coloring.gather)
    graphs: dict = {}

    # the state f reads (None: it cannot be walked), walked again once its guard fails
    held = [_walked(fun)]

    def state():
        if held[0] is not None and not held[0].check():
            held[0] = _walked(fun)
        return held[0]

    def eager(args):
        # torch.func transforms of f would leave their wrapped tensors in f's state
        # (a lazily computed attribute): put back as it was (NOTE [trace leaves no
        # trace])
        from ..backends import _guards

        now = state()
        with now.preserved() if now is not None else _guards.preserving(fun):
            stack, aux = compressed(mode, fun, args, argnum, has_aux, seeds)
        return stack.reshape(-1)[torch.as_tensor(gather_np, device=stack.device)], aux

    # f reads tensors besides its arguments, or state that cannot be walked: a
    # captured graph would freeze them
    if has_aux or held[0] is None or held[0].tensors:
        return eager

    def evaluate(args):
        from ..backends.torch_engine import cache_key, inside_functorch, inside_trace

        key = cache_key(args, {})  # None: nothing derivs can key a graph on
        if key is None or inside_trace(args) or inside_functorch():
            return eager(args)
        g, valid = graphs.get(key, (None, None))
        if g is None or not valid():  # Python values the graph baked in changed
            now = state()
            valid = now.check if now is not None else None
            g = _capture(mode, fun, args, argnum, seeds, gather_np) if valid else False
            graphs[key] = (g, valid)
        if g is False:
            return eager(args)
        return g(args), None
    return evaluate


def _walked(fun):
    """The state ``fun`` reads (NOTE [state guards]), or None."""
    from ..backends import _guards

    try:
        return _guards.walk(fun)
    except _guards.Unguardable:
        return None


def _capture(mode, fun, args, argnum, seeds, gather):
    from torch.fx.experimental.proxy_tensor import make_fx

    from ..backends.torch_engine import BUILD_LOCK, clean_dispatch_state, outside_functorch

    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    x = args[argnum]
    seeds_t = torch.as_tensor(seeds, dtype=x.dtype, device=x.device)
    gather_t = torch.as_tensor(gather, device=x.device)

    def g(*tensors):
        full = list(args)
        for i, t in zip(slots, tensors):
            full[i] = t
        # Seeds and gather indices are constants of the graph: everything computed
        # from them alone (the linear part of each tangent) folds at build time.
        stack, _ = compressed(mode, fun, tuple(full), argnum, False, seeds_t)
        return stack.reshape(-1)[gather_t]

    examples = [torch.empty(args[i].shape, dtype=args[i].dtype, device=args[i].device)
                for i in slots]
    from ..backends import _guards

    try:
        with BUILD_LOCK, outside_functorch(), clean_dispatch_state(), _guards.preserving(fun):
            gm = make_fx(g, tracing_mode="fake", _allow_non_fake_inputs=True)(*examples)
        if _foreign_constants(gm, (seeds_t, gather_t)):
            return False  # a tensor the state walk did not find: the graph would freeze it
        _simplify(gm)
        gm = _shared_subexpressions(gm)
    except Exception:  # not capturable: the eager transforms handle it
        return False
    return lambda a: gm(*[a[i] for i in slots])


def _foreign_constants(gm, own) -> bool:
    """Whether ``gm`` bakes in a tensor other than ``own`` ones and those f creates
    from Python data (``made_by_f``): a tensor f reads from somewhere the state walk
    did not reach, which may change."""
    from ..backends.torch_engine import made_by_f

    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        v = getattr(gm, node.target)
        if any(v is t or (v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
                          and v.shape == t.shape) for t in own):
            continue
        if not made_by_f(node):
            return True
    return False


def _shared_subexpressions(gm):
    """One node per distinct (op, inputs) (forward and backward passes slice and
    scale the same values); torch's own CSE pass, skipped if it is unavailable."""
    try:
        from torch.fx.passes.dialect.common.cse_pass import CSEPass
    except ImportError:  # a private module: without it the graph is just longer
        return gm
    return CSEPass()(gm).graph_module


# Largest folded constant, in elements (8 MiB of float64).
FOLD_LIMIT = 1 << 20


def _simplify(gm) -> None:
    """Drop what functorch's tracing leaves behind: aliases, copies that change
    nothing, the algebra of its generic rules (``x ** 1.0``, ``* 1.0``), values
    that do not depend on the inputs (``ones_like(loss)`` seeding the backward
    pass, zero tangents: folded into constants once), and dead code."""
    aten = torch.ops.aten
    consts: dict = {}  # node -> its value, for nodes that do not depend on the inputs

    def meta(n):
        v = n.meta.get("val") if isinstance(n, torch.fx.Node) else None
        return v if isinstance(v, torch.Tensor) else None

    def same_meta(a, b):
        va, vb = meta(a), meta(b)
        return (va is not None and vb is not None and va.shape == vb.shape
                and va.dtype == vb.dtype and va.device == vb.device and va.layout == vb.layout)

    def is_ones(n):
        v = consts.get(n)
        return v is not None and bool((v == 1).all())

    def value(a):
        if isinstance(a, torch.fx.Node):
            return consts[a]
        if isinstance(a, (list, tuple)):
            return type(a)(value(x) for x in a)
        return a

    def known(a):
        if isinstance(a, torch.fx.Node):
            return a in consts
        if isinstance(a, (list, tuple)):
            return all(known(x) for x in a)
        return True

    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "get_attr":  # constants of the graph (seeds, gather indices)
            v = getattr(gm, node.target, None)
            if isinstance(v, torch.Tensor) and v.numel() <= FOLD_LIMIT:
                consts[node] = v
            continue
        if node.op != "call_function":
            continue
        t, a = node.target, node.args
        keep = None  # an existing node equal to this one
        if t is aten.alias.default:
            keep = a[0]
        elif t is aten._to_copy.default and len(a) == 1 and same_meta(a[0], node):
            keep = a[0]
        elif t is aten.pow.Tensor_Scalar and a[1] == 1:
            keep = a[0]
        elif t is aten.expand.default and same_meta(a[0], node):  # already that shape
            keep = a[0]
        elif t is aten.mul.Scalar and a[1] == 1:
            keep = a[0]
        elif t is aten.mul.Tensor and is_ones(a[1]) and same_meta(a[0], node):
            keep = a[0]
        elif t is aten.mul.Tensor and is_ones(a[0]) and same_meta(a[1], node):
            keep = a[1]
        if keep is not None and isinstance(keep, torch.fx.Node):
            node.replace_all_uses_with(keep)
            continue
        m = meta(node)
        if m is None or m.numel() > FOLD_LIMIT:  # keep huge constants out of memory
            continue
        if t is aten.ones_like.default or (t is aten.pow.Tensor_Scalar and a[1] == 0):
            # Only the shape of the input matters: cut the dependency.
            consts[node] = torch.ones(m.shape, dtype=m.dtype, device=m.device)
        elif known(list(a)) and known(list(node.kwargs.values())) and not (
                torch.Tag.nondeterministic_seeded in getattr(t, "tags", ())):
            try:
                consts[node] = t(*value(list(a)), **{k: value(v) for k, v in node.kwargs.items()})
            except Exception:
                continue
        else:
            continue
    # Replace the folded nodes that something outside the folded set still reads.
    for i, (node, v) in enumerate(consts.items()):
        if node.op == "get_attr" or not isinstance(v, torch.Tensor) or all(
                u in consts for u in node.users):
            continue
        name = f"_derivs_const_{i}"
        gm.register_buffer(name, v)
        with graph.inserting_before(node):
            getter = graph.get_attr(name)
        getter.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(getter)
    graph.eliminate_dead_code()
    _fold_scales(gm)
    graph.eliminate_dead_code()
    gm.recompile()


def _fold_scales(gm) -> None:
    """Merge chains of scalings into one product with a constant: the backward pass
    of ``c * u ** 2`` reads ``-(C * (2 * u))``; it becomes ``(-2 C) * u``.

    Rules (the inner node must have no other user): ``C * (y * s)`` and
    ``C1 * (C2 * y)`` and ``-(C * y)`` fold into one ``C' * y``; ``a + (-b)``
    becomes ``a - b``. ``C`` is a constant tensor of the graph."""
    aten = torch.ops.aten
    graph = gm.graph

    def const(n):
        if isinstance(n, torch.fx.Node) and n.op == "get_attr":
            v = getattr(gm, n.target, None)
            return v if isinstance(v, torch.Tensor) else None
        return None

    def single(n):
        return isinstance(n, torch.fx.Node) and len(n.users) == 1

    def split(n):
        """``(C, y)`` if ``n`` is ``C * y`` with a constant ``C``, else None."""
        if n.op != "call_function" or n.target is not aten.mul.Tensor:
            return None
        a, b = n.args
        if const(a) is not None:
            return const(a), b
        if const(b) is not None:
            return const(b), a
        return None

    def replace(node, c, y):
        name = f"_derivs_scale_{len(list(gm.buffers()))}"
        gm.register_buffer(name, c)
        with graph.inserting_before(node):
            getter = graph.get_attr(name)
            new = graph.call_function(aten.mul.Tensor, (getter, y))
        new.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(new)

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.neg.default and single(node.args[0]):
            inner = split(node.args[0])
            if inner is not None:
                replace(node, -inner[0], inner[1])
            continue
        outer = split(node)
        if outer is None or not single(outer[1]):
            continue
        c, y = outer
        if y.op != "call_function":
            continue
        if y.target is aten.mul.Scalar and isinstance(y.args[1], (int, float)):
            replace(node, c * y.args[1], y.args[0])
        elif (inner := split(y)) is not None:
            replace(node, c * inner[0], inner[1])
    for node in list(graph.nodes):  # a + (-b) -> a - b
        if node.op == "call_function" and node.target is aten.add.Tensor:
            a, b = node.args[:2]
            if (isinstance(b, torch.fx.Node) and b.op == "call_function"
                    and b.target is aten.neg.default and len(node.args) == 2):
                with graph.inserting_before(node):
                    new = graph.call_function(aten.sub.Tensor, (a, b.args[0]))
                new.meta["val"] = node.meta.get("val")
                node.replace_all_uses_with(new)


def layout(pattern):
    return {"coo": torch.as_tensor(np.stack([pattern.rows, pattern.cols])),
            "indptr": torch.as_tensor(pattern.indptr), "cols": torch.as_tensor(pattern.cols),
            "rows": torch.as_tensor(pattern.rows)}


def assemble(data, lay, pattern, fmt):
    m, n = pattern.shape
    dev = data.device

    def idx(name):
        t = lay[name]
        return t if t.device == dev else t.to(dev)
    if fmt in ("native", "coo"):
        return torch.sparse_coo_tensor(idx("coo"), data, (m, n), is_coalesced=True,
                                       check_invariants=False)
    if fmt == "csr":
        return torch.sparse_csr_tensor(idx("indptr"), idx("cols"), data, (m, n),
                                       check_invariants=False)
    if fmt == "scipy":
        return sp.csr_array((data.detach().cpu().numpy(), pattern.cols, pattern.indptr),
                            shape=(m, n))
    dense = torch.zeros((m, n), dtype=data.dtype, device=dev)
    dense = dense.index_put((idx("rows"), idx("cols")), data)
    return dense.reshape(pattern.out_shape + pattern.in_shape)


def is_tracing(args) -> bool:
    return False


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy()


def like(x, values: np.ndarray):
    """``values`` as a tensor of ``x``'s dtype and device."""
    return x.new_tensor(values)


def dense(kind, fun, args, argnum, has_aux):
    if kind == "hessian":
        return torch.func.hessian(fun, argnums=argnum)(*args) if not has_aux else \
            torch.func.jacfwd(torch.func.grad(fun, argnums=argnum, has_aux=True),
                              argnums=argnum, has_aux=True)(*args)
    with torch.no_grad():
        out = fun(*args)
    out = out[0] if has_aux else out
    fwd = args[argnum].numel() <= out.numel()
    first, second = ((torch.func.jacfwd, torch.func.jacrev) if fwd
                     else (torch.func.jacrev, torch.func.jacfwd))
    try:  # the other mode when f's own rules forbid one (no forward AD of an op)
        return first(fun, argnums=argnum, has_aux=has_aux)(*args)
    except (NotImplementedError, RuntimeError) as e:
        try:
            return second(fun, argnums=argnum, has_aux=has_aux)(*args)
        except Exception:  # noqa: BLE001
            raise e from None


def refusal(mode, fun, args, argnum, has_aux, size) -> str | None:
    """Why f's own rules refuse ``mode`` ("column": forward, "row": reverse) for a
    Jacobian, or None: one compressed pass runs (``size``: its seed length)."""
    try:
        compressed(mode, fun, args, argnum, has_aux, np.ones((1, size)))
    except (NotImplementedError, RuntimeError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def output_shape(fun, args, has_aux) -> tuple:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..backends import _guards

    with _guards.preserving(fun), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out = fun(*fake)
    return tuple((out[0] if has_aux else out).shape)
