"""The one place the version is written; setup and ``vyrecache.__version__`` read it."""

__version__ = "0.1.0"
