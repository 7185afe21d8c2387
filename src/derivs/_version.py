"""The one place the version is written: ``pyproject.toml`` reads it from here
(``[tool.setuptools.dynamic]``), and so do ``derivs.__version__`` and
``python -m derivs --version``."""

__version__ = "0.1.0"
