"""Patient-level folds."""

import json

import numpy as np
import pytest

from agt_jax.data import folds, odir


@pytest.fixture(scope="module")
def table():
  return odir.packaged_label_table()


@pytest.mark.parametrize("mode", ["random", "stratified"])
def test_both_eyes_in_one_fold_and_balanced_sizes(table, mode):
  f = folds.patient_folds(table, seed=0, mode=mode)
  for pid in np.unique(table.patient_ids)[:500]:
    assert len(set(f[table.patient_ids == pid])) == 1
  sizes = np.bincount(f, minlength=5)
  assert sizes.sum() == len(table)
  assert sizes.min() >= 0.95 * len(table) / 5
  np.testing.assert_array_equal(
    f, folds.patient_folds(table, seed=0, mode=mode)
  )


def test_random_folds_are_700_patients_each(table):
  f = folds.patient_folds(table, seed=3)
  patients = [len(np.unique(table.patient_ids[f == k])) for k in range(5)]
  assert patients == [700] * 5


def test_stratified_spreads_tail_classes(table):
  spread = {}
  for mode in ("random", "stratified"):
    devs = []
    for seed in range(5):
      f = folds.patient_folds(table, seed=seed, mode=mode)
      h = np.array([table.labels[f == k, 5].sum() for k in range(5)])
      devs.append(h.max() - h.min())
    spread[mode] = np.mean(devs)
  assert spread["stratified"] < spread["random"]


def test_fold_split_and_its_assignment(table):
  train, test, a = folds.fold_split(table, 2, seed=0)
  assert len(train) + len(test) == len(table)
  assert not set(train.patient_ids) & set(test.patient_ids)
  assert a["num_test_images"] == len(test) and len(a["test_patients"]) == 700
  back = json.loads(json.dumps(a))  # as folds.json records it
  assert back["seed"] == 0 and back["fold"] == 2
  _, test2, _ = folds.fold_split(
    table, back["fold"], seed=back["seed"], mode=back["mode"]
  )
  assert sorted(test2.image_ids) == sorted(test.image_ids)
  with pytest.raises(ValueError, match="fold must be"):
    folds.fold_split(table, 5)


def test_validation_split_is_patient_level_and_inside_the_training_fold(table):
  train, test, _ = folds.fold_indices(table, 2)
  fit, val = folds.validation_split(table, train, fraction=0.1, seed=0)
  assert set(fit) | set(val) == set(train)
  assert not set(fit) & set(val) and not set(val) & set(test)
  fit_p = set(table.patient_ids[fit])
  val_p = set(table.patient_ids[val])
  assert not fit_p & val_p
  n_train_patients = len(set(table.patient_ids[train]))
  assert len(val_p) == round(0.1 * n_train_patients)
  again = folds.validation_split(table, train, fraction=0.1, seed=0)
  np.testing.assert_array_equal(val, again[1])
  other = folds.validation_split(table, train, fraction=0.1, seed=1)[1]
  assert set(other) != set(val)


def test_validation_split_edges(table):
  train, _, _ = folds.fold_indices(table, 0)
  fit, val = folds.validation_split(table, train, fraction=0.0)
  np.testing.assert_array_equal(fit, train) and len(val) == 0
  assert len(val) == 0
  with pytest.raises(ValueError, match="fraction"):
    folds.validation_split(table, train, fraction=1.0)
