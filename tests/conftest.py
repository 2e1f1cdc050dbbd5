"""Test session setup: CPU only, 8 fake devices, absl flags parsed.

Environment variables must be set before jax is first imported, which is why
this happens at conftest import time.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
    _flags + " --xla_force_host_platform_device_count=8"
  ).strip()

from absl import flags  # noqa: E402

# grain reads absl flags (e.g. in mp_prefetch); pytest never parses them.
flags.FLAGS.mark_as_parsed()

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same small steps; a session-wide persistent
# compilation cache compiles each program once (the cached executable is
# the same program, so no result changes).
jax.config.update(
  "jax_compilation_cache_dir", tempfile.mkdtemp(prefix="agt_jax_test_xla_")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def n_devices() -> int:
  return jax.device_count()
