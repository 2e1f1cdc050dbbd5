"""Experiment configuration: one frozen dataclass, presets, overrides.

Config is code: presets are functions of the dataclass, ``--set key=value``
overrides are type-checked against the fields, and the resolved config is
written to the workdir as ``config.json`` (a resume must match it).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any

from agt_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
  # data
  dataset: str = "odir5k-synth"  # names: agt_jax.data.registry
  data_dir: str | None = None
  cache_dir: str | None = None
  max_images: int | None = None  # first N images (patients kept whole)
  # Real data: drop image files that do not decode (listed in the workdir).
  skip_bad_images: bool = False
  fold: int = 0
  num_folds: int = 5
  fold_seed: int = 0
  # random | stratified (patient k-fold) | official (the table's own
  # split: train + val -> test) | official_val (train -> val: RFMiD as the
  # paper, whose test labels were not public)
  fold_mode: str = "random"
  # Patients of the training fold held out for model selection (0: none).
  val_fraction: float = 0.1
  image_size: int = 512  # resize (cache) size
  crop: int = 448  # random crop (train) / centre crop (eval)
  workers: int = 0  # Grain decode workers
  # model
  model: str = "resnet50"
  dtype: str = "float32"  # compute dtype; params stay float32
  init: str | None = None  # checkpoint (ours) or torchvision .pth
  # The encoder whose features group the classes (None: init's, else the
  # warm-up's), so grouping and training can start from different weights.
  group_init: str | None = None
  # optimisation (paper §3.8: Adam 1e-3, betas 0.9/0.99, batch 64)
  batch_size: int = 64
  eval_batch_size: int = 64
  lr: float = 1e-3
  b1: float = 0.9
  b2: float = 0.99
  # > 0: AdamW's decoupled weight decay (the paper trains with plain Adam).
  weight_decay: float = 0.0
  warmup_steps: int = 300  # plain-BCE run whose features group
  teacher_steps: int = 6000
  student_steps: int = 6000
  classes: tuple = ()  # a subset of the classes (all if empty)
  # AGT
  grouping: str = "relational"  # relational | paper | shot | gradient | single
  n_groups: int = 3
  shot_many: int = 0  # shot grouping: head > many, tail < few
  shot_few: int = 0  #   (0, 0: count tertiles)
  together: tuple = (("N", "O"),)
  alpha: float = 0.5
  # Method names (reweight, loss, kd, trainer, transfer_loss) are listed
  # with what each does in docs/methods.md (from agt_jax.methods). Each
  # default was chosen on validation; the numbers are in docs/table3.md and
  # docs/agt_regimes.md.
  reweight: str = "none"
  loss: str = "agt"
  beta: float = 2.0
  rw_decay: float = 0.99  # reweight=feedback: statistics' decay
  rw_stats: str = "global"  # feedback statistics: global | group
  # The group-mixed sampler shifts each class's prior (samplers.prior_shift):
  # none (the paper) | loss (train on z + shift[g]: logits stay natural) |
  # posthoc (subtract the head's own shift at prediction and for KD).
  # The default, loss, was chosen on validation (docs/agt_regimes.md).
  prior_correction: str = "loss"
  # > 0: the teacher's batch-norm statistics recomputed on this many
  # instance-balanced batches before it is scored.
  bn_recalibrate: int = 0
  # Each stage's objective: all (every class's loss trains the encoder,
  # §3.4.3) | group (Eq. 14: only the active group's classes).
  teacher_objective: str = "all"
  # The teacher's batches: group_mixed (AGT; with one group, plain
  # instance-balanced) | class_balanced (Table 1's CB sampling: a class
  # uniformly, then one of its images; one head only).
  teacher_sampler: str = "group_mixed"
  switch_every: int = 1
  schedule: str = "alternate"  # alternate (AGT) | joint (all heads)
  teacher: str = "shared"  # shared encoder | multi (one per group)
  experts: int = 3  # RIDE experts per head (loss=ride)
  ib_start: float = 0.5  # IB: fraction of teacher steps on BCE
  eval_every: int = 0  # >0: score on validation every N steps
  select: str = "best"  # best (validation final score) | last
  # none | flip: the test fold is also scored with the mean of each image
  # and its horizontal mirror, reported beside the single crop.
  tta: str = "none"
  # student
  student: bool = True
  kd: str = "eq7"
  temperature: float = 5.0
  gamma: float = 1.0
  kd_direction: str = "teacher_student"
  # t2: the KL x T^2 (Hinton's convention) | none: Eqs. 6-8 as written.
  kd_scale: str = "t2"
  # GBG (paper 004): trainer="gbg" trains one model on every group at once
  # as a multi-objective problem (agt_jax.train.gbg) instead of the AGT
  # teacher and student.
  trainer: str = "agt"
  moo: str = "mgda"  # mgda (Eq. 11) | mean | per_class
  moo_normalizer: str = "none"  # none (paper Eq. 11) | l2 | loss | loss+
  affinity: str = "cos+1"  # gradient grouping: cos+1 | cos
  gac_fraction: float = 0.1  # GAC: a missing group gets this x batch
  # A group's BCE over its classes: mean (paper 004's "average strategy")
  # | sum (GBG's published code).
  gbg_group_loss: str = "mean"
  grad_batches: int = 4  # batches averaged for class gradients
  objective: str = "auto"  # auto (softmax on CIFAR) | bce | softmax
  # Transfer (paper 001): trainer="transfer" trains one TransferNet (the
  # encoder's last map -> attention -> mean pool -> head) on every class,
  # for teacher_steps steps.
  freeze_encoder: bool = False  # Task 1.2: the head alone learns
  attention: str = "none"  # none | se | mha (Task 3)
  head: str = "mlp"  # mlp (hidden units, ReLU, dropout) | linear
  head_hidden: int = 512
  dropout: float = 0.5
  transfer_loss: str = "bce"  # bce | focal | cb (positive terms only)
  focal_alpha: float = 0.5  # Task 2: alpha 0.5, gamma 1
  focal_gamma: float = 1.0
  cb_beta: float = 0.999
  cam_entropy: float = 0.0  # Grad-CAM entropy term's weight (Task 4c)
  # Generated training images (Task 4a): an .npz of "images" [m, S, S, 3]
  # uint8 at image_size, "labels" [m, C] and "class_names", appended to the
  # fit split (never to validation or test).
  extra_train: str | None = None
  select_metric: str = "final"  # final (ODIR score) | macro_f1 (paper 001)
  augment: str = "crop_flip"  # crop_flip | flip_rotate (paper 001)
  # bookkeeping
  seed: int = 0
  log_every: int = 50
  ckpt_every: int = 500
  keep_checkpoints: int = 2
  preset: str = "paper"

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


PRESETS: dict[str, dict[str, Any]] = {
  # Paper §3.8/§4.1: ResNet-50, 512 -> 448 crops, Adam 1e-3 (0.9, 0.99),
  # batch 64, alpha 0.5, beta 2, T 5, gamma 1.
  "paper": dict(
    model="resnet50",
    image_size=512,
    crop=448,
    batch_size=64,
    dtype="bfloat16",
    warmup_steps=300,
    teacher_steps=6000,
    student_steps=6000,
    log_every=50,
    ckpt_every=500,
    eval_every=500,
  ),
  # One fold on 2 CPU cores in under 15 minutes, still learning.
  "quick": dict(
    model="resnet_small",
    image_size=112,
    crop=96,
    batch_size=32,
    eval_batch_size=128,
    warmup_steps=150,
    teacher_steps=700,
    student_steps=700,
    log_every=25,
    ckpt_every=200,
    eval_every=100,
    lr=2e-3,
  ),
  # End to end in under a minute on 2 cores (tests).
  "smoke": dict(
    model="resnet_tiny",
    image_size=40,
    crop=32,
    batch_size=16,
    eval_batch_size=64,
    max_images=240,
    warmup_steps=4,
    teacher_steps=6,
    student_steps=6,
    log_every=2,
    ckpt_every=3,
    eval_every=3,
  ),
}


# Fixed choices; the method names (trainer, loss, reweight, kd,
# transfer_loss) come from the registries (:func:`choices`).
CHOICES = {
  "fold_mode": ("random", "stratified", "official", "official_val"),
  "grouping": (
    "relational",
    "paper",
    "shot",
    "gradient",
    "random",
    "count",
    "single",
    "none",
  ),
  "attention": ("none", "se", "mha"),
  "head": ("mlp", "linear"),
  "select_metric": ("final", "macro_f1"),
  "augment": ("crop_flip", "flip_rotate"),
  "moo": ("mgda", "mean", "per_class"),
  "moo_normalizer": ("none", "l2", "loss", "loss+"),
  "affinity": ("cos+1", "cos"),
  "objective": ("auto", "bce", "softmax"),
  "rw_stats": ("global", "group"),
  "prior_correction": ("none", "loss", "posthoc"),
  "schedule": ("alternate", "joint"),
  "teacher": ("shared", "multi"),
  "select": ("best", "last"),
  "tta": ("none", "flip"),
  "kd_direction": ("teacher_student", "student_teacher"),
  "kd_scale": ("t2", "none"),
  "teacher_objective": ("all", "group"),
  "teacher_sampler": ("group_mixed", "class_balanced"),
  "gbg_group_loss": ("mean", "sum"),
  "dtype": ("float32", "bfloat16"),
}


def choices() -> dict[str, tuple]:
  """Every field with a fixed set of values, the registries' included."""
  from agt_jax import methods
  from agt_jax.data.registry import NAMES as DATASETS
  from agt_jax.models import ENCODERS
  from agt_jax.train.trainers import TRAINERS

  return {
    **CHOICES,
    "dataset": tuple(DATASETS),
    "model": tuple(sorted(ENCODERS)),
    "trainer": TRAINERS.names(),
    "loss": methods.TEACHER_LOSSES.names(),
    "reweight": methods.REWEIGHTS.names(),
    "kd": methods.KD.names(),
    "transfer_loss": methods.TRANSFER_LOSSES.names(),
  }


