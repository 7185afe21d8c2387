"""Command line: ``python -m derivs demo`` runs both seed problems."""

import sys


def _main(argv: list[str]) -> int:
    if argv[:1] != ["demo"]:
        print("usage: python -m derivs demo   (runs both seed problems of PROBLEMS.md)")
        return 2
    from ._demo import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
