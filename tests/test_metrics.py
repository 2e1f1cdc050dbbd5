"""agt_jax.metrics: the official ODIR score and the long-tail report."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from agt_jax import metrics


def mann_whitney_auc(y, s):
  pos, neg = s[y == 1], s[y == 0]
  gt = (pos[:, None] > neg[None, :]).sum()
  eq = (pos[:, None] == neg[None, :]).sum()
  return (gt + 0.5 * eq) / (len(pos) * len(neg))


def kappa_by_hand(y, pred):
  po = np.mean(y == pred)
  pe = np.mean(y) * np.mean(pred) + np.mean(1 - y) * np.mean(1 - pred)
  return (po - pe) / (1 - pe)


def test_odir_score_hand_computed():
  gt = np.array([[1, 0, 1, 0], [0, 0, 1, 1]])
  pr = np.array([[0.9, 0.2, 0.4, 0.6], [0.1, 0.5, 0.7, 0.8]])
  s = metrics.odir_score(gt, pr)
  # TP=3 FN=1 FP=1 TN=3 (0.5 is a negative): accuracy .75, kappa .5,
  # 14 of 16 positive/negative pairs ordered: AUC .875.
  assert s["kappa"] == pytest.approx(0.5)
  assert s["f1"] == pytest.approx(0.75)
  assert s["auc"] == pytest.approx(0.875)
  assert s["final"] == pytest.approx((0.5 + 0.75 + 0.875) / 3)


def test_odir_threshold_is_strict():
  gt = np.zeros((4, 8), int)
  gt[:, 0] = 1
  pr = np.full((4, 8), 0.5)
  pr[:, 0] = 0.9
  s = metrics.odir_score(gt, pr)
  assert s["f1"] == 1.0  # with >= every 0.5 would be a false positive
  assert s["kappa"] == 1.0


def test_odir_score_random_matches_independent_formulas():
  rng = np.random.default_rng(0)
  gt = (rng.random((50, 8)) < 0.3).astype(int)
  pr = np.clip(gt * 0.35 + rng.random((50, 8)) * 0.65, 0, 1)
  s = metrics.odir_score(gt, pr)
  y, p = gt.ravel(), pr.ravel()
  pred = (p > 0.5).astype(int)
  assert s["kappa"] == pytest.approx(kappa_by_hand(y, pred), rel=1e-12)
  assert s["f1"] == pytest.approx(np.mean(y == pred), rel=1e-12)
  assert s["auc"] == pytest.approx(mann_whitney_auc(y, p), rel=1e-12)
  # micro-F1 on the flattened vector is accuracy, not the positive-class F1.
  pos_f1 = 2 * np.sum(pred & y) / (np.sum(pred) + np.sum(y))
  assert abs(s["f1"] - pos_f1) > 1e-3


def test_odir_score_bad_input():
  with pytest.raises(ValueError, match=r"`probs` has shape \(3, 8\)"):
    metrics.odir_score(np.zeros((2, 8)), np.zeros((3, 8)))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.odir_score(np.zeros((2, 2)), np.full((2, 2), np.nan))


def test_multilabel_report():
  rng = np.random.default_rng(1)
  gt = (rng.random((60, 4)) < [0.5, 0.3, 0.1, 0.0]).astype(int)
  pr = np.clip(gt * 0.4 + rng.random((60, 4)) * 0.6, 0, 1)
  names = ["a", "b", "c", "d"]
  r = metrics.multilabel_report(gt, pr, names, class_counts=[500, 60, 10, 0])
  for j, n in enumerate(names[:3]):
    assert r["per_class"][n]["auc"] == pytest.approx(
      mann_whitney_auc(gt[:, j], pr[:, j]), rel=1e-12
    )
    assert r["per_class"][n]["positives"] == gt[:, j].sum()
  assert math.isnan(r["per_class"]["d"]["auc"])  # no positive: undefined
  assert r["macro_auc_classes"] == 3
  assert r["macro_auc"] == pytest.approx(
    np.mean([r["per_class"][n]["auc"] for n in names[:3]])
  )
  assert r["shots"]["head"]["classes"] == ["a"]
  assert r["shots"]["medium"]["classes"] == ["b"]
  assert r["shots"]["tail"]["classes"] == ["c", "d"]
  assert r["shots"]["tail"]["auc"] == pytest.approx(r["per_class"]["c"]["auc"])
  assert r["odir"] == metrics.odir_score(gt, pr)


def test_sum_count_metrics_are_exact_means():
  a = {"loss": metrics.mean_metric(jnp.array([1.0, 2.0, 3.0]))}
  b = {
    "loss": metrics.mean_metric(
      jnp.array([10.0, 0.0]), where=jnp.array([True, False])
    )
  }
  merged = metrics.merge_metrics(a, b)
  # (1 + 2 + 3 + 10) / 4, not the mean of the two means.
  assert metrics.finalize_metrics(merged)["loss"] == pytest.approx(4.0)


def test_top1_report_by_shot_tier_hand_computed():
  counts = [500, 150, 60, 30, 10, 5]  # many: 0,1; medium: 2,3; few: 4,5
  y = np.array([0, 0, 1, 2, 3, 3, 4, 5, 5, 5])
  pred = np.array([0, 1, 1, 2, 0, 3, 4, 0, 0, 5])
  scores = np.eye(6)[pred] * 0.9 + 0.01
  r = metrics.top1_report(np.eye(6)[y], scores, counts)
  # all 6/10; many {0,0,1}: 2/3; medium {2,3,3}: 2/3; few {4,5,5,5}: 2/4.
  assert r == pytest.approx(
    {"all": 0.6, "many": 2 / 3, "medium": 2 / 3, "few": 0.5}
  )
  assert metrics.top1_report(y, scores, counts) == r  # ids as labels
  r = metrics.top1_report(y[:3], scores[:3], counts)
  assert math.isnan(r["medium"]) and math.isnan(r["few"])


def test_per_class_precision_recall_at_half_by_hand():
  y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]])
  p = np.array([[0.9, 0.6], [0.4, 0.7], [0.6, 0.2], [0.1, 0.8], [0.7, 0.3]])
  r = metrics.multilabel_report(y, p, ["a", "b"])
  # a: predicted {0, 2, 4}, true {0, 1, 4}: TP 2, FP 1, FN 1.
  # b: predicted {0, 1, 3}, true {1, 2}: TP 1, FP 2, FN 1.
  a, b = r["per_class"]["a"], r["per_class"]["b"]
  assert (a["precision"], a["recall"]) == pytest.approx((2 / 3, 2 / 3))
  assert (b["precision"], b["recall"]) == pytest.approx((1 / 3, 1 / 2))
  assert b["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
  assert r["macro_precision"] == pytest.approx(0.5)
  assert r["macro_recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)


@pytest.mark.filterwarnings(  # the all-negative case: kappa and AUC undefined
  "ignore::UserWarning", "ignore::sklearn.exceptions.UndefinedMetricWarning"
)
def test_one_class_report_scores_its_positives_by_hand():
  """One column (a binary target to scikit-learn) scores its positive
  label, not the negatives: the tuned-threshold search reads this."""
  y = np.array([[1], [1], [0], [0], [1]])
  p = np.array([[0.9], [0.4], [0.6], [0.1], [0.7]])
  a = metrics.multilabel_report(y, p, ["a"])["per_class"]["a"]
  # predicted {0, 2, 4}, true {0, 1, 4}: TP 2, FP 1, FN 1.
  assert (a["precision"], a["recall"], a["f1"]) == pytest.approx(
    (2 / 3, 2 / 3, 2 / 3)
  )
  none = metrics.multilabel_report(np.zeros((4, 1)), np.zeros((4, 1)), ["a"])
  assert none["per_class"]["a"]["f1"] == 0.0  # no positive, none called


def test_f1_eq16_hand_count_and_not_the_script_f1():
  labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
  probs = np.array(
    [[0.9, 0.6, 0.1], [0.2, 0.5, 0.7], [0.8, 0.4, 0.2], [0.1, 0.1, 0.1]]
  )
  # calls (> 0.5, strict): (0,0) TP, (0,1) FP, (1,1) 0.5 -> FN, (1,2) FP,
  # (2,0) TP, (2,1) FN: TP 2, FP 2, FN 2 -> 4 / (4 + 2 + 2) = 0.5
  assert metrics.f1_eq16(labels, probs) == 0.5
  # the script's F1 counts the 6 true negatives too: accuracy 8 / 12
  assert metrics.odir_score(labels, probs)["f1"] == pytest.approx(8 / 12)
  assert metrics.multilabel_report(labels, probs, ["a", "b", "c"])[
    "f1_eq16"
  ] == pytest.approx(0.5)
  assert metrics.f1_eq16(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0


def test_exact_match_by_label_count_hand_count():
  labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0]])
  probs = np.array(
    [
      [0.9, 0.1, 0.1],  # 1 label, exact
      [0.2, 0.7, 0.6],  # 2 labels, exact
      [0.8, 0.9, 0.5],  # 3 labels, 0.5 is a negative -> miss
      [0.1, 0.6, 0.1],  # 0 labels, a false call -> miss
      [0.7, 0.2, 0.9],  # 1 label, a false call -> miss
    ]
  )
  got = metrics.exact_match_by_label_count(labels, probs)
  assert got == {
    "0": {"images": 1, "exact": 0.0},
    "1": {"images": 2, "exact": 0.5},
    "2": {"images": 1, "exact": 1.0},
    "3": {"images": 1, "exact": 0.0},
    "all": {"images": 5, "exact": 0.4},
  }


def test_calibration_error_by_hand():
  y = np.array([[1], [0], [1], [1]])
  p = np.array([[0.9], [0.8], [0.3], [0.2]])
  # 2 bins: [0, .5): p .3 .2 -> conf .25, acc 1; [.5, 1]: .9 .8 -> .85, .5
  got = metrics.calibration_error(y, p, bins=2)
  assert got["pooled"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.35)
  assert got["per_class"] == [pytest.approx(0.55)]
  conf, acc, count = metrics.reliability_bins(y, p, bins=4)
  assert count.tolist() == [1, 1, 0, 2] and math.isnan(conf[2])
  assert metrics.calibration_error(y, y.astype(float), bins=5)["pooled"] == 0.0
