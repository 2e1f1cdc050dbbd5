"""Image files checked before training: missing, corrupt and truncated files
are all reported at once, in one line; the check is cached."""

import pathlib

import numpy as np
import pytest

from agt_jax.data import errors, registry, verify
from tests import fixtures


def broken_odir(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """The challenge-layout fixture (6 images) with one corrupt, one
  truncated and one missing JPEG."""
  fixtures.make_odir_challenge(root)
  d = root / "ODIR-5K_Training_Images" / "ODIR-5K_Training_Dataset"
  bad = {
    "corrupt": d / "2_left.jpg",
    "truncated": d / "305_right.jpg",
    "missing": d / "372_left.jpg",
  }
  bad["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
  data = bad["truncated"].read_bytes()
  bad["truncated"].write_bytes(data[: len(data) // 2])
  bad["missing"].unlink()
  return root, bad


def test_all_bad_files_reported_in_one_line(tmp_path):
  root, bad = broken_odir(tmp_path / "odir")
  with pytest.raises(errors.BadImagesError) as e:
    registry.load_dataset(
      "odir5k", data_dir=root, cache_dir=tmp_path / "c", progress=False
    )
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(
    "odir5k: 3 of 6 image files are missing or do not " "decode: "
  )
  for path in bad.values():
    assert str(path) in msg
  assert f"{bad['missing']} (missing)" in msg
  assert "truncated" in msg  # PIL's reason for the cut file
  assert "--set skip_bad_images=true" in msg


def test_skip_bad_images_drops_and_lists_them(tmp_path):
  root, bad = broken_odir(tmp_path / "odir")
  table, source = registry.load_dataset(
    "odir5k",
    data_dir=root,
    cache_dir=tmp_path / "c",
    progress=False,
    skip_bad_images=True,
  )
  assert len(table) == len(source) == 3
  skipped = table.meta["skipped_images"]
  assert sorted(s["path"] for s in skipped) == sorted(map(str, bad.values()))
  assert {s["image_id"] for s in skipped} == {"2_left", "305_right", "372_left"}
  assert all(source[i].shape == (512, 512, 3) for i in range(len(source)))


def test_at_most_twenty_paths_are_named():
  bad = [{"path": f"/d/{i}.jpg", "reason": "missing"} for i in range(25)]
  msg = verify.bad_images_message("odir5k", bad, 100)
  assert "25 of 100" in msg and "/d/19.jpg" in msg
  assert "/d/20.jpg" not in msg and "and 5 more" in msg


def test_good_files_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
  root = fixtures.make_odir_challenge(tmp_path / "odir")
  paths = sorted(str(p) for p in root.rglob("*.jpg"))
  cache = tmp_path / "checks.json"
  calls = []
  check = verify._check
  monkeypatch.setattr(verify, "_check", lambda p: calls.append(p) or check(p))
  assert verify.check_images(paths, cache_file=cache, progress=False) == []
  assert len(calls) == 6
  assert verify.check_images(paths, cache_file=cache, progress=False) == []
  assert len(calls) == 6  # nothing re-decoded
  # A file that changes (size/mtime) is checked again, and found bad.
  pathlib.Path(paths[0]).write_bytes(b"garbage")
  got = verify.check_images(paths, cache_file=cache, progress=False)
  assert len(calls) == 7 and [g["path"] for g in got] == [paths[0]]


def test_png_and_real_images_pass(tmp_path):
  from PIL import Image

  img = fixtures.fundus_image(40, 50, 0)
  Image.fromarray(img).save(tmp_path / "a.png")
  Image.fromarray(img).save(tmp_path / "b.jpg")
  assert (
    verify.check_images(
      [tmp_path / "a.png", tmp_path / "b.jpg"], progress=False
    )
    == []
  )
  raw = (tmp_path / "a.png").read_bytes()
  (tmp_path / "c.png").write_bytes(raw[: len(raw) // 2])
  got = verify.check_images([tmp_path / "c.png"], progress=False)
  assert len(got) == 1 and "does not decode" in got[0]["reason"]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), img)
