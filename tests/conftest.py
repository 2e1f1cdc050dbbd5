"""Test session setup: CPU only, 8 fake devices, absl flags parsed.

Environment variables must be set before jax is first imported, which is why
this happens at conftest import time.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8").strip()

from absl import flags  # noqa: E402

# grain reads absl flags (e.g. in mp_prefetch); pytest never parses them.
flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def n_devices() -> int:
  return jax.device_count()
