"""f3_jax's tests: a regular package, so that a `tests` package that another distribution
installs into site-packages (descript-audio-codec has one) cannot shadow this one."""
