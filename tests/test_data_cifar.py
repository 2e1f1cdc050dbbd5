"""CIFAR100-LT from a user-provided CIFAR-100."""

import numpy as np
import pytest

from agt_jax.data import cifar, errors
from tests import fixtures


def test_profile_matches_cao_et_al():
  n = cifar.lt_class_counts(100)
  assert n[0] == 500 and n[-1] == 5 and n.sum() == 10847
  assert cifar.lt_class_counts(50).sum() == 12608
  assert cifar.lt_class_counts(10).sum() == 19573
  assert np.all(np.diff(n) <= 0)


def test_lt_indices_deterministic_and_exact():
  y = np.repeat(np.arange(100), 500)
  idx = cifar.lt_indices(y, 100, seed=0)
  np.testing.assert_array_equal(np.bincount(y[idx]), cifar.lt_class_counts(100))
  np.testing.assert_array_equal(idx, cifar.lt_indices(y, 100, seed=0))
  assert not np.array_equal(idx, cifar.lt_indices(y, 100, seed=1))
  counts = cifar.lt_class_counts(100)
  shots = (counts > 100).sum(), ((counts >= 20) & (counts <= 100)).sum(), \
      (counts < 20).sum()
  assert shots == (35, 35, 30)


def test_tarball_loader(tmp_path):
  fixtures.make_cifar100_tarball(tmp_path, per_class=6)
  data = cifar.load_cifar100_lt(tmp_path, imbalance_factor=10)
  train, src = data["train"]
  assert train.labels.shape[1] == 100
  np.testing.assert_array_equal(train.class_counts,
                                cifar.lt_class_counts(10, max_per_class=6))
  assert src[0].shape == (32, 32, 3)
  test, _ = data["test"]
  assert len(test) == 200
  assert train.meta["shots"]["tail"] == list(range(100))  # all < 20 here


def test_missing_cifar(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError, match="cifar-100-python"):
    cifar.load_cifar100_lt(tmp_path)
