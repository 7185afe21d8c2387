"""Beyond one device: 8 simulated JAX devices and a 2-process gloo DDP run, each in a
subprocess (a device count or a process group is fixed for the life of a process).
The scripts in ``tests/multidevice/`` hold the checks and their oracles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "multidevice"


def run(script: str, *args: str, env: dict | None = None) -> str:
    full = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, timeout=600, env=full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def test_every_jax_transform_on_8_devices():
    """Inside jax.shard_map (default checks, and jax.grad through it) and under jit
    with sharded points: equal to the unsharded run; per-point operators compile
    with no collective beyond f's own; sparse outputs of a sharded input stay
    sharded."""
    out = run("jax_mesh.py", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    passed = {line.rsplit(" ", 1)[0] for line in out.splitlines() if line.endswith(" ok")}
    for name in ("partial", "partial batch_axis", "partials", "value_and_partials",
                 "laplacian", "laplacian batch_axis", "hessian_diagonal", "bilaplacian",
                 "diffusion_operator", "differential_operator", "hutchinson_laplacian",
                 "sparse jacobian",
                 "sparse hessian"):
        assert f"shard_map d=3 {name}" in passed, name
    for name in ("laplacian", "laplacian batch_axis", "laplacian chunked",
                 "diffusion_operator"):  # the vmapped family of directions
        assert f"shard_map d=6 {name}" in passed, name
        assert f"jit d=6 {name}" in passed, name
    assert "jit d=3 bilaplacian" in passed
    # batch_size over sharded points: strided chunks keep each device's points local
    assert {"jit d=3 laplacian batch_size", "jit d=3 hutchinson coordinates batch_size"} <= passed
    # a training step: grad in replicated weights through every operator and estimator
    for name in ("laplacian", "laplacian reverse", "hessian_diagonal reverse",
                 "hutchinson_laplacian", "hutchinson_laplacian coordinates",
                 "hutchinson_bilaplacian", "hutchinson_diffusion"):
        assert f"weights {name}" in passed, name
    # eager sparse derivatives of a sharded input: sharded BCOO, no gather of the
    # compressed matrix
    assert {"sparse sharded jacobian", "sparse sharded hessian"} <= passed
    # an Explicit-sharding mesh (jax.make_mesh's default since JAX 0.10)
    assert {"explicit laplacian", "explicit partial batch_axis", "explicit bilaplacian",
            "explicit sparse jacobian"} <= passed


def test_torch_ddp_two_gloo_processes(tmp_path):
    """derivs inside a DistributedDataParallel loss on 127.0.0.1: the averaged
    gradient equals the single-process one. An FSDP module is a clear error."""
    env = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
    out = run("torch_ddp.py", str(tmp_path / "grads.pt"), env=env)
    assert "ddp ok" in out and "fsdp error ok" in out
