"""The JAX jaxpr jet engine (strategy ``"traced-jet"``).

``prepare`` traces ``f`` to a jaxpr for a call, or gives a ``Fallback`` with the
reason; ``execute`` interprets it with jets.
"""

from __future__ import annotations

from ._engine import FAMILY_AXIS as FAMILY_AXIS
from ._jet import one_hot as one_hot
from ._engine import Traced as Traced
from ._engine import Fallback as Fallback
from ._engine import execute as execute
from ._engine import map_units as map_units
from ._engine import prepare as prepare
from ._engine import run_reads as run_reads
from ._engine import run_directions as run_directions
from ._engine import run_family as run_family
