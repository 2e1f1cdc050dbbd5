"""The GBG multi-objective step (paper 004, Algorithm 2)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from agt_jax import grouping, mgda, models
from agt_jax.train import gbg, steps

GROUPS = ((0, 3), (1,), (2, 4, 5))


class MLPEncoder(nn.Module):
  """A tiny encoder that computes in the dtype of its input (float64 under
  x64), for exact references."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = x.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    x = x / 255.0
    return nn.tanh(
      nn.Dense(7, param_dtype=x.dtype)(
        nn.tanh(nn.Dense(9, param_dtype=x.dtype)(x))
      )
    )


class F64Student(nn.Module):
  """:class:`agt_jax.models.Student`'s layout (``encoder``, ``head``)
  without its float32 cast of the logits."""

  encoder: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = self.encoder(x, train=train)
    return nn.Dense(self.num_classes, param_dtype=f.dtype, name="head")(f), f


def _batch(seed, n=12, c=6, softmax=False):
  rng = np.random.default_rng(seed)
  labels = (
    np.eye(c, dtype=np.uint8)[rng.integers(c, size=n)]
    if softmax
    else (rng.random((n, c)) < 0.4).astype(np.uint8)
  )
  return {
    "image": rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8),
    "labels": labels,
  }


def _reference(state, batch, model, groups, objective):
  """Each group's loss differentiated on its own (one ``jax.grad`` per
  group, no batching), and MGDA on the stacked encoder gradients."""
  member = jnp.asarray(grouping.membership(groups, model.num_classes))
  labels = gbg._labels(batch["labels"], objective)

  def loss_g(params, g):
    logits, _ = model.apply({"params": params}, batch["image"])
    return gbg.group_losses(logits, labels, member, objective=objective)[g]

  grads = [jax.grad(loss_g)(state["params"], g) for g in range(len(groups))]
  flat = jnp.stack(
    [jax.flatten_util.ravel_pytree(g["encoder"])[0] for g in grads]
  )
  alpha, _ = mgda.min_norm_weights(flat)
  return alpha, grads


@pytest.mark.parametrize("objective", ["bce", "softmax"])
def test_alpha_and_update_match_per_group_gradients_in_float64(objective):
  with jax.enable_x64(True):
    model = F64Student(MLPEncoder(), num_classes=6)
    tx = optax.sgd(1.0)  # the update is minus the gradient
    state = steps.init_state(model, tx, (4, 4, 3), seed=1)
    batch = _batch(2, softmax=objective == "softmax")
    opts = gbg.MOOOptions(groups=GROUPS, objective=objective)
    new, m = jax.jit(
      lambda s, b: gbg.moo_step(s, b, model=model, tx=tx, options=opts)
    )(state, batch)
    alpha, grads = _reference(state, batch, model, GROUPS, objective)
    assert m["alpha"].dtype == jnp.float64
    np.testing.assert_allclose(m["alpha"], alpha, rtol=1e-10, atol=1e-12)
    assert abs(float(m["alpha"].sum()) - 1) < 1e-12
    # Encoder: sum_g alpha_g grad L_g (Eq. 12).
    want = jax.tree.map(
      lambda *g: sum(a * x for a, x in zip(alpha, g)),
      *[g["encoder"] for g in grads],
    )
    got = jax.tree.map(
      lambda a, b: a - b, state["params"]["encoder"], new["params"]["encoder"]
    )
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
    # Head: column c (kernel) and bias c from the loss of c's group only.
    for g, classes in enumerate(GROUPS):
      for c in classes:
        for leaf in ("kernel", "bias"):
          d = state["params"]["head"][leaf] - new["params"]["head"][leaf]
          np.testing.assert_allclose(
            d[..., c], grads[g]["head"][leaf][..., c], rtol=1e-10, atol=1e-12
          )


def test_float32_alpha_is_close_to_the_float64_reference():
  model = models.Student(MLPEncoder(), num_classes=6)
  tx = optax.sgd(0.1)
  state = steps.init_state(model, tx, (4, 4, 3), seed=1)
  batch = _batch(2)
  opts = gbg.MOOOptions(groups=GROUPS)
  _, m = gbg.moo_step(state, batch, model=model, tx=tx, options=opts)
  with jax.enable_x64(True):
    s64 = jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float64)
      if jnp.issubdtype(x.dtype, jnp.floating)
      else x,
      state,
    )
    alpha, _ = _reference(s64, batch, model, GROUPS, "bce")
  np.testing.assert_allclose(m["alpha"], alpha, atol=1e-4)


def _tiny():
  model = models.Student(models.make_encoder("resnet_tiny"), num_classes=6)
  tx = steps.adam(1e-2, 0.9, 0.99)
  return model, tx, steps.init_state(model, tx, (16, 16, 3), seed=0)


def _images(batch, size=16, seed=0):
  rng = np.random.default_rng(seed)
  n = len(batch["labels"])
  return {
    **batch,
    "image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
  }


def test_group_loss_mean_is_the_sum_over_the_group_size_by_hand():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(7, 6))
  labels = (rng.random((7, 6)) < 0.4).astype(np.float64)
  member = grouping.membership(GROUPS, 6).astype(np.float64)
  # float64 BCE by hand: log(1 + e^z) - y z
  bce = np.logaddexp(0.0, logits) - labels * logits
  with jax.enable_x64(True):
    for reduction in ("mean", "sum"):
      got = gbg.group_losses(
        jnp.asarray(logits), jnp.asarray(labels), member, reduction=reduction
      )
      for g, classes in enumerate(GROUPS):
        want = bce[:, list(classes)].sum(1).mean()
        if reduction == "mean":  # paper 004: the mean of the class losses
          want /= len(classes)
        np.testing.assert_allclose(got[g], want, rtol=1e-12)
  with pytest.raises(ValueError, match="reduction"):
    gbg.group_losses(logits, labels, member, reduction="max")
  with pytest.raises(ValueError, match="group_loss"):
    gbg.MOOOptions(groups=GROUPS, group_loss="max")


