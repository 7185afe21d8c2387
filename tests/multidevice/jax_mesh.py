"""Every JAX transform on 8 simulated CPU devices; run by ``tests/test_scaling.py`` in
a subprocess (the device count is fixed when JAX starts).

Oracle: the same transform run unsharded, on one device, in the same process. Each
case prints one line ``name ok`` or raises; the caller checks the list of names.
"""

from __future__ import annotations

import os
import time

START = time.perf_counter()

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import derivs  # noqa: E402

jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 8, jax.devices()
MESH = jax.make_mesh((8,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all",
               "reduce-scatter")


def mlp(d: int):
    k1, k2 = jax.random.split(jax.random.key(d))
    w1 = jax.random.normal(k1, (d, 16)) / np.sqrt(d)
    w2 = jax.random.normal(k2, (16,))
    return lambda z: jnp.tanh(z @ w1) @ w2   # closes over its weights, as models do


def points(d: int, n: int = 16):
    x = jax.random.normal(jax.random.key(100 + d), (n, d))
    return jax.device_put(x, NamedSharding(MESH, P("b")))


def local(x):
    """``x`` on one device, unsharded: the oracle's input."""
    return jax.device_put(np.asarray(x), jax.devices()[0])


def cases(d: int):
    """name -> a batched function ``(n, d) -> (n, ...)``."""
    u = mlp(d)
    sigma = 0.3 * jnp.eye(d)[:, :2]
    out = {
        "partial": jax.vmap(derivs.partial(u, (0, 1))),
        "partial batch_axis": derivs.partial(u, (0, 1), batch_axis=0),
        "partials": lambda xs: jax.vmap(derivs.partials(u, [(0,), (0, 1)]))(xs)[(0, 1)],
        "value_and_partials": lambda xs: jax.vmap(
            derivs.value_and_partials(u, [(0,), (1, 1)]))(xs)[1][(1, 1)],
        "laplacian": jax.vmap(derivs.laplacian(u)),
        "laplacian batch_axis": derivs.laplacian(u, batch_axis=0),
        "laplacian chunked": jax.vmap(derivs.laplacian(u, chunk_size=2)),
        # NOTE [strided chunks]: under jit with sharded points, no gather of the batch
        "laplacian batch_size": derivs.laplacian(u, batch_axis=0, batch_size=8),
        "hutchinson coordinates batch_size": lambda xs: derivs.hutchinson_laplacian(
            u, samples=2, distribution="coordinates", batch_axis=0, batch_size=8)(
                jax.random.key(5), xs),
        "hessian_diagonal": jax.vmap(derivs.hessian_diagonal(u)),
        "bilaplacian": jax.vmap(derivs.bilaplacian(u)),
        "diffusion_operator": jax.vmap(derivs.diffusion_operator(
            u, sigma, jnp.linspace(-1.0, 1.0, d), -0.1)),
        "differential_operator": jax.vmap(derivs.differential_operator(
            u, [(1.0, 0), (-0.5, (1, 1)), (0.25, (0, 1))])),
        "hutchinson_laplacian": jax.vmap(lambda z: derivs.hutchinson_laplacian(u, samples=4)(
            jax.random.key(7), z)),
        "sparse jacobian": jax.vmap(lambda z: derivs.jacobian(
            lambda v: jnp.sin(v) * v[0] + v ** 2, sparse=True)(z).data),
        "sparse hessian": jax.vmap(lambda z: derivs.hessian(
            lambda v: jnp.sum(jnp.sin(v[1:] * v[:-1])), sparse=True)(z).data),
    }
    return out


FAMILY = ("laplacian", "laplacian batch_axis", "laplacian chunked", "diffusion_operator")


def check_shard_map(d: int, ops: dict) -> list[str]:
    """Inside ``jax.shard_map`` with its default checks: values and ``jax.grad``
    through it equal the unsharded run."""
    x = points(d)
    done = []
    for name, g in ops.items():
        sharded = jax.shard_map(g, mesh=MESH, in_specs=P("b"), out_specs=P("b"))
        np.testing.assert_allclose(jax.jit(sharded)(x), jax.jit(g)(local(x)), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
        got = jax.jit(jax.grad(lambda xs: jnp.sum(jnp.sin(sharded(xs)))))(x)
        want = jax.jit(jax.grad(lambda xs: jnp.sum(jnp.sin(g(xs)))))(local(x))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=name)
        done.append(f"shard_map d={d} {name}")
        print(done[-1], f"{time.perf_counter() - START:.1f}", flush=True)
    return done


def collectives(compiled) -> dict[str, int]:
    text = compiled.as_text()
    return {c: text.count(f" {c}(") + text.count(f" {c}-start(") for c in COLLECTIVES}


def check_jit_sharding(d: int, ops: dict) -> list[str]:
    """Under ``jax.jit`` with the points sharded: exact, the output keeps the
    points' sharding, and the compiled program has no collective that ``f`` itself
    does not have (per-point operators exchange nothing)."""
    u = mlp(d)
    x = points(d, 32)
    base = collectives(jax.jit(jax.vmap(u)).lower(x).compile())
    done = []
    for name, g in ops.items():
        if name.startswith("sparse"):
            continue
        fn = jax.jit(g)
        out = fn(x)
        np.testing.assert_allclose(out, jax.jit(g)(local(x)), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
        assert out.sharding.is_equivalent_to(NamedSharding(MESH, P("b")), out.ndim), \
            (name, out.sharding)
        counts = collectives(fn.lower(x).compile())
        assert counts == base, (name, counts, base)
        done.append(f"jit d={d} {name}")
        print(done[-1], f"{time.perf_counter() - START:.1f}", flush=True)
    return done


def check_sparse_sharded() -> list[str]:
    """A sparse Jacobian / Hessian of a sharded input, called eagerly: exact, its BCOO
    data and indices stay sharded over the devices, and the compiled program has
    the collectives of the compressed products alone (the read of the nonzeros
    exchanges nothing; NOTE [read-position layout])."""
    n = 256
    x = jax.device_put(jnp.linspace(-1.0, 1.0, n), NamedSharding(MESH, P("b")))
    residual = lambda v: v ** 2 * jnp.roll(v, 1) - jnp.sin(v)  # noqa: E731  periodic stencil
    loss = lambda v: jnp.sum(jnp.sin(v * jnp.roll(v, 1)))  # noqa: E731
    done = []
    for name, op, oracle in (
            ("jacobian", derivs.jacobian(residual, sparse=True), jax.jacfwd(residual)),
            ("hessian", derivs.hessian(loss, sparse=True), jax.hessian(loss))):
        out = op(x)
        np.testing.assert_allclose(out.todense(), oracle(local(x)), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
        assert out.data.sharding.spec == P("b"), (name, out.data.sharding)
        assert out.indices.sharding.spec == P("b", None), (name, out.indices.sharding)
        prepared = op.prepare(x)
        ev = prepared._evaluate
        (fn,) = [v for k, v in ev._jitted.items() if k[0] == "by_read"]
        ours = collectives(fn.lower((x,), ev._device).compile())
        seeds = jax.device_put(prepared.coloring.seeds(np.float64),
                               NamedSharding(MESH, P(None, "b")))
        g = residual if name == "jacobian" else jax.grad(loss)
        products = jax.jit(lambda v, s: jax.vmap(jax.linearize(g, v)[1])(s))
        assert ours == collectives(products.lower(x, seeds).compile()), (name, ours)
        done.append(f"sparse sharded {name}")
    return done


def check_explicit_mesh() -> list[str]:
    """The same transforms over a mesh whose axis is ``Explicit`` (shardings in the
    types, JAX's default for ``jax.make_mesh`` since 0.10), under ``jax.set_mesh``:
    equal to the unsharded run, gradients included; a sparse Jacobian stays sharded
    when called eagerly."""
    mesh = jax.make_mesh((8,), ("b",), axis_types=(jax.sharding.AxisType.Explicit,))
    d = 6
    ops = {k: v for k, v in cases(d).items() if not k.startswith("sparse")}
    x0 = np.asarray(points(d))
    want = {k: (jax.jit(g)(local(x0)),
                jax.jit(jax.grad(lambda xs, g=g: jnp.sum(jnp.sin(g(xs)))))(local(x0)))
            for k, g in ops.items()}
    g = lambda v: jnp.sin(v) * v ** 2  # noqa: E731  (jnp.roll needs out_sharding here)
    v0 = np.linspace(-1.0, 1.0, 256)
    jac_want = jax.jacfwd(g)(local(v0))
    done = []
    with jax.set_mesh(mesh):
        x = jax.device_put(x0, NamedSharding(mesh, P("b")))
        for name, op in ops.items():
            np.testing.assert_allclose(jax.jit(op)(x), want[name][0], rtol=1e-10, atol=1e-12,
                                       err_msg=name)
            got = jax.jit(jax.grad(lambda xs, op=op: jnp.sum(jnp.sin(op(xs)))))(x)
            np.testing.assert_allclose(got, want[name][1], rtol=1e-9, atol=1e-12, err_msg=name)
            done.append(f"explicit {name}")
        v = jax.device_put(v0, NamedSharding(mesh, P("b")))
        jac = derivs.jacobian(g, sparse=True)
        out = jac(v)
        assert out.data.sharding.spec == P("b"), out.data.sharding
        diag = np.diag(np.asarray(jac_want))
        np.testing.assert_allclose(jax.device_get(out.data), diag, rtol=1e-12)
        np.testing.assert_allclose(jax.jit(lambda v: jac(v).data)(v), diag, rtol=1e-12)
        done.append("explicit sparse jacobian")
    return done


def check_weight_gradients(d: int = 4) -> list[str]:
    """A training step inside ``jax.shard_map``: the points sharded, the weights
    replicated, ``jax.grad`` in the weights through every operator family and
    estimator (the reverse strategy's unit directions once failed to transpose:
    "varying manual axes to match"); oracle: the unsharded gradient."""
    k1, k2 = jax.random.split(jax.random.key(d))
    weights = (jax.random.normal(k1, (d, 16)) / np.sqrt(d), jax.random.normal(k2, (16,)))

    def u(w):
        return lambda z: jnp.tanh(z @ w[0]) @ w[1]

    key, sigma = jax.random.key(3), 0.3 * jnp.eye(d)[:, :2]
    ops = {
        "laplacian": lambda w, xs: derivs.laplacian(u(w), batch_axis=0)(xs),
        "laplacian reverse": lambda w, xs: jax.vmap(derivs.laplacian(u(w),
                                                                     strategy="reverse"))(xs),
        "hessian_diagonal reverse": lambda w, xs: jax.vmap(derivs.hessian_diagonal(
            u(w), strategy="reverse"))(xs),
        "hutchinson_laplacian": lambda w, xs: derivs.hutchinson_laplacian(
            u(w), samples=4, batch_axis=0)(key, xs),
        "hutchinson_laplacian coordinates": lambda w, xs: derivs.hutchinson_laplacian(
            u(w), samples=3, batch_axis=0, distribution="coordinates")(key, xs),
        "hutchinson_bilaplacian": lambda w, xs: derivs.hutchinson_bilaplacian(
            u(w), samples=4, batch_axis=0)(key, xs),
        "hutchinson_diffusion": lambda w, xs: derivs.hutchinson_diffusion(
            u(w), sigma, samples=4, batch_axis=0)(key, xs),
    }
    x = points(d)
    done = []
    for name, g in ops.items():
        step = jax.shard_map(lambda w, xs, g=g: jax.lax.psum(jnp.sum(jnp.sin(g(w, xs))), "b"),
                             mesh=MESH, in_specs=(P(), P("b")), out_specs=P())
        got = jax.jit(jax.grad(step))(weights, x)
        want = jax.jit(jax.grad(lambda w, xs, g=g: jnp.sum(jnp.sin(g(w, xs)))))(weights,
                                                                                 local(x))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
        done.append(f"weights {name}")
        print(done[-1], f"{time.perf_counter() - START:.1f}", flush=True)
    return done


def main() -> None:
    done = []
    # d = 3: coordinate groups; d = 6: a vmapped family of directions. The same
    # transform objects run inside shard_map, then under jit outside it: what one
    # context traced and cached must not leak into the other.
    for d, names in ((3, None), (6, FAMILY)):
        ops = {k: v for k, v in cases(d).items() if names is None or k in names}
        done += check_shard_map(d, ops)
        done += check_jit_sharding(d, ops)
    done += check_weight_gradients()
    done += check_sparse_sharded()
    done += check_explicit_mesh()
    for line in done:
        print(line, "ok")


if __name__ == "__main__":
    main()
