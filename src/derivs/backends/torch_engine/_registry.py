"""The PyTorch engine's one rule registry: ATen overload -> rule, for each of the
engine's two interpreters over a captured ATen graph.

- ``JET_RULES`` (filled in ``_rules.py`` with :func:`defjet`, read by ``_interpret.py``):
  lazy jets that answer any request. ``rule(ctx, node, J) -> Jet``; an op with no
  entry runs the generic rule (nested JVPs of the op, exact at every order).
  The capture reads this table too: an op with a rule is kept whole instead of
  being decomposed.
- ``FAMILY_RULES`` (filled in ``_family.py`` with :func:`deffamily`): the stacked rows of
  a collapsed operator. ``rule(ctx, target, jets, out, kw, want_c) -> _Jet``; each
  entry also says how the op is linear, which decides whose lower coefficients a
  program must keep (``_family._lower_readers``).
- ``SERIES_RULES`` (filled in ``_pointwise.py`` with :func:`defseries`): pointwise ops
  on univariate series, ``rule(args, kwargs, m) -> Series``. The family program
  fuses every region of such ops fed by one value into one elementwise function
  (NOTE [elementwise regions] in ``_pointwise.py``).

A rule raises :class:`Unsupported` when it cannot differentiate a call exactly; the
engine then falls back and ``explain`` says why. Like JAX's ``ad.primitive_jvps``,
the tables are filled by the modules that write the rules, and this module imports
nothing of the engine, so readers and writers meet here without an import circle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal


class Unsupported(Exception):
    """f uses something the engine cannot differentiate exactly; fall back."""


JetRule = Callable[..., Any]
JET_RULES: dict[object, JetRule] = {}
# Ops whose value has no derivative although they read a differentiated tensor
# (zeros_like, sign, floor, comparisons ...): every interpreter takes them as
# constants (filled in ``_rules.py``).
CONSTANT_OPS: set = set()


def defjet(*targets: object) -> Callable[[JetRule], JetRule]:
    """Decorator: ``fn`` is the jet rule of every ATen overload in ``targets``."""
    def deco(fn: JetRule) -> JetRule:
        for t in targets:
            if t in JET_RULES:
                raise ValueError(f"a PyTorch jet rule for {t} is registered twice")
            JET_RULES[t] = fn
        return fn
    return deco


Linearity = Literal["joint", "each", "first"] | None


@dataclasses.dataclass(frozen=True)
class FamilyRule:
    """A family rule and how its op is linear:

    - ``"joint"``: linear in all its differentiated arguments together (add,
      view, sum): every coefficient is the op of the same coefficient, so the
      collapsed one alone needs no lower ones;
    - ``"each"``: linear in each argument alone (mul, mm): as ``"joint"`` with
      one differentiated argument, nonlinear with more, and with the same one
      twice (``t * t`` is a square);
    - ``"first"``: linear in the first argument only (a division): as
      ``"joint"`` when only the first is differentiated;
    - ``None``: nonlinear (tanh, pow).

    ``sequence``: the op takes a list of tensors first (cat, stack)."""

    rule: Callable[..., Any]
    linear: Linearity = None
    sequence: bool = False

    def reads_lower_coefficients(self, positions: list[int]) -> bool:
        """Whether the op's coefficients need its inputs' lower ones, given the
        positions of its differentiated arguments (with repeats)."""
        if self.linear == "each":
            return len(positions) > 1
        if self.linear == "first":
            return any(p != 0 for p in positions)
        return self.linear is None


FAMILY_RULES: dict[object, FamilyRule] = {}


def deffamily(*targets: object, linear: Linearity = None,
              sequence: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` is the family rule of every ATen overload in ``targets``."""
    def deco(fn: Callable) -> Callable:
        for t in targets:
            if t in FAMILY_RULES:
                raise ValueError(f"a PyTorch family rule for {t} is registered twice")
            FAMILY_RULES[t] = FamilyRule(fn, linear, sequence)
        return fn
    return deco


@dataclasses.dataclass(frozen=True)
class SeriesRule:
    """A pointwise op's rule on univariate series, and which calls it takes
    (``accepts(kwargs)``: e.g. ``div`` without a rounding mode)."""

    rule: Callable[..., Any]
    accepts: Callable[[dict], bool] | None = None

    def takes(self, kwargs: dict) -> bool:
        return self.accepts is None or self.accepts(kwargs)


SERIES_RULES: dict[object, SeriesRule] = {}


def defseries(*targets: object, accepts: Callable[[dict], bool] | None = None
              ) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` is the univariate series rule of every ATen overload in
    ``targets`` (pointwise ops only: output element i depends on input element i)."""
    def deco(fn: Callable) -> Callable:
        for t in targets:
            if t in SERIES_RULES:
                raise ValueError(f"a PyTorch series rule for {t} is registered twice")
            SERIES_RULES[t] = SeriesRule(fn, accepts)
        return fn
    return deco


# ``CLOSED_FORMS`` (filled in ``_closed_forms.py`` with :func:`defclosed`): activations
# that the capture decomposes (GELU, ELU, Softplus, Mish ...), as closed forms of
# their derivatives. ``rule(x, m, *params, **kwargs) -> (y, [phi'(x), ..., phi^(m)(x)])``
# with ``y`` the op's own value at ``x``. The capture tags the ops each decomposition
# emits (NOTE [closed forms] in ``_closed_forms.py``) and the family program takes
# a tagged block whole instead of differentiating its ops one by one.
CLOSED_FORMS: dict[object, Callable[..., Any]] = {}


def defclosed(*targets: object) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` is the closed form of every ATen overload in ``targets``."""
    def deco(fn: Callable) -> Callable:
        for t in targets:
            if t in CLOSED_FORMS:
                raise ValueError(f"a PyTorch closed form for {t} is registered twice")
            CLOSED_FORMS[t] = fn
        return fn
    return deco
