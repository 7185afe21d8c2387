# Root conftest: applies to tests/ and to the doctests in src/derivs.
# float64 JAX arrays are needed by the oracle tests; doctest examples spell their
# dtypes explicitly so that they do not depend on this flag.
import jax

jax.config.update("jax_enable_x64", True)

# Scripts that tests/test_scaling.py runs in subprocesses (8 simulated devices, a
# gloo process group): importing them here would fix the device count too early.
collect_ignore_glob = ["tests/multidevice/*"]
