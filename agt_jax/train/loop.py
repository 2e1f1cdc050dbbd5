"""``train_and_evaluate(config, workdir)``: one fold of AGT end to end.

The paper's pipeline, in order: data (test fold, and a validation split
carved from the training fold) -> relational groups -> teacher (alternate
group training) -> student (class-balanced KD) -> evaluation and report.
Each training phase checkpoints ``{state, data iterator, config}``, keeps its
validation-selected variables, and resumes bit-identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np

from agt_jax import config as config_lib
from agt_jax import distributed, grouping, methods, models
from agt_jax import metrics as metrics_lib
from agt_jax.config import Config, from_json
from agt_jax.data import folds as folds_lib
from agt_jax.data import images as images_lib
from agt_jax.errors import ConfigMismatchError, NonFiniteLossError
from agt_jax.io import atomic_write_text
from agt_jax.models.weights import load_init
from agt_jax.runtime import make_mesh
from agt_jax.train import agt, evaluation, group_features, interrupts, steps
from agt_jax.train import workdir as workdir_lib
from agt_jax.train.outputs import write_outputs
from agt_jax.train.trainers import TRAINERS, Context

__all__ = ["ConfigMismatchError", "NonFiniteLossError", "train_and_evaluate"]


@dataclasses.dataclass
class FoldData:
  """One fold: the images, its three disjoint splits and their labels."""

  table: Any
  source: Any
  fit_idx: np.ndarray  # training images the models learn from
  val_idx: np.ndarray  # validation: model selection only
  test_idx: np.ndarray  # test fold: scored once, at the end
  assignment: dict
  # Generated images appended to the fit split (config.extra_train).
  extra_images: np.ndarray | None = None
  extra_labels: np.ndarray | None = None

  @property
  def names(self) -> list[str]:
    return list(self.table.class_names)

  @property
  def y_fit(self):
    y = self.table.labels[self.fit_idx]
    if self.extra_labels is None:
      return y
    return np.concatenate([y, self.extra_labels.astype(y.dtype)])

  @property
  def num_fit(self) -> int:
    """Training images, generated ones included."""
    return len(self.y_fit)

  @property
  def y_val(self):
    return self.table.labels[self.val_idx]

  @property
  def y_test(self):
    return self.table.labels[self.test_idx]

  @property
  def counts(self):
    return self.y_fit.sum(0)

  @property
  def fit_source(self):
    real = images_lib.SubsetSource(self.source, self.fit_idx)
    if self.extra_images is None:
      return real
    extra = images_lib.ArrayImageSource(self.extra_images)
    return images_lib.ConcatSource(real, extra)


def train_and_evaluate(
  config: Config, workdir, *, resume: bool = False
) -> dict:
  """Runs one fold and writes every artefact into ``workdir``.

  Everything that can be checked before compute is checked first (the whole
  config, the workdir, the data and its image files, the device mesh);
  ``config.json`` is written only then, so a run that fails on bad input
  leaves a workdir that a corrected rerun may use. SIGINT/SIGTERM during
  training checkpoint the current step and raise
  :class:`~agt_jax.errors.Interrupted`.

  Returns the ``results.json`` dictionary.
  """
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  holder = (
    workdir_lib.lock(workdir)
    if distributed.is_primary()
    else contextlib.nullcontext()
  )
  with interrupts.handle_signals(), holder:
    resume = workdir_lib.check(config, workdir, resume)
    interrupts.set_stage("while loading the data (nothing written yet)")
    # Process 0 fills the shared caches (rendering, image checks) first.
    if not distributed.is_primary():
      distributed.barrier("agt_jax: data loaded by process 0")
    data = load_fold(config)
    if distributed.is_primary():
      distributed.barrier("agt_jax: data loaded by process 0")
    group_features.check_grouping(config, data.names, data.counts)
    mesh = make_mesh(config.batch_size, config.eval_batch_size)
    if distributed.is_primary():
      workdir_lib.claim(config, workdir, resume, data)
    distributed.barrier("agt_jax: workdir claimed")
    return _train_and_evaluate(config, workdir, resume, data, mesh)


def _train_and_evaluate(config, workdir, resume, data, mesh) -> dict:
  encoder = models.make_encoder(config.model, dtype=models.DTYPES[config.dtype])
  throughput: dict = {}
  interrupts.set_stage(
    "while choosing the class groups (the warm-up is "
    "not checkpointed: it reruns)"
  )
  groups_info = _groups(
    config, data, encoder, mesh, workdir, resume, throughput
  )
  groups = tuple(tuple(g) for g in groups_info["groups"])
  trained = TRAINERS[config.trainer].train(
    config, data, groups, Context(encoder, mesh, workdir, resume)
  )
  interrupts.set_stage(
    "while evaluating the test fold (training is "
    "checkpointed; a resume only re-evaluates)"
  )
  results, probs = evaluate_models(config, data, trained, groups_info, mesh)
  results["throughput"] = {
    **throughput,
    **{k: v for t in trained.values() for k, v in t.throughput.items()},
  }
  if distributed.is_primary():  # the others hold the same results
    for line in results["warnings"]:
      print(f"warning: {line}", file=sys.stderr, flush=True)
    write_outputs(workdir, results, probs, data.y_test, data.test_idx)
  distributed.barrier("agt_jax: outputs written")
  return results


# -- workdir and data -----------------------------------------------------------


def load_data(config: Config):
  """``(table, source)`` for the configured dataset (and class subset)."""
  from agt_jax.data import registry

  table, source = registry.load_dataset(
    config.dataset,
    data_dir=config.data_dir,
    cache_dir=config.cache_dir,
    image_size=config.image_size,
    seed=config.seed,
    max_images=config.max_images,
    skip_bad_images=config.skip_bad_images,
  )
  if config.classes:
    table = table.select_classes(config.classes)
  return table, source


def load_fold(config: Config) -> FoldData:
  """The dataset and this fold's fit / validation / test split (written to
  ``folds.json`` when the run claims its workdir)."""
  table, source = load_data(config)
  train_idx, test_idx, assignment = folds_lib.fold_indices(
    table,
    config.fold,
    num_folds=config.num_folds,
    seed=config.fold_seed,
    mode=config.fold_mode,
  )
  fit_idx, val_idx = folds_lib.validation_split(
    table, train_idx, fraction=config.val_fraction, seed=config.fold_seed
  )
  assignment = {
    **assignment,
    "validation_fraction": config.val_fraction,
    "num_fit_images": int(len(fit_idx)),
    "num_validation_images": int(len(val_idx)),
    "validation_patients": sorted(
      set(table.patient_ids[val_idx].tolist()), key=lambda p: (len(p), p)
    ),
  }
  data = FoldData(table, source, fit_idx, val_idx, test_idx, assignment)
  if config.extra_train:
    images, labels = read_extra(config, table.class_names)
    data = dataclasses.replace(data, extra_images=images, extra_labels=labels)
    data.assignment["num_generated_fit_images"] = len(images)
  return data


def read_extra(config: Config, class_names) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` of ``config.extra_train``, checked against the
  run's classes and image size (one line naming the file and the field)."""
  from agt_jax.errors import InputError

  path = pathlib.Path(config.extra_train).expanduser()
  try:
    with np.load(path) as z:
      images, labels, names = z["images"], z["labels"], list(z["class_names"])
  except (OSError, ValueError, KeyError) as e:
    raise InputError(
      f"extra_train {path}: not an .npz with images, labels and "
      f"class_names ({e})."
    ) from None
  want = (config.image_size, config.image_size, 3)
  if names != list(class_names):
    raise InputError(
      f"extra_train {path}: class_names {names} differ from the run's "
      f"{list(class_names)}; generate it for these classes."
    )
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
    raise InputError(
      f"extra_train {path}: images are {images.dtype} {images.shape[1:]}, "
      f"the run needs uint8 {want} (image_size={config.image_size})."
    )
  if labels.shape != (len(images), len(names)):
    raise InputError(
      f"extra_train {path}: labels have shape {labels.shape}, expected "
      f"{(len(images), len(names))}."
    )
  return images, labels


