import jax


def test_eight_fake_cpu_devices():
  assert jax.default_backend() == "cpu"
  assert jax.device_count() == 8


def test_absl_flags_parsed():
  from absl import flags

  assert flags.FLAGS.is_parsed()
