"""Samplers: exact AGT group-mixed batches on the real ODIR label table."""

import numpy as np
import pytest

from agt_jax.data import odir, samplers
from agt_jax.errors import InputError

GROUPS = (("D", "A", "H", "M"), ("G", "C"), ("N", "O"))  # paper preset


@pytest.fixture(scope="module")
def table():
  return odir.packaged_label_table()


@pytest.fixture(scope="module")
def ds(table):
  return samplers.group_mixed_batches(
    table.labels,
    GROUPS,
    batch_size=64,
    alpha=0.5,
    seed=0,
    class_names=table.class_names,
  )


@pytest.fixture(scope="module")
def batches(ds):
  it = iter(ds.to_iter_dataset())
  return [next(it) for _ in range(200)]


def test_every_one_of_200_batches_has_the_exact_composition(table, batches):
  groups = samplers.validate_groups(GROUPS, 8, table.class_names)
  for t, batch in enumerate(batches):
    g = t % 3
    assert batch["group"] == g
    assert batch["index"].shape == (64,) and batch["labels"].shape == (64, 8)
    np.testing.assert_array_equal(batch["labels"], table.labels[batch["index"]])
    in_group = table.labels[batch["index"]][:, list(groups[g])].any(1)
    assert in_group[:32].all(), f"step {t}: a group slot misses group {g}"
    # Each "others" image has a positive outside g (it was drawn by a class
    # outside g).
    outside = [c for c in range(8) if c not in groups[g]]
    assert table.labels[batch["index"][32:]][:, outside].any(1).all()


def test_group_stream_walks_epochs_without_repeats(table, batches):
  # The first visits of group 1 (G, C: 632 images) cover 632 distinct images
  # before any repeats: 19 visits x 32 = 608 slots.
  idx = np.concatenate(
    [b["index"][:32] for b in batches if b["group"] == 1][:19]
  )
  assert len(np.unique(idx)) == len(idx)


def test_others_half_is_class_balanced(table, batches):
  """Within the "others" slots of group-0 steps (outside classes G C N O), each
  class is drawn with probability 1/4; an image also counts for the other
  classes it carries, so the observed rate is >= 1/4 and close to it for
  tail classes."""
  idx = np.concatenate([b["index"][32:] for b in batches if b["group"] == 0])
  frac = table.labels[idx].mean(0)
  n = len(idx)  # 67 steps x 32 = 2144 draws
  se = np.sqrt(0.25 * 0.75 / n)
  for c in "GC":
    j = table.class_names.index(c)
    # Tail classes: the target 1/4 plus what co-occurrence adds (< 3%).
    assert 0.25 - 4 * se <= frac[j] <= 0.28 + 4 * se, (c, frac[j])
  # Versus the natural prevalence of G (4.7%): boosted about 5x.
  assert frac[table.class_names.index("G")] > 4 * table.labels[:, 2].mean()


def test_random_access_equals_iteration_and_resume(ds, batches):
  for t in (0, 1, 57, 199):
    np.testing.assert_array_equal(ds[t]["index"], batches[t]["index"])
  it = iter(ds.to_iter_dataset())
  for _ in range(10):
    next(it)
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(5)]
  it2 = iter(ds.to_iter_dataset())
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["index"], e)


def test_deterministic_under_seed(table, ds):
  again = samplers.group_mixed_batches(
    table.labels,
    GROUPS,
    batch_size=64,
    alpha=0.5,
    seed=0,
    class_names=table.class_names,
  )
  other = samplers.group_mixed_batches(
    table.labels,
    GROUPS,
    batch_size=64,
    alpha=0.5,
    seed=1,
    class_names=table.class_names,
  )
  np.testing.assert_array_equal(again[33]["index"], ds[33]["index"])
  assert not np.array_equal(other[33]["index"], ds[33]["index"])


@pytest.mark.parametrize(
  "alpha,b,expected",
  [
    (0.5, 64, (32, 32)),
    (0.3, 10, (7, 3)),
    (0.0, 8, (8, 0)),
    (0.15, 10, (8, 2)),
  ],
)
def test_rounding_of_the_split(alpha, b, expected):
  assert samplers.group_sizes(b, alpha) == expected


def test_block_schedule(table):
  ds = samplers.group_mixed_batches(
    table.labels,
    GROUPS,
    batch_size=8,
    alpha=0.25,
    seed=0,
    switch_every=4,
    class_names=table.class_names,
  )
  assert [int(ds[t]["group"]) for t in range(14)] == [0] * 4 + [1] * 4 + [
    2
  ] * 4 + [0] * 2
  # Visits continue the stream: step 12 is group 0's 5th step.
  s = samplers.RoundRobinSchedule(3, 4)
  assert s.visits_before(12) == 4 and s.visits_before(13) == 5


def test_group_validation_errors(table):
  with pytest.raises(ValueError, match=r"classes \['O'\] are in no group"):
    samplers.validate_groups(
      [["N", "D", "G", "C"], ["A", "H", "M"]], 8, table.class_names
    )
  with pytest.raises(ValueError, match="class 1 is in group 0 and group 1"):
    samplers.validate_groups([[0, 1], [1, 2, 3, 4, 5, 6, 7]], 8)
  with pytest.raises(ValueError, match="unknown class 'X'"):
    samplers.validate_groups([["X"]], 8, table.class_names)
  with pytest.raises(ValueError, match="outside"):
    samplers.validate_groups([[0, 9]], 8)
  with pytest.raises(ValueError, match="alpha"):
    samplers.group_mixed_batches(
      table.labels,
      GROUPS,
      batch_size=8,
      alpha=1.5,
      seed=0,
      class_names=table.class_names,
    )
  with pytest.raises(ValueError, match=r"row 1, column 2"):
    samplers.group_mixed_batches(
      np.array([[0, 1, 0], [1, 0, 2]]),
      [[0, 1, 2]],
      batch_size=2,
      alpha=0.0,
      seed=0,
    )


