"""Random smooth expressions rendered both as sympy (the oracle) and as array code.

A tree is ("var", i) | ("const", c) | (op, child) | (op, left, right). The same tree
renders to a sympy expression, differentiated exactly by sympy, and to a function
of a JAX array or PyTorch tensor. Operations are chosen so that every expression
is smooth on R^n (no poles, logs of positive values only).
"""

from __future__ import annotations

import functools
import random

import sympy as sp

UNARY = ("sin", "cos", "exp_half", "tanh", "log1p_sq", "sqrt1p_sq", "atan", "recip1p_sq", "sq", "cube")
BINARY = ("add", "sub", "mul", "div_safe")


def random_tree(rng: random.Random, n: int, depth: int):
    if depth == 0 or rng.random() < 0.2:
        if rng.random() < 0.85:
            return ("var", rng.randrange(n))
        return ("const", round(rng.uniform(-2, 2), 3))
    if rng.random() < 0.45:
        return (rng.choice(UNARY), random_tree(rng, n, depth - 1))
    return (rng.choice(BINARY), random_tree(rng, n, depth - 1), random_tree(rng, n, depth - 1))


def to_sympy(tree, syms):
    op, *kids = tree
    if op == "var":
        return syms[kids[0]]
    if op == "const":
        return sp.Float(kids[0])
    a = [to_sympy(k, syms) for k in kids]
    return {
        "sin": lambda: sp.sin(a[0]), "cos": lambda: sp.cos(a[0]),
        "exp_half": lambda: sp.exp(a[0] / 2), "tanh": lambda: sp.tanh(a[0]),
        "log1p_sq": lambda: sp.log(1 + a[0] ** 2), "sqrt1p_sq": lambda: sp.sqrt(1 + a[0] ** 2),
        "atan": lambda: sp.atan(a[0]), "recip1p_sq": lambda: 1 / (1 + a[0] ** 2),
        "sq": lambda: a[0] ** 2, "cube": lambda: a[0] ** 3,
        "add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
        "div_safe": lambda: a[0] / (2 + sp.sin(a[1])),
    }[op]()


def to_array_fn(tree, ns):
    """``ns`` maps sin/cos/exp/tanh/log/sqrt/atan to the framework's functions;
    ``var`` is a callable from the variable number to the array element."""
    def build(t):
        op, *kids = t
        if op == "var":
            i = kids[0]
            return lambda var: var(i)
        if op == "const":
            c = kids[0]
            return lambda var: c
        fs = [build(k) for k in kids]
        if len(fs) == 1:
            g = fs[0]
            u = {
                "sin": lambda v: ns.sin(v), "cos": lambda v: ns.cos(v),
                "exp_half": lambda v: ns.exp(v / 2), "tanh": lambda v: ns.tanh(v),
                "log1p_sq": lambda v: ns.log(1 + v ** 2), "sqrt1p_sq": lambda v: ns.sqrt(1 + v ** 2),
                "atan": lambda v: ns.atan(v), "recip1p_sq": lambda v: 1 / (1 + v ** 2),
                "sq": lambda v: v ** 2, "cube": lambda v: v ** 3,
            }[op]
            return lambda var: _lift(u, g(var), ns)
        g, h = fs
        b = {
            "add": lambda p, q: p + q, "sub": lambda p, q: p - q, "mul": lambda p, q: p * q,
            "div_safe": lambda p, q: p / (2 + ns.sin(q)),
        }[op]
        return lambda var: _lift2(b, g(var), h(var), ns)

    return build(tree)


def _lift(u, v, ns):
    return u(ns.const(v) if isinstance(v, float) else v)


def _lift2(b, p, q, ns):
    return b(ns.const(p) if isinstance(p, float) else p, ns.const(q) if isinstance(q, float) else q)


@functools.lru_cache(maxsize=None)
def exact_partial(tree, n: int, point: tuple, mi: tuple) -> float:
    """sympy's exact derivative, evaluated at ``point`` with 30 digits."""
    syms = sp.symbols(f"x0:{n}")
    expr = to_sympy(tree, syms)
    d = sp.diff(expr, *[syms[i] for i in mi]) if mi else expr
    return float(sp.N(d.subs(dict(zip(syms, point))), 30))


def make_cases(count: int, seed: int):
    """``count`` cases: (tree, n, point, requests), requests being 1-4 multi-indices
    of orders 0-4 with mixed and repeated indices."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        n = rng.randint(1, 4)
        tree = random_tree(rng, n, depth=rng.randint(2, 4))
        if not _uses_var(tree):
            continue
        point = tuple(round(rng.uniform(-1.2, 1.2), 4) for _ in range(n))
        k = rng.randint(1, 4)
        top = tuple(sorted(rng.randrange(n) for _ in range(k)))
        requests = [top]
        if rng.random() < 0.5:  # a chain of sub-multi-indices and maybe an unrelated one
            requests += [top[:j] for j in range(k)]
            if rng.random() < 0.5:
                requests.append(tuple(sorted(rng.randrange(n) for _ in range(rng.randint(1, 2)))))
        cases.append((tree, n, point, list(dict.fromkeys(requests))))
    return cases


def _uses_var(tree) -> bool:
    op, *kids = tree
    return op == "var" or any(_uses_var(k) for k in kids if isinstance(k, tuple))
