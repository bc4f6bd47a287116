"""The f3_jax version string, recorded in every checkpoint."""

__version__ = "0.1.0"