def _method_checks(c: Config) -> str | None:
  """The specs' own constraints: the chosen trainer's and loss's, and the
  fields only another trainer reads left at the preset's values."""
  from agt_jax import methods
  from agt_jax.train.trainers import TRAINERS

  trainer = TRAINERS[c.trainer]
  loss = methods.TEACHER_LOSSES[c.loss]
  # A field only another trainer reads, set away from the preset's value,
  # would be silently ignored: refused. (The preset's own values, e.g.
  # the AGT defaults under trainer=gbg, are not the user's choice.)
  base = get_config(c.preset) if c.preset in PRESETS else Config()
  for other in TRAINERS.values():
    if other.name == c.trainer:
      continue
    for key in other.owns:
      if key not in trainer.owns and getattr(c, key) != getattr(base, key):
        return (
          f"{key}={getattr(c, key)!r} belongs to trainer={other.name!r}; "
          f"trainer={c.trainer!r} ignores it."
        )
  if (
    c.rw_stats != "global" and not methods.REWEIGHTS[c.reweight].per_group_stats
  ):
    return (
      f"rw_stats={c.rw_stats!r} sets the feedback re-weighting's "
      f"statistics; it needs reweight=feedback (got reweight="
      f"{c.reweight!r})."
    )
  if c.teacher_objective == "group" and not loss.group_objective:
    return (
      f"teacher_objective='group' (Eq. 14) restricts the AGT loss to the "
      f"active group's classes; loss={c.loss!r} has its own reduction. Use "
      "loss=agt or teacher_objective=all."
    )
  if c.teacher_sampler == "class_balanced" and (
    c.grouping not in ("single", "none") or c.prior_correction != "none"
  ):
    return (
      "teacher_sampler='class_balanced' is the one-head CB-sampling "
      f"baseline: set grouping=single and prior_correction=none (got "
      f"grouping={c.grouping!r}, prior_correction={c.prior_correction!r})."
    )
  if c.teacher == "multi" and loss.shared_only:
    return (
      f"loss={c.loss!r} needs the shared-encoder teacher's "
      "expert/others heads; use teacher=shared."
    )
  if c.student and not trainer.student:
    return (
      f"trainer={c.trainer!r} trains one model (no distilled "
      "student); set student=false."
    )
  if not trainer.grouped and c.grouping not in ("none", "single"):
    return (
      f"trainer={c.trainer!r} trains one head on every class; set "
      "grouping=none."
    )
  return trainer.check(c) or loss.check(c)


