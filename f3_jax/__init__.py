"""f3_jax: the F3 audio tokenizer in JAX/Flax (autoencoder, representations, generation).

tok = f3_jax.Tokenizer.from_checkpoint("runs/ae_demo")       # encode, decode, represent
gen, params = f3_jax.Generator.from_workdir("runs/flow_demo")  # speech from text
"""

from f3_jax.version import __version__

__all__ = ["Generator", "Tokenizer", "__version__"]


def __getattr__(name):
    # Lazy so that `import f3_jax` stays light (data tools and CLIs need no model code).
    if name == "Tokenizer":
        from f3_jax.inference.tokenizer import Tokenizer

        return Tokenizer
    if name == "Generator":
        from f3_jax.inference.generator import Generator

        return Generator
    raise AttributeError(name)
