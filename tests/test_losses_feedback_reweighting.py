"""The stable (feedback) re-weighting against a float64 loop reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from agt_jax import losses
from tests import references as ref


def batch(n=16, c=8, seed=0):
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(n, c)) * 3).astype(np.float32)
  freq = np.array([0.6, 0.4, 0.3, 0.2, 0.1, 0.08, 0.05, 0.03])[:c]
  y = (rng.random((n, c)) < freq).astype(np.float32)
  return z, y


def test_first_step_weights_are_one_and_statistics_match():
  z, y = batch()
  state = losses.feedback_reweight_init(8)
  np.testing.assert_array_equal(
    losses.feedback_reweight_weights(state), np.ones(8)
  )
  loss, new = losses.feedback_reweighted_bce(z, y, state)
  rloss, rw, rpos, rneg, rcount = ref.feedback_step(
    z, y, np.zeros(8), np.zeros(8), 0
  )
  np.testing.assert_allclose(rw, np.ones(8))
  np.testing.assert_allclose(loss, rloss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.pos, rpos, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(new.neg, rneg, rtol=1e-5, atol=1e-8)
  assert int(new.count) == rcount == 1


@pytest.mark.parametrize("beta,decay", [(2.0, 0.99), (1.0, 0.9), (3.0, 0.0)])
def test_three_steps_match_reference(beta, decay):
  state = losses.feedback_reweight_init(8)
  pos, neg, count = np.zeros(8), np.zeros(8), 0
  for t in range(3):
    z, y = batch(seed=t + 1)
    w = losses.feedback_reweight_weights(state, beta=beta)
    loss, state = losses.feedback_reweighted_bce(
      z, y, state, beta=beta, decay=decay
    )
    rloss, rw, pos, neg, count = ref.feedback_step(
      z, y, pos, neg, count, beta=beta, decay=decay
    )
    np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, rloss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.pos, pos, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(state.neg, neg, rtol=1e-5, atol=1e-8)
  # After the first step the weights are below 1 for some class: the
  # statistics are being used.
  assert float(losses.feedback_reweight_weights(state, beta=beta).min()) < 1


def test_weights_are_constants_and_gradients_check():
  z, y = batch(seed=3)
  _, state = losses.feedback_reweighted_bce(
    z, y, losses.feedback_reweight_init(8)
  )
  w = np.asarray(losses.feedback_reweight_weights(state), np.float64)
  g = jax.grad(lambda x: losses.feedback_reweighted_bce(x, y, state)[0].sum())(
    z
  )
  p = ref.sigmoid(z.astype(np.float64))
  expected = y * (p - 1) + w * (1 - y) * p
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
  with jax.enable_x64(True):
    z64 = jnp.asarray(z, jnp.float64)
    s64 = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a,
      state,
    )
    check_grads(
      lambda x: losses.feedback_reweighted_bce(x, y, s64)[0].sum(),
      (z64,),
      order=1,
      modes=("fwd", "rev"),
    )


def test_where_mask_excludes_rows_from_loss_and_statistics():
  z, y = batch(seed=4)
  state = losses.feedback_reweight_init(8)
  keep = np.arange(16) < 10
  loss, new = losses.feedback_reweighted_bce(z, y, state, where=keep)
  loss_ref, new_ref = losses.feedback_reweighted_bce(z[:10], y[:10], state)
  np.testing.assert_allclose(loss[:10], loss_ref, rtol=1e-6)
  assert np.all(np.asarray(loss[10:]) == 0)
  chex.assert_trees_all_close(new, new_ref, rtol=1e-6)


def test_sharded_statistics_equal_unsharded():
  z, y = batch(n=32, seed=5)
  _, state = losses.feedback_reweighted_bce(
    *batch(n=32, seed=6), losses.feedback_reweight_init(8)
  )
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  fn = jax.shard_map(
    lambda a, b, s: losses.feedback_reweighted_bce(a, b, s, axis_name="data"),
    mesh=mesh,
    in_specs=(P("data"), P("data"), P()),
    out_specs=(P("data"), P()),
  )
  dsh = NamedSharding(mesh, P("data"))
  loss_sh, state_sh = jax.jit(fn)(
    jax.device_put(z, dsh), jax.device_put(y, dsh), state
  )
  loss, state1 = losses.feedback_reweighted_bce(z, y, state)
  np.testing.assert_allclose(loss_sh, loss, rtol=1e-6)
  chex.assert_trees_all_close(state_sh, state1, rtol=1e-5)


def test_errors():
  z, y = batch()
  with pytest.raises(ValueError, match="decay"):
    losses.feedback_reweighted_bce(
      z, y, losses.feedback_reweight_init(8), decay=1.0
    )
  with pytest.raises(ValueError, match="state.pos"):
    losses.feedback_reweighted_bce(z, y, losses.feedback_reweight_init(5))