# -- groups ---------------------------------------------------------------------


def _groups(
  config, data: FoldData, encoder, mesh, workdir, resume, throughput
) -> dict:
  path = workdir / "groups.json"
  if resume and path.exists():
    return json.loads(path.read_text())
  info = group_features.make_groups(
    config,
    encoder,
    data.fit_source,
    data.y_fit,
    data.names,
    data.counts,
    mesh,
    (config.crop, config.crop, 3),
    workdir,
    throughput,
    load_init,
  )
  # §3.3: grouping narrows each subset's class-count range.
  info["imbalance"] = grouping.subset_imbalance(data.counts, info["groups"])
  if distributed.is_primary():
    atomic_write_text(path, json.dumps(info, indent=1))
  return info


# -- evaluation -------------------------------------------------------------------


def _results_header(config, data: FoldData, groups_info) -> dict:
  """What ``results.json`` says before any score: the data, the config,
  the groups and the rules the trainer followed."""
  names, counts = data.names, data.counts
  trainer = TRAINERS[config.trainer]
  results: dict[str, Any] = {
    "dataset": data.table.name
    + (" (synthetic)" if data.table.synthetic else ""),
    "synthetic": data.table.synthetic,
    "fold": config.fold,
    "class_names": names,
    "train_images": int(data.num_fit),
    "validation_images": int(len(data.val_idx)),
    "train_class_counts": [int(x) for x in counts],
    "test_images": int(len(data.test_idx)),
    "config": json.loads(config.to_json()),
    "groups": groups_info,
    "reweight_rule": trainer.rule(config),
    "prior_correction": (
      agt.prior_rule(config)
      if trainer.sampler_prior
      else "none (not an AGT teacher)"
    ),
    "selection": {},
    "warnings": [],
  }
  return results


