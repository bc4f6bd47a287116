"""python -m f3_jax.compare RUN_A RUN_B [...] --out DIR [--names a,b] [--split S] [--step N]

One report of several evaluated workdirs of the same stage, side by side: headline metrics in
columns, curves overlaid (stage 1: robustness against sigma, absolute and in units of each
run's latent std; latent channel statistics), tables one run after another (generability,
WER; stage 2: linear probes), every scalar. Each workdir must have been evaluated first
(`python -m f3_jax.eval`); its latest evaluated step is compared (or the last at or before
--step). Writes DIR/report.md, DIR/figures/ and DIR/comparison.json; reads nothing else and
writes nothing in the workdirs. Runs of different stages are refused. See
f3_jax/evaluation/compare.py.
"""

from __future__ import annotations

from absl import flags, logging

from f3_jax import cli
from f3_jax.errors import UsageError
from f3_jax.evaluation.compare import compare

_OUT = _NAMES = _SPLIT = _STEP = _TITLE = None


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program (tests import the module)."""
    global _OUT, _NAMES, _SPLIT, _STEP, _TITLE
    _OUT = flags.DEFINE_string("out", None, "Directory of the comparison report.")
    _NAMES = flags.DEFINE_list("names", None, "The runs' names (default: the workdirs' basenames).")
    _SPLIT = flags.DEFINE_string(
        "split", None, "Split (default: the first evaluated in every run)."
    )
    _STEP = flags.DEFINE_integer(
        "step", None, "Compare the last evaluation at or before this step."
    )
    _TITLE = flags.DEFINE_string("title", "", "The report's title.")


def main(argv) -> None:
    workdirs = list(argv[1:])
    if _OUT.value is None or len(workdirs) < 2:
        raise UsageError(
            "usage: python -m f3_jax.compare RUN_A RUN_B [...] --out DIR "
            "(two evaluated workdirs or more)"
        )
    path = compare(
        workdirs, _OUT.value, split=_SPLIT.value, names=_NAMES.value, step=_STEP.value,
        title=_TITLE.value,
    )  # fmt: skip
    logging.info("comparison of %d runs: %s", len(workdirs), path)
    print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
