"""Relational, shot, gradient and paper groupings."""

import numpy as np
import pytest

from agt_jax import grouping

NAMES = list("NDGCAHMO")


def clustered_images(seed=0, n=600, dim=64):
  """Per-image features and labels: images of D, A, H, M share one pattern,
  images of G, C another, N and O a third; multi-label images mix theirs."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(3, dim)) * 4
  family = {c: 0 for c in "DAHM"} | {c: 1 for c in "GC"} | {"N": 2, "O": 2}
  labels = np.zeros((n, 8), np.float32)
  feats = rng.normal(size=(n, dim))
  for i in range(n):
    classes = rng.choice(8, size=1 + (rng.random() < 0.2), replace=False)
    labels[i, classes] = 1
    for c in classes:
      # Each class: its family's pattern plus a small class-specific offset.
      feats[i] += patterns[family[NAMES[c]]] + 0.5 * np.sin(c + np.arange(dim))
  return feats, labels


def test_relational_recovers_structure_and_keeps_pairs():
  x, y = clustered_images()
  g = grouping.relational_groups(x, y, n_groups=3, class_names=NAMES)
  named = sorted(sorted(NAMES[c] for c in grp) for grp in g)
  assert named == sorted([sorted("DAHM"), sorted("GC"), ["N", "O"]])
  # Without forcing N and O together, K-Means finds their family itself.
  free = grouping.relational_groups(
    x, y, n_groups=3, together=(), class_names=NAMES
  )
  assert sorted(free) == sorted(g)
  # Forcing a pair that is not a family changes the result accordingly.
  forced = grouping.relational_groups(
    x, y, n_groups=3, together=(("N", "D"),), class_names=NAMES
  )
  assert (0, 1) in forced and forced != g


def test_pca_is_fitted_on_images_and_keeps_95_percent():
  x, y = clustered_images()
  pca = grouping.fit_pca(x, variance=0.95)
  ratio = np.cumsum(pca.explained_variance_ratio_)
  # The smallest number of components reaching 95%, checked independently
  # from the eigenvalues of the image covariance.
  ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
  k = int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.95) + 1)
  assert pca.n_components_ == k and ratio[-1] >= 0.95
  assert pca.n_samples_ == len(x)
  reps = grouping.class_representations(x, y, pca)
  assert reps.shape == (8, k)
  np.testing.assert_allclose(reps[1], pca.transform(x[y[:, 1] > 0]).mean(0))


def test_stability_varies_pca_size_and_seed():
  x, y = clustered_images()
  s = grouping.grouping_stability(
    x, y, n_groups=3, class_names=NAMES, seeds=range(10)
  )
  assert sorted({r["pca"] for r in s["runs"]}) == [30, 50, 64]  # capped at D
  assert s["mean_ari"] == 1.0 and 0 < s["n_components"] <= 64
  # Noise features: the groupings change with the PCA size or seed, and
  # every run is the grouping of its own (PCA size, seed), recomputed here
  # independently, scored against the 95%-variance reference.
  from sklearn.metrics import adjusted_rand_score

  rng = np.random.default_rng(1)
  xn, yn = rng.normal(size=(300, 40)), y[:300]
  noisy = grouping.grouping_stability(
    xn, yn, n_groups=4, class_names=NAMES, seeds=range(10)
  )
  assert 0 <= noisy["min_ari"] <= noisy["mean_ari"] < 1

  def assignment(groups):
    out = np.zeros(8, int)
    for k, grp in enumerate(groups):
      out[list(grp)] = k
    return out

  ref = grouping.relational_groups(xn, yn, n_groups=4, class_names=NAMES)
  runs = {(r["pca"], r["seed"]): r for r in noisy["runs"]}
  for size, seed in ((30, 7), (40, 2)):
    pca = grouping.fit_pca(xn, n_components=size)
    want = grouping.cluster_classes(
      grouping.class_representations(xn, yn, pca),
      n_groups=4,
      class_names=NAMES,
      seed=seed,
    )
    run = runs[(size, seed)]
    assert tuple(map(tuple, run["groups"])) == want
    assert run["ari"] == pytest.approx(
      adjusted_rand_score(assignment(ref), assignment(want))
    )
  assert len({tuple(map(tuple, r["groups"])) for r in noisy["runs"]}) > 1


def test_relational_errors():
  x, y = clustered_images(n=100)
  with pytest.raises(ValueError, match="unknown classes"):
    grouping.relational_groups(
      x, y, n_groups=3, together=(("N", "X"),), class_names=NAMES
    )
  with pytest.raises(ValueError, match="cannot make"):
    grouping.relational_groups(x, y, n_groups=9, class_names=NAMES)


def test_shot_groups():
  counts = [3125, 1801, 326, 313, 280, 193, 268, 1200]
  assert grouping.shot_groups(counts) == ((0, 1, 7), (2, 3, 4), (5, 6))
  assert grouping.shot_groups([500, 120, 50, 10], many=100, few=20) == (
    (0, 1),
    (2,),
    (3,),
  )


def test_gradient_groups_cluster_aligned_gradients():
  rng = np.random.default_rng(0)
  dirs = rng.normal(size=(3, 100))
  grads = np.stack(
    [dirs[k] + 0.1 * rng.normal(size=100) for k in (0, 0, 1, 1, 2, 2, 0, 1)]
  )
  g = grouping.gradient_groups(grads, n_groups=3)
  assert sorted(g) == [(0, 1, 6), (2, 3, 7), (4, 5)]


def test_make_groups_by_name():
  kw = dict(
    num_classes=8,
    class_names=NAMES,
    class_counts=[3125, 1801, 326, 313, 280, 193, 268, 1200],
  )
  assert grouping.make_groups("paper", **kw) == ((1, 4, 5, 6), (2, 3), (0, 7))
  assert grouping.make_groups("single", **kw) == (tuple(range(8)),)
  with pytest.raises(ValueError, match="unknown grouping"):
    grouping.make_groups("kmeans", **kw)
  assert grouping.make_groups("count", n_groups=4, **kw) == (
    (0, 1),
    (2, 7),
    (3, 4),
    (5, 6),
  )
  assert grouping.make_groups(
    "random", n_groups=4, seed=3, **kw
  ) == grouping.random_groups(8, n_groups=4, seed=3)


def test_random_and_count_groups_partition_the_classes():
  for seed in range(5):
    g = grouping.random_groups(10, n_groups=4, seed=seed)
    assert sorted(c for grp in g for c in grp) == list(range(10))
    assert sorted(map(len, g)) == [2, 2, 3, 3]
  assert grouping.random_groups(
    10, n_groups=4, seed=0
  ) != grouping.random_groups(10, n_groups=4, seed=1)
  # By count: the 4 largest, the next 3, the last 3 (near-equal cuts).
  assert grouping.count_groups(
    [5, 90, 7, 60, 3, 80, 1, 70, 2, 40], n_groups=3
  ) == ((1, 3, 5, 7), (0, 2, 9), (4, 6, 8))


# The literal cosine cuts the orthogonal pair's near-zero (some negative)
# affinities to 0, so scikit-learn may warn that the graph is not fully
# connected: that is the case under test, not a fault.
@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_gradient_affinity_forms():
  # Two conflicting directions and a third orthogonal one: the literal
  # cosine (negatives cut to 0) and the shifted one both separate them.
  rng = np.random.default_rng(1)
  d = rng.normal(size=(3, 50))
  d[1] = -d[0] + 0.05 * rng.normal(size=50)
  grads = np.stack(
    [d[k] + 0.05 * rng.normal(size=50) for k in (0, 0, 1, 1, 2, 2)]
  )
  for affinity in ("cos+1", "cos"):
    g = grouping.gradient_groups(grads, n_groups=3, affinity=affinity)
    assert sorted(g) == [(0, 1), (2, 3), (4, 5)], affinity
  with pytest.raises(ValueError, match="affinity must be"):
    grouping.gradient_groups(grads, n_groups=3, affinity="dot")
  # As many groups as classes: every class alone.
  assert grouping.gradient_groups(grads, n_groups=6) == tuple(
    (c,) for c in range(6)
  )


def test_subset_imbalance_is_nmax_over_nmin_by_hand():
  counts = [3000, 1200, 300, 280, 250, 200, 230, 900]
  groups = ((0, 7), (1, 4, 5, 6), (2, 3))
  got = grouping.subset_imbalance(counts, groups)
  assert got["dataset"] == pytest.approx(3000 / 200)
  assert got["subsets"] == pytest.approx([3000 / 900, 1200 / 200, 300 / 280])
  # a class without positives does not enter; a one-class subset is 1
  got = grouping.subset_imbalance([5, 0, 10], ((0, 1), (2,)))
  assert got == {"dataset": 2.0, "subsets": [1.0, 1.0]}


def test_grouping_features_come_from_group_init_when_given():
  """group_init: the grouping encoder loads those weights while training
  starts from init (each named in groups.json's features line)."""
  import dataclasses

  from agt_jax import config as config_lib
  from agt_jax import models
  from agt_jax.train import group_features

  loaded = []

  def fake_load(path, state):
    loaded.append(path)
    return state

  base = config_lib.get_config("smoke")
  enc = models.make_encoder("resnet_tiny")
  for kw, want in (
    (dict(init="A", group_init="B"), ("B", "group_init B")),
    (dict(init="A"), ("A", "--init A")),
  ):
    info = {}
    group_features._grouping_encoder(
      dataclasses.replace(base, **kw),
      enc, None, None, ["N", "D"], None, (32, 32, 3), None, {}, fake_load,
      info,
    )  # fmt: skip
    assert loaded[-1] == want[0] and info["features"] == want[1]
