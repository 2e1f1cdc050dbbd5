"""odir5k-synth: renderer determinism, golden hashes, cache safety, gallery."""

import hashlib
import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from agt_jax.data import registry, synth
from agt_jax.data import synth_render as sr
from tests import processes

ROOT = pathlib.Path(__file__).resolve().parents[1]

# sha256[:16] of render(row, 96, seed=0): two rows per class. A change here
# means every cached image and every published synthetic number changes too:
# bump synth_render.RENDERER_VERSION along with these.
GOLDEN = [
  ("0_right", "7f2ce9e3badd8127"),  # N
  ("2780_right", "da1eaa661698f2b8"),  # N
  ("2_left", "438950ed6c15ddda"),  # D (and O)
  ("4063_left", "c2f3b2f3fa7f9be6"),  # D
  ("30_left", "b38ce9a8fdb4ed81"),  # G
  ("1330_right", "d319229bb564e78e"),  # G
  ("0_left", "b8c172894d96ee6d"),  # C
  ("2147_left", "557a4688fe830e2e"),  # C
  ("43_left", "96f05ef26773215e"),  # A
  ("961_right", "dedbe86b9267c642"),  # A
  ("11_left", "1af0253fae55577d"),  # H
  ("1046_left", "dc11be386fd67052"),  # H
  ("13_left", "30e45341c1016fa9"),  # M
  ("1557_left", "3637f2a195a8b2ea"),  # M
  ("659_left", "377a9fc31abec2cc"),  # O
]


@pytest.fixture(scope="module")
def table():
  return synth.synth_table()


def _row(table, image_id):
  return synth.row(table, int(np.flatnonzero(table.image_ids == image_id)[0]))


