"""The two seed problems of docs/problems.md and today's alternatives to derivs.

Shared by the demo (``python -m derivs demo``) and the benchmark harness so that
both measure the same thing. Frameworks are imported inside the functions that
need them.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- problem 2 --

PROBLEM2_INDEX = (0, 2, 4)
PROBLEM2_EXPECTED = [8.0, 63.0, 168.0, 323.0, 528.0, 783.0]


def problem2_x(batch: int = 6, n: int = 5, *, seed: int | None = None) -> np.ndarray:
    """The seed input (rows [1..5], [6..10], ...) or, with ``seed``, random values
    near 1 so that products of thousands of entries stay finite."""
    if seed is None:
        return np.arange(1.0, batch * n + 1.0).reshape(batch, n)
    rng = np.random.default_rng(seed)
    return rng.uniform(0.9, 1.1, size=(batch, n))


def jax_nested_jvp(f, index):
    """The accepted answer: nested ``jax.jvp`` with one-hot tangents."""
    import jax
    import jax.numpy as jnp

    def d(x):
        g = f
        for i in index:
            e = jnp.zeros_like(x).at[i].set(1)
            g = (lambda g_, e_: lambda z: jax.jvp(g_, (z,), (e_,))[1])(g, e)
        return g(x)

    return d


def jax_naive(f, index):
    """``jacfwd`` nesting around ``grad`` then slicing: builds the n^k tensor."""
    import jax

    d = jax.grad(f)
    for _ in index[1:]:
        d = jax.jacfwd(d)
    return lambda x: d(x)[tuple(index)]


def torch_nested_jvp(f, index):
    """The accepted answer in PyTorch: nested ``torch.func.jvp`` with one-hot tangents."""
    import torch

    def d(x):
        g = f
        for i in index:
            e = torch.zeros_like(x)
            e[i] = 1
            g = (lambda g_, e_: lambda z: torch.func.jvp(g_, (z,), (e_,))[1])(g, e)
        return g(x)

    return d


def torch_prod_hand(x, index=PROBLEM2_INDEX):
    """Hand-written d^k prod(x) / dx_i... for distinct indices: the product of the
    other entries (valid with zeros too)."""
    keep = [j for j in range(x.shape[-1]) if j not in index]
    return x[..., keep].prod(-1)


# ---------------------------------------------------------------- problem 1 --

def problem1_f(x, y):
    return 100 + (x + 0.01 * y**2) ** 2


def problem1_hand(x, y):
    """The hand-written partial df/dx (y held fixed)."""
    return 2 * (x + 0.01 * y**2)


PROBLEM1_MODES = ("hand-written", "derivs", "autograd.grad", "torch.func.jvp",
                  "forward_ad", "vmap(grad)")


def problem1_model(mode: str = "derivs", *, seed: int = 0):
    """The seed model; ``mode`` picks how its output df/dx is computed."""
    import torch

    from . import _api

    if mode not in PROBLEM1_MODES:
        raise ValueError(f"mode must be one of {PROBLEM1_MODES}, got {mode!r}")
    dfdx = _api.partial(problem1_f, 0, batch_axis=0)

    class SeedModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.l1 = torch.nn.Linear(1, 100)
            self.l2 = torch.nn.Linear(100, 1)
            self.l3 = torch.nn.Linear(1, 1)
            self.lx = torch.nn.Linear(1, 1)
            self.ly = torch.nn.Linear(1, 1)

        def inputs(self, t):
            x = self.lx(self.l3(self.l2(self.l1(t))))
            return x, self.ly(x)

        def forward(self, t):
            x, y = self.inputs(t)
            if mode == "hand-written":
                return problem1_hand(x, y)
            if mode == "derivs":
                return dfdx(x, y)
            if mode == "autograd.grad":  # what users write: the *total* derivative
                z = problem1_f(x, y)
                return torch.autograd.grad(z.sum(), [x], create_graph=True)[0]
            if mode == "torch.func.jvp":
                return torch.func.jvp(lambda a: problem1_f(a, y), (x,), (torch.ones_like(x),))[1]
            if mode == "forward_ad":
                import torch.autograd.forward_ad as fwAD
                with fwAD.dual_level():
                    xd = fwAD.make_dual(x, torch.ones_like(x))
                    return fwAD.unpack_dual(problem1_f(xd, y)).tangent
            # vmap(grad): per-sample gradient of the scalar function
            g = torch.func.grad(lambda a, b: problem1_f(a, b).sum())
            return torch.func.vmap(g)(x, y)

    return SeedModel()


def problem1_train(model, steps: int, *, batch: int = 3000, lr: float = 1e-2, seed: int = 1):
    """Adam on MSE(model(t), t), t ~ randn(batch, 1); returns the final loss."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = None
    for _ in range(steps):
        t = torch.randn(batch, 1, generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(t), t)
        loss.backward()
        opt.step()
    return float(loss.detach())
