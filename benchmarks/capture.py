"""PyTorch as users write it: derivatives of ``nn.Module``s and closures, side by side
with the functional spelling of the same model, and the capture's per-call cost
against TorchDynamo's.

* Laplacian of a tanh MLP ``nn.Module`` (D = 3, 10, 50): the module spelling
  ``derivs.laplacian(lambda z: model(z).squeeze(-1), batch_axis=0)`` and the
  arguments spelling (weights passed to ``u(x, *weights)``), as ratios to
  ``vmap(trace(torch.func.hessian))``.
* A third-order mixed partial of the module: closure spelling against the
  ``torch.func.functional_call`` spelling (parameters passed as a dict).
* Per-call overhead on tiny inputs: derivs' hot path (signature lookup and state
  guard) against the hand-written derivative, and ``torch.compile`` with a
  backend that runs the captured graph as is (Dynamo's frame evaluation and
  guards) against eager ``f``.

Medians of interleaved runs, one thread; results in ``benchmarks/out/capture*.md``
(references: ``benchmarks/results/``).
"""

from __future__ import annotations

import time

import derivs
from derivs._timing import first_call_seconds, interleaved_medians

from ._harness import markdown_table, write


def _mlp(D: int, seed: int = 1):
    import torch

    torch.manual_seed(seed)
    layers, sizes = [], [D, 64, 64, 64, 1]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def _functional(model):
    """The same MLP as a function of its weights (the arguments spelling)."""
    import torch

    flat = []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            flat += [m.weight.detach().t().contiguous(), m.bias.detach()]

    def u(x, *flat):
        h = x
        for i in range(0, len(flat) - 2, 2):
            h = torch.tanh(h @ flat[i] + flat[i + 1])
        return (h @ flat[-2] + flat[-1])[..., 0]

    return u, flat


def laplacian(quick: bool) -> list[dict]:
    import torch

    rows = []
    for D in (3, 10, 50):
        B = 256
        model = _mlp(D)
        f = lambda z, model=model: model(z).squeeze(-1)  # noqa: E731
        u, flat = _functional(model)
        x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
        module_lap = derivs.laplacian(f, batch_axis=0)
        args_lap = derivs.laplacian(u, batch_axis=0)
        hess = torch.func.vmap(lambda z: torch.trace(torch.func.hessian(f)(z)))
        ref = hess(x).detach()
        for got in (module_lap(x), args_lap(x, *flat)):
            torch.testing.assert_close(got.detach(), ref, rtol=1e-3,
                                       atol=1e-4 * float(ref.abs().max()))
        explained = derivs.explain(module_lap, x)
        with torch.no_grad():
            med = interleaved_medians({
                "module": lambda: module_lap(x), "arguments": lambda: args_lap(x, *flat),
                "trace(hessian)": lambda: hess(x), "f": lambda: f(x)},
                repeats=5 if quick else 11, inner=3)
        rows.append({"D": D, "points": B, "strategy": explained.strategy,
                     "layout": explained.layout,
                     **{f"{k}_s": v for k, v in med.items()}})
        print(f"  laplacian D={D}: module {med['module'] / med['trace(hessian)']:.2f}x, "
              f"arguments {med['arguments'] / med['trace(hessian)']:.2f}x trace(hessian)",
              flush=True)
    return rows


def third_order(quick: bool) -> list[dict]:
    import torch

    rows = []
    for D in (3, 10):
        model = _mlp(D)
        params = {k: v.detach() for k, v in model.named_parameters()}
        x = torch.randn(256, D, generator=torch.Generator().manual_seed(3))
        mi = (0, 1, 2)
        closure = derivs.partial(lambda z: model(z).squeeze(-1), mi, batch_axis=0)
        functional = derivs.partial(
            lambda z, p: torch.func.functional_call(model, p, (z,)).squeeze(-1), mi,
            batch_axis=0)
        torch.testing.assert_close(closure(x).detach(), functional(x, params).detach())
        with torch.no_grad():
            med = interleaved_medians({
                "closure": lambda: closure(x), "functional_call": lambda: functional(x, params),
                "f": lambda: model(x)}, repeats=7 if quick else 21, inner=10)
        rows.append({"D": D, **{f"{k}_s": v for k, v in med.items()}})
        print(f"  third order D={D}: closure {med['closure'] / med['functional_call']:.2f}x "
              "functional_call", flush=True)
    return rows


