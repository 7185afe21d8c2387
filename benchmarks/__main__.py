"""``python -m benchmarks {seeds,engine} [--quick]`` from the repository root."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=["seeds", "engine", "taylor", "sparse", "capture", "scaling",
                                 "zoo", "layout", "highdim"],
                        help="seeds: both docs/problems.md problems; engine: PyTorch higher orders; "
                        "taylor: pure orders, Laplacian, Hessian diagonal; "
                        "sparse: sparse Jacobians/Hessians against asdex and sparsejac; "
                        "capture: nn.Modules and closures against the functional spelling; "
                        "scaling: batch_axis against vmap, sparse outputs of sharded inputs; "
                        "zoo: operators on every architecture of the zoo; "
                        "layout: the direction layout by D, points and width; "
                        "highdim: PINN steps at D = 1e2..1e5 against STDE and SDGD")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (under 2 minutes)")
    parser.add_argument("--out", default=None,
                        help="folder for the results (default benchmarks/out, untracked; "
                        "benchmarks/results holds the committed references)")
    parser.add_argument("--device", default="cpu",
                        help="taylor only: run its device sections on this PyTorch device "
                        "(e.g. cuda), writing taylor-<device>.md")
    args = parser.parse_args(argv)
    import importlib
    from pathlib import Path

    from . import _harness

    if args.out is not None:
        _harness.RESULTS = Path(args.out)

    module = importlib.import_module(f"benchmarks.{args.suite}")
    if args.device != "cpu":
        if args.suite != "taylor":
            parser.error("--device is for the taylor suite")
        print(module.run(args.quick, device=args.device))
    else:
        print(module.run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
