"""``python -m derivs demo``: both seed problems, checked and timed in this run."""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from . import _api, _seeds
from ._timing import interleaved_medians


def _table(headers, rows) -> str:
    cols = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols[0]), sep] + [line(r) for r in cols[1:]])


def _values_jax():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(_seeds.problem2_x(), dtype=jnp.float32)
    return np.asarray(jax.jit(jax.vmap(_api.partial(jnp.prod, _seeds.PROBLEM2_INDEX)))(x))


def _values_torch():
    import torch

    x = torch.as_tensor(_seeds.problem2_x(), dtype=torch.float32)
    batched = _api.partial(lambda v: v.prod(-1), _seeds.PROBLEM2_INDEX, batch_axis=0)(x)
    vmapped = torch.func.vmap(_api.partial(torch.prod, _seeds.PROBLEM2_INDEX))(x)
    return batched.numpy(), vmapped.numpy()


def _installed() -> dict[str, bool]:
    return {fw: importlib.util.find_spec(fw) is not None for fw in ("jax", "torch")}


def _skipped(fw: str) -> str:
    return f"skipped: {fw} is not installed (pip install 'derivs[{fw}]')"


def _problem2_costs(batch: int, n: int, repeats: int, have: dict[str, bool]):
    """Ratios to f of derivs and the alternatives, JAX (jit) and PyTorch (eager),
    for the frameworks that are installed."""
    rows = []
    if have["jax"]:
        rows += _problem2_jax(batch, n, repeats)
    else:
        rows.append(("JAX jit", "all", _skipped("jax"), "-"))
    if have["torch"]:
        rows += _problem2_torch(batch, n, repeats)
    else:
        rows.append(("PyTorch eager", "all", _skipped("torch"), "-"))
    return rows


def _problem2_jax(batch: int, n: int, repeats: int):
    import jax
    import jax.numpy as jnp

    idx = _seeds.PROBLEM2_INDEX
    xn = _seeds.problem2_x(batch, n, seed=0)
    xj = jnp.asarray(xn, jnp.float32)
    jf = jax.jit(jax.vmap(jnp.prod))
    jfns = {
        "f": lambda: jf(xj),
        "derivs": (lambda g: lambda: g(xj))(jax.jit(jax.vmap(_api.partial(jnp.prod, idx)))),
        "nested jax.jvp": (lambda g: lambda: g(xj))(
            jax.jit(jax.vmap(_seeds.jax_nested_jvp(jnp.prod, idx)))),
    }
    naive_bytes = batch * n**3 * 4
    if naive_bytes < 2**30:
        jfns["jacfwd(jacfwd(grad))"] = (lambda g: lambda: g(xj))(
            jax.jit(jax.vmap(_seeds.jax_naive(jnp.prod, idx))))
    tj = interleaved_medians(jfns, repeats=repeats, inner=3)
    rows = [("JAX jit", k, f"{v / tj['f']:.2f}x", f"{v * 1e3:.3f}") for k, v in tj.items() if k != "f"]
    if naive_bytes >= 2**30:
        rows.append(("JAX jit", "jacfwd(jacfwd(grad))",
                     f"skipped: n^3 tensor needs {naive_bytes / 2**30:.0f} GiB", "-"))
    return rows


def _problem2_torch(batch: int, n: int, repeats: int):
    import torch

    idx = _seeds.PROBLEM2_INDEX
    xt = torch.as_tensor(_seeds.problem2_x(batch, n, seed=0), dtype=torch.float32)
    tfns = {
        "f": lambda: xt.prod(-1),
        "derivs": (lambda g: lambda: g(xt))(
            _api.partial(lambda v: v.prod(-1), idx, batch_axis=0)),
        "nested torch.func.jvp (vmap)": (lambda g: lambda: g(xt))(
            torch.func.vmap(_seeds.torch_nested_jvp(torch.prod, idx))),
        "hand-written": lambda: _seeds.torch_prod_hand(xt),
    }
    tt = interleaved_medians(tfns, repeats=repeats)
    return [("PyTorch eager", k, f"{v / tt['f']:.2f}x", f"{v * 1e3:.3f}")
            for k, v in tt.items() if k != "f"]