def test_one_group_is_the_plain_step():
  # The published code's sum over classes makes one group the plain BCE
  # step (the paper's mean divides it by the number of classes).
  model, tx, state = _tiny()
  batch = _images(_batch(3, n=16))
  opts = gbg.MOOOptions(groups=(tuple(range(6)),), group_loss="sum")
  a, ma = jax.jit(
    lambda s, b: gbg.moo_step(s, b, model=model, tx=tx, options=opts)
  )(state, batch)
  b, mb = jax.jit(lambda s, b: steps.plain_step(s, b, model=model, tx=tx))(
    state, batch
  )
  assert float(ma["alpha"][0]) == 1.0
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  chex.assert_trees_all_close(a["params"], b["params"], rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
    a["batch_stats"], b["batch_stats"], rtol=1e-6, atol=1e-7
  )


@pytest.mark.parametrize("moo", ["mgda", "mean", "per_class"])
def test_step_compiles_once_and_learns(moo):
  chex.clear_trace_counter()  # one count per parametrised case
  model, tx, state = _tiny()
  opts = gbg.MOOOptions(groups=GROUPS, moo=moo)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return gbg.moo_step(s, b, model=model, tx=tx, options=opts)

  fixed = _images(_batch(4, n=16))
  first = None
  for _t in range(6):
    state, m = step(state, fixed)
    first = first if first is not None else float(m["loss"])
  g = 6 if moo == "per_class" else 3
  assert m["alpha"].shape == (g,) and m["cos_update"].shape == (g,)
  if moo == "mean":
    np.testing.assert_allclose(m["alpha"], 1 / 3, rtol=1e-6)
  assert float(m["loss"]) < first  # the same batch: the loss falls


def test_eight_devices_equal_one_device(n_devices):
  # SGD: Adam's first step is lr * sign(g), which turns float noise in
  # near-zero gradients into full-size differences.
  model, _, _ = _tiny()
  tx = optax.sgd(0.1)
  state = steps.init_state(model, tx, (16, 16, 3), seed=0)
  batch = _images(_batch(5, n=16))
  opts = gbg.MOOOptions(groups=GROUPS)

  def fn(s, b):
    return gbg.moo_step(s, b, model=model, tx=tx, options=opts)

  one, m1 = jax.jit(fn)(state, batch)
  from agt_jax.runtime import make_mesh

  mesh = make_mesh(16)  # the training loop's mesh
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  rep = jax.device_put(state, NamedSharding(mesh, P()))
  many, m8 = jax.jit(fn)(rep, sharded)
  assert n_devices == 8
  np.testing.assert_allclose(m8["alpha"], m1["alpha"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m8["group_loss"], m1["group_loss"], rtol=1e-5)
  chex.assert_trees_all_close(
    many["params"], one["params"], rtol=1e-4, atol=1e-6
  )


def test_resume_is_bit_identical(tmp_path):
  """A GBG phase checkpointed at step 3 and resumed ends exactly where an
  uninterrupted one does (state, MGDA weights, GAC batches)."""
  from agt_jax import config as config_lib
  from agt_jax.data import images, samplers
  from agt_jax.runtime import make_mesh
  from agt_jax.train.phase import TrainingPhase
  from tests.test_faults_training import assert_trees_equal

  rng = np.random.default_rng(0)
  labels = (rng.random((64, 6)) < 0.3).astype(np.uint8)
  labels[np.arange(6), np.arange(6)] = 1
  source = images.ArrayImageSource(
    rng.integers(0, 255, (64, 20, 20, 3), dtype=np.uint8)
  )
  model, tx, _ = _tiny()
  opts = gbg.MOOOptions(groups=GROUPS)

  def fn(s, b):
    return gbg.moo_step(s, b, model=model, tx=tx, options=opts)

  def phase(wd, total, resume=False):
    cfg = config_lib.get_config(
      "smoke", crop=16, ckpt_every=3, log_every=1, eval_every=0
    )
    return TrainingPhase(
      "gbg",
      step_fn=fn,
      state=steps.init_state(model, tx, (16, 16, 3), 0),
      batches=samplers.gac_batches(labels, GROUPS, batch_size=16, seed=0),
      source=source,
      config=cfg,
      workdir=wd,
      mesh=make_mesh(16),
      total_steps=total,
      resume=resume,
    )

  full = phase(tmp_path / "full", 6)
  full.run()
  part = phase(tmp_path / "part", 3)
  part.run()
  resumed = phase(tmp_path / "part", 6, resume=True)
  assert resumed.start == 3
  resumed.run()
  assert_trees_equal(resumed.state, full.state)
  from agt_jax.train.report import read_metrics

  alphas = [
    [r["alpha"] for r in read_metrics(wd / "metrics.jsonl")]
    for wd in (tmp_path / "full", tmp_path / "part")
  ]
  assert alphas[0] == alphas[1] and len(alphas[0]) == 6


def test_options_are_checked():
  with pytest.raises(ValueError, match="moo must be one of"):
    gbg.MOOOptions(groups=GROUPS, moo="pcgrad")
  with pytest.raises(ValueError, match="objective must be one of"):
    gbg.MOOOptions(groups=GROUPS, objective="focal")
  assert gbg.MOOOptions(groups=GROUPS, moo="per_class").objectives == tuple(
    (c,) for c in (0, 3, 1, 2, 4, 5)
  )
