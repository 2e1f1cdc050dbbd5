"""Multi-label adaptations of peers (IB, RIDE, BAGS) and the multi-teacher KD
weights, against float64 references written from their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from agt_jax import losses
from tests import references as ref
from tests.test_losses_peers import COUNTS, batch

GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7))


def features(n=16, d=6, seed=1):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# -- influence-balanced --------------------------------------------------------


def test_ib_weights_sum_to_c_and_follow_inverse_counts():
  lam = np.asarray(losses.influence_balanced_weights(COUNTS))
  np.testing.assert_allclose(lam.sum(), 8.0, rtol=1e-6)
  np.testing.assert_allclose(lam[7] / lam[0], 1000 / 8, rtol=1e-5)


def test_ib_matches_reference_and_gradients():
  z, y = batch()
  h = features()
  out = losses.influence_balanced_loss(z, y, h, COUNTS)
  np.testing.assert_allclose(out, ref.ib_loss(z, y, h, COUNTS), rtol=2e-5)
  f = lambda z_, h_: losses.influence_balanced_loss(
    z_, y, h_, COUNTS, alpha=1.0
  ).sum()
  with jax.enable_x64(True):
    check_grads(
      f,
      (jnp.asarray(z, jnp.float64), jnp.asarray(h, jnp.float64)),
      order=1,
      modes=["rev"],
      atol=1e-5,
      rtol=1e-5,
    )


def test_ib_influence_factor_is_not_gradient_stopped():
  # The reference keeps the factor in the graph: the gradient w.r.t. the
  # features is nonzero even though plain BCE does not depend on them.
  z, y = batch()
  g = jax.grad(lambda h: losses.influence_balanced_loss(z, y, h, COUNTS).sum())(
    features()
  )
  assert float(jnp.abs(g).sum()) > 0


def test_ib_where_and_shape_errors():
  z, y = batch()
  h = features()
  out = losses.influence_balanced_loss(z, y, h, COUNTS, where=np.arange(16) < 4)
  assert np.all(np.asarray(out)[4:] == 0)
  with pytest.raises(ValueError, match="features"):
    losses.influence_balanced_loss(z, y, h[:3], COUNTS)


# -- RIDE (multi-label) ----------------------------------------------------------


@pytest.mark.parametrize("use_w", [False, True])
def test_ride_multilabel_matches_reference(use_w):
  rng = np.random.default_rng(3)
  zs = (rng.normal(size=(3, 16, 8)) * 5).astype(np.float32)
  _, y = batch()
  w = rng.random(8).astype(np.float32) if use_w else None
  got = losses.ride_multilabel_loss(
    zs, y, COUNTS, negative_weights=w, temperature=2.0
  )
  want = ref.ride_multilabel(zs, y, COUNTS, w=w, T=2.0)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_ride_multilabel_gradients_and_stopped_target():
  rng = np.random.default_rng(4)
  _, y = batch(8)
  with jax.enable_x64(True):
    zs = jnp.asarray(rng.normal(size=(3, 8, 8)) * 3, jnp.float64)
    check_grads(
      lambda z: losses.ride_multilabel_loss(z, y, COUNTS),
      (zs,),
      order=1,
      modes=["rev"],
      atol=1e-5,
      rtol=1e-5,
    )
  zs = jnp.asarray(zs, jnp.float32)
  # One expert only: the KL to a gradient-stopped copy of itself has zero
  # gradient, so the total gradient equals the margin-BCE gradient.
  one = zs[:1]
  g = jax.grad(lambda z: losses.ride_multilabel_loss(z, y, COUNTS))(one)
  g0 = jax.grad(
    lambda z: losses.ride_multilabel_loss(z, y, COUNTS, diversity_factor=0.0)
  )(one)
  np.testing.assert_allclose(g, g0, atol=1e-10)


# -- BAGS (multi-label) ----------------------------------------------------------


def test_bags_all_kept_matches_reference():
  z, y = batch()
  o = np.random.default_rng(5).normal(size=(16, 3)).astype(np.float32)
  pc, po = losses.bags_loss(z, o, y, GROUPS)
  np.testing.assert_allclose(
    pc.sum() + po.sum(), ref.bags_all_kept(z, o, y, GROUPS), rtol=1e-5
  )


def test_bags_subsampling_keeps_fg_and_ratio_times_others():
  rng = np.random.default_rng(6)
  y = np.zeros((64, 8), np.float32)
  y[:2, 7] = 1  # 2 foreground rows for the tail group (5, 6, 7)
  y[2:, 0] = 1
  z = rng.normal(size=(64, 8)).astype(np.float32)
  o = rng.normal(size=(64, 3)).astype(np.float32)
  pc, po = losses.bags_loss(
    z, o, y, GROUPS, key=jax.random.key(0), others_ratio=8.0
  )
  kept_tail = np.asarray(po)[:, 2] != 0
  assert kept_tail[:2].all() and kept_tail.sum() == 2 + 16
  # Rows kept in a group are averaged over exactly the kept rows.
  t = np.where(y[:, 5:].sum(1) > 0, 0.0, 1.0)
  np.testing.assert_allclose(
    np.asarray(po)[kept_tail, 2],
    ref.bce(o[kept_tail, 2], t[kept_tail]) / 18,
    rtol=1e-5,
  )
  again = losses.bags_loss(z, o, y, GROUPS, key=jax.random.key(0))
  np.testing.assert_array_equal(po, again[1])


def test_bags_rejects_overlapping_groups():
  z, y = batch()
  with pytest.raises(ValueError, match="partition"):
    losses.bags_loss(
      z, np.zeros((16, 2), np.float32), y, ((0, 1, 2), (2, 3, 4, 5, 6, 7))
    )


# -- multi-teacher KD weights ----------------------------------------------------


def test_subset_kd_weights_inverse_share_mean_one():
  w = np.asarray(losses.subset_kd_weights(GROUPS, COUNTS))
  share = np.array([1500, 430, 53], np.float64)
  lam = share.sum() / (3 * share)
  np.testing.assert_allclose(w, np.repeat(lam, [2, 3, 3]), rtol=1e-6)
  np.testing.assert_allclose(lam.mean(), np.mean(lam))


def test_ride_multilabel_finite_with_an_empty_class():
  rng = np.random.default_rng(7)
  zs = (rng.normal(size=(3, 16, 8)) * 5).astype(np.float32)
  _, y = batch()
  y[:, 7] = 0
  counts = COUNTS.copy()
  counts[7] = 0
  assert np.isfinite(float(losses.ride_multilabel_loss(zs, y, counts)))
  np.testing.assert_allclose(losses.ldam_margins(counts)[7], 0.5)
