"""Temperature scaling recovers a known temperature and keeps the ranking."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from agt_jax import calibration, metrics


def test_fit_recovers_the_temperature_that_made_the_probabilities():
  rng = np.random.default_rng(0)
  z = rng.normal(0, 2, (20000, 3))
  y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
  # over-confident by 2, 1 (calibrated) and under-confident by 0.5
  scale = np.array([2.0, 1.0, 0.5])
  p = 1 / (1 + np.exp(-z * scale))
  t = calibration.fit_temperature(y, p, per_class=True)
  np.testing.assert_allclose(t, scale, rtol=0.06)
  q = calibration.apply_temperature(p, t)
  assert (
    metrics.calibration_error(y, q)["pooled"]
    < 0.5 * metrics.calibration_error(y, p)["pooled"]
  )
  for j in range(3):  # the order within a class is unchanged
    assert roc_auc_score(y[:, j], q[:, j]) == pytest.approx(
      roc_auc_score(y[:, j], p[:, j]), abs=1e-12
    )
  shared = calibration.fit_temperature(y[:, :1], p[:, :1])
  assert shared == pytest.approx(2.0, rel=0.06)
  # a class without positives keeps T = 1
  t = calibration.fit_temperature(
    np.zeros((10, 1)), np.full((10, 1), 0.3), per_class=True
  )
  assert t.tolist() == [1.0]
