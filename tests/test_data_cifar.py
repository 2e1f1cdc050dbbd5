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
  shots = (
    (counts > 100).sum(),
    ((counts >= 20) & (counts <= 100)).sum(),
    (counts < 20).sum(),
  )
  assert shots == (35, 35, 30)


def test_tarball_loader(tmp_path):
  fixtures.make_cifar100_tarball(tmp_path, per_class=6)
  data = cifar.load_cifar100_lt(tmp_path, imbalance_factor=10)
  train, src = data["train"]
  assert train.labels.shape[1] == 100
  np.testing.assert_array_equal(
    train.class_counts, cifar.lt_class_counts(10, max_per_class=6)
  )
  assert src[0].shape == (32, 32, 3)
  test, _ = data["test"]
  assert len(test) == 200
  assert train.meta["shots"]["tail"] == list(range(100))  # all < 20 here


def test_missing_cifar(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError, match="cifar-100-python"):
    cifar.load_cifar100_lt(tmp_path)


class _RunsCode:
  """What a crafted pickle holds: an object whose unpickling runs code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os

    return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_before_it_runs(tmp_path):
  import io
  import pickle
  import tarfile

  marker = tmp_path / "ran"
  fixtures.make_cifar100_tarball(tmp_path / "ok")
  path = tmp_path / "cifar-100-python.tar.gz"
  with (
    tarfile.open(tmp_path / "ok" / "cifar-100-python.tar.gz") as src,
    tarfile.open(path, "w:gz") as dst,
  ):
    for m in src.getmembers():
      blob = src.extractfile(m).read()
      if m.name.endswith("/train"):
        blob = pickle.dumps({b"data": _RunsCode(marker)})
      info = tarfile.TarInfo(m.name)
      info.size = len(blob)
      dst.addfile(info, io.BytesIO(blob))
  with pytest.raises(
    errors.UnsafePickleError,
    match=r"cifar-100-python/train: refused to unpickle " r"(posix|os)\.system",
  ):
    cifar.load_cifar100_lt(tmp_path)
  assert not marker.exists()
  with pytest.raises(errors.UnsafePickleError, match="not a readable"):
    cifar._unpickle(b"\x80\x02garbage", "meta")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_data_only_unpickler_reads_numpy_1_and_2_pickles(protocol):
  import pickle

  obj = {
    b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
    b"fine_labels": [1, 2, 3],
    b"filenames": [b"a.png"],
    b"batch_label": b"training batch 1 of 1",
    b"x": np.float64(0.5),
  }
  blob = pickle.dumps(obj, protocol=protocol)
  variants = [blob]
  if protocol == 2:  # what numpy 1 (and the original files) write
    variants.append(
      blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    )
  for b in variants:
    got = cifar._unpickle(b)
    np.testing.assert_array_equal(got[b"data"], obj[b"data"])
    assert got[b"fine_labels"] == [1, 2, 3] and got[b"x"] == 0.5
    assert got[b"filenames"] == [b"a.png"]