def test_host_slice_concatenates_to_global_batch(ds):
  parts = [
    samplers.host_slice(ds, process_index=i, process_count=4)[5]
    for i in range(4)
  ]
  np.testing.assert_array_equal(
    np.concatenate([p["index"] for p in parts]), ds[5]["index"]
  )
  assert all(p["group"] == ds[5]["group"] for p in parts)


def test_class_aware_samplers(table):
  labels = table.labels
  rates = {}
  for name, fn in (
    ("cb", samplers.class_balanced_batches),
    ("sqrt", lambda y, **k: samplers.class_aware_batches(y, power=0.5, **k)),
    ("ib", samplers.instance_balanced_batches),
  ):
    ds = fn(labels, batch_size=128, seed=0)
    idx = np.concatenate([ds[t]["index"] for t in range(30)])
    rates[name] = labels[idx].mean(0)
  h = table.class_names.index("H")
  # Rarest class H (2.8% of images): CB ~1/8 + co-occurrence; sqrt between.
  assert 0.11 < rates["cb"][h] < 0.2
  assert rates["ib"][h] < rates["sqrt"][h] < rates["cb"][h]
  # RUS (TFA-LT's stage I subset) thins the head class N.
  rus = samplers.random_undersample_indices(labels, seed=0)
  assert labels[rus].mean(0)[0] < labels.mean(0)[0]
  # Instance-balanced covers the epoch without repeats.
  ib = samplers.instance_balanced_batches(labels, batch_size=100, seed=0)
  first = np.concatenate([ib[t]["index"] for t in range(69)])
  assert len(np.unique(first)) == len(first)


def test_gac_composition_is_exact(table):
  """Replays each batch's random stream: ``b - G m`` uniform draws, ``m``
  class-balanced draws for each group missing from them (and only those),
  then uniform draws to ``b``."""
  b, m = 32, 4  # m = ceil(0.1 * 32)
  ds = samplers.gac_batches(
    table.labels, GROUPS, batch_size=b, seed=5, class_names=table.class_names
  )
  groups = samplers.validate_groups(GROUPS, 8, table.class_names)
  probs = samplers.gac_class_probabilities(table.labels.sum(0), groups)
  n, topped = len(table.labels), 0
  for t in range(60):
    rng = np.random.default_rng((5, t))
    want = list(rng.integers(n, size=b - m * len(groups)))
    y = table.labels[want]
    for g, p in zip(groups, probs):
      if not y[:, list(g)].any():
        topped += 1
        for _ in range(m):
          cls = np.asarray(g)[p > 0][rng.choice(int((p > 0).sum()), p=p[p > 0])]
          members = np.flatnonzero(table.labels[:, cls])
          want.append(int(members[rng.integers(len(members))]))
    want += list(rng.integers(n, size=b - len(want)))
    got = ds[t]["index"]
    np.testing.assert_array_equal(got, want)
    y = table.labels[got]
    assert all(y[:, list(g)].any() for g in groups)  # every group present
  assert topped > 0  # the rule was exercised


def test_gac_class_probabilities_by_hand():
  # One group of 100, 10 and 1 images: beta = 0.9999 + 1e-5 ln(100).
  (p,) = samplers.gac_class_probabilities([100, 10, 1], [(0, 1, 2)])
  beta = 0.9999 + 1e-5 * 4.605170185988092
  raw = np.array(
    [(1 - beta) / (1 - beta**100), (1 - beta) / (1 - beta**10), 1.0]
  )
  np.testing.assert_allclose(p, raw / raw.sum(), rtol=1e-12)
  # Near 1, the class-balanced term is about 1/N: the rare class dominates.
  np.testing.assert_allclose(raw[:2], [1 / 100, 1 / 10], rtol=1e-2)
  # Each group gets its own beta; a class without images gets nothing; a
  # one-class group is drawn with certainty.
  q = samplers.gac_class_probabilities([5, 0, 7, 9], [(0, 1), (2,), (3,)])
  assert q[0].tolist() == [1.0, 0.0] and q[1].tolist() == [1.0]
  with pytest.raises(InputError, match="has no training image"):
    samplers.gac_class_probabilities([5, 0], [(0,), (1,)])


def test_mp_prefetch_workers_match_in_process(ds):
  from agt_jax.data import pipeline

  it = pipeline.to_iterator(ds, workers=1)
  got = [next(it)["index"] for _ in range(3)]
  for t in range(3):
    np.testing.assert_array_equal(got[t], ds[t]["index"])


def test_cb_sampling_class_frequencies_match_the_exact_rates(table):
  """Table 1's CB sampling (teacher_sampler=class_balanced): a class
  uniformly, then one of its images, so the share of images positive for
  class c is (1/K) sum_k P(c | an image of k); 10,000 draws within 4 SE.
  Every batch carries the one head's group id."""
  labels = table.labels
  ds = samplers.class_balanced_batches(labels, batch_size=100, seed=3, group=0)
  batches = [ds[t] for t in range(100)]
  assert all(int(b["group"]) == 0 for b in batches)
  idx = np.concatenate([b["index"] for b in batches])
  got = labels[idx].mean(0)
  want = np.mean(
    [labels[labels[:, k] == 1].mean(0) for k in range(labels.shape[1])], 0
  )
  se = np.sqrt(want * (1 - want) / len(idx))
  np.testing.assert_array_less(np.abs(got - want), 4 * se + 1e-9)
  # Each class is drawn about 1/K of the time: the rarest class's share is
  # far above its natural prevalence.
  h = table.class_names.index("H")
  assert got[h] > 3 * labels[:, h].mean()
