"""The runaway of the paper's re-weighting rule, and its stable form.

For a class with P = sum_pos (1 - p) and N = sum_neg p in a batch, the bias
gradient of the paper's loss (Eq. 4 with Eq. 1-3 weights) is -P + w N with
w = min(1, (P/N)^beta): never positive for beta >= 1, so nothing pulls the
class back from "always positive" (docs/reweighting.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agt_jax import losses
from agt_jax import reweighting_dynamics as rd


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_paper_rule_bias_gradient_is_never_positive(beta):
  """Property over 300 random batches with random logits and labels."""
  rng = np.random.default_rng(int(beta * 10))

  def bias_grad(b, z, y, rows):
    return jax.grad(
      lambda bb: losses.gradient_reweighted_bce(
        z + bb, y, beta=beta, where=rows
      ).sum()
    )(b)

  grad_fn = jax.jit(bias_grad)
  worst = -np.inf
  n, c = 64, 8
  for _t in range(300):
    # Batch sizes 2..64 as a row mask, so one compile serves them all.
    rows = np.arange(n) < rng.integers(2, n + 1)
    z = (
      rng.normal(size=(n, c)) * rng.uniform(0.1, 6) + rng.normal(size=c) * 3
    ).astype(np.float32)
    y = (rng.random((n, c)) < rng.uniform(0.01, 0.9, size=c)).astype(np.float32)
    g = np.asarray(grad_fn(jnp.zeros(c), z, y, rows))
    worst = max(worst, float(g.max()))
  # float32 rounding of -P + P when P = N.
  assert worst <= 1e-5, worst


def test_bce_bias_gradient_does_take_both_signs():
  """The property above is not vacuous: plain BCE's bias gradient N - P is
  positive on the same kind of batch."""
  z = np.full((10, 1), 2.0, np.float32)
  y = np.zeros((10, 1), np.float32)
  y[0] = 1
  g = jax.grad(lambda b: losses.reweighted_bce(z + b, y, jnp.ones(1)).sum())(
    jnp.zeros(1)
  )
  assert float(g[0]) > 0
  g = jax.grad(lambda b: losses.gradient_reweighted_bce(z + b, y).sum())(
    jnp.zeros(1)
  )
  assert float(g[0]) <= 0


@pytest.fixture(scope="module")
def problem():
  return rd.make_problem()


def mean_p_neg(run):
  return float(run["p_neg"][-1].mean())


def test_paper_rule_runs_away_to_positive(problem):
  x, y = problem
  run = rd.train_linear(
    x, y, rule="gradient", beta=2.0, lr=3e-3, steps=20000, record_every=1000
  )
  assert mean_p_neg(run) > 0.9
  # It climbs: later records are higher than earlier ones on average.
  assert run["p_neg"][-1].mean() > run["p_neg"][1].mean()


@pytest.mark.parametrize("rule", ["feedback", "bce"])
def test_stable_rule_and_bce_stay_low(problem, rule):
  x, y = problem
  run = rd.train_linear(
    x, y, rule=rule, beta=2.0, lr=3e-3, steps=20000, record_every=1000
  )
  assert mean_p_neg(run) < 0.3
  assert run["p_neg"][-1].max() < 0.3


def test_train_linear_rejects_bad_arguments(problem):
  x, y = problem
  with pytest.raises(ValueError, match="rule"):
    rd.train_linear(x, y, rule="nope")
  with pytest.raises(ValueError, match="multiple"):
    rd.train_linear(x, y, rule="bce", steps=150, record_every=100)
