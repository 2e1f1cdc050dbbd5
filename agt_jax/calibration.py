"""Temperature scaling of multi-label probabilities, fitted on validation.

A logit :math:`z = \\log\\frac{p}{1-p}` becomes :math:`\\sigma(z / T)`:
``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens them.
One temperature for every class (``shared``) or one per class, each the
minimiser of the validation binary cross-entropy (a one-dimensional convex
problem in :math:`\\log T`, solved by a grid and golden-section search).
The sign of every logit is kept, so decisions at 0.5 (the strict ODIR
kappa and F1) never change, and so is the order within a class (its AUC);
per-class temperatures can reorder entries of different classes, which
moves the pooled AUC of the ODIR score. The calibration error is what
moves.

Reference: Guo et al., *On calibration of modern neural networks*, ICML 2017.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7
_LOG_T = (float(np.log(0.05)), float(np.log(20.0)))  # the search range


def _logits(probs) -> np.ndarray:
  p = np.clip(np.asarray(probs, np.float64), _EPS, 1 - _EPS)
  return np.log(p) - np.log1p(-p)


def apply_temperature(probs, temperature) -> np.ndarray:
  """``sigmoid(logit(probs) / T)`` with ``T`` a scalar or `[C]`."""
  z = _logits(probs) / np.asarray(temperature, np.float64)
  return 1.0 / (1.0 + np.exp(-z))


def _nll(z, y, t) -> float:
  zt = z / t
  # BCE with logits, stably: max(z, 0) - z y + log(1 + e^-|z|)
  return float(
    np.mean(np.maximum(zt, 0) - zt * y + np.log1p(np.exp(-np.abs(zt))))
  )


def _fit_one(z, y) -> float:
  grid = np.linspace(*_LOG_T, 81)
  k = int(np.argmin([_nll(z, y, np.exp(g)) for g in grid]))
  a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
  r = (np.sqrt(5) - 1) / 2
  for _ in range(40):  # golden section on [a, b]
    c, d = b - r * (b - a), a + r * (b - a)
    if _nll(z, y, np.exp(c)) < _nll(z, y, np.exp(d)):
      b = d
    else:
      a = c
  return float(np.exp((a + b) / 2))


def fit_temperature(labels, probs, *, per_class: bool = False):
  """The temperature(s) minimising the BCE of ``probs`` on ``labels``
  (`[n, C]`): a float, or `[C]` floats with ``per_class`` (a class with no
  positive or no negative keeps 1: its fit would run to an edge)."""
  z, y = _logits(probs), np.asarray(labels, np.float64)
  if not per_class:
    return _fit_one(z.ravel(), y.ravel())
  out = []
  for j in range(y.shape[1]):
    both = 0 < y[:, j].sum() < len(y)
    out.append(_fit_one(z[:, j], y[:, j]) if both else 1.0)
  return np.array(out)
