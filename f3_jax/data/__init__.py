"""data of f3_jax."""
