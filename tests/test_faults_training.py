"""Faults inside a training phase, in-process: a diverging update, a NaN
loss, a full disk. What must hold: nothing non-finite is ever written, the
error names the step and the last good checkpoint, and that checkpoint is
the exact state of a clean run at its step (so a resume loses nothing else).
"""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agt_jax import config as config_lib
from agt_jax import models
from agt_jax.data import images, samplers
from agt_jax.errors import CheckpointWriteError, NonFiniteLossError
from agt_jax.runtime import make_mesh
from agt_jax.train import checkpoint as checkpoint_lib
from agt_jax.train import steps
from agt_jax.train.phase import TrainingPhase

rng = np.random.default_rng(0)
LABELS = (rng.random((64, 3)) < 0.4).astype(np.uint8)
SOURCE = images.ArrayImageSource(
  rng.integers(0, 255, (64, 40, 40, 3), dtype=np.uint8)
)
MODEL = models.Student(models.make_encoder("resnet_tiny"), num_classes=3)
TX = steps.adam(1e-3, 0.9, 0.99)


def plain(state, batch):
  return steps.plain_step(state, batch, model=MODEL, tx=TX)


def nan_params_at(update):
  """The ``update``-th update (1-based) leaves NaN parameters, while its
  loss (computed before the update) stays finite."""

  def fn(state, batch):
    new, m = plain(state, batch)
    bad = state["step"] == update - 1
    params = jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), new["params"])
    return {**new, "params": params}, m

  return fn


def nan_loss_at(step):
  def fn(state, batch):
    new, m = plain(state, batch)
    return new, {
      **m,
      "loss": jnp.where(state["step"] == step - 1, jnp.nan, m["loss"]),
    }

  return fn


def phase(
  workdir,
  step_fn=plain,
  *,
  total=6,
  ckpt_every=1,
  resume=False,
  log_every=1,
  **phase_kw,
):
  cfg = config_lib.get_config(
    "smoke",
    ckpt_every=ckpt_every,
    log_every=log_every,
    eval_every=0,
    keep_checkpoints=10,
  )
  state = steps.init_state(MODEL, TX, (32, 32, 3), seed=0)
  return TrainingPhase(
    "teacher",
    step_fn=step_fn,
    state=state,
    batches=samplers.instance_balanced_batches(LABELS, batch_size=16, seed=0),
    source=SOURCE,
    config=cfg,
    workdir=workdir,
    mesh=make_mesh(16),
    total_steps=total,
    resume=resume,
    **phase_kw,
  )


def saved_steps(workdir):
  d = workdir / "checkpoints" / "teacher"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def state_at(workdir, step):
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer().restore(
    workdir / "checkpoints" / "teacher" / str(step) / "state"
  )


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_diverging_update_is_not_saved_and_last_good_is_exact(tmp_path):
  clean = phase(tmp_path / "clean", total=3)
  clean.run()
  p = phase(tmp_path / "bad", nan_params_at(4))
  with pytest.raises(NonFiniteLossError) as e:
    p.run()
  msg = str(e.value)
  assert "the state after step 4 is not finite" in msg
  assert "last good checkpoint is step 3" in msg
  assert saved_steps(tmp_path / "bad") == [1, 2, 3]
  kept = state_at(tmp_path / "bad", 3)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(kept))
  # The kept checkpoint is the state before the diverging update, exactly.
  assert_trees_equal(kept, state_at(tmp_path / "clean", 3))


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
  p = phase(tmp_path, nan_loss_at(5), ckpt_every=2)
  with pytest.raises(
    NonFiniteLossError,
    match=r"non-finite loss \(nan\) at step 5; training "
    r"stopped, the last good checkpoint is step 4",
  ):
    p.run()
  assert saved_steps(tmp_path) == [2, 4]


def test_disk_full_on_save_names_the_last_checkpoint_and_resumes(
  tmp_path, monkeypatch
):
  clean = phase(tmp_path / "clean")
  clean.run()
  save = checkpoint_lib.Checkpoints.save

  def full_disk(self, step, *a, **k):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *a, **k)

  monkeypatch.setattr(checkpoint_lib.Checkpoints, "save", full_disk)
  with pytest.raises(CheckpointWriteError) as e:
    phase(tmp_path / "w", ckpt_every=2).run()
  assert "could not write the checkpoint of step 4" in str(e.value)
  assert "No space left on device" in str(e.value)
  assert "last good checkpoint is step 2" in str(e.value)
  monkeypatch.setattr(checkpoint_lib.Checkpoints, "save", save)
  # Space freed: --resume continues from step 2 to the same end state.
  resumed = phase(tmp_path / "w", ckpt_every=2, resume=True)
  assert resumed.start == 2
  resumed.run()
  assert_trees_equal(
    state_at(tmp_path / "w", 6), state_at(tmp_path / "clean", 6)
  )


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _largest_file(step_dir):
  return max(
    (f for f in step_dir.rglob("*") if f.is_file()),
    key=lambda f: f.stat().st_size,
  )


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_latest_checkpoint_is_skipped_for_the_one_before(
  tmp_path, capfd, damage
):
  """Bytes flipped in (or a file cut short of) the newest checkpoint: the
  resume says so in one line and continues from the previous checkpoint,
  whose state is exactly the clean run's at that step."""
  clean = phase(tmp_path / "clean", total=4)
  clean.run()
  want3 = checkpoint_lib.Checkpoints(tmp_path / "clean/checkpoints/teacher")
  ref = want3.restore_state(3, clean.state)
  want3.close()

  wd = tmp_path / "w"
  phase(wd, total=4).run()
  ckdir = wd / "checkpoints" / "teacher"
  assert (wd / "checkpoints" / "teacher.digests" / "4.json").exists()
  target = _largest_file(ckdir / "4")
  data = bytearray(target.read_bytes())
  if damage == "flip":
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
  else:
    target.write_bytes(bytes(data[: len(data) // 2]))
  resumed = phase(wd, total=4, resume=True)
  assert resumed.start == 3
  err = capfd.readouterr().err
  line = [ln for ln in err.splitlines() if "skipping checkpoint 4" in ln]
  assert len(line) == 1, err
  assert ("changed since it was written" in line[0]) == (damage == "flip")
  assert ("bytes, " in line[0]) == (damage == "truncate")
  for a, b in zip(_leaves(resumed.state), _leaves(ref)):
    np.testing.assert_array_equal(a, b)
  resumed.run()  # and it finishes from there


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  from agt_jax.errors import CheckpointDamagedError

  wd = tmp_path / "w"
  phase(wd, total=2).run()
  for step in (1, 2):
    f = _largest_file(wd / "checkpoints" / "teacher" / str(step))
    f.write_bytes(f.read_bytes()[:10])
  with pytest.raises(CheckpointDamagedError, match="no intact checkpoint"):
    phase(wd, total=2, resume=True)


def test_an_unsealed_checkpoint_that_does_not_restore_is_skipped(tmp_path):
  """A checkpoint without digests (a kill right after its save finished):
  a restore failure decides."""
  wd = tmp_path / "w"
  phase(wd, total=3).run()
  (wd / "checkpoints" / "teacher.digests" / "3.json").unlink()
  step_dir = wd / "checkpoints" / "teacher" / "3"
  for f in step_dir.rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(b"\0" * 8)
  assert phase(wd, total=3, resume=True).start == 2
