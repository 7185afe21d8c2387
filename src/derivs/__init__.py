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
from ._collapsed import bilaplacian as bilaplacian
from ._collapsed import diffusion_operator as diffusion_operator
from ._errors import StateError as StateError
from ._estimators import hutchinson_bilaplacian as hutchinson_bilaplacian
from ._estimators import hutchinson_diffusion as hutchinson_diffusion
from ._estimators import hutchinson_laplacian as hutchinson_laplacian
from ._operators import differential_operator as differential_operator
from ._operators import hessian_diagonal as hessian_diagonal
from ._operators import laplacian as laplacian
from ._sparse import Prepared as Prepared
from ._sparse import SparseDerivative as SparseDerivative
from ._sparse import SparseExplanation as SparseExplanation
from ._sparse import hessian as hessian
from ._sparse import jacobian as jacobian
from ._sparse import sparsity as sparsity
from ._sparsity._coloring import Coloring as Coloring
from ._sparsity._errors import SparsityWarning as SparsityWarning
from ._sparsity._errors import UnsupportedOpError as UnsupportedOpError
from ._sparsity._pattern import Pattern as Pattern
from ._value_and import value_and_hessian as value_and_hessian
from ._value_and import value_and_jacobian as value_and_jacobian
from ._version import __version__ as __version__

# The public API; subpackages (``derivs.core``, ``derivs.backends``,
# ``derivs._sparsity``) are private. (The sparse machinery lives in ``_sparsity`` so
# that the function ``derivs.sparsity`` shadows no package: ``import
# derivs._sparsity._coloring`` works.)
__all__ = [
    "Coloring",
    "Explanation",
    "Pattern",
    "Prepared",
    "SparseDerivative",
    "SparseExplanation",
    "SparsityWarning",
    "StateError",
    "UnsupportedOpError",
    "bilaplacian",
    "differential_operator",
    "diffusion_operator",
    "explain",
    "hessian",
    "hessian_diagonal",
    "hutchinson_bilaplacian",
    "hutchinson_diffusion",
    "hutchinson_laplacian",
    "jacobian",
    "laplacian",
    "partial",
    "partials",
    "sparsity",
    "value_and_hessian",
    "value_and_jacobian",
    "value_and_partials",
]
