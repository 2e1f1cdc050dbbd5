"""The AGT teacher step: one compile, frozen heads, 8 devices == 1 device."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from agt_jax import losses, models
from agt_jax.train import steps

GROUPS = ((1, 4, 5, 6), (2, 3), (0, 7))


def make(groups=GROUPS, lr=1e-2):
  model = models.Teacher(
    models.make_encoder("resnet_tiny"), groups=groups, num_classes=8
  )
  tx = steps.teacher_tx(len(groups), lr)
  return model, tx, steps.init_state(model, tx, (32, 32, 3), seed=0)


def batch(t, n=16, seed=0):
  rng = np.random.default_rng((seed, t))
  return {
    "image": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
    "labels": (rng.random((n, 8)) < 0.3).astype(np.uint8),
    "group": np.int32(t % len(GROUPS)),
  }


def host(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def test_init_state_is_one_cached_program_with_the_default_values():
  """init_state compiles once per model and shapes (a second seed reuses
  it) and, compiled at LLVM level 1 on CPU, gives the values of the
  default compilation bit for bit."""
  model = models.Teacher(
    models.make_encoder("resnet_tiny"), groups=GROUPS, num_classes=8
  )
  tx = steps.teacher_tx(len(GROUPS), 1e-3)
  got = steps.init_state(model, tx, (32, 32, 3), seed=5)
  cached = steps._init_cpu._cache_size()
  other = steps.init_state(model, tx, (32, 32, 3), seed=6)
  assert steps._init_cpu._cache_size() == cached
  # XLA:CPU's default level (3), named: the session compiles at 1 (conftest).
  want = jax.jit(
    lambda k: steps._make_state(k, model=model, tx=tx, shape=(32, 32, 3)),
    compiler_options={"xla_backend_optimization_level": 3},
  )(jax.random.key(5))
  chex.assert_trees_all_equal(host(got), host(want))
  assert not np.array_equal(
    other["params"]["head_g0"]["kernel"], got["params"]["head_g0"]["kernel"]
  )


def test_equal_optimisers_are_one_object_so_runs_share_programs():
  assert steps.teacher_tx(3, 1e-3) is steps.teacher_tx(3, 1e-3)
  assert steps.teacher_tx(3, 1e-3) is not steps.teacher_tx(3, 2e-3)
  assert steps.joint_tx(1e-3) is steps.joint_tx(1e-3)
  tx = steps.adam(1e-3, 0.9, 0.99)
  assert tx is steps.adam(1e-3, 0.9, 0.99)
  assert steps.frozen_encoder_tx(tx) is steps.frozen_encoder_tx(tx)
  lr = jnp.float32(1e-3)  # unhashable: built anew, and still works
  assert steps.adam(lr, 0.9, 0.99) is not steps.adam(lr, 0.9, 0.99)
  # A second run with an equal config reuses init_state's program.
  make()
  size = steps._init_cpu._cache_size()
  make()
  assert steps._init_cpu._cache_size() == size


def test_a_builders_own_type_error_surfaces_from_one_call():
  calls = []

  @steps._same_object_for_equal_arguments
  def broken(lr):
    calls.append(lr)
    raise TypeError("bad argument")

  with pytest.raises(TypeError, match="bad argument"):
    broken(1e-3)
  assert calls == [1e-3]


_TRACES: list = []


def _toy_step(state, batch, *, scale, weights):
  _TRACES.append(scale)  # runs at trace time only
  w = (
    state["w"] * jnp.asarray(scale) + jnp.sum(jnp.asarray(weights)) + batch["x"]
  )
  return {"w": w}, {"loss": jnp.sum(w)}


def test_equal_steps_of_two_runs_are_one_program():
  """compiled_step: a partial of a module-level step is traced once for
  equal keywords; keyword arrays are inputs (new values, no new trace);
  unhashable keywords still work (jitted per call)."""
  _TRACES.clear()
  x = {"x": jnp.float32(1.0)}
  step = lambda **kw: steps.compiled_step(functools.partial(_toy_step, **kw))
  st, _ = step(scale=2.0, weights=np.ones(3, np.float32))({"w": jnp.ones(3)}, x)
  np.testing.assert_allclose(st["w"], 6.0)
  st, _ = step(scale=2.0, weights=np.zeros(3, np.float32))(
    {"w": jnp.ones(3)}, x
  )
  np.testing.assert_allclose(st["w"], 3.0)
  assert _TRACES == [2.0]  # the second run's new weights: no trace
  step(scale=3.0, weights=np.ones(3, np.float32))({"w": jnp.ones(3)}, x)
  assert _TRACES == [2.0, 3.0]
  st, _ = step(scale=[2.0], weights=np.ones(3, np.float32))(
    {"w": jnp.ones(3)}, {"x": jnp.float32(0.0)}
  )  # a list cannot be hashed: its own jit
  np.testing.assert_allclose(st["w"], 5.0)
  # The trainers' real step: a new but equal model and optimiser (what a
  # second run builds) reuse the first run's program, with equal results.
  make_run = lambda: (
    models.Student(models.make_encoder("resnet_tiny"), num_classes=8),
    steps.adam(1e-3, 0.9, 0.99),
  )
  outs = []
  for _ in range(2):
    model, tx = make_run()
    state = steps.init_state(model, tx, (32, 32, 3), seed=0)
    fn = steps.compiled_step(
      functools.partial(steps.plain_step, model=model, tx=tx)
    )
    b = batch(0)
    outs.append(host(fn(state, {k: b[k] for k in ("image", "labels")})))
    jitted = steps._donating_jit(steps.plain_step, ("model", "tx"))
    if len(outs) == 1:
      size = jitted._cache_size()
  assert jitted._cache_size() == size
  chex.assert_trees_all_equal(outs[0], outs[1])


def test_teacher_logits_are_in_global_class_order():
  model, _, state = make()
  x = batch(0)["image"]
  logits, feats = model.apply(
    {"params": state["params"], "batch_stats": state["batch_stats"]}, x
  )
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
    return steps.teacher_step(
      s, b, model=model, tx=tx, options=steps.LossOptions()
    )

  chex.clear_trace_counter()
  for t in range(6):  # groups 0, 1, 2, 0, 1, 2
    before = host(state)
    state, m = step(state, batch(t))
    g = t % 3
    for k in range(3):
      head = f"head_g{k}"
      inner = (
        lambda s: s["opt_state"].inner_states[head].inner_state.inner_state
      )
      if k == g:
        assert not np.array_equal(
          state["params"][head]["kernel"], before["params"][head]["kernel"]
        )
      else:
        chex.assert_trees_all_equal(
          state["params"][head], before["params"][head]
        )
        chex.assert_trees_all_equal(inner(host(state)), inner(before))
    assert not np.array_equal(
      state["params"]["encoder"]["conv1"]["kernel"],
      before["params"]["encoder"]["conv1"]["kernel"],
    )
    assert int(m["group"]) == g
  # Each head's own Adam count advanced only on its group's steps.
  counts = [
    int(
      state["opt_state"]
      .inner_states[f"head_g{k}"]
      .inner_state.inner_state[0]
      .count
    )
    for k in range(3)
  ]
  assert counts == [2, 2, 2]
  assert (
    int(state["opt_state"].inner_states["encoder"].inner_state[0].count) == 6
  )


def test_inactive_heads_logits_still_train_the_encoder():
  """With only group 0's head trainable, the loss still includes every
  class: the encoder gradient differs from a loss restricted to group 0."""
  model, tx, state = make()
  b = batch(0)
  labels = jnp.asarray(b["labels"], jnp.float32)

  def enc_grad(mask):
    def f(p):
      (logits, _), _ = model.apply(
        {"params": p, "batch_stats": state["batch_stats"]},
        b["image"],
        train=True,
        mutable=["batch_stats"],
      )
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
  _, m = jax.jit(
    lambda s, bb: steps.teacher_step(
      s, bb, model=model, tx=tx, options=steps.LossOptions()
    )
  )(state, b)
  (logits, _), _ = model.apply(
    {"params": params, "batch_stats": stats},
    b["image"],
    train=True,
    mutable=["batch_stats"],
  )
  w = losses.gradient_reweight_weights(logits, b["labels"])
  np.testing.assert_allclose(m["w"], w, rtol=1e-5, atol=1e-7)
  expected = losses.gradient_reweighted_bce(logits, b["labels"]).sum() / 16
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("reweight", ["count", "none"])
def test_ablation_losses(reweight):
  model, tx, state = make()
  b = batch(0)
  _, m = jax.jit(
    lambda s, bb: steps.teacher_step(
      s, bb, model=model, tx=tx, options=steps.LossOptions(reweight=reweight)
    )
  )(state, b)
  if reweight == "none":
    np.testing.assert_array_equal(m["w"], 1.0)
  else:
    np.testing.assert_allclose(
      m["w"], losses.count_reweight_weights(b["labels"]), rtol=1e-6
    )
  with pytest.raises(ValueError, match="reweight"):
    steps.LossOptions(reweight="eql")


@pytest.mark.parametrize("reweight", ["gradient", "feedback"])
def test_eight_devices_match_one_device(n_devices, reweight):
  assert n_devices == 8
  model, tx, state0 = make()
  options = steps.LossOptions(reweight=reweight)
  loss_state = steps.initial_loss_state(options, 8)
  if loss_state:
    state0 = {**state0, "loss_state": loss_state}
  host0 = host(state0)

  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx, options=options)

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
    b = {
      "image": jax.device_put(b["image"], dsh),
      "labels": jax.device_put(b["labels"], dsh),
      "group": jax.device_put(b["group"], rep),
    }
    s8, m8 = sharded(s8, b)
  assert s8["params"]["encoder"]["conv1"]["kernel"].sharding.is_fully_replicated
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  # Adam divides by sqrt(v): for near-zero gradients a summation-order ulp
  # can move a weight by a visible fraction of lr (1e-2) after 3 steps, so
  # parameters are compared at 1% of one step.
  chex.assert_trees_all_close(
    host(s8["params"]), host(s1["params"]), rtol=1e-4, atol=1e-4
  )
  chex.assert_trees_all_close(
    host(s8["batch_stats"]), host(s1["batch_stats"]), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(m8["w"], m1["w"], rtol=1e-5, atol=1e-7)
  if reweight == "feedback":
    # The statistics are over the global batch on both.
    chex.assert_trees_all_close(
      host(s8["loss_state"]), host(s1["loss_state"]), rtol=1e-5
    )


def test_feedback_step_compiles_once_and_carries_the_library_statistics():
  model, tx, state = make()
  options = steps.LossOptions(reweight="feedback", decay=0.9)
  state["loss_state"] = steps.initial_loss_state(options, 8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx, options=options)

  chex.clear_trace_counter()
  stats = losses.feedback_reweight_init(8)
  for t in range(4):
    b = batch(t)
    variables = {
      "params": host(state["params"]),
      "batch_stats": host(state["batch_stats"]),
    }
    (logits, _), _ = model.apply(
      variables, b["image"], train=True, mutable=["batch_stats"]
    )
    w = losses.feedback_reweight_weights(stats)
    per, stats = losses.feedback_reweighted_bce(
      logits, b["labels"], stats, decay=0.9
    )
    state, m = step(state, b)
    np.testing.assert_allclose(m["loss"], per.sum() / 16, rtol=1e-5)
    np.testing.assert_allclose(m["w"], w, rtol=1e-5, atol=1e-7)
    for k, v in stats._asdict().items():
      np.testing.assert_allclose(
        state["loss_state"][k], v, rtol=1e-5, err_msg=k
      )
  assert int(state["loss_state"]["count"]) == 4
  assert float(np.min(m["w"])) < 1.0


def test_student_step_kd_options():
  teacher, _, tstate = make()
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  stx = steps.adam(1e-3, 0.9, 0.99)
  sstate = steps.init_state(student, stx, (32, 32, 3), seed=1)
  tv = {"params": tstate["params"], "batch_stats": tstate["batch_stats"]}
  counts = jnp.array([900, 500, 90, 80, 70, 50, 60, 300], jnp.float32)
  out = {}
  for kd in ("cb", "eq7", "plain", "none"):
    fn = jax.jit(
      lambda s, b, v, kd=kd: steps.student_step(
        s,
        b,
        v,
        model=student,
        teacher_model=teacher,
        tx=stx,
        class_counts=counts,
        options=steps.KDOptions(kd=kd),
      )
    )
    _, m = fn(sstate, batch(0), tv)
    out[kd] = m
    np.testing.assert_allclose(m["loss"], m["bce"] + m["kd"], rtol=1e-6)
  assert float(out["none"]["kd"]) == 0.0
  # Class-balanced weights are <= 1, so CB-KD <= plain KD.
  assert 0 < float(out["cb"]["kd"]) <= float(out["plain"]["kd"])
  # Eq. 7 distils only positive classes, with weights summing to 1 per image.
  assert 0 < float(out["eq7"]["kd"]) < float(out["plain"]["kd"])


def test_plain_step_runs():
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  tx = optax.adam(1e-3)
  s = steps.init_state(student, tx, (32, 32, 3), seed=0)
  s, m = jax.jit(lambda s, b: steps.plain_step(s, b, model=student, tx=tx))(
    s, batch(0)
  )
  assert np.isfinite(m["loss"]) and int(s["step"]) == 1


COUNTS = (900, 500, 90, 80, 70, 50, 60, 300)


@pytest.mark.parametrize("name", ["focal", "cb", "cb_focal", "db"])
def test_peer_losses_share_the_step_with_published_reductions(name):
  model, tx, state = make()
  b = batch(2)
  options = steps.LossOptions(loss=name, class_counts=COUNTS, num_examples=1000)
  params = host(state["params"])
  stats = host(state["batch_stats"])
  _, m = jax.jit(
    lambda s, bb: steps.teacher_step(s, bb, model=model, tx=tx, options=options)
  )(state, b)
  (logits, _), _ = model.apply(
    {"params": params, "batch_stats": stats},
    b["image"],
    train=True,
    mutable=["batch_stats"],
  )
  y = b["labels"]
  counts = np.array(COUNTS)
  expected = {
    "focal": lambda: losses.sigmoid_focal_loss(logits, y, alpha=0.25).mean(),
    "cb": lambda: losses.class_balanced_loss(logits, y, counts).sum() / y.sum(),
    "cb_focal": lambda: losses.class_balanced_loss(
      logits, y, counts, gamma=2.0
    ).sum()
    / y.sum(),
    "db": lambda: losses.distribution_balanced_loss(
      logits, y, counts, 1000
    ).mean(),
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


def _variant(name):
  """(model, tx, state, options) of a baseline that shares the step."""
  enc = models.make_encoder("resnet_tiny")
  opts = dict(class_counts=COUNTS, num_examples=1000, groups=GROUPS)
  if name == "eqlv2":
    model, tx, state = make()
    options = steps.LossOptions(loss="eqlv2", **opts)
    state = steps.init_state(
      model, tx, (32, 32, 3), 0, loss_state=steps.initial_loss_state(options, 8)
    )
  elif name in ("ride", "ours_ride"):
    model = models.Teacher(
      enc, groups=GROUPS, num_classes=8, experts=3, expert_scale=30.0
    )
    tx = steps.teacher_tx(len(GROUPS), 1e-2)
    state = steps.init_state(model, tx, (32, 32, 3), 0)
    options = steps.LossOptions(
      loss="ride",
      reweight="gradient" if name == "ours_ride" else "none",
      **opts,
    )
  elif name == "bags":
    model = models.Teacher(enc, groups=GROUPS, num_classes=8, others=True)
    tx = steps.joint_tx(1e-2)
    state = steps.init_state(model, tx, (32, 32, 3), 0)
    options = steps.LossOptions(loss="bags", **opts)
  elif name == "multi":
    model = models.MultiTeacher(enc, groups=GROUPS, num_classes=8)
    tx = steps.joint_tx(1e-2)
    state = steps.init_state(model, tx, (32, 32, 3), 0)
    options = steps.LossOptions(loss="agt", reweight="none", **opts)
  else:  # ib
    model, tx, state = make()
    options = steps.LossOptions(loss="ib", ib_start_step=2, **opts)
  return model, tx, state, options


@pytest.mark.parametrize(
  "name", ["eqlv2", "ib", "ride", "ours_ride", "bags", "multi"]
)
def test_baselines_compile_once_over_groups_and_learn(name):
  model, tx, state, options = _variant(name)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return steps.teacher_step(s, b, model=model, tx=tx, options=options)

  chex.clear_trace_counter()
  losses_seen = []
  for t in range(12):
    state, m = step(state, batch(t % 3))
    losses_seen.append(float(m["loss"]))
  assert np.all(np.isfinite(losses_seen))
  assert int(state["step"]) == 12
  # It learns: the loss on the same batch (steps 3, 6, 9: batch 0, group 0,
  # each before that step's update) falls. Step 0 is skipped because IB
  # switches its loss form at step 2.
  same_batch = [losses_seen[t] for t in (3, 6, 9)]
  assert same_batch[2] < same_batch[0], same_batch


def test_eqlv2_step_carries_the_library_statistics():
  model, tx, state, options = _variant("eqlv2")
  fn = jax.jit(
    lambda s, b: steps.teacher_step(s, b, model=model, tx=tx, options=options)
  )
  stats = losses.eqlv2_init(8)
  for t in range(3):
    b = batch(t)
    variables = {
      "params": host(state["params"]),
      "batch_stats": host(state["batch_stats"]),
    }
    (logits, _), _ = model.apply(
      variables, b["image"], train=True, mutable=["batch_stats"]
    )
    per, stats = losses.eqlv2_loss(logits, b["labels"], stats)
    state, m = fn(state, b)
    np.testing.assert_allclose(m["loss"], per.sum() / 16, rtol=1e-5)
    for k, v in stats._asdict().items():
      np.testing.assert_allclose(
        state["loss_state"][k], v, rtol=1e-5, err_msg=k
      )
  assert float(np.asarray(state["loss_state"]["pos_grad"]).sum()) > 0


def test_ib_switches_from_bce_at_its_start_step():
  model, tx, state, options = _variant("ib")
  fn = jax.jit(
    lambda s, b: steps.teacher_step(s, b, model=model, tx=tx, options=options)
  )
  for t in range(3):
    b = batch(t)
    variables = {
      "params": host(state["params"]),
      "batch_stats": host(state["batch_stats"]),
    }
    (logits, feats), _ = model.apply(
      variables, b["image"], train=True, mutable=["batch_stats"]
    )
    y = b["labels"]
    if t < 2:
      want = optax.sigmoid_binary_cross_entropy(logits, y).sum(-1).mean()
    else:
      want = (
        losses.influence_balanced_loss(logits, y, feats, np.array(COUNTS))
        .sum(-1)
        .mean()
      )
    state, m = fn(state, b)
    np.testing.assert_allclose(m["loss"], want, rtol=1e-4)


def test_ours_ride_updates_only_the_active_heads_experts():
  model, tx, state, options = _variant("ours_ride")
  before = host(state["params"])
  state, _ = jax.jit(
    lambda s, b: steps.teacher_step(s, b, model=model, tx=tx, options=options)
  )(state, batch(1))
  after = host(state["params"])
  for g in (0, 2):
    chex.assert_trees_all_equal(before[f"head_g{g}"], after[f"head_g{g}"])
  assert not np.array_equal(
    before["head_g1"]["expert0"]["kernel"],
    after["head_g1"]["expert0"]["kernel"],
  )
  assert set(before["head_g1"]) == {"expert0", "expert1", "expert2"}


def test_multi_teacher_encoders_learn_only_their_subset():
  model, tx, state, options = _variant("multi")
  b = batch(0)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}

  def loss_of_class(params, c):
    (logits, _), _ = model.apply(
      {**variables, "params": params},
      b["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return optax.sigmoid_binary_cross_entropy(
      logits[:, c], b["labels"][:, c]
    ).sum()

  g = jax.grad(loss_of_class)(state["params"], 2)  # class 2 is in group 1
  norms = {k: float(optax.tree.norm(v)) for k, v in g.items()}
  assert norms["encoder_g1"] > 0
  assert norms["encoder_g0"] == 0 and norms["encoder_g2"] == 0


def test_subset_kd_student_step():
  model, _, state = make()
  teacher_vars = {
    "params": state["params"],
    "batch_stats": state["batch_stats"],
  }
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=8)
  tx = steps.adam(1e-3, 0.9, 0.99)
  s = steps.init_state(student, tx, (32, 32, 3), 1)
  kd = steps.KDOptions(kd="subset", groups=GROUPS)
  _, m = steps.student_step(
    s,
    batch(0),
    teacher_vars,
    model=student,
    teacher_model=model,
    tx=tx,
    class_counts=jnp.asarray(COUNTS, jnp.float32),
    options=kd,
  )
  assert float(m["kd"]) > 0
  with pytest.raises(ValueError, match="groups"):
    steps.KDOptions(kd="subset")


def test_teacher_parts_choose_schedule_and_reject_bad_combinations():
  from agt_jax import config as config_lib
  from agt_jax.train.agt import build_teacher

  enc = models.make_encoder("resnet_tiny")
  parts = lambda **kw: build_teacher(
    config_lib.get_config("smoke", **kw), enc, GROUPS, np.array(COUNTS), 1000
  )
  assert parts()[3] is False  # AGT alternates
  assert parts(loss="bags")[3] is True  # BAGS trains heads jointly
  model, _, _, joint = parts(teacher="multi")
  assert joint and isinstance(model, models.MultiTeacher)
  assert parts(loss="ride")[0].experts == 3
  # Bad combinations are rejected by config.validate, before any compute.
  check = lambda **kw: config_lib.validate(config_lib.get_config("smoke", **kw))
  with pytest.raises(ValueError, match="shared-encoder"):
    check(teacher="multi", loss="ride")
  with pytest.raises(ValueError, match="experts >= 2"):
    check(loss="ride", experts=1)
  with pytest.raises(ValueError, match="schedule"):
    config_lib.validate(config_lib.get_config("smoke", schedule="random"))


def test_frozen_encoder_keeps_weights_and_batch_stats_bit_identical():
  """Paper 001, Task 1.2: only the head trains; the encoder's parameters
  and batch-norm statistics do not move at all."""
  model = models.Student(
    models.make_encoder("resnet_tiny"), num_classes=3, freeze_encoder=True
  )
  tx = steps.frozen_encoder_tx(optax.adam(1e-2))
  state = steps.init_state(model, tx, (16, 16, 3), seed=0)
  before = jax.tree.map(
    np.asarray, {"p": state["params"], "s": state["batch_stats"]}
  )
  rng = np.random.default_rng(0)
  step = jax.jit(lambda s, b: steps.plain_step(s, b, model=model, tx=tx))
  for _ in range(3):
    batch = {
      "image": rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8),
      "labels": (rng.random((8, 3)) < 0.5).astype(np.uint8),
    }
    state, _ = step(state, batch)
  for a, b in zip(
    jax.tree.leaves(before["p"]["encoder"]),
    jax.tree.leaves(state["params"]["encoder"]),
    strict=True,
  ):
    np.testing.assert_array_equal(a, np.asarray(b))
  for a, b in zip(
    jax.tree.leaves(before["s"]),
    jax.tree.leaves(state["batch_stats"]),
    strict=True,
  ):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert not np.array_equal(
    before["p"]["head"]["kernel"], np.asarray(state["params"]["head"]["kernel"])
  )


@pytest.mark.parametrize("reweight", ["none", "gradient"])
def test_group_objective_is_eq14_against_float64(reweight):
  """teacher_objective="group": the loss of a stage is Eq. 14, the sum over
  the active group's classes only (negatives still weighted by the rule's
  weights from all classes); "all" sums every class."""
  from jax.test_util import check_grads

  from agt_jax import methods

  rng = np.random.default_rng(11)
  z = rng.normal(size=(12, 8)) * 2
  y = (rng.random((12, 8)) < 0.3).astype(np.float64)
  fn = methods.TEACHER_LOSSES["agt"].fn
  with jax.enable_x64(True):
    for g, classes in enumerate(GROUPS):
      opts = {
        o: steps.LossOptions(
          reweight=reweight, beta=2.0, groups=GROUPS, objective=o
        )
        for o in ("all", "group")
      }
      w = np.asarray(steps.negative_weights(jnp.asarray(z), y, opts["all"]))
      p = 1 / (1 + np.exp(-z))
      per = -(y * np.log(p) + w * (1 - y) * np.log(1 - p))  # Eq. 4
      want = per[:, list(classes)].sum() / len(z)  # Eq. 14 / N
      got, _, _ = fn(jnp.asarray(z), y, opts["group"], loss_state=None, group=g)
      np.testing.assert_allclose(got, want, rtol=1e-10)
      full, _, _ = fn(jnp.asarray(z), y, opts["all"], loss_state=None, group=g)
      np.testing.assert_allclose(full, per.sum() / len(z), rtol=1e-10)
      if reweight != "none":  # the rule's weights are gradient-stopped
        continue
      check_grads(
        lambda a: fn(a, y, opts["group"], loss_state=None, group=g)[0],
        (jnp.asarray(z),),
        order=1,
        modes=["rev"],
      )
  with pytest.raises(ValueError, match="objective"):
    steps.LossOptions(groups=GROUPS, objective="some")
  with pytest.raises(ValueError, match="needs the class groups"):
    steps.LossOptions(objective="group")


def test_weight_decay_is_decoupled_and_zero_is_plain_adam():
  """weight_decay=0 is optax.adam bit for bit; > 0 adds lr * wd * p to the
  Adam step (AdamW, decoupled), for the plain and the teacher transform."""
  import optax

  p = {"w": jnp.array([1.0, -2.0, 3.0])}
  g = {"w": jnp.array([0.5, 0.1, -0.3])}
  plain = steps.adam(1e-2, 0.9, 0.99)
  ref = optax.adam(1e-2, b1=0.9, b2=0.99)
  u0, _ = plain.update(g, plain.init(p), p)
  u1, _ = ref.update(g, ref.init(p), p)
  np.testing.assert_array_equal(u0["w"], u1["w"])
  decayed = steps.adam(1e-2, 0.9, 0.99, 0.1)
  u2, _ = decayed.update(g, decayed.init(p), p)
  np.testing.assert_allclose(u2["w"], u0["w"] - 1e-2 * 0.1 * p["w"], rtol=1e-6)
