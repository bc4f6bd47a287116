"""The input side: corpus builders, the prepare CLI, sources and Grain pipelines.

The pipeline functions are imported lazily so that the CLIs and their worker processes do not
pay for importing grain.
"""

from f3_jax.data.errors import DataError

__all__ = ["DataError", "ensure_dataset", "train_dataset", "eval_batches", "check_eval_split"]


def __getattr__(name):
    if name in ("ensure_dataset", "train_dataset", "eval_batches"):
        from f3_jax.data import pipeline

        return getattr(pipeline, name)
    if name == "check_eval_split":
        from f3_jax.data.evaluation import check_eval_split

        return check_eval_split
    raise AttributeError(name)
