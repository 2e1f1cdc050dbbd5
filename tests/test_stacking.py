"""Stacking (paper 003): OOF assembly that refuses leaks, nested CV of the
meta-learner, class mappings, permutation importances; the experiment at
smoke size."""

import json

import numpy as np
import pytest

from agt_jax import stacking
from tests.cli import run_cli

N, C = 12, 3
FOLDS = {
  0: np.array([0, 3, 6, 9]),
  1: np.array([1, 4, 7, 10]),
  2: np.array([2, 5, 8, 11]),
}


def honest(seed=0):
  rng = np.random.default_rng(seed)
  return {k: (rows, rng.random((len(rows), C))) for k, rows in FOLDS.items()}


def test_assemble_oof_places_every_row_from_its_own_fold():
  preds = {"a": honest(0), "b": honest(1)}
  oof = stacking.assemble_oof(preds, FOLDS, N)
  assert oof.shape == (N, 2, C) and np.isfinite(oof).all()
  for _k, (rows, p) in preds["b"].items():
    np.testing.assert_array_equal(oof[rows, 1], p)


def test_assemble_oof_refuses_a_leaked_row():
  preds = {"a": honest(0), "b": honest(1)}
  rows, p = preds["b"][0]
  preds["b"][0] = (np.array([0, 3, 6, 1]), p)  # row 1 is fold 1's
  with pytest.raises(
    stacking.LeakError,
    match="b fold 0: 1 predicted rows "
    "were not held out by fold 0 .e.g. row 1, held out by "
    "fold 1",
  ):
    stacking.assemble_oof(preds, FOLDS, N)
  preds = {"a": honest(0)}
  del preds["a"][2]
  with pytest.raises(stacking.LeakError, match="4 rows have no"):
    stacking.assemble_oof(preds, FOLDS, N)
  overlapping = {**FOLDS, 2: np.array([2, 5, 8, 0])}
  with pytest.raises(stacking.LeakError, match="another fold"):
    stacking.assemble_oof({"a": honest(0)}, overlapping, N)


class Spy:
  """A meta-classifier that records which rows (column 0 holds the row id)
  it was fitted on and predicts the mean label it saw."""

  fitted: list = []

  def fit(self, x, y):
    Spy.fitted.append(set(x[:, 0].astype(int).tolist()))
    self.p = float(np.mean(y))
    return self

  def predict_proba(self, x):
    return np.stack([np.full(len(x), 1 - self.p), np.full(len(x), self.p)], 1)


def test_nested_cv_never_fits_on_the_fold_it_scores():
  rng = np.random.default_rng(0)
  y = (rng.random((N, C)) < 0.5).astype(int)
  y[:2] = [[1, 1, 1], [0, 0, 0]]  # every class has both values
  y[[3, 4, 5]] = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
  fold_of = np.empty(N, int)
  for k, rows in FOLDS.items():
    fold_of[rows] = k
  x = np.column_stack([np.arange(N), rng.random((N, 4))])
  Spy.fitted = []
  out = stacking.nested_cv_stack(x, y, fold_of, Spy)
  assert len(Spy.fitted) == 3 * C
  for k, rows in FOLDS.items():
    for seen in Spy.fitted[k * C : (k + 1) * C]:
      assert seen == set(range(N)) - set(rows.tolist())
    # Each fold's rows get the other folds' label means.
    others = np.setdiff1d(np.arange(N), rows)
    np.testing.assert_allclose(
      out[rows], np.broadcast_to(y[others].mean(0), (len(rows), C))
    )


def test_meta_learner_learns_from_the_better_model():
  rng = np.random.default_rng(1)
  n = 400
  y = (rng.random((n, 2)) < 0.3).astype(int)
  good = np.clip(y + rng.normal(0, 0.2, y.shape), 0, 1)
  noise = rng.random((n, 2))
  x = np.concatenate([noise, good], 1)  # model 0: noise, 1: good
  fold_of = np.arange(n) % 4
  make = stacking.make_meta("hgb")
  stacked = stacking.nested_cv_stack(x, y, fold_of, make)
  from sklearn.metrics import roc_auc_score

  assert roc_auc_score(y[:, 0], stacked[:, 0]) > 0.9
  imp = stacking.meta_importance(stacking.fit_meta(x, y, make), x, y, 2)
  assert imp.shape == (2, 2)
  assert (imp[1] > imp[0] + 0.1).all()
  with pytest.raises(ValueError, match="unknown meta-learner"):
    stacking.make_meta("forest")


