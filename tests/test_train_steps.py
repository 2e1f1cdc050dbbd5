"""The AGT teacher step: one compile, frozen heads, 8 devices == 1 device."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from agt_jax import losses, models
from agt_jax.train import steps

GROUPS = ((1, 4, 5, 6), (2, 3), (0, 7))


def make(groups=GROUPS, lr=1e-2):
  model = models.Teacher(models.make_encoder("resnet_tiny"), groups=groups,
                         num_classes=8)
  tx = steps.teacher_tx(len(groups), lr)
  return model, tx, steps.init_state(model, tx, (32, 32, 3), seed=0)


def batch(t, n=16, seed=0):
  rng = np.random.default_rng((seed, t))
  return {"image": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
          "labels": (rng.random((n, 8)) < 0.3).astype(np.uint8),
          "group": np.int32(t % len(GROUPS))}


def host(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def test_teacher_logits_are_in_global_class_order():
  model, _, state = make()
  x = batch(0)["image"]
  logits, feats = model.apply({"params": state["params"],
                               "batch_stats": state["batch_stats"]}, x)
  assert logits.shape == (16, 8) and feats.shape[0] == 16
  # Class 3 (C) is the second output of head_g1.
  h = state["params"]["head_g1"]
  expected = feats @ h["kernel"][:, 1] + h["bias"][1]
  np.testing.assert_allclose(logits[:, 3], expected, rtol=1e-5, atol=1e-6)
  assert set(state["params"]) == {"encoder", "head_g0", "head_g1", "head_g2"}


def test_one_compile_and_frozen_heads_bit_identical():
  model, tx, state = make()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx,
                              options=steps.LossOptions())

  chex.clear_trace_counter()
  for t in range(6):  # groups 0, 1, 2, 0, 1, 2
    before = host(state)
    state, m = step(state, batch(t))
    g = t % 3
    for k in range(3):
      head = f"head_g{k}"
      inner = lambda s: s["opt_state"].inner_states[head].inner_state.inner_state
      if k == g:
        assert not np.array_equal(state["params"][head]["kernel"],
                                  before["params"][head]["kernel"])
      else:
        chex.assert_trees_all_equal(state["params"][head],
                                    before["params"][head])
        chex.assert_trees_all_equal(inner(host(state)), inner(before))
    assert not np.array_equal(state["params"]["encoder"]["conv1"]["kernel"],
                              before["params"]["encoder"]["conv1"]["kernel"])
    assert int(m["group"]) == g
  # Each head's own Adam count advanced only on its group's steps.
  counts = [int(state["opt_state"].inner_states[f"head_g{k}"].inner_state
                .inner_state[0].count) for k in range(3)]
  assert counts == [2, 2, 2]
  assert int(state["opt_state"].inner_states["encoder"].inner_state[0].count) \
      == 6


def test_inactive_heads_logits_still_train_the_encoder():
  """With only group 0's head trainable, the loss still includes every
  class: the encoder gradient differs from a loss restricted to group 0."""
  model, tx, state = make()
  b = batch(0)
  labels = jnp.asarray(b["labels"], jnp.float32)

  def enc_grad(mask):
    def f(p):
      (logits, _), _ = model.apply({"params": p,
                                    "batch_stats": state["batch_stats"]},
                                   b["image"], train=True,
                                   mutable=["batch_stats"])
      per, _ = steps.teacher_loss_terms(logits, labels, steps.LossOptions())
      return (per * mask).sum()
    return jax.grad(f)(state["params"])["encoder"]["conv1"]["kernel"]

  all_classes = enc_grad(jnp.ones(8))
  group0 = enc_grad(jnp.zeros(8).at[jnp.array(GROUPS[0])].set(1))
  assert not np.allclose(all_classes, group0)


def test_metrics_match_the_loss_library():
  model, tx, state = make()
  b = batch(1)
  params = host(state["params"])
  stats = host(state["batch_stats"])
  _, m = jax.jit(lambda s, bb: steps.teacher_step(
      s, bb, model=model, tx=tx, options=steps.LossOptions()))(state, b)
  (logits, _), _ = model.apply({"params": params, "batch_stats": stats},
                               b["image"], train=True, mutable=["batch_stats"])
  w = losses.gradient_reweight_weights(logits, b["labels"])
  np.testing.assert_allclose(m["w"], w, rtol=1e-5, atol=1e-7)
  expected = losses.gradient_reweighted_bce(logits, b["labels"]).sum() / 16
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("reweight", ["count", "none"])
def test_ablation_losses(reweight):
  model, tx, state = make()
  b = batch(0)
  _, m = jax.jit(lambda s, bb: steps.teacher_step(
      s, bb, model=model, tx=tx,
      options=steps.LossOptions(reweight=reweight)))(state, b)
  if reweight == "none":
    np.testing.assert_array_equal(m["w"], 1.0)
  else:
    np.testing.assert_allclose(m["w"], losses.count_reweight_weights(
        b["labels"]), rtol=1e-6)
  with pytest.raises(ValueError, match="reweight"):
    steps.LossOptions(reweight="eql")


def test_eight_devices_match_one_device(n_devices):
  assert n_devices == 8
  model, tx, state0 = make()
  host0 = host(state0)

  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx,
                              options=steps.LossOptions())

  single = jax.jit(step)
  s1 = jax.device_put(host0, jax.devices()[0])
  for t in range(3):
    s1, m1 = single(s1, jax.device_put(batch(t), jax.devices()[0]))
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  rep, dsh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  s8 = jax.device_put(host0, rep)
  sharded = jax.jit(step, donate_argnums=0)
  for t in range(3):
    b = batch(t)
    b = {"image": jax.device_put(b["image"], dsh),
         "labels": jax.device_put(b["labels"], dsh),
         "group": jax.device_put(b["group"], rep)}
    s8, m8 = sharded(s8, b)
  assert s8["params"]["encoder"]["conv1"]["kernel"].sharding.is_fully_replicated
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  # Adam divides by sqrt(v): for near-zero gradients a summation-order ulp
  # can move a weight by a visible fraction of lr (1e-2) after 3 steps, so
  # parameters are compared at 1% of one step.
  chex.assert_trees_all_close(host(s8["params"]), host(s1["params"]),
                              rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_close(host(s8["batch_stats"]),
                              host(s1["batch_stats"]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m8["w"], m1["w"], rtol=1e-5, atol=1e-7)


def test_student_step_kd_options():
  teacher, _, tstate = make()
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  stx = steps.adam(1e-3, 0.9, 0.99)
  sstate = steps.init_state(student, stx, (32, 32, 3), seed=1)
  tv = {"params": tstate["params"], "batch_stats": tstate["batch_stats"]}
  counts = jnp.array([900, 500, 90, 80, 70, 50, 60, 300], jnp.float32)
  out = {}
  for kd in ("cb", "plain", "none"):
    fn = jax.jit(lambda s, b, v, kd=kd: steps.student_step(
        s, b, v, model=student, teacher_model=teacher, tx=stx,
        class_counts=counts, options=steps.KDOptions(kd=kd)))
    _, m = fn(sstate, batch(0), tv)
    out[kd] = m
    np.testing.assert_allclose(m["loss"], m["bce"] + m["kd"], rtol=1e-6)
  assert float(out["none"]["kd"]) == 0.0
  # Class-balanced weights are <= 1, so CB-KD <= plain KD.
  assert 0 < float(out["cb"]["kd"]) <= float(out["plain"]["kd"])


def test_plain_step_runs():
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  tx = optax.adam(1e-3)
  s = steps.init_state(student, tx, (32, 32, 3), seed=0)
  s, m = jax.jit(lambda s, b: steps.plain_step(s, b, model=student, tx=tx))(
      s, batch(0))
  assert np.isfinite(m["loss"]) and int(s["step"]) == 1


COUNTS = (900, 500, 90, 80, 70, 50, 60, 300)


@pytest.mark.parametrize("name", ["focal", "cb", "cb_focal", "db"])
def test_peer_losses_share_the_step_with_published_reductions(name):
  model, tx, state = make()
  b = batch(2)
  options = steps.LossOptions(loss=name, class_counts=COUNTS,
                              num_examples=1000)
  params = host(state["params"])
  stats = host(state["batch_stats"])
  _, m = jax.jit(lambda s, bb: steps.teacher_step(
      s, bb, model=model, tx=tx, options=options))(state, b)
  (logits, _), _ = model.apply({"params": params, "batch_stats": stats},
                               b["image"], train=True, mutable=["batch_stats"])
  y = b["labels"]
  counts = np.array(COUNTS)
  expected = {
      "focal": lambda: losses.sigmoid_focal_loss(logits, y, alpha=0.25).mean(),
      "cb": lambda: losses.class_balanced_loss(logits, y, counts).sum()
                    / y.sum(),
      "cb_focal": lambda: losses.class_balanced_loss(
          logits, y, counts, gamma=2.0).sum() / y.sum(),
      "db": lambda: losses.distribution_balanced_loss(logits, y, counts,
                                                      1000).mean(),
  }[name]()
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  np.testing.assert_array_equal(m["w"], 1.0)


def test_loss_options_errors():
  with pytest.raises(ValueError, match="loss must be one of"):
    steps.LossOptions(loss="eqlv3")
  with pytest.raises(ValueError, match="class_counts"):
    steps.LossOptions(loss="cb")
  with pytest.raises(ValueError, match="num_examples"):
    steps.LossOptions(loss="db", class_counts=COUNTS)
