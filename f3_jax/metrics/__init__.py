"""metrics of f3_jax."""