def validate(config: Config) -> Config:
  """Checks the whole config before any compute, so a typo or an
  inconsistent combination fails in a second rather than after the warm-up.

  Raises :class:`~agt_jax.errors.ConfigError` naming the field.
  """
  c = config
  for key, allowed in choices().items():
    if getattr(c, key) not in allowed:
      raise ConfigError(
        f"{key}={getattr(c, key)!r} is not one of " f"{tuple(allowed)}."
      )
  ranges = {
    "val_fraction": (0.0, 1.0, True),
    "alpha": (0.0, 1.0, True),
    "rw_decay": (0.0, 1.0, True),
    "ib_start": (0.0, 1.0, False),
    "gac_fraction": (0.0, 1.0, False),
    "dropout": (0.0, 1.0, True),
    "cb_beta": (0.0, 1.0, True),
    "focal_alpha": (0.0, 1.0, False),
  }
  for key, (lo, hi, open_hi) in ranges.items():
    v = getattr(c, key)
    if not (lo <= v < hi if open_hi else lo <= v <= hi):
      raise ConfigError(
        f"{key} must be in [{lo:g}, {hi:g}"
        f"{')' if open_hi else ']'}, got {v}."
      )
  positive = (
    "batch_size",
    "eval_batch_size",
    "image_size",
    "crop",
    "log_every",
    "ckpt_every",
    "keep_checkpoints",
    "n_groups",
    "num_folds",
    "beta",
    "temperature",
    "grad_batches",
  )
  for key in positive:
    if not getattr(c, key) > 0:
      raise ConfigError(f"{key} must be > 0, got {getattr(c, key)}.")
  for key in (
    "warmup_steps",
    "teacher_steps",
    "student_steps",
    "bn_recalibrate",
    "eval_every",
    "gamma",
    "workers",
    "seed",
    "fold_seed",
    "head_hidden",
    "focal_gamma",
    "weight_decay",
  ):
    if getattr(c, key) < 0:
      raise ConfigError(f"{key} must be >= 0, got {getattr(c, key)}.")
  if not c.lr > 0:  # inf is allowed: it is how divergence is provoked
    raise ConfigError(f"lr must be > 0, got {c.lr}.")
  if c.max_images is not None and c.max_images < 1:
    raise ConfigError(
      f"max_images must be >= 1 or none, got " f"{c.max_images}."
    )
  if c.crop > c.image_size:
    raise ConfigError(
      f"crop={c.crop} is larger than image_size=" f"{c.image_size}."
    )
  folds = 1 if c.fold_mode.startswith("official") else c.num_folds
  if not 0 <= c.fold < folds:
    raise ConfigError(
      f"fold={c.fold} is out of range: fold_mode="
      f"{c.fold_mode!r} has folds 0-{folds - 1}."
    )
  if c.select == "best" and c.val_fraction > 0 and c.eval_every <= 0:
    raise ConfigError(
      "select=best needs eval_every > 0 (how often the "
      "validation split is scored)."
    )
  # prior_correction is not refused elsewhere: its default applies to the
  # AGT teacher, and other trainers have no group-mixed sampler to correct.
  msg = _method_checks(c)
  if msg:
    raise ConfigError(msg)
  from agt_jax.data.registry import OFFLINE

  if c.dataset not in OFFLINE and not c.data_dir:
    raise ConfigError(
      f"dataset {c.dataset!r} is read from a local folder: "
      f"pass --data {_data_name(c.dataset)}:PATH (data_dir= "
      "in Python); the offline default is 'odir5k-synth'."
    )
  for key in ("init", "group_init"):
    path = getattr(c, key)
    if path and not pathlib.Path(path).expanduser().exists():
      raise ConfigError(
        f"{key}={path!r}: no such file or folder (a "
        "checkpoint folder of this project or a torchvision "
        ".pth)."
      )
  if c.extra_train and not pathlib.Path(c.extra_train).expanduser().is_file():
    raise ConfigError(
      f"extra_train={c.extra_train!r}: no such file (an .npz of generated "
      "training images, as experiments.transfer_odir --tasks vae writes)."
    )
  return config


