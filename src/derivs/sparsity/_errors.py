"""Warnings and errors of sparsity detection."""


class SparsityWarning(UserWarning):
    """Detection met an op without a rule and treated it as dense over its inputs:
    the pattern is still correct (a superset), only less sparse."""


class UnsupportedOpError(ValueError):
    """Detection met an op without a rule and ``unknown='error'`` was asked for."""
