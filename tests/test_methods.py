"""The method registries: one spec per name, read by the config, the steps
and the docs; a loss registered from outside trains; the import graph."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agt_jax import config as config_lib
from agt_jax import methods, models
from agt_jax.errors import ConfigError
from agt_jax.train import agt, steps, trainers
from agt_jax.train.trainers import TRAINERS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_choices_are_the_registries():
  c = config_lib.choices()
  assert c["loss"] == methods.TEACHER_LOSSES.names()
  assert c["reweight"] == methods.REWEIGHTS.names()
  assert c["kd"] == methods.KD.names()
  assert c["trainer"] == TRAINERS.names()
  assert c["transfer_loss"] == methods.TRANSFER_LOSSES.names()
  with pytest.raises(ConfigError, match="loss='eqlv3' is not one of"):
    config_lib.validate(config_lib.get_config("smoke", loss="eqlv3"))


def test_a_field_another_trainer_owns_is_refused_with_one_line():
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config_lib.get_config("smoke", attention="se"))
  assert str(e.value) == (
    "attention='se' belongs to trainer='transfer'; trainer='agt' ignores it."
  )
  with pytest.raises(ConfigError, match="kd='plain' belongs to trainer='agt'"):
    config_lib.validate(
      config_lib.get_config("smoke", trainer="gbg", student=False, kd="plain")
    )
  # The preset's own values of another trainer's fields are not a choice.
  config_lib.validate(
    config_lib.get_config("quick", trainer="gbg", student=False)
  )


def _toy_loss(logits, labels, options, **_):
  # Squared error on probabilities: nothing the library ships.
  per = (jax.nn.sigmoid(logits) - labels) ** 2
  return per.sum() / labels.shape[0], jnp.ones(logits.shape[-1]), None


@pytest.fixture
def toy_registered():
  spec = methods.register(
    methods.TEACHER_LOSSES,
    methods.TeacherLoss(
      "toy_squared", _toy_loss, "squared error on probabilities (test)"
    ),
  )
  yield spec
  del methods.TEACHER_LOSSES[spec.name]


def test_a_loss_registered_from_outside_trains_a_step(toy_registered):
  cfg = config_lib.validate(config_lib.get_config("smoke", loss="toy_squared"))
  groups = ((0, 7), (1, 2, 4, 5, 6), (3,))
  model, tx, options, _ = agt.build_teacher(
    cfg, models.make_encoder(cfg.model), groups, np.arange(1, 9), 100
  )
  state = steps.init_state(model, tx, (cfg.crop, cfg.crop, 3), 0)
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(
      rng.integers(0, 255, (4, cfg.crop, cfg.crop, 3)), jnp.uint8
    ),
    "labels": jnp.asarray(rng.integers(0, 2, (4, 8)), jnp.int32),
    "group": jnp.asarray(1, jnp.int32),
  }
  fn = jax.jit(
    chex.assert_max_traces(
      lambda s, b: steps.teacher_step(
        s, b, model=model, tx=tx, options=options
      ),
      n=1,
    )
  )
  new, m = fn(state, batch)
  # The loss is the toy's, recomputed from the same forward pass.
  (logits, _), _ = model.apply(
    {"params": state["params"], "batch_stats": state["batch_stats"]},
    batch["image"],
    train=True,
    mutable=["batch_stats", "aux"],
  )
  assert options.logit_shift is None  # the loss sees the logits as they are
  want = _toy_loss(logits, batch["labels"].astype(jnp.float32), options)[0]
  np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
  assert not jax.tree.all(
    jax.tree.map(
      lambda a, b: bool(jnp.array_equal(a, b)),
      state["params"]["encoder"],
      new["params"]["encoder"],
    )
  )
  # A name cannot be registered twice by accident.
  with pytest.raises(ValueError, match="already registered"):
    methods.register(methods.TEACHER_LOSSES, toy_registered)


def test_every_spec_that_needs_counts_is_refused_without_them():
  for spec in methods.TEACHER_LOSSES.values():
    if spec.needs:
      with pytest.raises(ValueError, match=spec.needs[0]):
        steps.LossOptions(loss=spec.name)


def test_stateful_specs_give_their_state():
  eq = methods.loss_state_init(steps.LossOptions(loss="eqlv2"), 8)
  assert set(eq) == {"pos_grad", "neg_grad", "pos_neg"}
  assert (
    methods.loss_state_init(steps.LossOptions(reweight="gradient"), 8) is None
  )
  fb = methods.loss_state_init(steps.LossOptions(reweight="feedback"), 8)
  assert set(fb) == {"pos", "neg", "count"}
  per_group = methods.loss_state_init(
    steps.LossOptions(
      reweight="feedback", rw_stats="group", groups=((0, 1), (2,))
    ),
    3,
  )
  assert np.shape(per_group["pos"]) == (2, 3)
  # A loss that takes no re-weighting carries no feedback state.
  assert (
    methods.loss_state_init(
      steps.LossOptions(loss="focal", reweight="feedback"), 8
    )
    is None
  )


def test_transfer_losses_match_optax():
  z = jnp.linspace(-3, 3, 16).reshape(2, 8)
  y = (jnp.arange(16).reshape(2, 8) % 3 == 0).astype(jnp.float32)
  np.testing.assert_allclose(
    steps.transfer_loss(z, y, steps.TransferOptions()),
    optax.sigmoid_binary_cross_entropy(z, y),
  )


def test_methods_doc_is_generated_from_the_specs():
  got = (ROOT / "docs" / "methods.md").read_text()
  assert got == trainers.markdown(), (
    "docs/methods.md is stale: python -m agt_jax.train.trainers > "
    "docs/methods.md"
  )