def _problem1(steps: int, repeats: int):
    import torch

    t = torch.randn(3000, 1, generator=torch.Generator().manual_seed(0))
    model = _seeds.problem1_model("derivs")
    x, y = model.inputs(t)
    ours = model(t)
    hand = _seeds.problem1_hand(x, y)
    total = _seeds.problem1_model("autograd.grad")(t)
    grads_touched = any(p.grad is not None for p in model.parameters())
    plan = _api.explain(_api.partial(_seeds.problem1_f, 0, batch_axis=0), x, y)
    graph_note = str(plan).split("note            : ")[-1]
    partial_gap = (ours - hand).abs().max().item()
    total_gap = (total - hand).abs().max().item()
    checks = [
        ("derivs strategy (derivs.explain)", f"{plan.strategy}: {graph_note}"),
        ("derivs.partial vs hand-written 2*(x+0.01*y**2)", f"{partial_gap:.2e}"),
        ("autograd.grad (total derivative) vs hand-written", f"{total_gap:.2e}"),
        ("derivs wrote to .grad", str(grads_touched)),
    ]
    losses = {m: _seeds.problem1_train(_seeds.problem1_model(m), steps)
              for m in ("hand-written", "derivs", "autograd.grad")}
    models = {m: _seeds.problem1_model(m) for m in _seeds.PROBLEM1_MODES}
    fns = {m: (lambda mm: lambda: _seeds.problem1_train(mm, 5))(mm) for m, mm in models.items()}
    times = interleaved_medians(fns, repeats=repeats)
    cost = [(m, f"{times[m] / times['hand-written']:.2f}x", f"{times[m] / 5 * 1e3:.2f}")
            for m in _seeds.PROBLEM1_MODES]
    return checks, losses, cost, partial_gap <= 1e-6 < total_gap and not grads_touched


def main(argv=None) -> int:
    have = _installed()
    print("derivs demo: the two seed problems of docs/problems.md, checked and timed in this run\n")
    if not any(have.values()):
        print("neither jax nor torch is installed: pip install 'derivs[jax]', "
              "'derivs[torch]' or 'derivs[all]'")
        return 1
    for fw in (fw for fw, ok in have.items() if not ok):
        print(f"note: {_skipped(fw)}; its rows are left out\n")
    if have["torch"]:
        import torch

        torch.set_num_threads(1)  # docs/problems.md's problem-1 timings are one-thread CPU

    print("== Problem 2: d^3 prod(x) / dx0 dx2 dx4 per row of x = [[1..5], ..., [26..30]] ==")
    expected = np.array(_seeds.PROBLEM2_EXPECTED)
    rows, values = [("expected (docs/problems.md)", expected.tolist())], []
    if have["jax"]:
        vj = _values_jax()
        values.append(vj)
        rows.append(("JAX: jit(vmap(derivs.partial(jnp.prod, (0,2,4))))",
                     np.round(vj, 4).tolist()))
    if have["torch"]:
        vt, vv = _values_torch()
        values += [vt, vv]
        rows += [("PyTorch: derivs.partial(prod, (0,2,4), batch_axis=0)",
                  np.round(vt, 4).tolist()),
                 ("PyTorch: torch.func.vmap(derivs.partial(torch.prod, (0,2,4)))",
                  np.round(vv, 4).tolist())]
    ok = all(np.allclose(v, expected, rtol=1e-5) for v in values)
    print(_table(["route", "values"], rows))
    print(f"values match: {ok}\n")

    for batch, n in ((4096, 5), (4096, 50)):
        print(f"cost relative to f (median of interleaved runs), batch {batch}, n {n}:")
        print(_table(["framework", "method", "time / f", "ms per call"],
                     _problem2_costs(batch, n, repeats=7, have=have)))
        print()
    if not have["torch"]:
        print(f"== Problem 1 (PyTorch) {_skipped('torch')} ==")
        return 0 if ok else 1

    print("== Problem 1: df/dx of f(x, y) = 100 + (x + 0.01 y^2)^2 as a trainable op ==")
    print("model: t -> Linear(1,100) -> Linear(100,1) -> Linear(1,1) -> x = Linear(1,1)(.), "
          "y = Linear(1,1)(x); out = df/dx(x, y) = derivs.partial(f, 0, batch_axis=0)(x, y)")
    checks, losses, cost, partial_ok = _problem1(steps=300, repeats=7)
    print(_table(["check", "result"], checks))
    print()
    print(_table(["method", "loss after 300 Adam steps"],
                 [(m, f"{v:.2e}") for m, v in losses.items()]))
    print()
    print("training-step cost (batch 3000, one CPU thread, 5 steps per sample):")
    print(_table(["method", "time / hand-written", "ms per step"], cost))
    print(f"\nproblem 1 partial is the true partial (<= 1e-6 from hand-written) while "
          f"autograd.grad is the total derivative: {partial_ok}")
    return 0 if (ok and partial_ok and not math.isnan(losses["derivs"])) else 1
