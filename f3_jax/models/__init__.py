"""models of f3_jax."""