def _data_name(dataset: str) -> str:
  return "cifar100" if dataset.startswith("cifar100") else dataset


def get_config(preset: str = "paper", **overrides) -> Config:
  if preset not in PRESETS:
    raise ConfigError(
      f"unknown preset {preset!r}; known: " f"{sorted(PRESETS)}."
    )
  return replace(Config(preset=preset, **PRESETS[preset]), **overrides)


def _coerce(name: str, value: Any, hint) -> Any:
  if not isinstance(value, str):
    return value
  origin = typing.get_origin(hint)
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if value.lower() in ("none", "null") and type(None) in typing.get_args(hint):
    return None
  target = (
    args[0]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
    and args
    else hint
  )
  if target is bool:
    if value.lower() in ("1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ConfigError(f"--set {name}={value}: expected true/false.")
  if target in (int, float, str):
    try:
      return target(value)
    except ValueError:
      raise ConfigError(
        f"--set {name}={value}: expected " f"{target.__name__}."
      ) from None
  if name == "classes":  # D,G,A
    return tuple(p.strip() for p in value.split(",") if p.strip())
  if target is tuple or typing.get_origin(target) is tuple:
    return tuple(tuple(p.split("+")) for p in value.split(",") if p)
  return value


def replace(config: Config, **overrides) -> Config:
  """``dataclasses.replace`` with clear errors and string coercion."""
  fields = {f.name: f for f in dataclasses.fields(Config)}
  hints = typing.get_type_hints(Config)
  clean = {}
  for k, v in overrides.items():
    if k not in fields:
      close = [f for f in fields if k.split("_")[0] in f]
      raise ConfigError(
        f"unknown config key {k!r}"
        + (f" (did you mean {close}?)" if close else "")
        + f"; keys: {sorted(fields)}."
      )
    clean[k] = _coerce(k, v, hints[k])
  return dataclasses.replace(config, **clean)


def parse_sets(pairs) -> dict[str, str]:
  out = {}
  for p in pairs or ():
    if "=" not in p:
      raise ConfigError(f"--set expects key=value, got {p!r}.")
    k, v = p.split("=", 1)
    out[k.strip()] = v.strip()
  return out


# Fields added after runs were recorded, with the value that behaves as the
# code did before they existed: a record without the field ran with it.
LEGACY = {
  "prior_correction": "none",
  "rw_stats": "global",
  "bn_recalibrate": 0,
  "kd_scale": "t2",
  "teacher_objective": "all",
  "teacher_sampler": "group_mixed",
  # GBG summed each group's class losses until the paper's mean came in.
  "gbg_group_loss": "sum",
  "group_init": None,
  "tta": "none",
  "weight_decay": 0.0,
  "extra_train": None,
}


def with_legacy(saved: dict) -> dict:
  """A recorded config with every :data:`LEGACY` field it lacks filled in."""
  return {**{k: v for k, v in LEGACY.items() if k not in saved}, **saved}


def from_json(text: str) -> Config:
  d = with_legacy(json.loads(text))
  d["together"] = tuple(tuple(x) for x in d.get("together", ()))
  d["classes"] = tuple(d.get("classes", ()))
  return Config(**d)
