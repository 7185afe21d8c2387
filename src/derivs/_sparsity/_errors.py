"""Warnings and errors of sparsity detection."""

import warnings


class SparsityWarning(UserWarning):
    """Detection met an op without a rule and treated it as dense over its inputs:
    the pattern is still correct (a superset), only less sparse."""


class UnsupportedOpError(ValueError):
    """Detection met an op without a rule and ``unknown='error'`` was asked for."""


def no_rule(what: str, unknown: str, seen: list[str]) -> None:
    """Report an op without a rule (``what``, e.g. "the JAX primitive 'top_k'") as
    ``unknown`` asks: raise, warn once per op, or stay silent. ``seen`` collects the
    ops given the dense rule (for ``explain``)."""
    if unknown == "error":
        raise UnsupportedOpError(
            f"sparsity detection has no rule for {what}. Pass unknown='warn' to treat it "
            "as dense over its inputs (a correct but less sparse pattern).")
    if what not in seen:
        seen.append(what)
        if unknown == "warn":
            warnings.warn(
                f"sparsity detection has no rule for {what}; its outputs are taken to "
                "depend on all of its inputs (correct, but the pattern may be denser than "
                "the true one).", SparsityWarning, stacklevel=4)
