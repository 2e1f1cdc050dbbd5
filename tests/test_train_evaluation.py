"""Evaluation helpers: validation-tuned thresholds, p on negatives, the
collapse message."""

import numpy as np
import pytest

from agt_jax import config as config_lib
from agt_jax import metrics
from agt_jax.train import evaluation

NAMES = list("NDGCAHMO")


def test_tune_thresholds_maximises_f1_per_class():
  rng = np.random.default_rng(0)
  y = (rng.random((200, 3)) < [0.5, 0.2, 0.05]).astype(int)
  p = np.clip(0.3 * y + rng.random((200, 3)) * 0.6, 0, 1)
  th = evaluation.tune_thresholds(y, p)
  for j in range(3):
    f1 = lambda t: metrics.multilabel_report(
      y[:, [j]], (p[:, [j]] > t).astype(float), ["c"]
    )["macro_f1"]
    # No threshold on a fine grid beats the tuned one.
    best_grid = max(f1(t) for t in np.linspace(0, 1, 401))
    assert f1(th[j]) >= best_grid - 1e-12
  # A class without a positive keeps 0.5.
  y[:, 2] = 0
  assert evaluation.tune_thresholds(y, p)[2] == 0.5


def test_tuned_score_with_half_thresholds_is_the_official_score():
  rng = np.random.default_rng(1)
  y = (rng.random((50, 8)) < 0.3).astype(int)
  p = rng.random((50, 8))
  got = evaluation.tuned_score(y, p, np.full(8, 0.5))
  want = metrics.odir_score(y, p)
  for k in want:
    np.testing.assert_allclose(got[k], want[k])
  assert got["macro_f1"] == metrics.macro_f1(y, p)
  # A threshold moves each class's cut: 0.3 on class 0 is F1 at p > 0.3.
  t = np.full(8, 0.5)
  t[0] = 0.3
  from sklearn.metrics import f1_score

  want0 = f1_score(y[:, 0], p[:, 0] > 0.3)
  rest = [f1_score(y[:, c], p[:, c] > 0.5) for c in range(1, 8)]
  np.testing.assert_allclose(
    evaluation.tuned_score(y, p, t)["macro_f1"],
    np.mean([want0, *rest]),
    rtol=1e-12,
  )
  # Thresholds at 0: everything positive, kappa 0.
  assert abs(evaluation.tuned_score(y, p, np.zeros(8))["kappa"]) < 1e-12


def test_negative_probabilities_and_collapse_message():
  y = np.array([[1, 0], [0, 0], [0, 1]])
  p = np.array([[0.9, 0.8], [0.4, 0.6], [0.2, 0.1]])
  np.testing.assert_allclose(
    evaluation.negative_probabilities(y, p), [0.3, 0.7]
  )
  cfg = config_lib.get_config("smoke", reweight="gradient", beta=2.0)
  collapsed = np.full(8, 0.9)
  msg = evaluation.collapse_message(
    collapsed, NAMES, "teacher", cfg, "validation split"
  )
  assert msg.startswith("The teacher collapsed: 8 of 8 classes")
  assert "reweight=feedback" in msg and msg.endswith(".")
  # Half of the classes or fewer above 0.5: no message.
  assert (
    evaluation.collapse_message(
      np.r_[np.full(4, 0.9), np.full(4, 0.1)], NAMES, "teacher", cfg, "x"
    )
    is None
  )
  msg = evaluation.collapse_message(collapsed, NAMES, "student", cfg, "x")
  assert "teacher" in msg


def test_global_threshold_maximises_flattened_kappa_by_hand():
  # One column is enough: positives at 0.4 and 0.35, negatives at 0.3 and
  # below. Any cut in [0.30, 0.35) separates them (kappa 1); the grid's
  # first perfect cut nearest 0.5 is 0.34.
  y = np.array([[1], [1], [0], [0], [0]])
  p = np.array([[0.4], [0.35], [0.3], [0.1], [0.2]])
  t = evaluation.tune_global_threshold(y, p)
  assert t == 0.34
  out = evaluation.global_threshold_score(y, p, t)
  assert out["kappa"] == 1.0 and out["threshold"] == 0.34
  # At the strict 0.5 nothing is called positive: kappa 0.
  assert metrics.odir_score(y, p)["kappa"] == 0.0


def test_report_carries_calibration_per_class_by_hand():
  y = np.array([[1, 0], [0, 0], [0, 1], [1, 1]])
  p = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.7, 0.8]])
  r = metrics.multilabel_report(y, p, ["a", "b"])["per_class"]
  assert r["a"]["called_positive"] == 0.75  # 0.9, 0.6, 0.7 > 0.5
  assert r["a"]["p_neg"] == pytest.approx((0.6 + 0.1) / 2)
  assert r["b"]["called_positive"] == 0.5
  assert r["b"]["p_neg"] == pytest.approx((0.2 + 0.7) / 2)


def test_predictors_of_one_model_share_one_program():
  """Each evaluation of a run (and every run of a process) builds a
  predictor; equal models reuse one compiled program, and the offset and
  temperature are its inputs, not constants baked into a new one."""
  from agt_jax import models
  from agt_jax.train import steps

  def model():
    return models.Teacher(
      models.make_encoder("resnet_tiny"), groups=((0, 1), (2,)), num_classes=3
    )

  tx = steps.adam(1e-3, 0.9, 0.99)
  state = steps.init_state(model(), tx, (16, 16, 3), seed=0)
  v = {"params": state["params"], "batch_stats": state["batch_stats"]}
  x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), np.uint8)
  p0, f0 = evaluation.predictor(model())(v, x)
  size = evaluation._predict._cache_size()
  off = np.array([0.5, -1.0, 2.0], np.float32)
  p1, f1 = evaluation.predictor(model(), off)(v, x)
  p2, _ = evaluation.predictor(model(), -off, temperature=2.0)(v, x)
  assert evaluation._predict._cache_size() == size + 2  # with offset, with T
  _ = evaluation.predictor(model(), 2 * off, temperature=3.0)(v, x)
  assert evaluation._predict._cache_size() == size + 2
  logit = lambda p: np.log(p) - np.log1p(-p)
  np.testing.assert_allclose(logit(p1), logit(p0) - off, atol=2e-5)
  np.testing.assert_allclose(logit(p2), (logit(p0) + off) / 2, atol=2e-5)
  np.testing.assert_array_equal(f0, f1)
  assert p0.shape == (4, 3)
