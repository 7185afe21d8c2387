"""The architecture zoo: the networks users train, written as users write them
(``nn.Module``s in PyTorch, closures over parameters in JAX), shared by the zoo
benchmark (``python -m benchmarks zoo``) and the zoo tests (``tests/test_zoo.py``).

Every member maps a batch ``z`` of shape ``(B, D)`` to ``(B,)``; samples are
independent, so ``batch_axis=0`` applies. Members:

- ``mlp-<act>``: a 3-hidden-layer MLP with each smooth activation that ``torch.nn``
  and ``jax.nn`` export (and erf, sin, cos);
- ``residual-gelu``: pre-activation residual blocks ``h + W gelu(h)``;
- ``fourier``: random Fourier features ``[sin Bz, cos Bz]`` into a tanh MLP;
- ``modified-mlp``: the gated MLP of PINN practice (Wang, Teng, Perdikaris 2021):
  ``h <- (1 - g) * U + g * V`` with ``g = tanh(h W)``, ``U = tanh(z Wu)``, ``V = tanh(z Wv)``;
- ``transformer``: each coordinate a token (a linear embedding of the value plus
  a learned position), one encoder layer (attention, layer norm, GELU feed-forward;
  ``nn.TransformerEncoderLayer`` in eval mode, ``jax.nn.dot_product_attention``),
  mean-pooled.
"""

from __future__ import annotations

import functools

import numpy as np

ACTIVATIONS = ("tanh", "sigmoid", "sin", "cos", "erf", "gelu", "gelu_tanh", "silu",
               "softplus", "elu", "selu", "celu", "mish", "logsigmoid", "softsign",
               "tanhshrink")
OTHERS = ("residual-gelu", "fourier", "modified-mlp", "transformer")
MEMBERS = tuple(f"mlp-{a}" for a in ACTIVATIONS) + OTHERS


def _init(rng, fan_in, shape):
    return rng.normal(size=shape) / np.sqrt(fan_in)


