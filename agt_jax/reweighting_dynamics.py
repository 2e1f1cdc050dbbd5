"""Re-weighting rules on a linear multi-label model: the runaway, measured.

A linear classifier on fixed features, trained with Adam under each negative
re-weighting rule, is the smallest setting in which the paper's rule
(``reweight="gradient"``) drifts every class to "always positive" while plain
BCE, the fed-back rule (``reweight="feedback"``) and EQLv2 do not. The tests
and ``docs/reweighting.md`` (through ``experiments/reweighting_runaway.py``)
use it; ``docs/reweighting.md`` has the algebra.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agt_jax import losses

# Image-level class shares close to ODIR-5K's (N, D, G, C, A, H, M, O).
ODIR_LIKE_FREQUENCIES = (0.40, 0.25, 0.06, 0.06, 0.05, 0.03, 0.05, 0.22)
RULES = ("bce", "gradient", "feedback", "eqlv2", "count")


def make_problem(
  num_examples: int = 4096,
  dim: int = 16,
  *,
  frequencies=ODIR_LIKE_FREQUENCIES,
  signal: float = 2.5,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """``(features [n, dim], labels [n, C])``: labels from a noisy linear
  model whose per-class offsets give the requested positive shares."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, dim)).astype(np.float32)
  w = rng.normal(size=(dim, len(frequencies))) / np.sqrt(dim) * signal
  score = x @ w + rng.logistic(size=(num_examples, len(frequencies)))
  thresholds = np.array(
    [np.quantile(score[:, j], 1.0 - f) for j, f in enumerate(frequencies)]
  )
  return x, (score > thresholds).astype(np.float32)


def _loss(rule, logits, labels, loss_state, beta):
  n = labels.shape[0]
  if rule == "bce":
    return optax.sigmoid_binary_cross_entropy(
      logits, labels
    ).sum() / n, loss_state
  if rule == "gradient":
    return losses.gradient_reweighted_bce(
      logits, labels, beta=beta
    ).sum() / n, loss_state
  if rule == "count":
    w = losses.count_reweight_weights(labels, beta=beta)
    return losses.reweighted_bce(logits, labels, w).sum() / n, loss_state
  if rule == "feedback":
    per, new = losses.feedback_reweighted_bce(
      logits, labels, losses.FeedbackState(*loss_state), beta=beta
    )
    return per.sum() / n, tuple(new)
  per, new = losses.eqlv2_loss(logits, labels, losses.EQLv2State(*loss_state))
  return per.sum() / n, tuple(new)


def _init_loss_state(rule, c):
  if rule == "feedback":
    return tuple(losses.feedback_reweight_init(c))
  if rule == "eqlv2":
    return tuple(losses.eqlv2_init(c))
  return ()


@functools.partial(
  jax.jit, static_argnames=("rule", "steps", "batch_size", "record_every")
)
def _train(x, y, key, *, rule, beta, lr, steps, batch_size, record_every):
  c = y.shape[1]
  params = {"w": jnp.zeros((x.shape[1], c)), "b": jnp.zeros((c,))}
  tx = optax.adam(lr)

  def p_on_negatives(params):
    p = jax.nn.sigmoid(x @ params["w"] + params["b"])
    return jnp.sum(p * (1 - y), 0) / jnp.maximum(jnp.sum(1 - y, 0), 1)

  def step(carry, t):
    params, opt, loss_state = carry
    idx = jax.random.randint(
      jax.random.fold_in(key, t), (batch_size,), 0, x.shape[0]
    )
    xb, yb = x[idx], y[idx]

    def f(p):
      return _loss(rule, xb @ p["w"] + p["b"], yb, loss_state, beta)

    (_, loss_state), g = jax.value_and_grad(f, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, upd), opt, loss_state), None

  def chunk(carry, i):
    carry, _ = jax.lax.scan(
      step, carry, i * record_every + jnp.arange(record_every)
    )
    return carry, p_on_negatives(carry[0])

  carry = (params, tx.init(params), _init_loss_state(rule, c))
  carry, trace = jax.lax.scan(chunk, carry, jnp.arange(steps // record_every))
  return carry[0], trace


def train_linear(
  features,
  labels,
  *,
  rule: str,
  beta: float = 2.0,
  lr: float = 1e-3,
  steps: int = 4000,
  batch_size: int = 64,
  record_every: int = 100,
  seed: int = 0,
) -> dict:
  """Trains a linear multi-label model under one re-weighting ``rule``.

  Args:
    features: `[n, d]` fixed inputs.
    labels: `[n, C]` multi-hot labels.
    rule: ``bce`` | ``gradient`` (paper Eqs. 1-4 per batch) | ``feedback``
      (:func:`agt_jax.losses.feedback_reweighted_bce`) | ``eqlv2`` |
      ``count`` (batch counts, paper Table 4).
    beta: exponent of the re-weighting mapping.
    lr, steps, batch_size: Adam and sampling (uniform with replacement).
    record_every: steps between records of the mean probability on
      negatives.
    seed: batch sampling seed.

  Returns:
    ``{"steps" [R], "p_neg" [R, C], "probs" [n, C]}``: the step of each
    record, the mean predicted probability on each class's negatives at
    that step, and the final probabilities.
  """
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
  if steps % record_every:
    raise ValueError("`steps` must be a multiple of `record_every`.")
  x = jnp.asarray(features, jnp.float32)
  y = jnp.asarray(labels, jnp.float32)
  params, trace = _train(
    x,
    y,
    jax.random.key(seed),
    rule=rule,
    beta=beta,
    lr=lr,
    steps=steps,
    batch_size=batch_size,
    record_every=record_every,
  )
  probs = jax.nn.sigmoid(x @ params["w"] + params["b"])
  return {
    "steps": np.arange(1, steps // record_every + 1) * record_every,
    "p_neg": np.asarray(trace),
    "probs": np.asarray(probs),
  }
