"""derivs: exactly the derivatives you ask for, and nothing more, for JAX and PyTorch.

    >>> import jax.numpy as jnp, derivs
    >>> derivs.partial(jnp.prod, (0, 2, 4))(jnp.arange(1.0, 6.0, dtype=jnp.float32))
    Array(8., dtype=float32)
"""

from ._api import Explanation as Explanation
from ._api import explain as explain
from ._api import partial as partial
from ._api import partials as partials
from ._api import value_and_partials as value_and_partials
from ._operators import differential_operator as differential_operator
from ._operators import hessian_diagonal as hessian_diagonal
from ._operators import laplacian as laplacian

__version__ = "0.1.0"
