"""Command line: ``python -m derivs demo`` runs both seed problems."""

import argparse
import sys

from ._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m derivs",
        description="derivs: exactly the derivatives you ask for, for JAX and PyTorch.")
    parser.add_argument("--version", action="version", version=f"derivs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser(
        "demo", help="check and time both seed problems (docs/problems.md)",
        description="Checks the values of both seed problems against their expected numbers "
                    "and times derivs against the alternatives, in this run. Needs jax and "
                    "torch (pip install 'derivs[all]').")
    return parser


def _main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help()
        return 2
    from ._demo import main

    return main([])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