def overhead(quick: bool) -> list[dict]:
    """Per-call cost on tiny inputs, where compute is negligible."""
    import torch

    from derivs._seeds import problem1_f, problem1_hand

    x = torch.randn(4, 1, requires_grad=True)
    y = torch.randn(4, 1)
    dfdx = derivs.partial(problem1_f, 0, batch_axis=0)
    model = _mlp(3)
    f = lambda z: model(z)  # noqa: E731
    z = torch.randn(4, 3)
    closure = derivs.partial(f, (0, 1), batch_axis=0)
    closure(z)
    compiled = _dynamo_passthrough(f)
    compiled(z)
    guard = _guard_of(closure, z)
    n = 20 if quick else 60
    med = interleaved_medians({
        "hand-written df/dx": lambda: problem1_hand(x, y),
        "derivs df/dx": lambda: dfdx(x, y),
        "module f eager": lambda: f(z),
        "module f through Dynamo": lambda: compiled(z),
        "derivs state guard of the module": guard,
    }, repeats=n, inner=200)
    rows = [{"what": k, "us_per_call": v * 1e6} for k, v in med.items()]
    # first calls: capture of a fresh module (derivs: walk, trace, build) against
    # Dynamo's first compile of the same function (no derivative built)
    fresh = _mlp(3, seed=7)
    g = lambda z: fresh(z)  # noqa: E731
    rows.append({"what": "first call: derivs capture + derivative graph (ms)",
                 "us_per_call": 1e3 * first_call_seconds(
                     lambda: derivs.partial(lambda v: g(v).sum(), (0, 1))(z[0]))})
    rows.append({"what": "first call with batch_axis=0: also proves the batch axis (ms)",
                 "us_per_call": 1e3 * first_call_seconds(
                     lambda: derivs.partial(g, (0, 1), batch_axis=0)(z))})
    torch._dynamo.reset()
    rows.append({"what": "first call: Dynamo capture of f alone (ms)",
                 "us_per_call": 1e3 * first_call_seconds(lambda: _dynamo_passthrough(g)(z))})
    print("  overhead: " + ", ".join(f"{r['what']} {r['us_per_call']:.1f} us" for r in rows),
          flush=True)
    return rows


def _dynamo_passthrough(f):
    """``torch.compile`` with a backend that runs Dynamo's graph unchanged: what
    Dynamo's capture and guards cost per call, nothing else."""
    import torch

    torch._dynamo.reset()
    return torch.compile(f, backend=lambda gm, example_inputs: gm.forward, fullgraph=True)


def _guard_of(transform_fn, *args):
    from derivs.backends.torch_engine import lookup

    t = transform_fn.__derivs_transform__
    entry = lookup(t, args, {})
    assert entry is not None and entry.lifted, "the module graph should be cached"
    return entry.valid


def run(quick: bool = False) -> str:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lap = laplacian(quick)
    third = third_order(quick)
    over = overhead(quick)
    lap_rows = [[r["D"], r["points"], f"{r['module_s'] / r['trace(hessian)_s']:.2f}",
                 f"{r['arguments_s'] / r['trace(hessian)_s']:.2f}", r["layout"],
                 f"{r['module_s'] * 1e3:.2f}", f"{r['trace(hessian)_s'] * 1e3:.2f}"]
                for r in lap]
    third_rows = [[r["D"], f"{r['closure_s'] / r['functional_call_s']:.2f}",
                   f"{r['closure_s'] / r['f_s']:.1f}", f"{r['functional_call_s'] / r['f_s']:.1f}"]
                  for r in third]
    over_rows = [[r["what"], f"{r['us_per_call']:.1f}"] for r in over]
    name = "capture-quick" if quick else "capture"
    path = write(name, "derivs on nn.Modules and closures (PyTorch, CPU, 1 thread)", [
        ("Laplacian of a tanh MLP nn.Module, batch_axis=0 (ratio to vmap(trace(hessian)))",
         markdown_table(["D", "points", "module", "arguments", "layout", "module ms",
                         "trace(hessian) ms"], lap_rows)),
        ("Third-order partial d3/dx0dx1dx2 of the module (256 points)",
         markdown_table(["D", "closure / functional_call", "closure / f",
                         "functional_call / f"], third_rows)),
        ("Per-call cost on tiny inputs (microseconds; first calls in milliseconds)",
         markdown_table(["what", "us"], over_rows)),
    ], {"laplacian": lap, "third_order": third, "overhead": over, "quick": quick})
    return f"wrote {path} in {time.perf_counter() - t0:.0f} s"
