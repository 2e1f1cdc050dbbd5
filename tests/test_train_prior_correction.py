"""Prior correction of the group-mixed sampler, per-group feedback
statistics and the post-hoc offset."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from agt_jax import losses, models
from agt_jax.data import samplers, synth
from agt_jax.train import agt, steps

ODIR_GROUPS = (("N", "O"), ("D", "G", "A", "H", "M"), ("C",))


def _odir_labels(n=None):
  t = synth.synth_table()
  names = list(t.class_names)
  groups = tuple(tuple(names.index(c) for c in g) for g in ODIR_GROUPS)
  y = t.labels if n is None else t.labels[:n]
  return y, groups, names


def test_shift_reproduces_the_hand_computed_prevalences():
  # 6 images, 3 classes; groups {0}, {1, 2}; b = 4, alpha = 0.5.
  y = np.array(
    [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]], np.uint8
  )
  q = samplers.group_mixed_prevalence(
    y, ((0,), (1, 2)), batch_size=4, alpha=0.5
  )
  # group 0: own part = rows {0, 1, 5} -> mean (1, 1/3, 0); others: class 1
  # (rows 1, 2, 4 -> (1/3, 1, 1/3)) and class 2 (rows 3, 4 -> (0, 1/2, 1))
  own0 = np.array([1, 1 / 3, 0])
  oth0 = (np.array([1 / 3, 1, 1 / 3]) + np.array([0, 1 / 2, 1])) / 2
  # group 1: own = rows {1, 2, 3, 4} -> (1/4, 3/4, 1/2); others: class 0
  own1 = np.array([1 / 4, 3 / 4, 1 / 2])
  oth1 = np.array([1, 1 / 3, 0])
  np.testing.assert_allclose(
    q, [0.5 * own0 + 0.5 * oth0, 0.5 * own1 + 0.5 * oth1]
  )
  d = samplers.prior_shift(y, ((0,), (1, 2)), batch_size=4, alpha=0.5)
  p = y.mean(0)
  logit = lambda v: np.log(v / (1 - v))
  np.testing.assert_allclose(
    d, logit(np.clip(q, 1e-6, 1 - 1e-6)) - logit(p)[None], rtol=1e-12
  )
  # No mixing, every image labelled: the batches are the data, no shift.
  z = samplers.prior_shift(y, ((0, 1, 2),), batch_size=4, alpha=0.0)
  np.testing.assert_allclose(z, 0.0, atol=1e-12)


def test_shift_agrees_with_counts_over_10000_sampled_batches():
  y, groups, _ = _odir_labels(1200)
  b, steps_ = 8, 10_000
  ds = samplers.group_mixed_batches(y, groups, batch_size=b, alpha=0.5, seed=3)
  sums = np.zeros((len(groups), y.shape[1]))
  counts = np.zeros(len(groups))
  for t in range(steps_):
    batch = ds[t]
    sums[batch["group"]] += batch["labels"].sum(0)
    counts[batch["group"]] += b
  empirical = sums / counts[:, None]
  q = samplers.group_mixed_prevalence(y, groups, batch_size=b, alpha=0.5)
  # Within 4 binomial standard errors (about 26,700 slots per group).
  se = np.sqrt(q * (1 - q) / counts[:, None])
  assert np.all(np.abs(empirical - q) < 4 * se + 1e-9), (empirical, q)
  # The numbers on the full table: C in its own batches 0.045 ->
  # 0.503, a log-odds shift of +3.07; N -0.35 in {N, O}'s batches.
  yf, groups_f, names = _odir_labels()
  d = samplers.prior_shift(yf, groups_f, batch_size=32, alpha=0.5)
  assert d[2, names.index("C")] == pytest.approx(3.07, abs=0.01)
  assert d[0, names.index("N")] == pytest.approx(-0.35, abs=0.01)
  own = agt.own_group_shift(d, groups_f)
  assert own[names.index("C")] == d[2, names.index("C")]
  assert own[names.index("D")] == d[1, names.index("D")]


class _Fixed(nn.Module):
  """Fixed features: the image bytes scaled (one unused parameter so the
  teacher's optimiser has an encoder subtree)."""

  @nn.compact
  def __call__(self, x, train=False):
    z = self.param("unused", nn.initializers.zeros, ())
    return x.astype(jnp.float32) / 255.0 - 0.5 + 0.0 * z


def _head_biases(params, groups, c):
  out = np.zeros(c)
  for g, classes in enumerate(groups):
    out[list(classes)] = np.asarray(params[models.head_name(g)]["bias"])
  return out


def test_linear_model_on_group_mixed_batches_recovers_bce_biases():
  """Linear heads on fixed features (one informative feature per class)
  trained on the AGT sampler end with plain BCE's biases when the loss
  adds the shift, and far from them without it (measured: corrected mean
  |error| 0.10, max 0.49 on C; uncorrected mean 0.51, C 3.2 nats)."""
  y, groups, names = _odir_labels(3000)
  c = y.shape[1]
  x = np.clip(
    128 + 40 * (y - 0.5) + np.random.default_rng(0).normal(0, 40, y.shape),
    0,
    255,
  ).astype(np.uint8)
  n_steps, b = 1200, 64
  lr = optax.cosine_decay_schedule(0.05, n_steps)
  shift = samplers.prior_shift(y, groups, batch_size=b, alpha=0.5)

  def agt(correct):
    model = models.Teacher(_Fixed(), groups=groups, num_classes=c)
    tx = steps.teacher_tx(len(groups), lr)
    state = steps.init_state(model, tx, (c,), 0)
    options = steps.LossOptions(
      reweight="none",
      groups=groups,
      logit_shift=tuple(map(tuple, shift)) if correct else None,
    )
    fn = jax.jit(
      lambda s, bt: steps.teacher_step(
        s, bt, model=model, tx=tx, options=options
      )
    )
    ds = samplers.group_mixed_batches(
      y, groups, batch_size=b, alpha=0.5, seed=0
    )
    for t in range(n_steps):
      bt = ds[t]
      state, _ = fn(
        state,
        {"image": x[bt["index"]], "labels": bt["labels"], "group": bt["group"]},
      )
    return _head_biases(state["params"], groups, c)

  model = models.Student(_Fixed(), num_classes=c)
  tx = optax.adam(lr)
  state = steps.init_state(model, tx, (c,), 0)
  fn = jax.jit(lambda s, bt: steps.plain_step(s, bt, model=model, tx=tx))
  ds = samplers.instance_balanced_batches(y, batch_size=b, seed=0)
  for t in range(n_steps):
    bt = ds[t]
    state, _ = fn(state, {"image": x[bt["index"]], "labels": bt["labels"]})
  bce = np.asarray(state["params"]["head"]["bias"])
  corrected, raw = np.abs(agt(True) - bce), np.abs(agt(False) - bce)
  assert corrected.mean() < 0.2 and corrected.max() < 0.75, corrected
  assert raw[names.index("C")] > 2.0, raw
  assert raw.mean() > 2.5 * corrected.mean(), (raw, corrected)


GROUPS = ((1, 4, 5, 6), (2, 3), (0, 7))


def _tiny():
  model = models.Teacher(
    models.make_encoder("resnet_tiny"), groups=GROUPS, num_classes=8
  )
  tx = steps.teacher_tx(len(GROUPS), 1e-2)
  return model, tx, steps.init_state(model, tx, (32, 32, 3), seed=0)


def _batch(t, n=16):
  rng = np.random.default_rng((0, t))
  return {
    "image": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
    "labels": (rng.random((n, 8)) < 0.3).astype(np.uint8),
    "group": np.int32(t % len(GROUPS)),
  }


def _host(tree):
  return jax.tree.map(np.array, tree)


def test_loss_correction_adds_the_active_groups_shift_to_every_logit():
  model, tx, state = _tiny()
  shift = np.random.default_rng(1).normal(size=(3, 8))
  options = steps.LossOptions(
    reweight="gradient", logit_shift=tuple(map(tuple, shift))
  )
  b = _batch(1)
  (logits, _), _ = model.apply(
    {"params": state["params"], "batch_stats": state["batch_stats"]},
    b["image"],
    train=True,
    mutable=["batch_stats"],
  )
  z = np.asarray(logits, np.float64) + shift[1]
  p = 1 / (1 + np.exp(-z))
  y = b["labels"].astype(np.float64)
  pos, neg = (y * (1 - p)).sum(0), ((1 - y) * p).sum(0)
  w = np.minimum(1.0, (pos / (neg + 1e-8)) ** 2.0)
  bce = -(y * np.log(p) + w * (1 - y) * np.log(1 - p))
  _, m = steps.teacher_step(state, b, model=model, tx=tx, options=options)
  np.testing.assert_allclose(m["loss"], bce.sum() / 16, rtol=1e-5)
  # metrics carry Eq. 1's batch means: pos = mean y (p - 1)
  np.testing.assert_allclose(m["pos"], -pos / 16, rtol=1e-5)
  np.testing.assert_allclose(m["neg"], neg / 16, rtol=1e-5)
  np.testing.assert_allclose(m["w"], w, rtol=1e-4, atol=1e-7)


def test_posthoc_offset_in_prediction_and_distillation():
  model, _, state = _tiny()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  x = _batch(0)["image"]
  offset = jnp.arange(8, dtype=jnp.float32) / 4
  p0, _ = steps.predict_step(variables, x, model=model)
  p1, _ = steps.predict_step(variables, x, model=model, offset=offset)
  logit = lambda v: np.log(v / (1 - v))
  np.testing.assert_allclose(
    logit(np.asarray(p1, np.float64)),
    logit(np.asarray(p0, np.float64)) - offset,
    rtol=1e-4,
    atol=1e-4,
  )
  # The student distils the corrected logits: a plain-KD student whose own
  # logits equal the teacher's corrected ones feels no KD.
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  stx = optax.adam(1e-3)
  sstate = steps.init_state(student, stx, (32, 32, 3), seed=0)
  sv = {"params": sstate["params"], "batch_stats": sstate["batch_stats"]}
  (s_logits, _), _ = student.apply(sv, x, train=True, mutable=["batch_stats"])
  (t_logits, _) = model.apply(variables, x, train=False)
  off = jnp.mean(t_logits - s_logits, axis=0)  # not exact per row: some KD
  kw = dict(
    model=student,
    teacher_model=model,
    tx=stx,
    class_counts=jnp.ones(8),
    options=steps.KDOptions(kd="plain", temperature=1.0),
  )
  _, m_raw = steps.student_step(sstate, {**_batch(0)}, variables, **kw)
  _, m_off = steps.student_step(
    sstate, {**_batch(0)}, variables, **kw, teacher_offset=off
  )
  ref = (
    losses.binary_kl_divergence(s_logits, t_logits - off, temperature=1.0)
    .sum(-1)
    .mean()
  )
  np.testing.assert_allclose(m_off["kd"], ref, rtol=1e-5)
  assert not np.isclose(float(m_off["kd"]), float(m_raw["kd"]))


def _feedback_reference(pos, neg, groups_seq, beta, decay, n_groups, c):
  """float64 recursion of the per-group statistics from each step's
  gradient magnitudes; returns the weights each step used and the end
  state."""
  P, N = np.zeros((n_groups, c)), np.zeros((n_groups, c))
  cnt = np.zeros(n_groups, np.int64)
  ws = []
  for p_t, n_t, g in zip(pos, neg, groups_seq):
    w = (
      np.minimum(1.0, (P[g] / (N[g] + 1e-8)) ** beta) if cnt[g] else np.ones(c)
    )
    ws.append(w)
    P[g] = decay * P[g] + (1 - decay) * p_t
    N[g] = decay * N[g] + (1 - decay) * w * n_t
    cnt[g] += 1
  return ws, P, N, cnt


def test_per_group_feedback_rows_update_only_in_their_groups_batches():
  model, tx, state = _tiny()
  options = steps.LossOptions(
    reweight="feedback", decay=0.8, rw_stats="group", groups=GROUPS
  )
  state["loss_state"] = steps.initial_loss_state(options, 8)
  assert state["loss_state"]["pos"].shape == (3, 8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx, options=options)

  chex.clear_trace_counter()
  pos, neg, gs, ws = [], [], [], []
  for t in range(7):
    b = _batch(t)
    before = _host(state["loss_state"])
    state, m = step(state, b)
    after = _host(state["loss_state"])
    g = int(b["group"])
    for other in set(range(3)) - {g}:  # bit-identical rows
      for k in after:
        np.testing.assert_array_equal(after[k][other], before[k][other])
    # the step's Eq. 1 means back to the sums the statistics carry
    pos.append(-16 * np.asarray(m["pos"], np.float64))
    neg.append(16 * np.asarray(m["neg"], np.float64))
    gs.append(g)
    ws.append(np.asarray(m["w"]))
  ref_w, P, N, cnt = _feedback_reference(pos, neg, gs, 2.0, 0.8, 3, 8)
  for w, r in zip(ws, ref_w):
    np.testing.assert_allclose(w, r, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state["loss_state"]["pos"], P, rtol=1e-5)
  np.testing.assert_allclose(
    state["loss_state"]["neg"], N, rtol=1e-5, atol=1e-7
  )
  np.testing.assert_array_equal(state["loss_state"]["count"], cnt)
  assert float(np.min(ws[-1])) < 1.0


def test_per_group_feedback_on_eight_devices_matches_one(n_devices):
  assert n_devices == 8
  model, tx, state0 = _tiny()
  shift = np.random.default_rng(2).normal(size=(3, 8)) * 0.5
  options = steps.LossOptions(
    reweight="feedback",
    rw_stats="group",
    groups=GROUPS,
    logit_shift=tuple(map(tuple, shift)),
  )
  state0 = {**state0, "loss_state": steps.initial_loss_state(options, 8)}
  host0 = _host(state0)

  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx, options=options)

  s1 = jax.device_put(host0, jax.devices()[0])
  single = jax.jit(step)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  rep, dsh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  s8 = jax.device_put(host0, rep)
  sharded = jax.jit(step, donate_argnums=0)
  for t in range(4):
    b = _batch(t)
    s1, _ = single(s1, jax.device_put(b, jax.devices()[0]))
    s8, _ = sharded(
      s8,
      {
        "image": jax.device_put(b["image"], dsh),
        "labels": jax.device_put(b["labels"], dsh),
        "group": jax.device_put(b["group"], rep),
      },
    )
  # Statistics over the global batch on both.
  chex.assert_trees_all_close(
    _host(s8["loss_state"]), _host(s1["loss_state"]), rtol=1e-5, atol=1e-7
  )


def test_options_and_config_refuse_bad_combinations():
  from agt_jax import config as config_lib
  from agt_jax.errors import ConfigError

  with pytest.raises(ValueError, match="rw_stats"):
    steps.LossOptions(rw_stats="per_class")
  with pytest.raises(ConfigError, match="prior_correction"):
    config_lib.validate(
      config_lib.get_config("smoke", prior_correction="sometimes")
    )
  with pytest.raises(
    ConfigError, match="bn_recalibrate=4 belongs to trainer=.agt."
  ):
    config_lib.validate(
      config_lib.get_config(
        "smoke", trainer="gbg", student=False, bn_recalibrate=4
      )
    )
  with pytest.raises(ConfigError, match="needs reweight=feedback"):
    config_lib.validate(config_lib.get_config("smoke", rw_stats="group"))
