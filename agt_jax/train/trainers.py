"""Trainers by name: one spec each, one signature.

``TRAINERS[config.trainer].train(config, data, groups, ctx)`` returns the
trained models by phase name (``{"teacher": ..., "student": ...}`` for AGT);
the fold pipeline (:mod:`agt_jax.train.loop`) evaluates whatever it gets.
The config's validation, the results line and the report read the specs, so
a trainer is added here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Callable
from typing import Any

from agt_jax import methods
from agt_jax.methods import Registry, register


@dataclasses.dataclass(frozen=True)
class Context:
  """What a trainer needs besides the config, the fold and the groups."""

  encoder: Any
  mesh: Any
  workdir: pathlib.Path
  resume: bool


@dataclasses.dataclass(frozen=True)
class Trainer:
  """``train(config, data, groups, ctx) -> {phase: Trained}``;
  ``model(config, phase, groups, num_classes)``: a phase's untrained model
  (what :func:`agt_jax.train.loop.load_trained` restores into);
  ``phases``: the phases it trains, in order.

  ``rule(config)``: the one line ``results.json`` gives as the teacher
  loss; ``student``: it may distil a student (``student=true``);
  ``grouped``: it reads the class groups (else ``grouping`` must be
  ``none`` or ``single``); ``sampler_prior``: its sampler shifts class
  priors (``prior_correction`` applies); ``owns``: config fields only
  this trainer reads; ``check(config)``: a config error or None.
  """

  name: str
  train: Callable
  model: Callable
  phases: tuple[str, ...]
  description: str
  rule: Callable[[Any], str]
  student: bool = False
  grouped: bool = True
  sampler_prior: bool = False
  owns: tuple[str, ...] = ()
  check: Callable[[Any], str | None] = lambda config: None


def _module(name: str):
  """A trainer's module, imported when first used."""
  return importlib.import_module(f"agt_jax.train.{name}")


def _resolved(name: str) -> dict:
  """``train`` and ``model`` of the trainer module ``name``."""
  return {
    "train": lambda *a: _module(name).train(*a),
    "model": lambda *a: _module(name).model(*a),
  }


def _agt_rule(config) -> str:
  loss = methods.TEACHER_LOSSES.get_spec(config.loss)
  if not loss.reweightable:
    return f"loss={config.loss} (no AGT re-weighting)"
  rw = methods.REWEIGHTS.get_spec(config.reweight)
  return f"reweight={config.reweight}: {rw.describe(config)}"


def _gbg_rule(config) -> str:
  return (
    f"trainer=gbg: one {methods.objective(config)} loss per "
    f"group, combined by moo={config.moo} (normaliser "
    f"{config.moo_normalizer}), GAC batches"
  )


def _transfer_rule(config) -> str:
  return (
    f"trainer=transfer: {config.transfer_loss} on every class "
    f"({'frozen encoder' if config.freeze_encoder else 'all layers'}"
    f", attention {config.attention}, head {config.head}"
    + (
      f", Grad-CAM entropy {config.cam_entropy:g}" if config.cam_entropy else ""
    )
    + ")"
  )


def _gbg_check(config) -> str | None:
  import math

  if (
    config.n_groups * math.ceil(config.gac_fraction * config.batch_size)
    > config.batch_size
  ):
    return (
      f"trainer='gbg': {config.n_groups} groups x a tenth of "
      f"batch_size={config.batch_size} do not fit one batch "
      "(the GAC sampler tops missing groups up); lower "
      "gac_fraction or n_groups."
    )
  return None


# The config fields each trainer alone reads; every other field is common
# (data, model, optimisation, grouping, selection, bookkeeping).
# fmt: off
_AGT_FIELDS = (
  "student_steps", "alpha", "reweight", "loss", "beta", "rw_decay",
  "rw_stats", "prior_correction", "bn_recalibrate", "switch_every",
  "schedule", "teacher", "experts", "ib_start", "kd", "temperature",
  "gamma", "kd_direction", "kd_scale", "teacher_objective",
  "teacher_sampler",
)
_GBG_FIELDS = ("moo", "moo_normalizer", "gac_fraction", "gbg_group_loss")
_TRANSFER_FIELDS = (
  "freeze_encoder", "attention", "head", "head_hidden", "dropout",
  "transfer_loss", "focal_alpha", "focal_gamma", "cb_beta", "cam_entropy",
)
# fmt: on

TRAINERS = Registry(
  "trainer",
  [
    Trainer(
      "agt",
      **_resolved("agt"),
      phases=("teacher", "student"),
      description="AGT: a shared encoder with one head per group, "
      "trained cyclically on group-mixed batches, then a "
      "class-balanced KD student",
      rule=_agt_rule,
      student=True,
      sampler_prior=True,
      owns=_AGT_FIELDS,
    ),
    Trainer(
      "gbg",
      **_resolved("gbg"),
      phases=("gbg",),
      description="GBG (paper 004): one model, every group's loss "
      "each step, combined by a multi-objective solver, on GAC batches",
      rule=_gbg_rule,
      owns=_GBG_FIELDS,
      check=_gbg_check,
    ),
    Trainer(
      "transfer",
      **_resolved("transfer"),
      phases=("transfer",),
      description="transfer study (paper 001): one TransferNet on "
      "every class",
      rule=_transfer_rule,
      grouped=False,
      owns=_TRANSFER_FIELDS,
    ),
  ],
)

__all__ = ["Context", "TRAINERS", "Trainer", "markdown", "register"]


def markdown() -> str:
  """``docs/methods.md``: every registered name, from the specs."""
  out = [
    "# Methods by name",
    "",
    "Generated from the registries (`python -m agt_jax.train.trainers > "
    "docs/methods.md`; a test keeps it current). Each name is a "
    "`--set` value; adding one is one spec in `agt_jax/methods.py` "
    "(or `agt_jax/train/trainers.py`) or a `methods.register` call "
    "from your own code.",
    "",
  ]
  for title, field, registry in (
    ("Trainers", "trainer", TRAINERS),
    ("Teacher losses", "loss", methods.TEACHER_LOSSES),
    (
      "Re-weighting rules (with "
      + " or ".join(
        f"`loss={n}`"
        for n, t in methods.TEACHER_LOSSES.items()
        if t.reweightable
      )
      + ")",
      "reweight",
      methods.REWEIGHTS,
    ),
    ("Student distillation", "kd", methods.KD),
    (
      "Transfer-study losses (`trainer=transfer`)",
      "transfer_loss",
      methods.TRANSFER_LOSSES,
    ),
  ):
    out += (
      [f"## {title}: `--set {field}=NAME`", ""]
      + methods.markdown_table(registry)
      + [""]
    )
  return "\n".join(out)


if __name__ == "__main__":
  print(markdown(), end="")
