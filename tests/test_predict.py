"""Scoring new images with a trained run: the predictor reproduces the run's
own test predictions, applies its thresholds, and every bad input gets one
line (or a status row) while nothing partial is written."""

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from agt_jax import predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from tests import runs

  root, _, _ = runs.smoke_odir(tmp_path_factory)
  return root / "run", root / "cache"


@pytest.fixture(scope="module")
def predictor(run):
  return predict.load_predictor(run[0])


def _fold_source(run_dir, cache, monkeypatch):
  from agt_jax.config import from_json
  from agt_jax.train import loop

  monkeypatch.setenv("AGT_JAX_CACHE", str(cache))
  config = from_json((run_dir / "config.json").read_text())
  return loop.load_fold(config)


def test_reproduces_the_runs_test_predictions(run, predictor, monkeypatch):
  import agt_jax

  assert agt_jax.load_predictor is predict.load_predictor
  run_dir, cache = run
  assert predictor.phase == "student"
  assert predictor.class_names == tuple("NDGCAHMO")
  saved = np.load(run_dir / "test_predictions.npz")
  data = _fold_source(run_dir, cache, monkeypatch)
  images = [data.source[int(i)] for i in saved["index"]]
  np.testing.assert_allclose(
    predictor.predict(images), saved["student"], rtol=1e-6, atol=1e-7
  )
  teacher = predict.load_predictor(run_dir, phase="teacher")
  np.testing.assert_allclose(
    teacher.predict(images[:5]), saved["teacher"][:5], rtol=1e-6, atol=1e-7
  )


def test_decisions_by_rule(run, predictor, tmp_path):
  run_dir, _ = run
  results = json.loads((run_dir / "results.json").read_text())
  tuned = np.array(results["selection"]["student"]["thresholds"])
  probs = np.array([[0.5] * 8, tuned + 1e-3, tuned])
  assert predictor.decide(probs, "strict")[0].sum() == 0  # 0.5 is negative
  np.testing.assert_array_equal(
    predictor.decide(probs, "validation")[1:], [[1] * 8, [0] * 8]
  )
  user = tmp_path / "t.json"
  user.write_text(json.dumps({c: 0.2 for c in "NDGCAHMO"}))
  assert predictor.threshold(str(user))[0] == f"file:{user}"
  assert predictor.decide(np.full((1, 8), 0.3), str(user)).sum() == 8
  user.write_text(json.dumps({c: 0.2 for c in "NDGCAHM"} | {"X": 0.1}))
  with pytest.raises(
    predict.PredictError, match=r"missing \['O'\], unexpected \['X'\]"
  ):
    predictor.threshold(str(user))
  with pytest.raises(predict.PredictError, match="not 'strict', 'validation'"):
    predictor.threshold("loose")


