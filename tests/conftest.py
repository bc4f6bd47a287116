"""Test setup: CPU only, 8 host devices so that sharding tests can build real meshes.

The flags must be set before jax is imported anywhere, hence at the top of conftest.
Tests that want one device use `jax.devices()[:1]`.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
