"""MetricWriter's history after a resume, and the mesh's batch check."""

import json

import jax
import pytest

from agt_jax.errors import ConfigError
from agt_jax.runtime import MetricWriter, make_mesh


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_truncate_drops_the_resumed_phase_after_the_restored_step(tmp_path):
  w = MetricWriter(tmp_path / "metrics.jsonl")
  for step in (2, 4, 6):
    w.write({"phase": "warmup", "step": step, "loss": 1.0})
  for step in (2, 4, 6, 8):
    w.write({"phase": "teacher", "step": step, "loss": 0.5})
  w.write({"phase": "eval_teacher", "step": 4, "final": 0.1})
  w.write({"phase": "eval_teacher", "step": 8, "final": 0.2})
  with open(w.path, "a") as f:  # a kill in the middle of a write
    f.write('{"phase": "teacher", "st')
  w.truncate("teacher", 4)
  got = [(r["phase"], r["step"]) for r in _lines(w.path)]
  assert got == [
    ("warmup", 2),
    ("warmup", 4),
    ("warmup", 6),
    ("teacher", 2),
    ("teacher", 4),
    ("eval_teacher", 4),
  ]
  assert not list(tmp_path.glob("*.tmp"))


def test_truncate_without_a_file_writes_nothing(tmp_path):
  MetricWriter(tmp_path / "metrics.jsonl").truncate("teacher", 0)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_make_mesh_names_batch_sizes_that_split():
  n = jax.device_count()
  assert make_mesh(4 * n, 2 * n).devices.size == n
  if n == 1:
    pytest.skip("every batch splits over one device")
  with pytest.raises(
    ConfigError, match=r"batch_size=.*multiple of " rf"{n}.*{2 * n}"
  ):
    make_mesh(2 * n + 1)


def _phase(workdir, *, step_fn, guard, log_every=4, total=8, extra_args=()):
  from tests.test_faults_training import MODEL, TX, phase

  return phase(
    workdir,
    step_fn(MODEL, TX),
    total=total,
    ckpt_every=log_every,
    log_every=log_every,
    guard=guard,
    extra_args=extra_args,
  )


def _plain(model, tx):
  from agt_jax.train import steps

  return lambda state, batch, *_: steps.plain_step(
    state, batch, model=model, tx=tx
  )


def test_no_host_transfer_between_logging_steps(tmp_path):
  """The steps between logging steps run under
  ``jax.transfer_guard("disallow")``: any implicit host<->device copy
  (reading a loss, a host scalar into the step) would raise."""
  p = _phase(tmp_path, step_fn=_plain, guard="disallow")
  out = p.run()
  assert out["steps"] == 8
  recs = _lines(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == [4, 8]
  assert all(abs(r["loss_mean"]) < 10 for r in recs)


def test_the_transfer_guard_catches_a_host_input(tmp_path):
  """Control: the same loop with a host array passed to the step each
  time (an implicit transfer) is stopped by the guard."""
  import numpy as np

  def scaled(model, tx):
    plain = _plain(model, tx)

    def fn(state, batch, scale):
      new, m = plain(state, batch)
      return new, {**m, "loss": m["loss"] * scale}

    return fn

  p = _phase(
    tmp_path,
    step_fn=scaled,
    guard="disallow",
    extra_args=(np.float32(1.0),),
  )
  with pytest.raises(Exception, match="[Dd]isallowed host-to-device"):
    p.run()


def test_a_nan_inside_a_logging_interval_names_its_step(tmp_path):
  """The finiteness check reads the on-device accumulator only at logging
  steps, and still names the first non-finite step, not the logging one."""
  import jax.numpy as jnp

  from agt_jax.errors import NonFiniteLossError

  def nan_at_3(model, tx):
    plain = _plain(model, tx)

    def fn(state, batch):
      new, m = plain(state, batch)
      bad = (state["step"] == 2) | (state["step"] == 3)
      return new, {**m, "loss": jnp.where(bad, jnp.nan, m["loss"])}

    return fn

  p = _phase(tmp_path, step_fn=nan_at_3, guard=None)
  with pytest.raises(
    NonFiniteLossError,
    match=r"non-finite loss \(nan\) at step 3; .*no checkpoint was written",
  ):
    p.run()
