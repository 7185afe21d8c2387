"""The JAX engine's one rule registry: primitive name -> jet rule.

A rule is ``rule(interpreter, primitive, params, input_jets) -> output jets``. The
table is filled in ``_rules.py`` through the helpers below, as JAX's own
``ad.deflinear`` / ``ad.defbilinear`` fill its JVP table; a primitive with no entry
runs the interpreter's JVP recursion (exact at every order, the general fallback).
This module imports nothing of the engine, so the interpreter reads the table and
``_rules.py`` fills it without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = Callable[[Any, Any, dict, list], list]


class Unsupported(Exception):
    """f uses something the engine cannot differentiate exactly; fall back."""


RULES: dict[str, Rule] = {}
# Unsupported primitives: name -> why (the engine falls back before interpreting).
UNSUPPORTED: dict[str, str] = {}
# NOTE [derivatives from the output] (``core._formulas``): phi' as a function of the
# output's jet, for the chain rule at orders >= 3.
OUTPUT_DERIVATIVES: dict[str, Callable] = {}


def defrule(*names: str) -> Callable[[Rule], Rule]:
    """Decorator: ``fn`` is the rule of every primitive in ``names``."""
    def deco(fn: Rule) -> Rule:
        for n in names:
            if n in RULES:
                raise ValueError(f"a JAX jet rule for {n!r} is registered twice")
            RULES[n] = fn
        return fn
    return deco


def deflinear(*names: str) -> None:
    """Primitives jointly linear in their floating-point operands (integer operands:
    indices, shapes, are held fixed): coefficient-wise, one bind per coefficient."""
    defrule(*names)(lambda it, prim, params, jets: it.linear(prim, params, jets))


def defbilinear(*names: str, product: Callable | None = None) -> None:
    """Primitives bilinear in their two operands: the Leibniz rule.
    ``product(prim, params) -> (x, y) -> array`` multiplies coefficients that may be
    narrow (``_jet.Narrow``); None binds the primitive on dense coefficients."""
    defrule(*names)(lambda it, prim, params, jets: it.bilinear(prim, params, jets, product))


def defelementwise(*names: str, by_output: Callable | None = None) -> None:
    """Elementwise nonlinear primitives: the chain rule, with ``d phi / d x_i`` from
    JAX's own JVP of the primitive (so every JAX elementwise primitive is covered
    with JAX's formulas), or from ``by_output(output_jet)`` when given."""
    defrule(*names)(lambda it, prim, params, jets: it.elementwise_rule(prim, params, jets))
    for n in names:
        if by_output is not None:
            OUTPUT_DERIVATIVES[n] = by_output


def defunsupported(*names: str, reason: str) -> None:
    """Primitives the engine cannot differentiate exactly: it falls back, saying why."""
    for n in names:
        UNSUPPORTED[n] = reason
