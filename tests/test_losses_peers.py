"""Peer losses (focal, CB, DB, EQLv2, RIDE) against float64 references."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from agt_jax import losses
from tests import references as ref

COUNTS, N_TRAIN = ref.PEER_COUNTS, ref.PEER_N_TRAIN
batch, ride_inputs = ref.peer_batch, ref.ride_inputs
TORCH = pathlib.Path(__file__).parent / "torch_references"


# -- focal -------------------------------------------------------------------


def test_focal_is_optax_and_matches_torchvision_formula():
  assert losses.sigmoid_focal_loss is optax.losses.sigmoid_focal_loss
  z, y = batch()
  out = losses.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2.0)
  np.testing.assert_allclose(
    out, ref.torchvision_focal(z, y), rtol=1e-5, atol=1e-7
  )
  plain = losses.sigmoid_focal_loss(z, y, alpha=None, gamma=0.0)
  np.testing.assert_allclose(plain, ref.bce(z, y), rtol=1e-5, atol=1e-7)


# -- class-balanced ----------------------------------------------------------


def test_cb_weights_published_values():
  w = losses.class_balanced_weights(COUNTS, beta=0.9999)
  np.testing.assert_allclose(
    w,
    [0.0327, 0.0637, 0.1259, 0.2606, 0.5196, 1.0375, 2.0735, 3.8865],
    atol=6e-5,
  )
  np.testing.assert_allclose(w, ref.cb_weights(COUNTS, 0.9999), rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(w), 8.0, rtol=1e-6)
  np.testing.assert_allclose(
    losses.class_balanced_weights(COUNTS, beta=0.0), np.ones(8)
  )


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("beta", [0.999, 0.9999])
def test_cb_loss_normalised_equals_official(gamma, beta):
  z, y = batch()
  per = losses.class_balanced_loss(z, y, COUNTS, beta=beta, gamma=gamma)
  chex.assert_shape(per, z.shape)
  total = per.sum() / y.sum()
  np.testing.assert_allclose(
    total,
    ref.cb_loss_official_total(z.astype(np.float64), y, COUNTS, beta, gamma),
    rtol=1e-5,
  )
  # The sample without positives has zero weight on all its logits.
  np.testing.assert_array_equal(per[0], 0.0)


def test_cb_positive_bce_weights_only_positive_terms():
  z, y = batch()
  per = losses.class_balanced_positive_bce(z, y, COUNTS, beta=0.999)
  chex.assert_shape(per, z.shape)
  z64 = z.astype(np.float64)
  w = ref.cb_weights(COUNTS, 0.999)
  log_p = -np.logaddexp(0.0, -z64)  # log sigmoid(z)
  log_q = -np.logaddexp(0.0, z64)  # log (1 - sigmoid(z))
  want = -(w[None] * y * log_p + (1 - y) * log_q)
  np.testing.assert_allclose(per, want, rtol=1e-5, atol=1e-7)
  # Negatives are plain BCE whatever the class; positives scale by w_c.
  plain = optax.sigmoid_binary_cross_entropy(z, y)
  np.testing.assert_allclose(
    np.where(y == 0, per, 0), np.where(y == 0, plain, 0), rtol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(losses.class_balanced_weights(COUNTS, beta=0.999)).sum(),
    8.0,
    rtol=1e-6,
  )
  masked = losses.class_balanced_positive_bce(z, y, COUNTS, where=y > 0)
  np.testing.assert_array_equal(np.where(y > 0, 0.0, masked), 0.0)
  with jax.enable_x64(True):
    check_grads(
      lambda x: losses.class_balanced_positive_bce(x, y[:6], COUNTS),
      (jnp.asarray(z64[:6]),),
      order=2,
      modes=("fwd", "rev"),
    )


def test_cb_focal_modulator_stable_for_very_negative_logits():
  z = jnp.array([[-120.0, -120.0]])
  y = jnp.array([[1.0, 0.0]])
  per = losses.class_balanced_loss(z, y, np.array([10, 10]), gamma=2.0)
  # Positive with p ~ 0: modulator (1-p)^2 = 1, loss = weight * 120.
  np.testing.assert_allclose(per[0, 0], 120.0, rtol=1e-5)
  assert per[0, 1] == 0.0 or per[0, 1] < 1e-30


def test_cb_loss_grads():
  z, y = batch(n=6)
  with jax.enable_x64(True):
    check_grads(
      lambda x: losses.class_balanced_loss(x, y, COUNTS, gamma=2.0),
      (jnp.asarray(z, jnp.float64),),
      order=1,
      modes=("fwd", "rev"),
    )


# -- distribution-balanced ---------------------------------------------------


def test_db_loss_matches_reference_coco_and_voc():
  z, y = batch()
  out = losses.distribution_balanced_loss(z, y, COUNTS, N_TRAIN)
  chex.assert_shape(out, z.shape)
  np.testing.assert_allclose(
    out, ref.db_loss(z, y, COUNTS, N_TRAIN), rtol=1e-4, atol=1e-7
  )
  voc = dict(
    neg_scale=5.0, init_bias=0.05, map_alpha=0.1, map_beta=10.0, map_gamma=0.3
  )
  out = losses.distribution_balanced_loss(z, y, COUNTS, N_TRAIN, **voc)
  np.testing.assert_allclose(
    out, ref.db_loss(z, y, COUNTS, N_TRAIN, **voc), rtol=1e-4, atol=1e-7
  )


def test_db_loss_no_side_effects_and_no_positive_weight():
  z, y = batch()
  z_before = z.copy()
  out = losses.distribution_balanced_loss(z, y, COUNTS, N_TRAIN)
  np.testing.assert_array_equal(z, z_before)
  chex.assert_tree_all_finite(out)
  # Sample 0 has no positive: weight 1 + map_alpha (then /neg_scale).
  zz = z[0].astype(np.float64) - np.log(N_TRAIN / COUNTS - 1) * 0.05 / 2.0
  l = -ref.log_sigmoid(-2.0 * zz)
  expected = 2.0 * (1 - np.exp(-l)) ** 2 * (1.1 / 2.0) * l
  np.testing.assert_allclose(out[0], expected, rtol=1e-4)


def test_db_loss_grads():
  z, y = batch(n=6)
  with jax.enable_x64(True):
    check_grads(
      lambda x: losses.distribution_balanced_loss(x, y, COUNTS, N_TRAIN),
      (jnp.asarray(z, jnp.float64),),
      order=1,
      modes=("fwd", "rev"),
    )


# -- EQLv2 -------------------------------------------------------------------


def test_eqlv2_two_steps_match_reference():
  z1, y1 = batch(seed=1)
  z2, y2 = batch(seed=2)
  state = losses.eqlv2_init(8)
  l1, state = losses.eqlv2_loss(z1, y1, state)
  # First step: pos_neg = 100, every weight is (numerically) 1.
  np.testing.assert_allclose(l1, ref.bce(z1, y1), rtol=1e-5, atol=1e-7)
  rl1, pg, ng, pn = ref.eqlv2_step(
    z1.astype(np.float64), y1, np.zeros(8), np.zeros(8), np.full(8, 100.0)
  )
  np.testing.assert_allclose(state.pos_grad, pg, rtol=1e-5)
  np.testing.assert_allclose(state.neg_grad, ng, rtol=1e-5)
  l2, state2 = losses.eqlv2_loss(z2, y2, state)
  rl2, pg2, ng2, pn2 = ref.eqlv2_step(z2.astype(np.float64), y2, pg, ng, pn)
  np.testing.assert_allclose(l2, rl2, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(state2.pos_neg, pn2, rtol=1e-4)
  # Reference reduction: sum over classes, mean over samples.
  np.testing.assert_allclose(l2.sum() / 16, rl2.sum() / 16, rtol=1e-5)


def test_eqlv2_weights_are_constants():
  z, y = batch(seed=1)
  _, state = losses.eqlv2_loss(z, y, losses.eqlv2_init(8))
  g = jax.grad(lambda x: losses.eqlv2_loss(x, y, state)[0].sum())(z)
  q = 1 / (1 + np.exp(-12 * (np.asarray(state.pos_neg, np.float64) - 0.8)))
  w = (1 + 4 * (1 - q)) * y + q * (1 - y)
  expected = w * (ref.sigmoid(z.astype(np.float64)) - y)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)


def test_eqlv2_sharded_statistics_equal_unsharded():
  z, y = batch(n=32, seed=5)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  state = losses.eqlv2_init(8)
  fn = jax.shard_map(
    lambda a, b, s: losses.eqlv2_loss(a, b, s, axis_name="data"),
    mesh=mesh,
    in_specs=(P("data"), P("data"), P()),
    out_specs=(P("data"), P()),
  )
  dsh = NamedSharding(mesh, P("data"))
  loss_sh, state_sh = jax.jit(fn)(
    jax.device_put(z, dsh), jax.device_put(y, dsh), state
  )
  loss, state1 = losses.eqlv2_loss(z, y, state)
  np.testing.assert_allclose(loss_sh, loss, rtol=1e-6)
  chex.assert_trees_all_close(state_sh, state1, rtol=1e-5)


# -- RIDE --------------------------------------------------------------------


@pytest.mark.parametrize("reweight", [False, True])
@pytest.mark.parametrize("adf", [-0.2, 0.0, -0.45])
def test_ride_loss_matches_reference(reweight, adf):
  z, t = ride_inputs()
  out = losses.ride_loss(z, t, COUNTS, reweight=reweight, diversity_factor=adf)
  chex.assert_shape(out, ())
  np.testing.assert_allclose(
    out, ref.ride_loss(z, t, COUNTS, reweight=reweight, adf=adf), rtol=1e-5
  )


def test_ldam_margins():
  m = losses.ldam_margins(COUNTS)
  np.testing.assert_allclose(m.max(), 0.5, rtol=1e-6)
  np.testing.assert_allclose(m, 0.5 * (8 / COUNTS) ** 0.25, rtol=1e-5)


def test_ride_bad_targets():
  z, t = ride_inputs()
  with pytest.raises(ValueError, match="targets"):
    losses.ride_loss(z, t.astype(np.float32), COUNTS)
  with pytest.raises(ValueError, match=r"`expert_logits` must have rank 3"):
    losses.ride_loss(z[0], t, COUNTS)


# -- cross-checks with PyTorch autograd ----------------------------------------
# The gradients were computed once by torch autograd in float64
# (tests/torch_references/make_torch_references.py, versions in
# versions.json) on the same seeded inputs; CI compares without torch.


def test_ride_and_db_gradients_match_torch_autograd():
  want = np.load(TORCH / "torch_references.npz")
  z, t = ride_inputs()
  g = jax.grad(lambda x: losses.ride_loss(x, t, COUNTS, reweight=True))(z)
  np.testing.assert_allclose(g, want["ride_grad"], rtol=1e-4, atol=1e-6)
  zb, yb = batch()
  g = jax.grad(
    lambda a: losses.distribution_balanced_loss(a, yb, COUNTS, N_TRAIN).mean()
  )(zb)
  np.testing.assert_allclose(g, want["db_grad"], rtol=1e-4, atol=1e-7)