def _numpy_params(name: str, D: int, width: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    W = width
    if name.startswith("mlp-") or name == "residual-gelu":
        return {"w": [_init(rng, D, (D, W)), _init(rng, W, (W, W)), _init(rng, W, (W, W))],
                "b": [rng.normal(size=W) * 0.1 for _ in range(3)],
                "out": _init(rng, W, (W,))}
    if name == "fourier":
        return {"B": rng.normal(size=(D, W // 2)) * 2.0,
                "w": [_init(rng, W, (W, W)), _init(rng, W, (W, W))],
                "b": [rng.normal(size=W) * 0.1 for _ in range(2)],
                "out": _init(rng, W, (W,))}
    if name == "modified-mlp":
        return {"wu": _init(rng, D, (D, W)), "wv": _init(rng, D, (D, W)),
                "w": [_init(rng, D, (D, W)), _init(rng, W, (W, W)), _init(rng, W, (W, W))],
                "b": [rng.normal(size=W) * 0.1 for _ in range(3)],
                "out": _init(rng, W, (W,))}
    if name == "transformer":
        E = max(8, (W // 8) * 2)
        return {"emb": _init(rng, 1, (E,)), "pos": rng.normal(size=(D, E)) * 0.1,
                "qkv": _init(rng, E, (E, 3 * E)), "proj": _init(rng, E, (E, E)),
                "ff1": _init(rng, E, (E, 2 * E)), "ff2": _init(rng, 2 * E, (2 * E, E)),
                "out": _init(rng, E, (E,)), "heads": 2}
    raise ValueError(f"unknown zoo member {name!r}; members: {MEMBERS}")


# -- PyTorch ---------------------------------------------------------------------------------
def torch_member(name: str, D: int, width: int = 32, seed: int = 0, dtype=None,
                 elementary: bool = False):
    """The zoo member as an ``nn.Module`` (eval mode) of ``dtype`` (default float32).

    ``elementary=True``: the same network with the activations whose PyTorch
    derivatives cannot serve as a reference written in elementary ops: SiLU and
    Mish (their backward ops have no forward-mode derivative, so ``torch.func.
    hessian`` raises) and CELU (its derivatives read alpha in float32)."""
    import torch
    from torch import nn

    k = _torch_classes()
    dtype = dtype or torch.float32
    p = _numpy_params(name, D, width, seed)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731

    def linear(w, b=None):
        layer = nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(t(w).T)
            if b is not None:
                layer.bias.copy_(t(b))
        return layer

    if name.startswith("mlp-"):
        act = _torch_activation(name[4:], elementary)
        layers = []
        for w, b in zip(p["w"], p["b"]):
            layers += [linear(w, b), act]
        model = nn.Sequential(*layers, k.Out(t(p["out"])))
    elif name == "residual-gelu":
        model = k.Residual([linear(w, b) for w, b in zip(p["w"], p["b"])], k.Out(t(p["out"])))
    elif name == "fourier":
        model = k.Fourier(t(p["B"]), nn.Sequential(
            linear(p["w"][0], p["b"][0]), nn.Tanh(), linear(p["w"][1], p["b"][1]), nn.Tanh(),
            k.Out(t(p["out"]))))
    elif name == "modified-mlp":
        model = k.Modified(linear(p["wu"]), linear(p["wv"]),
                           [linear(w, b) for w, b in zip(p["w"], p["b"])], k.Out(t(p["out"])))
    else:
        E = p["emb"].shape[0]
        layer = nn.TransformerEncoderLayer(E, p["heads"], 2 * E, dropout=0.0,
                                           activation="gelu", batch_first=True)
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(t(p["qkv"]).T)
            layer.self_attn.out_proj.weight.copy_(t(p["proj"]).T)
            layer.linear1.weight.copy_(t(p["ff1"]).T)
            layer.linear2.weight.copy_(t(p["ff2"]).T)
            for bias in (layer.self_attn.in_proj_bias, layer.self_attn.out_proj.bias,
                         layer.linear1.bias, layer.linear2.bias):
                bias.zero_()
        model = k.Tokens(t(p["emb"]), t(p["pos"]), layer, k.Out(t(p["out"])))
    return model.to(dtype).eval()


def _torch_activation(act: str, elementary: bool = False):
    import torch
    from torch import nn

    Fn = _torch_classes().Fn
    if elementary and act in _ELEMENTARY:
        return Fn(_ELEMENTARY[act])
    table = {
        "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "sin": Fn(torch.sin), "cos": Fn(torch.cos),
        "erf": Fn(torch.special.erf), "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"),
        "silu": nn.SiLU(), "softplus": nn.Softplus(), "elu": nn.ELU(), "selu": nn.SELU(),
        "celu": nn.CELU(0.8), "mish": nn.Mish(), "logsigmoid": nn.LogSigmoid(),
        "softsign": nn.Softsign(), "tanhshrink": nn.Tanhshrink()}
    return table[act]


def _silu(x):
    import torch

    return x * torch.sigmoid(x)


def _mish(x):
    import torch

    return x * torch.tanh(torch.where(x > 20, x, torch.log1p(torch.exp(x))))


def _celu(x):
    import torch

    return torch.where(x > 0, x, 0.8 * torch.expm1(x / 0.8))


_ELEMENTARY = {"silu": _silu, "mish": _mish, "celu": _celu}


@functools.lru_cache(maxsize=1)
def _torch_classes():
    import torch
    from torch import nn

    class Fn(nn.Module):  # an elementwise function as a layer
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)

    class Out(nn.Module):  # the scalar read-out
        def __init__(self, v):
            super().__init__()
            self.v = nn.Parameter(v)

        def forward(self, h):
            return h @ self.v

    class Residual(nn.Module):
        def __init__(self, layers, out):
            super().__init__()
            self.first, self.blocks, self.out = layers[0], nn.ModuleList(layers[1:]), out
            self.act = nn.GELU()

        def forward(self, z):
            h = self.first(z)
            for block in self.blocks:
                h = h + block(self.act(h))
            return self.out(self.act(h))

    class Fourier(nn.Module):
        def __init__(self, B, net):
            super().__init__()
            self.register_buffer("B", B)
            self.net = net

        def forward(self, z):
            proj = z @ self.B
            return self.net(torch.cat([torch.sin(proj), torch.cos(proj)], -1))

    class Modified(nn.Module):
        def __init__(self, u, v, layers, out):
            super().__init__()
            self.u, self.v, self.layers, self.out = u, v, nn.ModuleList(layers), out

        def forward(self, z):
            U, V = torch.tanh(self.u(z)), torch.tanh(self.v(z))
            h = z
            for layer in self.layers:
                g = torch.tanh(layer(h))
                h = (1 - g) * U + g * V
            return self.out(h)

    class Tokens(nn.Module):  # each coordinate a token, one encoder layer, mean-pooled
        def __init__(self, emb, pos, encoder, out):
            super().__init__()
            self.emb, self.pos = nn.Parameter(emb), nn.Parameter(pos)
            self.encoder, self.out = encoder, out

        def forward(self, z):
            tokens = z.unsqueeze(-1) * self.emb + self.pos
            return self.out(self.encoder(tokens).mean(-2))

    import types

    return types.SimpleNamespace(Fn=Fn, Out=Out, Residual=Residual, Fourier=Fourier,
                                 Modified=Modified, Tokens=Tokens)


# -- JAX -------------------------------------------------------------------------------------
def jax_member(name: str, D: int, width: int = 32, seed: int = 0, dtype=None):
    """The zoo member as a closure over its parameters (``dtype``: default float32)."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype),
                               {k: v for k, v in _numpy_params(name, D, width, seed).items()
                                if k != "heads"})
    if name.startswith("mlp-"):
        act = _jax_activation(name[4:])

        def u(z):
            h = z
            for w, b in zip(p["w"], p["b"]):
                h = act(h @ w + b)
            return h @ p["out"]
    elif name == "residual-gelu":
        def u(z):
            h = z @ p["w"][0] + p["b"][0]
            for w, b in zip(p["w"][1:], p["b"][1:]):
                h = h + jax.nn.gelu(h) @ w + b
            return jax.nn.gelu(h) @ p["out"]
    elif name == "fourier":
        def u(z):
            proj = z @ p["B"]
            h = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], -1)
            for w, b in zip(p["w"], p["b"]):
                h = jnp.tanh(h @ w + b)
            return h @ p["out"]
    elif name == "modified-mlp":
        def u(z):
            U, V = jnp.tanh(z @ p["wu"]), jnp.tanh(z @ p["wv"])
            h = z
            for w, b in zip(p["w"], p["b"]):
                g = jnp.tanh(h @ w + b)
                h = (1 - g) * U + g * V
            return h @ p["out"]
    else:
        heads = 2

        def norm(h):
            mean = h.mean(-1, keepdims=True)
            return (h - mean) * jax.lax.rsqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-5)

        def u(z):
            E = p["emb"].shape[0]
            h = z[..., None] * p["emb"] + p["pos"]  # (B, D, E)
            q, k, v = jnp.split(h @ p["qkv"], 3, axis=-1)
            shape = h.shape[:-1] + (heads, E // heads)
            att = jax.nn.dot_product_attention(q.reshape(shape), k.reshape(shape),
                                               v.reshape(shape)).reshape(h.shape)
            h = norm(h + att @ p["proj"])
            h = norm(h + jax.nn.gelu(h @ p["ff1"], approximate=False) @ p["ff2"])
            return h.mean(-2) @ p["out"]
    return u


def _jax_activation(act: str):
    import jax
    import jax.numpy as jnp

    return {
        "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "sin": jnp.sin, "cos": jnp.cos,
        "erf": jax.scipy.special.erf, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": jax.nn.gelu, "silu": jax.nn.silu, "softplus": jax.nn.softplus,
        "elu": jax.nn.elu, "selu": jax.nn.selu, "celu": lambda x: jax.nn.celu(x, 0.8),
        "mish": jax.nn.mish, "logsigmoid": jax.nn.log_sigmoid, "softsign": jax.nn.soft_sign,
        "tanhshrink": lambda x: x - jnp.tanh(x)}[act]
