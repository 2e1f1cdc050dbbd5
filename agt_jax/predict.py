"""Score new fundus photographs with a trained run.

  python -m agt_jax.predict --model runs/odir-odir5k-synth-quick --images photos/ --out preds.csv
  python -m agt_jax.predict --model RUN --images list.csv --thresholds validation
  python -m agt_jax.predict --model RUN --images a.jpg b.png --phase teacher
  python -m agt_jax.predict --model RUN --images odir/ --out preds.csv \
      --tta flip --gradcam cams/ --patients submission.csv

In Python::

  from agt_jax import load_predictor
  p = load_predictor("runs/odir-odir5k-synth-quick")          # the student by default
  probs = p.predict(["a.jpg", image_array])     # [n, C] probabilities
  calls = p.decide(probs, "validation")         # [n, C] 0/1

The run's own preprocessing is applied (its config's field-of-view crop,
resize to ``image_size`` and centre ``crop``), with the validation-selected
variables of the phase (``checkpoints/<phase>_best``, else its last
checkpoint). Decisions: ``strict`` (``p > 0.5``, the official ODIR metric),
``validation`` (the per-class thresholds the run tuned for F1 on its
validation split, stored in its ``results.json``), or a JSON file
``{"N": 0.4, ...}`` naming every class. The rule is written into the
output.

``--tta flip`` averages each image's probabilities with its horizontal
mirror's. ``--gradcam DIR`` writes a Grad-CAM sheet per image (the crop the
model saw, then one panel per positive class, or the most probable class
when none is positive; :mod:`agt_jax.models.cam`), from one batched, jitted
pullback per batch. ``--patients CSV`` also writes the ODIR submission
format, one row per patient with both eyes fused (:mod:`agt_jax.patients`).

An image that cannot be read never stops the run: its row says why in the
``status`` column and has no probabilities. The CSV is streamed to a
temporary file beside ``--out`` and renamed at the end, so a crash leaves
nothing partial under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from agt_jax.errors import AgtError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class PredictError(AgtError, ValueError):
  """A run, an image list or a thresholds file the predictor cannot use;
  the message names it and what to do."""


@dataclasses.dataclass
class Predictor:
  """A trained phase ready to score images (:func:`load_predictor`)."""

  run_dir: pathlib.Path
  phase: str
  model: object
  variables: dict
  config: object
  class_names: tuple
  thresholds: dict  # rule -> [C] float
  # Temperature scaling fitted on the run's validation split (its
  # results.json): "none" | "shared" | "per_class", and the temperatures.
  calibrate: str = "none"
  temperatures: dict = dataclasses.field(default_factory=dict)
  tta: str = "none"  # none | flip (agt_jax.train.steps.TTA_VIEWS)
  # Trained on rendered images (odir5k-synth): every output says so.
  synthetic: bool = False

  def __post_init__(self):
    import jax

    if self.calibrate != "none" and self.calibrate not in self.temperatures:
      raise PredictError(
        f"{self.run_dir}: no {self.calibrate!r} temperature in its "
        "results.json (a run without a validation split, or from before "
        "calibration was fitted); use --calibrate none."
      )

    from agt_jax.runtime import local_mesh, replicate
    from agt_jax.train import evaluation, steps

    if self.tta not in steps.TTA_VIEWS:
      raise PredictError(
        f"--tta {self.tta!r}: not one of {sorted(steps.TTA_VIEWS)}."
      )
    n = jax.local_device_count()
    self.batch_size = max(n, -(-self.config.eval_batch_size // n) * n)
    self._mesh = local_mesh()
    temperature = self.temperatures.get(self.calibrate)
    self._fn = evaluation.predictor(
      self.model, tta=self.tta, temperature=temperature
    )
    self._cam_fn = None  # built on the first explain()
    self._vars = replicate(self.variables, self._mesh)

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    """The run's evaluation view: field-of-view crop and resize to
    ``image_size`` (skipped for an image already that size, as in
    training), then the centre ``crop``."""
    from agt_jax.data import images

    size = self.config.image_size
    if image.shape[:2] != (size, size):
      image = images.resize(images.crop_to_fov(image), size)
    return images.center_crop(image, self.config.crop)

  def predict(self, images: Sequence, *, progress: bool = False) -> np.ndarray:
    """`[n, C]` probabilities of ``images`` (paths or uint8 `[H, W, 3]`
    arrays), in batches over the local devices. A path that cannot be read
    raises; :func:`predict_files` records it instead."""
    return self._predict_views(self._views(images), progress=progress)

  def explain(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [n, C], cams [n, C, h, w])``: Grad-CAM of every class at
    the encoder's map (:func:`agt_jax.models.cam.grad_cam`; each map scaled
    to a maximum of 1), single view, uncalibrated probabilities."""
    return self._explain_views(self._views(images))

  def _explain_views(self, views) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`explain` of views already preprocessed (crop-sized)."""
    import jax

    from agt_jax.models import cam

    if self._cam_fn is None:
      model = self.model
      self._cam_fn = jax.jit(lambda v, x: cam.grad_cam(model, v, x))
    return self._batched(self._cam_fn, views)

  def _views(self, images) -> list[np.ndarray]:
    from agt_jax.data.images import read_image

    return [
      self.preprocess(read_image(x) if isinstance(x, str | os.PathLike) else x)
      for x in images
    ]

  def _predict_views(self, views, *, progress: bool = False) -> np.ndarray:
    if not views:
      return np.zeros((0, len(self.class_names)), np.float32)
    probs, _ = self._batched(self._fn, views, progress=progress)
    return probs.astype(np.float32)

  def _batched(self, fn, views, *, progress: bool = False):
    """``fn(variables, batch)``'s two outputs over ``views`` in full
    batches (padded: one compile), sharded over the local devices."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from agt_jax.runtime import progress as bar_of

    sharding = NamedSharding(self._mesh, P("data"))
    b = self.batch_size
    first, second = [], []
    bar = bar_of(-(-len(views) // b), 0, "predicting") if progress else None
    for i in range(0, len(views), b):
      chunk = np.stack(views[i : i + b])
      pad = b - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
      x, y = fn(self._vars, jax.device_put(chunk, sharding))
      first.append(np.asarray(x)[: b - pad])
      second.append(np.asarray(y)[: b - pad])
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
    return np.concatenate(first), np.concatenate(second)

  def threshold(self, rule) -> tuple[str, np.ndarray]:
    """``(rule name, [C] thresholds)`` for ``strict``, ``validation`` or a
    JSON file of ``{class: threshold}``."""
    if rule in self.thresholds:
      return str(rule), self.thresholds[rule]
    if rule == "validation":
      raise PredictError(
        f"{self.run_dir}: no validation thresholds for the {self.phase} "
        "(a run without a validation split, or --calibrate on: they were "
        "tuned on uncalibrated probabilities); use --thresholds strict or "
        "a JSON file."
      )
    path = pathlib.Path(rule)
    if not path.is_file():
      raise PredictError(
        f"--thresholds {rule!r}: not 'strict', 'validation' or a JSON file."
      )
    try:
      user = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise PredictError(f"{path}: not JSON ({e}).") from None
    names = list(self.class_names)
    if not isinstance(user, dict) or set(user) != set(names):
      got = set(user) if isinstance(user, dict) else set()
      raise PredictError(
        f"{path}: thresholds must name exactly the model's classes "
        f"{names}; missing {sorted(set(names) - got)}, unexpected "
        f"{sorted(got - set(names))}."
      )
    bad = [c for c in names if not 0.0 <= float(user[c]) <= 1.0]
    if bad:
      raise PredictError(f"{path}: thresholds outside [0, 1] for {bad}.")
    return f"file:{path}", np.array([float(user[c]) for c in names])

  def decide(self, probs, rule="strict") -> np.ndarray:
    """`[n, C]` 0/1 calls: ``probs > threshold`` (strict, as the ODIR
    metric)."""
    _, t = self.threshold(rule)
    return (np.asarray(probs) > t).astype(np.int64)


def load_predictor(
  run_dir,
  *,
  phase: str | None = None,
  calibrate: str = "none",
  tta: str = "none",
) -> Predictor:
  """The predictor of a finished run directory (``results.json``,
  ``config.json`` and the phase's checkpoint): the student where the run
  trained one, else its trainer's first phase. ``calibrate`` applies the
  run's validation-fitted temperature(s), ``shared`` or ``per_class``
  (decisions at 0.5 are unchanged by it; the ``validation`` thresholds were
  tuned on uncalibrated probabilities, so the two are not combined).
  ``tta="flip"`` averages each image with its mirror image."""
  if calibrate not in ("none", "shared", "per_class"):
    raise PredictError(
      f"--calibrate {calibrate!r}: not none, shared or per_class."
    )
  from agt_jax.train import loop
  from agt_jax.train.trainers import TRAINERS

  run_dir = pathlib.Path(run_dir).expanduser()
  need = [run_dir / "config.json", run_dir / "groups.json"]
  missing = [str(p) for p in need if not p.is_file()]
  if missing:
    raise PredictError(
      f"{run_dir}: not a finished run directory (no {', '.join(missing)}); "
      "pass the folder a training command wrote (e.g. runs/odir-odir5k-synth-quick)."
    )
  from agt_jax.config import from_json

  config = from_json((run_dir / "config.json").read_text())
  phases = TRAINERS[config.trainer].phases
  phase = phase or ("student" if "student" in phases else phases[0])
  if phase not in phases:
    raise PredictError(
      f"{run_dir}: trainer={config.trainer!r} trains {list(phases)}, not "
      f"{phase!r}."
    )
  if config.prior_correction == "posthoc" and phase == "teacher":
    raise PredictError(
      f"{run_dir}: a prior_correction=posthoc teacher needs its training "
      "split's prior shift, which the predictor does not rebuild; predict "
      "with its student."
    )
  try:
    model, variables, config, _ = loop.load_trained(run_dir, phase)
  except FileNotFoundError as e:
    raise PredictError(
      f"{e} The run has no selected {phase} model: finish it "
      "(its command with --resume) first."
    ) from None
  results_path = run_dir / "results.json"
  results = (
    json.loads(results_path.read_text()) if results_path.is_file() else {}
  )
  names = tuple(results.get("class_names") or _class_names(config))
  thresholds = {"strict": np.full(len(names), 0.5)}
  tuned = results.get("selection", {}).get(phase, {}).get("thresholds")
  if tuned is not None:
    if len(tuned) != len(names):
      raise PredictError(
        f"{results_path}: {len(tuned)} validation thresholds for "
        f"{len(names)} classes."
      )
    thresholds["validation"] = np.asarray(tuned, np.float64)
  temps = results.get("selection", {}).get(phase, {}).get("temperature", {})
  if calibrate != "none":
    thresholds.pop("validation", None)
  return Predictor(
    run_dir,
    phase,
    model,
    variables,
    config,
    names,
    thresholds,
    calibrate=calibrate,
    temperatures={k: np.asarray(v, np.float64) for k, v in temps.items()},
    tta=tta,
    synthetic=bool(results.get("synthetic")),
  )


def _class_names(config) -> tuple:
  from agt_jax.data import registry

  return tuple(
    registry.load_labels(config.dataset, data_dir=config.data_dir).class_names
  )


# -- the command ---------------------------------------------------------------


def list_images(specs: Sequence[str]) -> tuple[list[str], list]:
  """``(paths, patients)``: image paths from folders (their image files,
  sorted), CSV files (a ``path`` or ``image`` column, relative to the CSV,
  and an optional ``patient`` column) and single files; ``patients[i]`` is
  the CSV's patient of path ``i`` or None."""
  out: list[str] = []
  patients: list = []
  for spec in specs:
    p = pathlib.Path(spec).expanduser()
    if p.is_dir():
      found = sorted(
        str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
      )
      out += found
      patients += [None] * len(found)
    elif p.suffix.lower() == ".csv" and p.is_file():
      with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        col = next(
          (c for c in ("path", "image") if c in (reader.fieldnames or ())),
          None,
        )
        if col is None:
          raise PredictError(
            f"{p}: no 'path' or 'image' column (columns: "
            f"{reader.fieldnames})."
          )
        has_patient = "patient" in (reader.fieldnames or ())
        for r, row in enumerate(reader, start=2):
          if not (row[col] or "").strip():
            raise PredictError(f"{p}: row {r}, column {col!r} is empty.")
          q = pathlib.Path(row[col].strip())
          out.append(str(q if q.is_absolute() else p.parent / q))
          patients.append((row.get("patient") or "").strip() or None)
          if has_patient and patients[-1] is None:
            raise PredictError(f"{p}: row {r}, column 'patient' is empty.")
    else:
      out.append(str(p))  # a missing file gets its status row
      patients.append(None)
  if not out:
    raise PredictError(f"--images {list(specs)}: no image files found.")
  return out, patients


def _cam_sheets(predictor, views, probs, thresholds, paths, folder, taken):
  """Grad-CAM sheets of ``views`` into ``folder``: each image's positive
  classes (by ``thresholds``), or its most probable class when none is."""
  from agt_jax.plotting import cam_overlay

  _, cams = predictor._explain_views(views)  # already preprocessed
  names = predictor.class_names
  for k, path in enumerate(paths):
    pos = np.flatnonzero(probs[k] > thresholds)
    if len(pos):
      labels = [f"{names[c]} p={probs[k, c]:.2f}" for c in pos]
    else:
      pos = [int(np.argmax(probs[k]))]
      labels = [f"top {names[pos[0]]} p={probs[k, pos[0]]:.2f} (none positive)"]
    stem = pathlib.Path(path).stem
    name, n = f"{stem}.png", 1
    while name in taken:  # the same stem in two folders
      n += 1
      name = f"{stem}_{n}.png"
    taken.add(name)
    cam_overlay(views[k], cams[k, pos], labels, folder / name)


def predict_files(
  predictor: Predictor,
  paths,
  out,
  *,
  rule="strict",
  gradcam=None,
  patients=None,
  patient_ids=None,
  bars: bool = False,
) -> dict:
  """Scores ``paths`` into the CSV ``out`` (written atomically): one row
  per image with ``status``, the rule, the probabilities and the 0/1
  calls. ``gradcam``: a folder for Grad-CAM sheets; ``patients``: a CSV for
  the ODIR submission (eyes fused per patient; ``patient_ids`` gives a
  CSV's patient column); ``bars``: a progress bar with ETA. Returns
  counts."""
  from agt_jax import patients as patients_lib
  from agt_jax.data.errors import ImageReadError
  from agt_jax.data.images import read_image
  from agt_jax.runtime import progress

  name, thresholds = predictor.threshold(rule)  # bad rules fail first
  owners = None
  if patients is not None:  # every patient known before any work
    given = patient_ids or [None] * len(paths)
    owners = [patients_lib.patient_of(p, g) for p, g in zip(paths, given)]
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if gradcam is not None:
    gradcam = pathlib.Path(gradcam)
    gradcam.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  names = list(predictor.class_names)
  counts = {"images": len(paths), "scored": 0, "unreadable": 0, "upscaled": 0}
  crop = predictor.config.crop
  every = np.full((len(paths), len(names)), np.nan)
  taken: set = set()
  try:
    with open(tmp, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(
        ["image", "status", "rule"]
        + [f"p_{c}" for c in names]
        + [f"y_{c}" for c in names]
      )
      chunk = predictor.batch_size
      bar = progress(-(-len(paths) // chunk), 0, "predicting") if bars else None
      for i in range(0, len(paths), chunk):
        views, rows = [], []
        for j, path in enumerate(paths[i : i + chunk], start=i):
          try:
            img = read_image(path)
          except ImageReadError as e:
            counts["unreadable"] += 1
            rows.append((j, path, f"unreadable: {e}", None))
            continue
          status = "ok"
          if min(img.shape[:2]) < crop:
            counts["upscaled"] += 1
            status = (
              f"ok (upscaled: {img.shape[1]}x{img.shape[0]} is smaller than "
              f"the {crop}px crop)"
            )
          views.append(predictor.preprocess(img))
          rows.append((j, path, status, len(views) - 1))
        probs = predictor._predict_views(views)
        if gradcam is not None and views:
          read = [path for _, path, _, k in rows if k is not None]
          _cam_sheets(predictor, views, probs, thresholds, read, gradcam, taken)
        for j, path, status, k in rows:
          if k is None:
            w.writerow([path, status, name] + [""] * (2 * len(names)))
            continue
          p = probs[k]
          every[j] = p
          w.writerow(
            [path, status, name]
            + [f"{v:.6f}" for v in p]
            + (p > thresholds).astype(int).tolist()
          )
          counts["scored"] += 1
        if bar is not None:
          bar.update(1)
      if bar is not None:
        bar.close()
    if owners is not None:
      ids, fused = patients_lib.fuse(every, owners, names)
      patients_lib.write_submission(patients, ids, fused, names)
      counts["patients"] = len(ids)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      tmp.unlink()
  return counts


def add_model_arguments(p: argparse.ArgumentParser) -> None:
  """``--model``, ``--phase``, ``--calibrate`` and ``--tta``: which trained
  phase and how its probabilities are made (:func:`load_predictor`'s
  arguments), for every command that loads one."""
  p.add_argument("--model", required=True, help="a finished run directory")
  p.add_argument(
    "--phase", default=None, help="student (default where trained) | teacher"
  )
  p.add_argument(
    "--calibrate",
    default="none",
    choices=["none", "shared", "per_class"],
    help="the run's validation-fitted temperature scaling",
  )
  p.add_argument(
    "--tta",
    default="none",
    choices=["none", "flip"],
    help="flip: the mean of each image and its horizontal mirror",
  )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m agt_jax.predict", description=__doc__.split("\n")[0]
  )
  add_model_arguments(p)
  p.add_argument(
    "--images",
    required=True,
    nargs="+",
    help="folders, CSV files (a 'path' column, optionally 'patient') or "
    "image files",
  )
  p.add_argument("--out", required=True, help="the CSV to write")
  p.add_argument(
    "--thresholds",
    default="strict",
    help="strict (p > 0.5) | validation (the run's tuned per-class "
    "thresholds) | a JSON file {class: threshold}",
  )
  p.add_argument(
    "--gradcam",
    default=None,
    metavar="DIR",
    help="write a Grad-CAM sheet per image (its positive classes) here",
  )
  p.add_argument(
    "--patients",
    default=None,
    metavar="CSV",
    help="also write the ODIR submission (ID,N,D,...; both eyes of a "
    "patient fused: max for diseases, N only when both eyes are normal)",
  )
  a = p.parse_args(argv)
  import time

  from agt_jax.runtime import enable_compilation_cache

  enable_compilation_cache()  # a second scoring run skips the compile
  start = time.perf_counter()
  try:
    predictor = load_predictor(
      a.model, phase=a.phase, calibrate=a.calibrate, tta=a.tta
    )
    paths, patient_ids = list_images(a.images)
    counts = predict_files(
      predictor,
      paths,
      a.out,
      rule=a.thresholds,
      gradcam=a.gradcam,
      patients=a.patients,
      patient_ids=patient_ids,
      bars=True,
    )
  except AgtError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  counts["seconds"] = round(time.perf_counter() - start, 2)
  counts["synthetic"] = predictor.synthetic
  print(json.dumps({"out": str(a.out), **counts}), flush=True)
  if predictor.synthetic:
    print(
      f"note: {a.model} was trained on synthetic images (rendered, not "
      "photographs); its calls on real photographs carry no clinical meaning",
      file=sys.stderr,
      flush=True,
    )
  if counts["unreadable"]:
    print(
      f"warning: {counts['unreadable']} image(s) could not be read; their "
      f"rows in {a.out} say why (status column)",
      file=sys.stderr,
      flush=True,
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
