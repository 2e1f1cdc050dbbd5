"""Binary KD and class-balanced KD (paper Eqs. 5-8) against float64 refs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from agt_jax import losses
from tests import references as ref


def logits_pair(n=16, c=8, seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(n, c)).astype(np.float32) * 3,
    rng.normal(size=(n, c)).astype(np.float32) * 3,
  )


@pytest.mark.parametrize("direction", ["teacher_student", "student_teacher"])
@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_binary_kl_matches_reference(direction, temperature):
  zs, zt = logits_pair()
  out = losses.binary_kl_divergence(
    zs, zt, temperature=temperature, direction=direction
  )
  chex.assert_shape(out, zs.shape)
  expected = ref.binary_kl(
    zs.astype(np.float64), zt.astype(np.float64), temperature, direction
  )
  # float32: the log-ratio terms cancel, so the error scales with T^2 ulps.
  np.testing.assert_allclose(
    out, expected, rtol=2e-5, atol=1e-6 * temperature**2
  )
  assert np.all(np.asarray(out) >= -1e-6 * temperature**2)
  with jax.enable_x64(True):
    out64 = losses.binary_kl_divergence(
      jnp.asarray(zs, jnp.float64),
      jnp.asarray(zt, jnp.float64),
      temperature=temperature,
      direction=direction,
    )
    np.testing.assert_allclose(out64, expected, rtol=1e-10, atol=1e-13)


def test_directions_differ_and_vanish_on_equal_logits():
  zs, zt = logits_pair()
  a = losses.binary_kl_divergence(zs, zt, direction="teacher_student")
  b = losses.binary_kl_divergence(zs, zt, direction="student_teacher")
  assert not np.allclose(a, b)
  np.testing.assert_allclose(
    losses.binary_kl_divergence(zs, zs), 0.0, atol=1e-6
  )


def test_unknown_direction_raises():
  zs, zt = logits_pair()
  with pytest.raises(ValueError, match="direction"):
    losses.binary_kl_divergence(zs, zt, direction="forward")


def test_kd_gradient_identity_and_teacher_is_constant():
  zs, zt = logits_pair()
  t = 5.0
  gs, gt = jax.grad(
    lambda s, q: losses.binary_kl_divergence(s, q, temperature=t).sum(),
    argnums=(0, 1),
  )(zs, zt)
  # d/dz_s T^2 KL(t||s) = T (sigmoid(z_s/T) - sigmoid(z_t/T)).
  expected = t * (ref.sigmoid(zs / t) - ref.sigmoid(zt / t))
  np.testing.assert_allclose(gs, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(gt, 0.0)
  with jax.enable_x64(True):
    zt64 = jnp.asarray(zt, jnp.float64)
    for direction in ("teacher_student", "student_teacher"):
      check_grads(
        lambda s: losses.binary_kl_divergence(s, zt64, direction=direction),
        (jnp.asarray(zs, jnp.float64),),
        order=2,
        modes=("fwd", "rev"),
      )


def test_cb_kd_weights_paper_examples_exact():
  counts = np.array([1000, 200, 50])
  labels = np.array(
    [
      [0, 1, 1],  # paper: classes 2 and 3 -> 0.8
      [0, 0, 1],  # single label -> 1
      [1, 1, 1],
      [1, 1, 0],
      [0, 0, 0],
    ]
  )  # no positive -> 1
  w = losses.class_balanced_kd_weights(labels, counts)
  np.testing.assert_allclose(w[0], 0.8, rtol=1e-6)
  assert w[1] == 1.0 and w[4] == 1.0
  np.testing.assert_allclose(
    w, [ref.cb_kd_weight(r, counts) for r in labels], rtol=1e-6
  )
  np.testing.assert_allclose(w[2:4], [0.7692307692, 0.8333333333], rtol=1e-6)


def test_class_balanced_kd_is_weighted_sum_of_kl():
  zs, zt = logits_pair()
  rng = np.random.default_rng(2)
  y = (rng.random(zs.shape) < 0.3).astype(np.int32)
  counts = np.array([900, 500, 300, 120, 60, 30, 15, 8])
  out = losses.class_balanced_kd(zs, zt, y, counts, temperature=5.0)
  chex.assert_shape(out, (16,))
  w = np.array([ref.cb_kd_weight(r, counts) for r in y])
  expected = w * ref.binary_kl(
    zs.astype(np.float64), zt.astype(np.float64), 5.0, "teacher_student"
  ).sum(1)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-4)
  jitted = jax.jit(losses.class_balanced_kd)(zs, zt, y, counts)
  np.testing.assert_allclose(out, jitted, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kd_finite_for_extreme_logits(dtype):
  zs = jnp.array([[-1e4, 1e4, 0.0, 80.0]], dtype)
  zt = jnp.array([[1e4, -1e4, 30.0, -80.0]], dtype)
  out = losses.binary_kl_divergence(zs, zt, temperature=1.0)
  chex.assert_tree_all_finite(out)
  chex.assert_tree_all_finite(
    jax.grad(lambda s: losses.binary_kl_divergence(s, zt).sum())(zs)
  )


def test_kd_bad_input():
  zs, zt = logits_pair()
  with pytest.raises(ValueError, match=r"`teacher_logits` has shape"):
    losses.binary_kl_divergence(zs, zt[:, :3])
  with pytest.raises(
    ValueError, match=r"`class_counts` must have shape \(8,\)"
  ):
    losses.class_balanced_kd_weights(np.ones((16, 8)), np.ones(3))
  with pytest.raises(TypeError, match=r"`student_logits` must have a floating"):
    losses.binary_kl_divergence(zs.astype(np.int32), zt)


# -- Eq. 7 as written ----------------------------------------------------------


def test_eq7_weights_paper_example_and_loop_reference():
  counts = np.array([1000.0, 200.0, 50.0])
  y = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32)
  w = np.asarray(losses.eq7_kd_weights(y, counts))
  # Paper: an image of classes 2 and 3 -> class 3 term weighted 0.8.
  np.testing.assert_allclose(w[0], [0, 0.2, 0.8], rtol=1e-6)
  np.testing.assert_allclose(w[1], [0, 0, 1], rtol=1e-6)
  inv = 1 / counts
  np.testing.assert_allclose(w[2], inv / inv.sum(), rtol=1e-6)
  np.testing.assert_array_equal(w[3], 0)
  # Each image's weights sum to 1 over its positives.
  np.testing.assert_allclose(w[:3].sum(1), 1, rtol=1e-6)


def test_eq7_kd_matches_loop_reference_and_grads():
  rng = np.random.default_rng(0)
  zs = (rng.normal(size=(6, 3)) * 3).astype(np.float32)
  zt = (rng.normal(size=(6, 3)) * 3).astype(np.float32)
  y = (rng.random((6, 3)) < 0.5).astype(np.float32)
  y[0] = [1, 0, 0]
  counts = np.array([300.0, 40.0, 9.0])
  got = np.asarray(
    losses.eq7_class_balanced_kd(zs, zt, y, counts, temperature=5.0)
  )
  want = np.zeros((6, 3))
  for i in range(6):
    pos = [k for k in range(3) if y[i, k]]
    for j in pos:
      ws = (1 / counts[j]) / sum(1 / counts[k] for k in pos)
      qt = 1 / (1 + np.exp(-zt[i, j] / 5.0))
      qs = 1 / (1 + np.exp(-zs[i, j] / 5.0))
      kl = qt * np.log(qt / qs) + (1 - qt) * np.log((1 - qt) / (1 - qs))
      want[i, j] = 25.0 * kl * ws
  # float32 KL of nearly equal distributions: absolute error ~1e-6.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-6)
  # It differs from the per-image reading (which also distils negatives).
  per_image = np.asarray(losses.class_balanced_kd(zs, zt, y, counts))
  assert not np.allclose(got.sum(1), per_image)
  with jax.enable_x64(True):
    check_grads(
      lambda a: losses.eq7_class_balanced_kd(
        a, jnp.asarray(zt, jnp.float64), y, counts
      ).sum(),
      (jnp.asarray(zs, jnp.float64),),
      order=1,
      modes=("fwd", "rev"),
    )


@pytest.mark.parametrize("direction", ["teacher_student", "student_teacher"])
def test_kd_scale_none_is_the_t2_loss_over_t_squared(direction):
  """``scale="none"`` is Eqs. 6-8 as written: the T² loss / T², for the
  per-class KL, both class-balanced readings and every KD registry entry."""
  from agt_jax import methods
  from agt_jax.train import steps

  zs, zt = logits_pair(seed=3)
  y = (np.random.default_rng(3).random(zs.shape) < 0.3).astype(np.float32)
  counts = np.maximum(y.sum(0), 1.0)
  t = 5.0
  with jax.enable_x64(True):
    zs64, zt64 = zs.astype(np.float64), zt.astype(np.float64)
    want = ref.binary_kl(zs64, zt64, t, direction)  # includes T²
    got = losses.binary_kl_divergence(
      zs64, zt64, temperature=t, direction=direction, scale="none"
    )
    np.testing.assert_allclose(got, want / t**2, rtol=1e-9, atol=1e-15)
    check_grads(
      lambda a: losses.binary_kl_divergence(
        a, zt64, temperature=t, direction=direction, scale="none"
      ).sum(),
      (zs64,),
      order=2,
      modes=["rev"],
    )
  for fn in (losses.class_balanced_kd, losses.eq7_class_balanced_kd):
    kw = dict(temperature=t, direction=direction)
    np.testing.assert_allclose(
      fn(zs, zt, y, counts, **kw, scale="none"),
      fn(zs, zt, y, counts, **kw) / t**2,
      rtol=1e-6,
    )
  groups = ((0, 1, 2), (3, 4, 5, 6, 7))
  for kd in methods.KD.names():
    if kd == "none":
      continue
    opts = dict(kd=kd, temperature=t, direction=direction, groups=groups)
    fn = methods.KD[kd].fn
    a = fn(zs, zt, y, counts, steps.KDOptions(**opts, scale="none"))
    b = fn(zs, zt, y, counts, steps.KDOptions(**opts))
    np.testing.assert_allclose(a, b / t**2, rtol=1e-6, err_msg=kd)
  with pytest.raises(ValueError, match="scale"):
    losses.binary_kl_divergence(zs, zt, scale="t")
