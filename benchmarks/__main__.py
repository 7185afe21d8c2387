"""``python -m benchmarks {seeds,engine} [--quick]`` from the repository root."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=["seeds", "engine", "taylor", "sparse", "capture"],
                        help="seeds: both PROBLEMS.md problems; engine: PyTorch higher orders; "
                        "taylor: pure orders, Laplacian, Hessian diagonal; "
                        "sparse: sparse Jacobians/Hessians against asdex and sparsejac; "
                        "capture: nn.Modules and closures against the functional spelling")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (under 2 minutes)")
    args = parser.parse_args(argv)
    import importlib

    print(importlib.import_module(f"benchmarks.{args.suite}").run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