def _hash(img):
  return hashlib.sha256(img.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("image_id,digest", GOLDEN)
def test_golden_hashes(table, image_id, digest):
  assert _hash(sr.render(_row(table, image_id), 96, seed=0)) == digest


def test_render_basics(table):
  row = _row(table, "0_right")
  img = sr.render(row, 128, seed=0)
  assert img.shape == (128, 128, 3) and img.dtype == np.uint8
  assert img[0, 0].max() == 0 and img[-1, -1].max() == 0  # outside the FOV
  assert img[64, 64].min() > 0
  np.testing.assert_array_equal(img, sr.render(row, 128, seed=0))
  assert not np.array_equal(img, sr.render(row, 128, seed=1))


def test_disc_is_on_the_nasal_side(table):
  """Right eye: disc on the viewer's right; left eye: on the left."""
  for image_id, side in (("0_right", 1), ("0_left", -1)):
    geo = sr._geometry(
      128, "right" if side > 0 else "left", sr._Rng(0, 1), offset=False
    )
    assert np.sign(geo.disc[1] - geo.fovea[1]) == side
    img = sr.render(_row(table, image_id), 128).astype(float).sum(-1)
    half = img[:, 64:].max() > img[:, :64].max()
    assert half == (side > 0)


def test_determinism_across_processes(table):
  code = (
    "import hashlib; from agt_jax.data import synth, synth_render as sr;"
    "import numpy as np; t = synth.synth_table();"
    "i = int(np.flatnonzero(t.image_ids == '961_right')[0]);"
    "print(hashlib.sha256(sr.render(synth.row(t, i), 80, seed=3)"
    ".tobytes()).hexdigest())"
  )
  outs = [
    processes.run(
      [sys.executable, "-c", code],
      check=True,
      cwd=ROOT,
    ).stdout.strip()
    for _ in range(2)
  ]
  here = hashlib.sha256(
    sr.render(_row(table, "961_right"), 80, seed=3).tobytes()
  ).hexdigest()
  assert outs[0] == outs[1] == here


def test_visibility_knob_removes_signs(table):
  row = _row(table, "4063_left")  # D
  keep = sr.severities(row["keywords"], row["labels"], sr._Rng(0, 1))
  gone = sr.severities(
    row["keywords"], row["labels"], sr._Rng(0, 1), {"D": 0.0}
  )
  assert "D" in keep and "D" not in gone
  assert not np.array_equal(
    sr.render(row, 64), sr.render(row, 64, visibility={"D": 0.0})
  )


def test_subtle_fraction(table):
  rng = sr._Rng(0, 2)
  sev = [
    sr.severities(table.keywords[i], table.labels[i], rng).get("D")
    for i in np.flatnonzero(table.labels[:, 1] == 1)
  ]
  subtle = np.mean([s < 0.15 for s in sev])
  assert 0.10 <= subtle <= 0.20


def test_table_says_synthetic(table):
  assert table.name == "odir5k-synth" and table.synthetic
  assert "synthetic" in table.meta["note"]
  assert len(table) == 6997


def test_cache_survives_interruption(table, tmp_path):
  sub = table.take(np.arange(40))
  folder = synth.build_cache(
    sub,
    tmp_path / "a",
    size=64,
    workers=1,
    chunk_size=8,
    progress=False,
    max_chunks=2,
  )
  assert not (folder / "meta.json").exists()
  with pytest.raises(FileNotFoundError, match="no complete 64px cache"):
    synth.open_cache(sub, tmp_path / "a", size=64)
  done = np.load(folder / "done.npy")
  assert done.sum() == 16
  # A crash mid-chunk leaves garbage in rows not marked done: it is redone.
  mm = np.memmap(folder / "images.u8", np.uint8, "r+", shape=(40, 64, 64, 3))
  mm[20:30] = 255
  mm.flush()
  del mm
  synth.build_cache(
    sub, tmp_path / "a", size=64, workers=2, chunk_size=8, progress=False
  )
  resumed = np.asarray(synth.open_cache(sub, tmp_path / "a", size=64))
  synth.build_cache(sub, tmp_path / "b", size=64, workers=1, progress=False)
  fresh = np.asarray(synth.open_cache(sub, tmp_path / "b", size=64))
  np.testing.assert_array_equal(resumed, fresh)
  meta = json.loads((folder / "meta.json").read_text())
  assert meta["synthetic"] and meta["images"] == 40
  np.testing.assert_array_equal(fresh[7], sr.render(synth.row(sub, 7), 64))


def test_cache_for_other_parameters_is_not_reused(table, tmp_path):
  sub = table.take(np.arange(8))
  synth.build_cache(sub, tmp_path, size=64, workers=1, progress=False)
  other = table.take(np.arange(8, 16))
  with pytest.raises(FileNotFoundError):
    synth.open_cache(other, tmp_path, size=64)


def test_another_subset_never_rewrites_a_mapped_cache(table, tmp_path):
  """Two runs at one size but on different subsets (a 2400-image fold grid
  and a 3600-image external set): building the second once rewrote the
  first's images in place while it was mapped (SIGBUS or zero images in
  the running process); each table now has its own folder."""
  small, big = table.take(np.arange(8)), table.take(np.arange(12))
  synth.build_cache(small, tmp_path, size=32, workers=1, progress=False)
  mapped = synth.open_cache(small, tmp_path, size=32)
  before = np.array(mapped)
  folder = synth.build_cache(big, tmp_path, size=32, workers=1, progress=False)
  np.testing.assert_array_equal(np.asarray(mapped), before)
  assert mapped.filename != str(folder / "images.u8")
  np.testing.assert_array_equal(
    np.asarray(synth.open_cache(big, tmp_path, size=32))[:8], before
  )
  # Both stay complete: neither build undid the other.
  synth.open_cache(small, tmp_path, size=32)


def _build_in_process(args):
  folder, n = args
  t = synth.synth_table().take(np.arange(n))
  synth.build_cache(t, folder, size=32, workers=1, chunk_size=4, progress=False)
  return np.asarray(synth.open_cache(t, folder, size=32)).copy()


def test_processes_building_one_cache_at_once_agree(table, tmp_path):
  """Three runs started together build the same cache: one builds, the
  others wait for it (a lock) and read it; before, their temporary
  progress files collided and a run died renaming another's."""
  import multiprocessing as mp

  with mp.get_context("spawn").Pool(3) as pool:
    got = pool.map(_build_in_process, [(tmp_path, 24)] * 3)
  want = np.asarray(
    synth.open_cache(table.take(np.arange(24)), tmp_path, size=32)
  )
  for g in got:
    np.testing.assert_array_equal(g, want)
  assert not list(tmp_path.rglob("*.tmp"))


def test_gallery_png(tmp_path):
  from PIL import Image

  path = synth.gallery(tmp_path / "g.png", size=64, per_class=2, multi=2)
  im = Image.open(path)
  assert im.size[0] == 2 * 68 + 4 and im.size[1] > 9 * 64


def test_registry_names_and_errors():
  assert "odir5k-synth" in registry.NAMES
  with pytest.raises(ValueError, match="unknown dataset"):
    registry.load_dataset("imagenet")
  with pytest.raises(ValueError, match="pass --data odir5k:PATH"):
    registry.load_dataset("odir5k")


def test_learnability_script_smoke(tmp_path):
  from tests.test_benchmarks import bench

  out = bench(
    "synth_learnability.py",
    "--smoke",
    "--cache-dir",
    str(tmp_path),
    "--workers",
    "1",
  )
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [r["model"] for r in rows] == ["logreg_colour_blur", "small_cnn"]
  for r in rows:
    assert r["synthetic"] and r["dataset"] == "odir5k-synth"
    assert set(r["per_class_auc"]) == set("NDGCAHMO")


def test_pretraining_stand_in_shares_no_image_or_render_seed(tmp_path):
  base = synth.synth_table()
  pre = synth.pretrain_table()
  assert len(pre) == len(base) and pre.name == synth.PRETRAIN_NAME
  assert not set(pre.image_ids) & set(base.image_ids)
  assert not set(pre.patient_ids) & set(base.patient_ids)
  assert pre.synthetic and "no image" in pre.meta["note"]
  # Every label row is a row of the label table (resampled with
  # replacement, so some repeat).
  rows = {tuple(r) for r in base.labels}
  assert all(tuple(r) in rows for r in pre.labels)
  assert len({tuple(r) for r in pre.labels}) < len(pre)
  assert synth.pretrain_table(seed=1).labels.tolist() != pre.labels.tolist()
  # Rendered with its own seed into its own cache folder.
  table, source = registry.load_dataset(
    "odir5k-synth-pretrain",
    cache_dir=tmp_path,
    image_size=32,
    max_images=4,
    progress=False,
  )
  assert (tmp_path / synth.PRETRAIN_NAME).is_dir()
  assert pre.meta["render_seed"] == synth.PRETRAIN_SEED
  i = 0
  again = sr.render(synth.row(table, i), 32, seed=synth.PRETRAIN_SEED)
  np.testing.assert_array_equal(source[i], again)
  assert registry.parse_data_spec("odir5k-synth-pretrain") == {
    "dataset": "odir5k-synth-pretrain",
    "data_dir": None,
  }


def test_export_writes_odir_named_photographs_with_their_labels(tmp_path):
  import csv
  import json

  run = tmp_path / "run"
  run.mkdir()
  (run / "folds.json").write_text(
    json.dumps({"dataset": synth.NAME, "test_patients": ["11", "3"]})
  )
  info = synth.export_images(tmp_path / "o", patients=5, run=run, size=48)
  assert info == {"out": str(tmp_path / "o"), "patients": 2, "images": 4}
  rows = list(csv.DictReader(open(tmp_path / "o" / "labels.csv")))
  assert sorted(r["image"] for r in rows) == [
    "11_left.jpg",
    "11_right.jpg",
    "3_left.jpg",
    "3_right.jpg",
  ]
  table = synth.synth_table()
  at = {k: i for i, k in enumerate(table.image_ids)}
  for r in rows:
    i = at[r["image"][:-4]]
    assert [int(r[c]) for c in table.class_names] == table.labels[i].tolist()
    assert Image.open(tmp_path / "o" / r["image"]).size == (48, 48)
  assert "SYNTHETIC" in (tmp_path / "o" / "SYNTHETIC.txt").read_text()
  (run / "folds.json").write_text(json.dumps({"dataset": "odir5k"}))
  with pytest.raises(ValueError, match="not odir5k-synth"):
    synth.export_images(tmp_path / "p", run=run)