def _validation_scores(sel, scores, selection, p, data):
  """Validation scores into ``sel`` and the threshold-tuned test scores
  into ``scores``; ``(p on negatives, split)`` for the collapse check."""
  names, counts, y_val, y_test = (
    data.names,
    data.counts,
    data.y_val,
    data.y_test,
  )
  pv, pv_last = selection["val_probs"], selection["val_probs_last"]
  sel["val"] = metrics_lib.odir_score(y_val, pv)
  sel["val_last"] = metrics_lib.odir_score(y_val, pv_last)
  sel["val_macro_f1"] = metrics_lib.macro_f1(y_val, pv)
  sel["val_macro_auc"] = evaluation.report(pv, y_val, names, counts)[
    "macro_auc"
  ]
  thresholds = evaluation.tune_thresholds(y_val, pv)
  sel["thresholds"] = [float(x) for x in thresholds]
  scores["tuned"] = evaluation.tuned_score(y_test, p, thresholds)
  sel["global_threshold"] = evaluation.tune_global_threshold(y_val, pv)
  scores["global_threshold"] = evaluation.global_threshold_score(
    y_test, p, sel["global_threshold"]
  )
  sel["temperature"], scores["temperature_scaled"] = (
    evaluation.temperature_scaling(y_val, pv, y_test, p)
  )
  return evaluation.negative_probabilities(y_val, pv_last), "validation split"


def evaluate_models(
  config, data: FoldData, trained: dict, groups_info, mesh
) -> tuple[dict, dict]:
  """Test-fold metrics of every trained model (selected and last), scores
  with validation-tuned thresholds, and collapse warnings."""
  names, counts = data.names, data.counts
  results = _results_header(config, data, groups_info)
  probs = {}
  y_test = data.y_test
  single_label = methods.objective(config) == "softmax"
  for name, t in trained.items():

    def test_probs(variables, desc=None, fn=t.predict_fn, t=t):
      return evaluation.predict(
        t.model,
        variables,
        data.source,
        data.test_idx,
        y_test,
        config,
        mesh,
        desc,
        fn=fn,
      )[0]

    p = test_probs(t.selected, f"test {name}")
    results[name] = evaluation.report(p, y_test, names, counts)
    if config.tta != "none":
      # Beside the single crop: the same selected model over the TTA views.
      fn = evaluation.predictor(t.model, t.offset, tta=config.tta)
      results[name][f"tta_{config.tta}"] = evaluation.report(
        test_probs(t.selected, fn=fn), y_test, names, counts
      )
    if single_label:
      results[name]["top1"] = metrics_lib.top1_report(y_test, p, counts)
    probs[name] = p
    sel = {k: v for k, v in t.selection.items() if not k.startswith("val_")}
    if t.last is not t.selected:
      p_last = test_probs(t.last)
      results[f"{name}_last"] = evaluation.report(p_last, y_test, names, counts)
      probs[f"{name}_last"] = p_last
    if "val_probs" in t.selection:
      p_neg, split = _validation_scores(
        sel, results[name], t.selection, p, data
      )
    else:
      p_neg, split = (
        evaluation.negative_probabilities(y_test, p),
        "test fold, end of training",
      )
    sel["p_neg_last"] = [float(x) for x in p_neg]
    results["selection"][name] = sel
    msg = evaluation.collapse_message(p_neg, names, name, config, split)
    if msg:
      results["warnings"].append(msg)
  first = next(iter(trained.values()))
  results["teacher_schedule"] = first.selection["schedule"]
  results["device"] = str(jax.devices()[0].device_kind)
  results["devices"] = {
    "count": jax.device_count(),
    "processes": jax.process_count(),
  }
  return results, probs


def load_trained(workdir, phase: str | None = None):
  """``(model, variables, config, groups)`` of a run's ``phase`` (default:
  its trainer's first, e.g. the teacher): the validation-selected variables
  (``checkpoints/<phase>_best``), else the phase's last checkpoint.

  For scoring or exporting a finished run without re-running anything.
  """
  from agt_jax.models import weights

  workdir = pathlib.Path(workdir)
  config = from_json((workdir / "config.json").read_text())
  trainer = TRAINERS[config.trainer]
  phase = phase or trainer.phases[0]
  if phase not in trainer.phases:
    raise ValueError(
      f"{workdir}: trainer={config.trainer!r} trains "
      f"{trainer.phases}, not {phase!r}."
    )
  groups = tuple(
    tuple(g)
    for g in json.loads((workdir / "groups.json").read_text())["groups"]
  )
  num_classes = 1 + max(c for g in groups for c in g)  # groups cover all
  model = trainer.model(config, phase, groups, num_classes)
  like = steps.init_state(
    model, steps.adam(1e-3, 0.9, 0.99), (config.crop, config.crop, 3), 0
  )
  for name in (f"{phase}_best", phase):
    path = workdir / "checkpoints" / name
    if path.exists():
      variables = weights.load_variables(path, like)
      if variables is not None:
        return model, variables, config, groups
  raise FileNotFoundError(
    f"{workdir}: no {phase} checkpoint "
    f"(looked in checkpoints/{phase}_best and "
    f"checkpoints/{phase})."
  )
