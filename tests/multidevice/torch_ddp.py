"""derivs inside a DistributedDataParallel loss, 2 gloo processes on 127.0.0.1; run
by ``tests/test_scaling.py`` in a subprocess.

Oracle: the single-process gradient of the same loss over all the points (DDP
averages the ranks' gradients, and each rank's loss is a mean over its half).
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import derivs

torch.set_default_dtype(torch.float64)
D, N = 4, 16


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def loss(net, x: torch.Tensor) -> torch.Tensor:
    """A PINN-style loss: the residual of ``Lap u + du/dx0 = sum sin x`` from derivs,
    and a data term through the wrapper itself. derivs differentiates the wrapped
    module (``net.module``); the wrapper's own forward, run once per step, is what
    makes DDP average every parameter's gradient, the derivs terms' included."""
    data = ((net(x).squeeze(-1) - 1) ** 2).mean()
    inner = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    u = lambda z: inner(z).squeeze(-1)  # noqa: E731
    lap = derivs.laplacian(u, batch_axis=0)(x)
    ux = derivs.partial(u, 0, batch_axis=0)(x)
    return ((lap + ux - torch.sin(x).sum(-1)) ** 2).mean() + data


def points() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1))


def worker(rank: int, port: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        net = torch.nn.parallel.DistributedDataParallel(model())
        x = points().chunk(world)[rank]
        for _ in range(2):  # twice: a second step reuses what the first captured
            net.zero_grad()
            loss(net, x).backward()
        if rank == 0:
            torch.save([p.grad for p in net.parameters()], out)
        # FSDP is not supported yet: a clear error, before FSDP's state is touched
        from torch.distributed.fsdp import fully_shard

        sharded = fully_shard(model())
        try:
            loss(sharded, x)
        except ValueError as e:
            assert "sharded by FSDP" in str(e) and "DistributedDataParallel" in str(e), e
        else:
            raise AssertionError("derivs accepted an FSDP module")
    finally:
        # both ranks reach teardown before either closes its gloo pairs: a rank that
        # destroys the group while its peer still talks to it can abort (SIGABRT)
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: str) -> None:
    world = 2
    mp.spawn(worker, args=(free_port(), world, out), nprocs=world, join=True)
    got = torch.load(out)
    net = model()
    loss(net, points()).backward()
    for g, p in zip(got, net.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-13)
    print("fsdp error ok")
    print("ddp ok", max(float((g - p.grad).abs().max()) for g, p in zip(got, net.parameters())))


if __name__ == "__main__":
    main(sys.argv[1])
