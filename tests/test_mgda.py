"""agt_jax.mgda.min_norm_weights against a plain port of the reference solver
and against the exact quadratic programme."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from agt_jax import mgda
from tests import references as ref


def exact_min_norm(v):
  g = v @ v.T
  k = len(v)
  res = minimize(
    lambda c: c @ g @ c,
    np.full(k, 1 / k),
    jac=lambda c: 2 * g @ c,
    bounds=[(0, 1)] * k,
    method="SLSQP",
    options={"ftol": 1e-14},
    constraints=[{"type": "eq", "fun": lambda c: c.sum() - 1}],
  )
  return res.x, res.fun


def test_two_vector_cases():
  a = jnp.array([1.0, 0.0])
  b = jnp.array([0.0, 1.0])
  w, d = mgda.min_norm_weights(jnp.stack([a, b]))
  np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(d, 0.5, rtol=1e-6)
  # Collinear, same direction: the reference clips to 0.999 / 0.001.
  w, d = mgda.min_norm_weights(jnp.stack([a, 2 * a]))
  np.testing.assert_allclose(w, [0.999, 0.001], atol=1e-6)
  np.testing.assert_allclose(d, 1.0)
  w, _ = mgda.min_norm_weights(jnp.stack([2 * a, a]))
  np.testing.assert_allclose(w, [0.001, 0.999], atol=1e-6)
  # General closed form c = (|b|^2 - <a,b>) / |a - b|^2.
  a, b = np.array([2.0, 1.0]), np.array([-1.0, 1.0])
  c = (b @ b - a @ b) / ((a - b) @ (a - b))
  w, _ = mgda.min_norm_weights(jnp.array(np.stack([a, b]), jnp.float32))
  np.testing.assert_allclose(w, [c, 1 - c], rtol=1e-6)


@pytest.mark.parametrize(
  "k,d,seed", [(3, 5, 0), (4, 20, 1), (5, 50, 2), (6, 8, 3), (3, 1000, 4)]
)
def test_matches_reference_solver_and_exact_qp(k, d, seed):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(k, d)) + rng.normal(size=(1, d))  # correlated tasks
  with jax.enable_x64(True):
    w, cost = mgda.min_norm_weights(jnp.asarray(v))
    w, cost = np.asarray(w), float(cost)
  rw, rcost = ref.mgda_reference(v)
  np.testing.assert_allclose(w, rw, atol=1e-9)
  np.testing.assert_allclose(cost, rcost, rtol=1e-9)
  assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
  _, best = exact_min_norm(v)
  norm = w @ (v @ v.T) @ w
  assert norm <= best * (1 + 1e-4) + 1e-10
  w32, _ = mgda.min_norm_weights(jnp.asarray(v, jnp.float32))
  np.testing.assert_allclose(w32, rw, atol=2e-4)


def test_jit_and_bounded_loop():
  rng = np.random.default_rng(7)
  v = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
  w_jit, _ = jax.jit(mgda.min_norm_weights)(v)
  w, _ = mgda.min_norm_weights(v)
  np.testing.assert_allclose(w_jit, w, rtol=1e-6, atol=1e-7)
  # max_iters=0 returns the best-pair start.
  w0, _ = mgda.min_norm_weights(v, max_iters=0)
  assert int(jnp.sum(w0 > 0)) <= 2
  np.testing.assert_allclose(jnp.sum(w0), 1.0, rtol=1e-6)
  # A tolerance that can never be met still terminates.
  w_inf, _ = mgda.min_norm_weights(v, tol=0.0, max_iters=7)
  np.testing.assert_allclose(jnp.sum(w_inf), 1.0, rtol=1e-5)


def test_single_vector_and_bad_input():
  w, d = mgda.min_norm_weights(jnp.array([[3.0, 4.0]]))
  np.testing.assert_allclose(w, [1.0])
  np.testing.assert_allclose(d, 25.0)
  with pytest.raises(
    ValueError, match=r"`vectors` must be a floating \[K, D\]"
  ):
    mgda.min_norm_weights(jnp.ones(3))


def test_gradient_normalizers():
  g = jnp.array([[3.0, 4.0], [0.0, 2.0]])
  l = jnp.array([2.0, 0.5])
  np.testing.assert_allclose(mgda.gradient_normalizers(g, l), [10.0, 1.0])
  np.testing.assert_allclose(
    mgda.gradient_normalizers(g, l, kind="l2"), [5.0, 2.0]
  )
  with pytest.raises(ValueError, match="kind"):
    mgda.gradient_normalizers(g, l, kind="l1")
