"""Reading training curves back from a run's ``metrics.jsonl`` and plotting
them with the active group shaded (paper Figs. 5 and 6)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from agt_jax.train.report import read_metrics

GROUP_COLOURS = ("#dde8f5", "#f7e3d4", "#e0efdc", "#efe0f2", "#f2f0d5")


def teacher_records(workdir) -> list[dict]:
  return [
    m
    for m in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
    if m.get("phase") == "teacher" and "group" in m
  ]


def eval_records(workdir) -> list[dict]:
  return [
    m
    for m in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
    if m.get("phase") == "eval_teacher"
  ]


def groups_of(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "groups.json").read_text())


def shade_groups(ax, records, names=None) -> None:
  """Background bands: which group was active between logged steps."""
  prev = 0
  seen = set()
  for r in records:
    g = int(r["group"])
    label = None
    if names is not None and g not in seen:
      label, _ = f"active: {names[g]}", seen.add(g)
    ax.axvspan(
      prev,
      r["step"],
      color=GROUP_COLOURS[g % len(GROUP_COLOURS)],
      lw=0,
      label=label,
    )
    prev = r["step"]


def fluctuation(values) -> float:
  """Mean absolute change between consecutive evaluations."""
  v = np.asarray(values, np.float64)
  return float(np.mean(np.abs(np.diff(v)))) if len(v) > 1 else float("nan")
