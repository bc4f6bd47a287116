"""f3_jax: the F3 audio tokenizer in JAX/Flax (autoencoder, representations, generation)."""

from f3_jax.version import __version__

__all__ = ["Tokenizer", "__version__"]


def __getattr__(name):
    # Lazy so that `import f3_jax` stays light (data tools and CLIs need no model code).
    if name == "Tokenizer":
        from f3_jax.tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(name)
