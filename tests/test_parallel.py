"""The logical-axis rules: which mesh axes each parameter dimension is split over."""

from __future__ import annotations

from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from f3_jax import parallel


def _mesh(data: int = 1, fsdp: int = 1, tensor: int = 1) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


CONV = ("conv_width", "conv_in", "conv_out")


def test_rules_table_places_divisible_dimensions():
    spec = parallel.logical_to_spec(CONV, (7, 1024, 512), _mesh(fsdp=8, tensor=2))
    assert spec == P(None, "fsdp", "tensor")


def test_fsdp_moves_to_another_dimension_it_divides():
    # 64 input channels at fsdp=128: the 1024 output channels take fsdp instead
    assert parallel.logical_to_spec(CONV, (7, 64, 1024), _mesh(fsdp=128)) == P(None, None, "fsdp")
    # ... next to the tensor axis already on that dimension
    spec = parallel.logical_to_spec(CONV, (7, 64, 1024), _mesh(fsdp=128, tensor=2))
    assert spec == P(None, None, ("tensor", "fsdp"))
    # SmolLM2's embedding (49152, 576) at fsdp=256: the vocabulary takes fsdp
    spec = parallel.logical_to_spec(("vocab", "embed"), (49152, 576), _mesh(fsdp=256))
    assert spec == P("fsdp", None)


def test_fallback_never_splits_layer_stacks_or_kernel_width():
    names = ("layers", "embed", "heads", "head_dim")
    assert parallel.logical_to_spec(names, (256, 576, 9, 64), _mesh(fsdp=256)) == P(
        None, None, None, None
    )
    assert parallel.logical_to_spec(CONV, (256, 3, 5), _mesh(fsdp=256)) == P(None, None, None)


def test_leaves_not_meant_for_fsdp_stay_replicated():
    assert parallel.logical_to_spec(("channels",), (1024,), _mesh(fsdp=8)) == P(None)
    assert parallel.logical_to_spec(("codebooks", "codes"), (4, 8192), _mesh(fsdp=8)) == P(
        None, None
    )
