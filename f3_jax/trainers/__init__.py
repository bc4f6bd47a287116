"""trainers of f3_jax."""
