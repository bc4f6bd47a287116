"""The TPU chips a program can be compiled for, and the published numbers of each.

One table: HBM per chip, bf16 peak and HBM bandwidth. The roofline estimates of
f3_jax.aot.report divide by these, so each number names its source. They are the vendor's
published per-chip figures, not measurements.
"""

from __future__ import annotations

import dataclasses
import re

from f3_jax.errors import UsageError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the topology prefix: "v5e" in "v5e:16x16"
    hbm_bytes: int
    peak_bf16_flops: float  # per second
    hbm_bytes_per_s: float


# Sources: Google Cloud TPU system architecture pages, cloud.google.com/tpu/docs/<version>
# (read 2026-12): "Peak compute per chip (bf16)", "HBM capacity", "HBM bandwidth".
CHIPS: dict[str, Chip] = {
    # v4: 275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s (tpu/docs/v4).
    "v4": Chip("v4", 32 * GiB, 275e12, 1.2e12),
    # v5e: 197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s (tpu/docs/v5e).
    "v5e": Chip("v5e", 16 * GiB, 197e12, 0.819e12),
    # v5p: 459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s (tpu/docs/v5p).
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2.765e12),
    # v6e (Trillium): 918 TFLOP/s bf16, 32 GB HBM, 1640 GB/s (tpu/docs/v6e).
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1.64e12),
}


def chip_of(topology: str) -> Chip:
    """The chip of a topology name ("v5e:16x16" -> v5e); KeyError when not in the table."""
    return CHIPS[topology.split(":", 1)[0].strip().lower()]


_NAME = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+)*$")


def check_topology(topology: str) -> None:
    """A UsageError unless `topology` names a slice of a chip in the table (before any import
    of jax: the command line checks its flags first)."""
    if not _NAME.match(topology or ""):
        raise UsageError(
            f"--topology={topology!r}: expected <chip>:<shape> with chip v4, v5e, v5p or v6e, "
            "e.g. v5e:16x16, v5p:4x4x8, v6e:8x8"
        )
