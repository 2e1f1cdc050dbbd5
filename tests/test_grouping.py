"""Relational, shot, gradient and paper groupings."""

import numpy as np
import pytest

from agt_jax import grouping

NAMES = list("NDGCAHMO")


def clustered_features(seed=0):
  """Classes D,A,H,M near one centre and G,C near another."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(2, 64)) * 5
  f = rng.normal(size=(8, 64)) * 0.3
  for c in "DAHM":
    f[NAMES.index(c)] += centres[0]
  for c in "GC":
    f[NAMES.index(c)] += centres[1]
  return f


def test_relational_recovers_structure_and_keeps_pairs():
  g = grouping.relational_groups(clustered_features(), n_groups=3,
                                 class_names=NAMES)
  named = sorted(sorted(NAMES[c] for c in grp) for grp in g)
  assert named == sorted([sorted("DAHM"), sorted("GC"), ["N", "O"]])
  assert g == grouping.paper_groups("odir", NAMES) or \
      sorted(g) == sorted(grouping.paper_groups("odir", NAMES))


def test_stability_report():
  s = grouping.grouping_stability(clustered_features(), n_groups=3,
                                  class_names=NAMES, seeds=range(3))
  assert s["mean_ari"] == 1.0 and len(s["runs"]) == 12
  noisy = grouping.grouping_stability(
      np.random.default_rng(1).normal(size=(8, 64)), n_groups=4,
      class_names=NAMES, seeds=range(3))
  assert 0 <= noisy["min_ari"] <= noisy["mean_ari"] <= 1


def test_relational_errors():
  with pytest.raises(ValueError, match="unknown classes"):
    grouping.relational_groups(clustered_features(), n_groups=3,
                               together=(("N", "X"),), class_names=NAMES)
  with pytest.raises(ValueError, match="cannot make"):
    grouping.relational_groups(clustered_features(), n_groups=9,
                               class_names=NAMES)


def test_shot_groups():
  counts = [3125, 1801, 326, 313, 280, 193, 268, 1200]
  assert grouping.shot_groups(counts) == ((0, 1, 7), (2, 3, 4), (5, 6))
  assert grouping.shot_groups([500, 120, 50, 10], many=100, few=20) == \
      ((0, 1), (2,), (3,))


def test_gradient_groups_cluster_aligned_gradients():
  rng = np.random.default_rng(0)
  dirs = rng.normal(size=(3, 100))
  grads = np.stack([dirs[k] + 0.1 * rng.normal(size=100)
                    for k in (0, 0, 1, 1, 2, 2, 0, 1)])
  g = grouping.gradient_groups(grads, n_groups=3)
  assert sorted(g) == [(0, 1, 6), (2, 3, 7), (4, 5)]


def test_make_groups_by_name():
  kw = dict(num_classes=8, class_names=NAMES,
            class_counts=[3125, 1801, 326, 313, 280, 193, 268, 1200])
  assert grouping.make_groups("paper", **kw) == \
      ((1, 4, 5, 6), (2, 3), (0, 7))
  assert grouping.make_groups("single", **kw) == (tuple(range(8)),)
  with pytest.raises(ValueError, match="unknown grouping"):
    grouping.make_groups("random", **kw)
