"""agt_jax.losses gradient re-weighting (paper Eqs. 1-4) against float64 refs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
from scipy.special import logit

from agt_jax import losses
from tests import references as ref


def paper_batch():
  """Paper §3.4.3: batch of 10; tail class 1 positive (p=.6) + 9 negatives
  (p=.2); head class 5 positives (p=.7) + 5 negatives (p=.1)."""
  z = np.zeros((10, 2))
  y = np.zeros((10, 2))
  z[0, 0], y[0, 0] = logit(0.6), 1
  z[1:, 0] = logit(0.2)
  z[:5, 1], y[:5, 1] = logit(0.7), 1
  z[5:, 1] = logit(0.1)
  return z, y


def random_batch(n=16, c=8, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, c)) * scale
  freq = np.array([0.6, 0.4, 0.3, 0.2, 0.1, 0.08, 0.05, 0.03])[:c]
  y = (rng.random((n, c)) < freq).astype(np.float32)
  return z.astype(np.float32), y


def test_paper_example_stats_and_weights_exact():
  z, y = paper_batch()
  with jax.enable_x64(True):
    pos, neg = losses.gradient_ratio_stats(jnp.asarray(z), jnp.asarray(y))
    np.testing.assert_allclose(pos, [-0.04, -0.15], rtol=0, atol=1e-15)
    np.testing.assert_allclose(neg, [0.18, 0.05], rtol=0, atol=1e-15)
    w = losses.gradient_reweight_weights(jnp.asarray(z), jnp.asarray(y))
    # (0.04 / (0.18 + 1e-8))^2 = 0.04938271056...; the head class gets 1.
    np.testing.assert_allclose(w[0], (0.04 / (0.18 + 1e-8)) ** 2, rtol=1e-12)
    np.testing.assert_allclose(w[0], 0.04938271056, rtol=1e-9)
    assert w[1] == 1.0
  w32 = losses.gradient_reweight_weights(z.astype(np.float32), y)
  np.testing.assert_allclose(w32, [0.0493827, 1.0], rtol=2e-6)


def test_paper_example_count_weights_exact():
  _, y = paper_batch()
  w = losses.count_reweight_weights(y)
  np.testing.assert_allclose(w, [(1 / 9) ** 2, 1.0], rtol=1e-6)
  np.testing.assert_allclose(w[0], 0.0123457, rtol=1e-5)
  # Dataset counts: 1000 positives of 9000 examples -> (1000/8000)^2.
  wd = losses.count_reweight_weights(
    y, class_counts=np.array([1000, 6000]), num_examples=9000
  )
  np.testing.assert_allclose(wd, [(1000 / 8000) ** 2, 1.0], rtol=1e-6)


def test_count_weights_requires_both_dataset_counts():
  with pytest.raises(ValueError, match="num_examples"):
    losses.count_reweight_weights(np.ones((2, 3)), class_counts=np.ones(3))


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_random_batch_matches_reference(beta):
  z, y = random_batch()
  pos, neg = losses.gradient_ratio_stats(z, y)
  rpos, rneg = ref.ratio_stats(z, y)
  np.testing.assert_allclose(pos, rpos, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(neg, rneg, rtol=1e-5, atol=1e-7)
  w = losses.gradient_reweight_weights(z, y, beta=beta)
  rw = ref.reweight(z, y, beta=beta)
  np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-7)
  loss = losses.gradient_reweighted_bce(z, y, beta=beta)
  chex.assert_shape(loss, z.shape)
  np.testing.assert_allclose(
    loss, ref.reweighted_bce(z, y, rw), rtol=1e-5, atol=1e-6
  )


def test_class_without_positive_gets_zero_weight():
  z, y = random_batch()
  y[:, 3] = 0
  w = losses.gradient_reweight_weights(z, y)
  assert w[3] == 0.0
  loss = losses.gradient_reweighted_bce(z, y)
  np.testing.assert_array_equal(loss[:, 3], 0.0)


def test_row_and_element_where_masks():
  z, y = random_batch(n=12)
  rows = np.arange(12) < 7
  w_mask = losses.gradient_reweight_weights(z, y, where=rows)
  w_sub = losses.gradient_reweight_weights(z[:7], y[:7])
  np.testing.assert_allclose(w_mask, w_sub, rtol=1e-6)
  loss = losses.gradient_reweighted_bce(z, y, where=rows)
  np.testing.assert_array_equal(loss[7:], 0.0)
  np.testing.assert_allclose(
    loss[:7], losses.gradient_reweighted_bce(z[:7], y[:7]), rtol=1e-6
  )
  elem = np.random.default_rng(1).random(z.shape) < 0.7
  pos, neg = losses.gradient_ratio_stats(z, y, where=elem)
  rpos, rneg = ref.ratio_stats(z, y, elem)
  np.testing.assert_allclose(pos, rpos, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(neg, rneg, rtol=1e-5, atol=1e-7)


def test_gradient_treats_weights_as_constants():
  z, y = random_batch()
  w = ref.reweight(z, y)
  g = jax.grad(lambda x: losses.gradient_reweighted_bce(x, y).sum())(z)
  p = ref.sigmoid(z.astype(np.float64))
  # d/dz of -(y log p + w (1-y) log(1-p)) with w constant.
  expected = y * (p - 1) + w * (1 - y) * p
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
  gw = jax.grad(lambda x: losses.gradient_reweight_weights(x, y).sum())(z)
  np.testing.assert_array_equal(gw, 0.0)


def test_reweighted_bce_check_grads_and_reference():
  z, y = random_batch()
  w = np.linspace(0.1, 1.0, z.shape[1])
  np.testing.assert_allclose(
    losses.reweighted_bce(z, y, w),
    ref.reweighted_bce(z, y, w),
    rtol=1e-5,
    atol=1e-6,
  )
  with jax.enable_x64(True):
    zz = jnp.asarray(z, jnp.float64)
    check_grads(
      lambda x: losses.reweighted_bce(x, y, w),
      (zz,),
      order=2,
      modes=("fwd", "rev"),
    )
    check_grads(
      lambda x: losses.reweighted_bce(zz, y, x),
      (jnp.asarray(w),),
      order=1,
      modes=("rev",),
    )
    check_grads(
      lambda x: losses.gradient_ratio_stats(x, y),
      (zz,),
      order=1,
      modes=("fwd", "rev"),
    )


def test_jit_and_vmap():
  z, y = random_batch(n=24)
  eager = losses.gradient_reweighted_bce(z, y)
  jitted = jax.jit(losses.gradient_reweighted_bce)(z, y)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  zs, ys = z.reshape(3, 8, -1), y.reshape(3, 8, -1)
  batched = jax.vmap(losses.gradient_reweight_weights)(zs, ys)
  for k in range(3):
    np.testing.assert_allclose(
      batched[k], losses.gradient_reweight_weights(zs[k], ys[k]), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_logits_are_finite(dtype):
  z = jnp.array([[-1e4, 1e4, 0.0], [300.0, -300.0, 50.0]], dtype)
  y = jnp.array([[1, 0, 1], [0, 1, 1]])
  loss = losses.gradient_reweighted_bce(z, y)
  assert loss.dtype == dtype
  chex.assert_tree_all_finite(loss)
  g = jax.grad(lambda x: losses.gradient_reweighted_bce(x, y).sum())(z)
  chex.assert_tree_all_finite(g)
  chex.assert_tree_all_finite(losses.reweighted_bce(z, y, jnp.ones(3)))


def _mesh():
  return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def test_shard_map_axis_name_equals_unsharded(n_devices):
  assert n_devices == 8
  z, y = random_batch(n=32, seed=3)
  mesh = _mesh()
  sharded = jax.shard_map(
    lambda a, b: losses.gradient_reweight_weights(a, b, axis_name="data"),
    mesh=mesh,
    in_specs=(P("data"), P("data")),
    out_specs=P(),
  )
  dsh = NamedSharding(mesh, P("data"))
  zd, yd = jax.device_put(z, dsh), jax.device_put(y, dsh)
  w_sharded = jax.jit(sharded)(zd, yd)
  w_full = losses.gradient_reweight_weights(z, y)
  np.testing.assert_allclose(w_sharded, w_full, rtol=1e-6)
  # Each shard alone sees a different batch: the psum is what makes it global.
  w_local = losses.gradient_reweight_weights(z[:4], y[:4])
  assert not np.allclose(w_local, w_full)
  # The per-element loss too, with a row mask.
  rows = np.arange(32) % 5 != 0
  loss_sh = jax.jit(
    jax.shard_map(
      lambda a, b, m: losses.gradient_reweighted_bce(
        a, b, where=m, axis_name="data"
      ),
      mesh=mesh,
      in_specs=(P("data"),) * 3,
      out_specs=P("data"),
    )
  )(zd, yd, jax.device_put(rows, dsh))
  np.testing.assert_allclose(
    loss_sh, losses.gradient_reweighted_bce(z, y, where=rows), rtol=1e-6
  )


def test_jit_with_named_sharding_equals_unsharded():
  z, y = random_batch(n=32, seed=4)
  dsh = NamedSharding(_mesh(), P("data"))
  zd, yd = jax.device_put(z, dsh), jax.device_put(y, dsh)
  w = jax.jit(losses.gradient_reweight_weights)(zd, yd)
  np.testing.assert_allclose(
    w, losses.gradient_reweight_weights(z, y), rtol=1e-6
  )
  loss = jax.jit(losses.gradient_reweighted_bce)(zd, yd)
  np.testing.assert_allclose(
    loss, losses.gradient_reweighted_bce(z, y), rtol=1e-6
  )


def test_bad_input_errors_name_argument_and_shape():
  z, y = random_batch()
  with pytest.raises(ValueError, match=r"`labels` has shape \(16, 7\)"):
    losses.gradient_reweighted_bce(z, y[:, :7])
  with pytest.raises(TypeError, match=r"`logits` must have a floating dtype"):
    losses.gradient_ratio_stats(z.astype(np.int32), y)
  with pytest.raises(ValueError, match=r"`logits` must have rank 2"):
    losses.reweighted_bce(z[0], y[0], np.ones(8))
  with pytest.raises(ValueError, match=r"`negative_weights` has shape \(5,\)"):
    losses.reweighted_bce(z, y, np.ones(5))
  with pytest.raises(ValueError, match=r"`where` must have shape \(16,\)"):
    losses.gradient_reweight_weights(z, y, where=np.ones(3, bool))