def test_derived_targets_and_the_external_mappings():
  """APTOS' DR = grades 1-4 (an appended OR column); ODIR's G maps to
  AIROGS' RG, its D to that derived DR; ISIC shares nothing."""
  y = np.eye(5, dtype=np.uint8)[[0, 1, 4, 0, 2]]
  names = [f"grade{i}" for i in range(5)]
  got, cols = stacking.with_derived(y, names, stacking.DERIVED["aptos2019"])
  assert cols == names + ["DR"]
  np.testing.assert_array_equal(got[:, -1], [0, 1, 1, 0, 1])
  odir = list("NDGCAHMO")
  pairs, _ = stacking.class_mapping(
    odir, cols, stacking.EXTERNAL_MAPPINGS["aptos2019"]
  )
  assert pairs == [(1, 5)]
  pairs, _ = stacking.class_mapping(
    odir, ["NRG", "RG"], stacking.EXTERNAL_MAPPINGS["airogs"]
  )
  assert pairs == [(2, 1)]
  pairs, unmapped = stacking.class_mapping(
    odir, ["MEL", "NV"], stacking.EXTERNAL_MAPPINGS["isic2018"]
  )
  assert pairs == [] and unmapped == odir
  with pytest.raises(ValueError, match="derived class DR"):
    stacking.with_derived(y, names[:4], stacking.DERIVED["aptos2019"])


def test_class_mapping_odir_to_rfmid():
  odir = ["N", "D", "G", "C", "A", "H", "M", "O"]
  rfmid = ["DR", "ARMD", "MH", "DN", "MYA", "ODC", "NORMAL"]
  pairs, unmapped = stacking.class_mapping(odir, rfmid, stacking.ODIR_TO_RFMID)
  assert pairs == [(0, 6), (1, 0), (2, 5), (4, 1), (6, 4)]
  assert unmapped == ["C", "H", "O"]
  same, none = stacking.class_mapping(odir, odir)
  assert same == [(i, i) for i in range(8)] and none == []
  with pytest.raises(ValueError, match="'XX' is not a class"):
    stacking.class_mapping(odir, rfmid, {"N": "XX"})