def _photos(folder, base: np.ndarray) -> dict:
  """One of each input a user meets, written from one rendered image."""
  folder.mkdir()
  Image.fromarray(base).save(folder / "a_plain.png")
  # EXIF orientation 3 (rotated 180°): the stored pixels are upside down
  # (PNG's eXIf chunk, so no lossy coding differs between the two).
  exif = Image.Exif()
  exif[0x0112] = 3
  Image.fromarray(base[::-1, ::-1]).save(folder / "b_exif.png", exif=exif)
  Image.fromarray(base).save(folder / "b_ref.jpg", quality=95)
  gray = np.asarray(Image.fromarray(base).convert("L"))
  Image.fromarray(gray).save(folder / "c_gray8.png")
  Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "c_gray16.png")
  Image.fromarray(base).convert("RGBA").save(folder / "d_rgba.png")
  Image.fromarray(base[:20, :20]).save(folder / "e_tiny.png")
  (folder / "f_not_an_image.png").write_text("hello")
  good = (folder / "b_ref.jpg").read_bytes()
  (folder / "g_truncated.jpg").write_bytes(good[: len(good) // 3])
  return {"gray": gray}


def test_bad_inputs_get_a_status_row_and_never_stop(
  run, predictor, tmp_path, monkeypatch
):
  run_dir, cache = run
  data = _fold_source(run_dir, cache, monkeypatch)
  base = data.source[int(data.test_idx[0])]
  _photos(tmp_path / "in", base)
  out = tmp_path / "o" / "preds.csv"
  rc = predict.main(
    [
      "--model",
      str(run_dir),
      "--images",
      str(tmp_path / "in"),
      "--out",
      str(out),
    ]
  )
  assert rc == 0
  assert [p.name for p in out.parent.iterdir()] == ["preds.csv"]
  rows = {r["image"].rsplit("/", 1)[1]: r for r in csv.DictReader(open(out))}
  assert len(rows) == 9 and {r["rule"] for r in rows.values()} == {"strict"}
  st = {k: r["status"] for k, r in rows.items()}
  assert st["f_not_an_image.png"].startswith("unreadable: cannot decode")
  assert st["g_truncated.jpg"].startswith("unreadable:")
  assert st["e_tiny.png"].startswith("ok (upscaled: 20x20")
  for k in (
    "a_plain.png",
    "b_exif.png",
    "b_ref.jpg",
    "c_gray8.png",
    "c_gray16.png",
    "d_rgba.png",
  ):
    assert st[k] == "ok", k

  def p(name):
    return np.array([float(rows[name][f"p_{c}"]) for c in "NDGCAHMO"])

  want = predictor.predict([base])[0]
  np.testing.assert_allclose(p("a_plain.png"), want, atol=2e-6)
  np.testing.assert_allclose(p("d_rgba.png"), want, atol=2e-6)
  np.testing.assert_allclose(p("b_exif.png"), want, atol=2e-6)
  np.testing.assert_allclose(p("c_gray16.png"), p("c_gray8.png"), atol=2e-6)
  assert rows["a_plain.png"]["y_N"] == str(int(p("a_plain.png")[0] > 0.5))
  assert rows["f_not_an_image.png"]["p_N"] == ""


def test_a_crash_leaves_nothing_under_out(
  run, predictor, tmp_path, monkeypatch
):
  img = tmp_path / "x.png"
  Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(img)
  out = tmp_path / "o" / "preds.csv"

  def boom(*a, **k):
    raise RuntimeError("device lost")

  monkeypatch.setattr(predict.Predictor, "_predict_views", boom)
  with pytest.raises(RuntimeError):
    predict.predict_files(predictor, [str(img)], out)
  assert list(out.parent.iterdir()) == []


def test_bad_runs_and_lists_get_one_line(run, tmp_path, capsys):
  run_dir, _ = run
  assert (
    predict.main(["--model", str(tmp_path), "--images", "x", "--out", "o.csv"])
    == 2
  )
  assert "not a finished run directory" in capsys.readouterr().err
  no_model = tmp_path / "r"
  shutil.copytree(
    run_dir, no_model, ignore=shutil.ignore_patterns("checkpoints")
  )
  with pytest.raises(predict.PredictError, match="no selected student model"):
    predict.load_predictor(no_model)
  with pytest.raises(predict.PredictError, match="not 'gbg'"):
    predict.load_predictor(run_dir, phase="gbg")
  listing = tmp_path / "list.csv"
  listing.write_text("file\nx.png\n")
  with pytest.raises(predict.PredictError, match="no 'path' or 'image' column"):
    predict.list_images([str(listing)])
  listing.write_text("path\nsub/x.png\n")
  assert predict.list_images([str(listing)]) == (
    [str(tmp_path / "sub/x.png")],
    [None],
  )
  listing.write_text("path,patient\nsub/x.png,17\ny.png,\n")
  with pytest.raises(predict.PredictError, match="row 3, column 'patient'"):
    predict.list_images([str(listing)])
  with pytest.raises(predict.PredictError, match="no image files found"):
    predict.list_images([])


def test_calibrated_predictions_use_the_runs_temperatures(run, predictor):
  from agt_jax.calibration import apply_temperature

  run_dir, _ = run
  results = json.loads((run_dir / "results.json").read_text())
  temps = results["selection"]["student"]["temperature"]
  img = np.full((40, 40, 3), 120, np.uint8)
  plain = predictor.predict([img])
  for kind in ("shared", "per_class"):
    cal = predict.load_predictor(run_dir, calibrate=kind)
    np.testing.assert_allclose(
      cal.predict([img]),
      apply_temperature(plain, np.asarray(temps[kind])),
      rtol=1e-5,
    )
    with pytest.raises(predict.PredictError, match="uncalibrated"):
      cal.threshold("validation")
  with pytest.raises(predict.PredictError, match="not none, shared"):
    predict.load_predictor(run_dir, calibrate="platt")


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(
  run, predictor, monkeypatch
):
  from agt_jax import metrics

  run_dir, cache = run
  saved = np.load(run_dir / "test_predictions.npz")
  data = _fold_source(run_dir, cache, monkeypatch)
  images = [data.source[int(i)] for i in saved["index"]]
  flip = predict.load_predictor(run_dir, tta="flip")
  got = flip.predict(images)
  mirrored = predictor.predict([im[:, ::-1] for im in images])
  np.testing.assert_allclose(
    got, (predictor.predict(images) + mirrored) / 2, rtol=1e-6, atol=1e-7
  )
  # The run's own TTA row (--set tta=flip) scored these probabilities.
  results = json.loads((run_dir / "results.json").read_text())
  assert metrics.odir_score(data.y_test, got)["final"] == pytest.approx(
    results["student"]["tta_flip"]["odir"]["final"], abs=1e-6
  )
  with pytest.raises(predict.PredictError, match="--tta 'rotate'"):
    predict.load_predictor(run_dir, tta="rotate")


def test_gradcam_sheets_and_patient_fusion_from_the_command(
  run, predictor, tmp_path, monkeypatch, capsys
):
  run_dir, cache = run
  data = _fold_source(run_dir, cache, monkeypatch)
  imgs = [data.source[int(i)] for i in data.test_idx[:3]]
  folder = tmp_path / "odir"
  folder.mkdir()
  for name, img in zip(("7_left", "7_right", "12_left"), imgs):
    Image.fromarray(img).save(folder / f"{name}.png")
  (folder / "12_right.png").write_text("not an image")
  out, cams, sub = tmp_path / "p.csv", tmp_path / "cams", tmp_path / "sub.csv"
  args = ["--model", str(run_dir), "--images", str(folder), "--out", str(out)]
  from agt_jax import plotting

  drawn, overlay = {}, plotting.cam_overlay

  def keep(view, maps, labels, path, **kw):
    drawn[pathlib.Path(path).name] = np.asarray(maps)
    overlay(view, maps, labels, path, **kw)

  monkeypatch.setattr(plotting, "cam_overlay", keep)
  assert (
    predict.main([*args, "--gradcam", str(cams), "--patients", str(sub)]) == 0
  )
  # The run trained on odir5k-synth: the summary line and a note say so.
  printed = capsys.readouterr()
  assert predictor.synthetic
  assert json.loads(printed.out.strip().splitlines()[-1])["synthetic"] is True
  assert "synthetic images" in printed.err
  p = predictor.predict(imgs)  # 7_left, 7_right, 12_left
  rows = list(csv.reader(open(sub)))
  assert rows[0] == ["ID", *"NDGCAHMO"]
  assert [r[0] for r in rows[1:]] == ["7", "12"]
  got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
  # Diseases: either eye (max); N: both eyes (min); 12 has one readable eye.
  want7 = np.maximum(p[0], p[1])
  want7[0] = min(p[0, 0], p[1, 0])
  np.testing.assert_allclose(got, [want7, p[2]], atol=1e-6)
  # One Grad-CAM sheet per readable image: the crop, then a panel for each
  # positive class (or the most probable one).
  crop = predictor.config.crop
  sheets = sorted(f.name for f in cams.iterdir())
  assert sheets == ["12_left.png", "7_left.png", "7_right.png"]
  for name, k in (("7_left.png", 0), ("7_right.png", 1), ("12_left.png", 2)):
    w, h = Image.open(cams / name).size
    assert h % crop == 0 and h >= 160  # small crops are enlarged
    assert w == h * (1 + max(1, int((p[k] > 0.5).sum())))
  probs, maps = predictor.explain(imgs)
  np.testing.assert_allclose(probs, p, rtol=1e-5, atol=1e-6)
  assert maps.shape[:2] == (3, 8) and maps.min() >= 0 and maps.max() <= 1
  # The sheets show the maps of the crops the model scored (no second
  # preprocessing of an already cropped view).
  for name, k in (("7_left.png", 0), ("7_right.png", 1), ("12_left.png", 2)):
    pos = np.flatnonzero(p[k] > 0.5)
    pos = pos if len(pos) else [int(np.argmax(p[k]))]
    np.testing.assert_allclose(drawn[name], maps[k, pos], atol=1e-5)
  # A file whose patient cannot be told: one line, nothing written.
  Image.fromarray(imgs[0]).save(folder / "scan.png")
  assert (
    predict.main([*args[:-1], str(tmp_path / "q.csv"), "--patients", str(sub)])
    == 2
  )
  assert not (tmp_path / "q.csv").exists()
