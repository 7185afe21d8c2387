"""PyTorch's OpInfo database as an oracle for the traced engine.

For every OpInfo entry with forward-AD support and float64 samples, the first
sample becomes ``f(x, *tensors)`` (through the entry's gradcheck wrapper) (the other tensors passed as arguments, plain
values bound) returning the op's first floating output. derivs' traced engine
(``strategy="traced-jet"``, so a fallback raises) must give the second partial
``d^2 f / dx_0 dx_j`` equal to nested ``torch.func.jacfwd`` (PyTorch's own
forward-mode formulas). ``python tests/backends/torch_engine/opinfo_sweep.py``
prints the coverage and every miss with its reason.
"""

from __future__ import annotations

import collections
import warnings

import torch
import torch.utils._pytree as pytree

import derivs


def entries():
    """OpInfo entries with forward AD and float64 on the CPU."""
    from torch.testing._internal.common_methods_invocations import op_db

    return [op for op in op_db if op.supports_forward_ad
            and torch.float64 in op.supported_dtypes("cpu")]


def case(op):
    """``(f, args)`` for the op's first usable sample, or None."""
    return next(cases(op), None)


def cases(op):
    """``(f, args)`` for every usable sample of the op (a generator)."""
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=False):
        x = sample.input
        if not isinstance(x, torch.Tensor) or x.numel() < 1 or not x.is_floating_point():
            continue
        leaves, spec = pytree.tree_flatten((sample.args, sample.kwargs))
        tensor_at = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]

        def f(x, *tensors, leaves=leaves, spec=spec, tensor_at=tensor_at,
              wrapper=op.gradcheck_wrapper, call=op.op):
            full = list(leaves)
            for i, t in zip(tensor_at, tensors):
                full[i] = t
            args, kwargs = pytree.tree_unflatten(full, spec)
            # the wrapper PyTorch's own gradcheck uses: e.g. symmetrizes the input of
            # cholesky, whose derivative is defined for symmetric changes only
            out = wrapper(call, x, *args, **kwargs)
            for leaf in pytree.tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    return leaf
            raise TypeError("no floating output")

        yield f, (x.clone(), *[leaves[i].clone() for i in tensor_at])


def references(f, args, j) -> list:
    """``d^2 f / dx_0 dx_j`` by PyTorch's own transforms: reverse over reverse and
    forward over forward (they do not always agree: forward over forward of
    layer_norm is wrong in torch 2.13, so a value is accepted when it matches
    either and float64 finite differences of the reverse first derivative)."""
    x, rest = args[0], args[1:]
    shape = f(*args).shape

    def flat(v):
        return f(v.reshape(x.shape), *rest).reshape(-1)

    out = []
    for outer, inner in ((torch.func.jacrev, torch.func.jacrev),
                         (torch.func.jacfwd, torch.func.jacfwd)):
        try:
            out.append(outer(inner(flat))(x.reshape(-1))[:, 0, j].reshape(shape))
        except Exception:  # noqa: BLE001 - one of the two may be unsupported
            pass
    if not out:
        raise RuntimeError("no second derivative from PyTorch")

    def first(v):  # d f / dx_0, reverse mode
        return torch.func.jacrev(flat)(v)[:, 0]

    h = 1e-5
    e = torch.zeros(x.numel(), dtype=x.dtype)
    e[j] = 1
    try:
        v = x.reshape(-1)
        fd = ((first(v + h * e) - first(v - h * e)) / (2 * h)).reshape(shape)
    except Exception:  # noqa: BLE001
        fd = None
    return out, fd


def check(op) -> tuple[str, str]:
    """``(status, detail)``: "served", "miss" (the engine fell back or was wrong:
    the detail says why) or "skip" (no usable sample, or no forward-AD reference)."""
    made = case(op)
    if made is None:
        return "skip", "no floating tensor sample"
    f, args = made
    j = min(1, args[0].numel() - 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refs, fd = references(f, args, j)
    except Exception as e:  # noqa: BLE001 - PyTorch itself cannot: not our miss
        return "skip", f"reference failed: {type(e).__name__}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = derivs.partial(f, (0, j), strategy="traced-jet")(*args)
    except ValueError as e:
        return "miss", str(e).split("cannot be used here: ")[-1].split(". Pass")[0]
    except Exception as e:  # noqa: BLE001
        return "miss", f"raised {type(e).__name__}: {str(e)[:120]}"
    def close(a, b, tol=1e-7):
        try:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)
            return True
        except AssertionError:
            return False

    if close(got, refs[0]):
        return "served", ""
    if len(refs) > 1 and close(got, refs[1]) or fd is not None and close(got, fd, 1e-4):
        return "served", "PyTorch's own transforms disagree; derivs matches one and FD"
    return "miss", "WRONG VALUE " + str((got - refs[0]).abs().max().item())


def sweep(ops) -> dict:
    results = {f"{op.name}.{op.variant_test_name}": check(op) for op in ops}
    counts = collections.Counter(s for s, _ in results.values())
    return {"results": results, "counts": counts}


if __name__ == "__main__":
    out = sweep(entries())
    c = out["counts"]
    total = c["served"] + c["miss"]
    print(f"served {c['served']} of {total} ({100 * c['served'] / total:.1f}%), "
          f"skipped {c['skip']}")
    for name, (status, detail) in sorted(out["results"].items()):
        if status != "served":
            print(f"{status:6} {name}: {detail}")