def test_stack_ensemble_smoke(tmp_path, cache):
  from tests import fixtures

  fixtures.make_rfmid(
    tmp_path / "rfmid", sizes={"train": 24, "val": 8, "test": 12}
  )
  fixtures.make_airogs(tmp_path / "airogs")
  wd = tmp_path / "stack"
  out = run_cli(
    "experiments.stack_ensemble",
    [
      "--preset",
      "smoke",
      "--workdir",
      str(wd),
      "--external",
      "shifted-synth",
      "--external",
      f"rfmid:{tmp_path / 'rfmid'}",
      "--external",
      f"airogs:{tmp_path / 'airogs'}",
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "## Out-of-fold scores" in out.stdout
  assert out.stdout.count("## External") == 3
  ext = json.loads((wd / "external.json").read_text())
  airogs = next(e for e in ext if e["dataset"] == "airogs")
  assert airogs["mapping"] == {"G": "RG"}
  z = np.load(wd / "oof.npz")
  n = len(z["labels"])
  assert z["oof"].shape == (n, 2, 8) and np.isfinite(z["oof"]).all()
  assert z["stacked"].shape == (n, 8) and set(z["fold"].tolist()) == {0, 1}
  # The OOF rows of fold k are exactly that run's test predictions.
  for k in (0, 1):
    t = np.load(wd / "densenet_tiny" / f"fold{k}" / "test_predictions.npz")
    np.testing.assert_array_equal(z["oof"][t["index"], 1], t["teacher"])
    assert (z["fold"][t["index"]] == k).all()
  report = (wd / "report.md").read_text()
  assert "synthetic" in report.lower() and "| stacked (hgb) |" in report
  assert "## External: odir5k-synth shifted" in report
  ext = json.loads((wd / "external.json").read_text())
  assert ext[0]["synthetic"] and ext[0]["patient_overlap"].startswith("none")
  assert set(ext[0]["auc"]) == {
    "resnet_tiny",
    "densenet_tiny",
    "mean of models",
    "stacked (hgb)",
    "stacked (logistic)",
  }
  assert "| stacked (logistic) |" in report
  rf = ext[1]
  assert rf["dataset"] == "rfmid" and not rf["synthetic"]
  assert rf["images"] == 44
  assert rf["mapping"] == {
    "N": "NORMAL",
    "D": "DR",
    "G": "ODC",
    "A": "ARMD",
    "M": "MYA",
  }
  assert rf["unmapped"] == ["C", "H", "O"]
  assert "unmapped (dropped): C, H, O" in report
  assert (wd / "importance.png").stat().st_size > 1000
  bad = run_cli(
    "experiments.stack_ensemble",
    ["--preset", "smoke", "--workdir", str(wd), "--folds", "0"],
    cache,
  )
  assert bad.returncode == 2 and "needs every fold" in bad.stderr


def test_xgboost_meta_learner_names_its_extra(monkeypatch):
  import builtins

  real = builtins.__import__

  def no_xgboost(name, *a, **k):
    if name == "xgboost":
      raise ImportError("No module named 'xgboost'")
    return real(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_xgboost)
  with pytest.raises(ImportError, match=r"pip install 'agt-jax\[xgboost\]'"):
    stacking.make_meta("xgboost")


def test_importance_is_scored_on_held_out_rows():
  # Model 0 is noise, model 1 predicts the label. In-sample, the boosted
  # trees memorise the noise column and "lose" AUC when it is shuffled;
  # on held-out folds that reliance is (close to) zero.
  rng = np.random.default_rng(3)
  n = 600
  y = (rng.random((n, 1)) < 0.3).astype(int)
  good = np.clip(y + rng.normal(0, 0.6, y.shape), -1, 2)
  x = np.concatenate([rng.random((n, 1)), good], 1)
  fold_of = np.arange(n) % 5
  make = stacking.make_meta("hgb")
  stacked, fold_models = stacking.nested_cv_stack(
    x, y, fold_of, make, return_models=True
  )
  assert sorted(fold_models) == [0, 1, 2, 3, 4]
  np.testing.assert_allclose(
    stacked, stacking.nested_cv_stack(x, y, fold_of, make)
  )
  held = stacking.nested_cv_importance(fold_models, x, y, fold_of, 2)
  inside = stacking.meta_importance(stacking.fit_meta(x, y, make), x, y, 2)
  assert held.shape == inside.shape == (2, 1)
  assert held[1, 0] > 0.1  # the useful model matters
  assert abs(held[0, 0]) < 0.03  # noise does not, held out
  assert inside[0, 0] > held[0, 0] + 0.03  # but seems to, in-sample
  # The average is fold k's importance of fold k's models on fold k's rows,
  # weighted by rows: recompute it by hand from meta_importance.
  by_hand = np.mean(
    [
      stacking.meta_importance(
        fold_models[k], x[fold_of == k], y[fold_of == k], 2, seed=k
      )
      for k in range(5)
    ],
    0,
  )
  np.testing.assert_allclose(held, by_hand)


def test_importance_of_a_class_without_both_labels_is_nan_held_out():
  x = np.random.default_rng(0).random((20, 2))
  y = np.zeros((20, 2), int)
  y[::3, 0] = 1  # class 1: never positive
  fold_of = np.arange(20) % 2
  _, fm = stacking.nested_cv_stack(
    x, y, fold_of, stacking.make_meta("logistic"), return_models=True
  )
  imp = stacking.nested_cv_importance(fm, x, y, fold_of, 2)
  assert np.isfinite(imp[:, 0]).all() and np.isnan(imp[:, 1]).all()


def test_xgboost_meta_learner_learns_when_installed():
  pytest.importorskip("xgboost")
  rng = np.random.default_rng(1)
  n = 400
  y = (rng.random((n, 2)) < 0.3).astype(int)
  good = np.clip(y + rng.normal(0, 0.2, y.shape), 0, 1)
  x = np.concatenate([rng.random((n, 2)), good], 1)
  fold_of = np.arange(n) % 4
  make = stacking.make_meta("xgboost")
  stacked, fm = stacking.nested_cv_stack(
    x, y, fold_of, make, return_models=True
  )
  from sklearn.metrics import roc_auc_score

  assert min(roc_auc_score(y[:, c], stacked[:, c]) for c in range(2)) > 0.9
  imp = stacking.nested_cv_importance(fm, x, y, fold_of, 2)
  assert (imp[1] > imp[0] + 0.1).all()
