"""The FGADR multi-task pretraining: its loss and Dice by hand, the loss
falls, and the checkpoint is an ``--init`` for the classifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agt_jax import models
from agt_jax.data import fgadr
from agt_jax.train import multitask, steps


def test_dice_by_hand():
  p = np.zeros((2, 4, 4, 3), bool)
  g = np.zeros((2, 4, 4, 3), bool)
  p[0, :2, :2, 0] = True  # 4 predicted
  g[0, :2, :1, 0] = True  # 2 true, both found
  g[1, 0, 0, 1] = True  # lesion 1: missed
  got = multitask.dice_scores(p, g, ("a", "b", "c"))
  assert got["a"] == pytest.approx(2 * 2 / (4 + 2))
  assert got["b"] == 0.0 and np.isnan(got["c"])


def test_loss_matches_a_float64_hand_computation():
  rng = np.random.default_rng(0)
  seg = rng.normal(size=(2, 3, 3, 2))
  grade = rng.normal(size=(2, 5))
  m = (rng.random((2, 3, 3, 2)) < 0.3).astype(np.float64)
  y = np.array([1, 4])
  with jax.enable_x64(True):
    loss, parts = multitask.multitask_loss(
      jnp.asarray(seg), jnp.asarray(grade), jnp.asarray(m), jnp.asarray(y)
    )
  p = 1 / (1 + np.exp(-seg))
  bce = -(m * np.log(p) + (1 - m) * np.log(1 - p)).mean((0, 1, 2))
  dice = (2 * (p * m).sum((0, 1, 2)) + 1) / (
    p.sum((0, 1, 2)) + m.sum((0, 1, 2)) + 1
  )
  logp = grade - np.log(np.exp(grade).sum(1, keepdims=True))
  ce = -logp[np.arange(2), y].mean()
  assert float(loss) == pytest.approx(bce.mean() + (1 - dice).mean() + ce)
  assert float(parts["grade_ce"]) == pytest.approx(ce)


def test_loss_falls_in_one_compiled_step(tmp_path):
  t, x, m = fgadr.load(
    "fgadr-synth", size=48, cache_dir=tmp_path, max_images=16
  )
  src = fgadr.StackedSource(x, m, np.arange(16))
  batch = {
    "image": np.stack([src[i][8:40, 8:40] for i in range(16)]),
    "labels": t.grade_onehot,
  }
  enc = models.make_encoder("resnet_tiny", pool=False)
  model = models.LesionGradeNet(enc)
  tx = optax.adam(3e-3)
  state = steps.init_state(model, tx, (32, 32, 3), seed=0)
  assert set(state["params"]) == {
    "encoder",
    "decoder_conv",
    "decoder_out",
    "grade_head",
  }
  traces = []

  def fn(s, b):
    traces.append(1)
    return multitask.multitask_step(s, b, model=model, tx=tx)

  step = jax.jit(fn, donate_argnums=0)
  losses = []
  for _ in range(30):
    state, met = step(state, batch)
    losses.append(float(met["loss"]))
  assert len(traces) == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


def test_pretrain_command_writes_an_init_and_reuses_it(tmp_path, capsys):
  from agt_jax.models.weights import load_init
  from experiments import pretrain

  wd = tmp_path / "fg"
  args = [
    "--task", "fgadr", "--preset", "smoke", "--workdir", str(wd),
    "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "max_images=40",
  ]  # fmt: skip
  assert pretrain.run(args) == 0
  out = capsys.readouterr().out
  assert '"synthetic": true' in out and "grade_kappa" in out
  res = __import__("json").loads((wd / "results.json").read_text())
  assert set(res["test"]["dice"]) == set(fgadr.LESIONS)
  assert res["test"]["images"] == 8 and res["fit_images"] == 32
  # The checkpoint is an --init: a classifier's encoder gets its weights.
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  state = steps.init_state(student, optax.adam(1e-3), (32, 32, 3), seed=3)
  loaded = load_init(res["init"], state)
  import orbax.checkpoint as ocp

  last = max(int(d.name) for d in (wd / "checkpoints" / "multitask").iterdir())
  raw = ocp.StandardCheckpointer().restore(
    (wd / "checkpoints" / "multitask" / str(last) / "state").absolute()
  )
  ckpt = raw["params"]["encoder"]
  assert jax.tree.all(
    jax.tree.map(
      lambda a, b: bool(np.array_equal(a, b)),
      loaded["params"]["encoder"],
      ckpt,
    )
  )
  assert not np.array_equal(
    jax.tree.leaves(loaded["params"]["encoder"])[0],
    jax.tree.leaves(state["params"]["encoder"])[0],
  )
  assert pretrain.run(args) == 0
  assert "finished, reused" in capsys.readouterr().out
