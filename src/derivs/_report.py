"""The one base of every explanation and the one hook ``derivs.explain`` calls.

Each transform explains itself: whatever derivs makes (a partial, an operator, a
sparse derivative) carries ``__derivs_explain__(*example_args)``, which returns a
:class:`Report`; ``derivs.explain`` calls that hook and knows no transform kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HOOK = "__derivs_explain__"


class Report:
    """An explanation: ``str()`` and ``repr()`` give the readable report
    (:meth:`text`); subclasses add their attributes (``strategy``, ``backend``,
    ``notes``, ...)."""

    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()


def attach(fn: Any, explain: Callable[..., Report]) -> Any:
    """``fn`` explained by ``explain`` (``fn.explain`` is the public spelling)."""
    setattr(fn, HOOK, explain)
    fn.explain = explain
    return fn


def hook(f: Any) -> Callable[..., Report] | None:
    return getattr(f, HOOK, None)
