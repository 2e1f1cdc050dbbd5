"""Shared machinery of the reproduction experiments.

A grid is a list of :class:`Run` s (a name, config overrides, which model's
score counts) times folds. Every run lives in ``workdir/<name>/fold<k>``;
finished runs (a ``done.json`` marker holding the same config) are skipped on
re-launch, interrupted ones resume from their checkpoints, and a run finished
with another config is refused with the keys that differ. Each finished run appends one JSON line to
``workdir/results.jsonl`` (de-duplicated by run and fold when read back),
and :func:`write_table` renders mean ± std tables into ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from agt_jax import plotting

METRICS = ("kappa", "f1", "auc", "final", "macro_auc")
# Per-class evidence carried in every row (results.json has the rest).
PER_CLASS = ("auc", "ap", "f1", "called_positive", "p_neg")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict
  model: str = "student"  # which model's score the table reports
  extra: dict = dataclasses.field(default_factory=dict)  # row columns


def add_common_args(
  p,
  *,
  folds=(0, 1, 2),
  preset="quick",
  data: str | None = "odir5k-synth",
  example: str = "odir5k:/data/odir5k",
):
  from experiments import _cli

  _cli.add_data_arg(p, default=data, example=example)
  p.add_argument("--preset", default=preset, help="paper | quick | smoke")
  p.add_argument(
    "--folds",
    nargs="+",
    default=[str(f) for f in folds],
    help="fold numbers, or 'all'",
  )
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override any config field for every run",
  )


def parse_folds(values: Sequence[str], num_folds: int = 5) -> list[int]:
  if list(values) == ["all"]:
    return list(range(num_folds))
  try:
    return [int(v) for v in values]
  except ValueError:
    raise SystemExit(
      f"--folds: expected integers or 'all', got {values}."
    ) from None


def row_of(run: Run, fold: int, preset: str, results: dict) -> dict:
  """One table row: the test metrics of the run's reported model, and its
  validation scores (``val_*``, what defaults are chosen on)."""
  m = results[run.model]
  sel = results.get("selection", {}).get(run.model, {})
  val = {f"val_{k}": v for k, v in sel.get("val", {}).items()}
  for k in ("val_macro_auc", "val_macro_f1"):
    if k in sel:
      val[k] = sel[k]
  return {
    "run": run.name,
    "fold": fold,
    "model": run.model,
    "preset": preset,
    "dataset": results["dataset"],
    "synthetic": results["synthetic"],
    **run.extra,
    **{k: m["odir"][k] for k in ("kappa", "f1", "auc", "final")},
    "macro_auc": m["macro_auc"],
    **({"f1_eq16": m["f1_eq16"]} if "f1_eq16" in m else {}),
    **val,
    **{f"top1_{k}": v for k, v in m.get("top1", {}).items()},
    **(
      {
        "kappa_global": m["global_threshold"]["kappa"],
        "global_threshold": m["global_threshold"]["threshold"],
      }
      if "global_threshold" in m
      else {}
    ),
    "per_class": _per_class(m),
    **(
      {"teacher": _model_summary(results["teacher"])}
      if run.model != "teacher" and "teacher" in results
      else {}
    ),
    "selected_step": sel.get("step"),
    "collapsed": any(
      w.startswith(f"The {run.model} collapsed")
      for w in results.get("warnings", [])
    ),
    "seconds": sum(
      v.get("seconds", 0.0) for v in results.get("throughput", {}).values()
    ),
  }


def _model_summary(m: dict) -> dict:
  """A second model's test scores in a row (the teacher of a run whose
  table reports the student)."""
  out = {k: m["odir"][k] for k in ("kappa", "f1", "auc", "final")}
  out["macro_auc"] = m["macro_auc"]
  if "global_threshold" in m:
    out["kappa_global"] = m["global_threshold"]["kappa"]
  out["per_class"] = _per_class(m)
  return out


def _per_class(m: dict) -> dict:
  """A model's per-class :data:`PER_CLASS` figures, for a row."""
  return {
    c: {k: v.get(k) for k in PER_CLASS}
    for c, v in m.get("per_class", {}).items()
  }


def run_grid(
  runs: Sequence[Run],
  *,
  preset: str,
  folds: Sequence[int],
  base: dict,
  workdir: pathlib.Path,
  fold_major: bool = False,
  subdir: bool = True,
) -> list[dict]:
  """Trains every (run, fold) not finished yet; returns all rows.

  ``fold_major`` runs every variant on a fold before the next fold, so an
  interrupted grid holds complete folds (paired comparisons) rather than
  complete variants. ``subdir=False`` (one run, one fold) trains in
  ``workdir`` itself.
  """
  from agt_jax import config as config_lib
  from agt_jax.train import interrupts, train_and_evaluate

  rows = []
  total = len(runs) * len(folds)
  pairs = (
    [(run, fold) for fold in folds for run in runs]
    if fold_major
    else [(run, fold) for run in runs for fold in folds]
  )
  # Every config is checked before the first run trains.
  configs = [
    config_lib.validate(
      config_lib.get_config(preset, **{**base, **run.overrides, "fold": fold})
    )
    for run, fold in pairs
  ]
  workdir.mkdir(parents=True, exist_ok=True)
  # A skipped run's row is appended only where results.jsonl lacks it (or
  # holds another), so reruns do not grow the file.
  recorded = {_row_key(r): r for r in read_rows(workdir)}
  for k, ((run, fold), cfg) in enumerate(zip(pairs, configs), start=1):
    wd = workdir / run.name / f"fold{fold}" if subdir else workdir
    if finished(wd, cfg):
      print(
        f"[{k}/{total}] {run.name} fold {fold}: finished, skipped", flush=True
      )
      results = json.loads((wd / "results.json").read_text())
    else:
      print(f"[{k}/{total}] {run.name} fold {fold}", flush=True)
      results = train_and_evaluate(
        cfg, wd, resume=(wd / "config.json").exists()
      )
    row = row_of(run, fold, preset, results)
    rows.append(row)
    if json.dumps(recorded.get(_row_key(row))) != json.dumps(row):
      append_row(workdir, row)
    interrupts.set_stage(
      f"between runs ({k} of {total} finished and kept; a relaunch skips "
      "them)"
    )
  return rows


def finished(wd: pathlib.Path, config) -> bool:
  """Whether ``wd`` holds a run finished with ``config``.

  A run finishes when its ``done.json`` marker is written (last, after every
  result file); a ``results.json`` without it is a run that stopped while
  writing and is resumed. A run finished with another config is refused:
  its results would silently stand for this one.
  """
  from agt_jax.errors import ConfigMismatchError
  from agt_jax.train import workdir
  from agt_jax.train.outputs import read_done

  done = read_done(wd)
  if done is None:
    return False
  # A field added to the config since the run finished counts as the value
  # that behaves as the code did then (config.LEGACY), so records of
  # finished runs survive new options and keep their meaning.
  diff = workdir.config_difference(done["config"], config)
  if diff:
    raise ConfigMismatchError(
      f"{wd} holds a run finished with another config (differs in "
      f"{sorted(diff)}); delete that folder to rerun it, or pass another "
      "--workdir."
    )
  return True


RECORD_FILES = (
  "config.json",
  "done.json",
  "results.json",
  "folds.json",
  "groups.json",
  "report.md",
  "results.jsonl",
  "per_class.md",
)


def export_records(
  workdir: pathlib.Path,
  dest: pathlib.Path,
  keep_checkpoints: Sequence[str] = (),
) -> int:
  """Copies a grid's small records (each run's config, done marker,
  results, folds, groups, report; the grid's rows and reports) from
  ``workdir`` to ``dest`` under the same layout, plus the checkpoint
  folders named in ``keep_checkpoints`` (relative to ``workdir``). Copied
  back into a workdir, finished runs are skipped by :func:`run_grid`, so a
  grid resumes in a later sitting. Returns the number of files copied."""
  import shutil

  workdir, dest = pathlib.Path(workdir), pathlib.Path(dest)
  n = 0
  for path in sorted(workdir.rglob("*")):
    rel = path.relative_to(workdir)
    if (
      "checkpoints" in rel.parts
      or not path.is_file()
      or path.name not in RECORD_FILES
    ):
      continue
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dest / rel)
    n += 1
  for rel in keep_checkpoints:
    shutil.copytree(workdir / rel, dest / rel, dirs_exist_ok=True)
    n += sum(1 for p in (dest / rel).rglob("*") if p.is_file())
  return n


def append_row(workdir: pathlib.Path, row: dict) -> None:
  with open(workdir / "results.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")


def read_rows(workdir: pathlib.Path) -> list[dict]:
  """``results.jsonl``, the last line per (run, fold, extra keys) kept."""
  path = pathlib.Path(workdir) / "results.jsonl"
  if not path.exists():
    return []
  out: dict[Any, dict] = {}
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:  # empty, or torn by a crash
      continue
    out[_row_key(r)] = r
  return list(out.values())


def _row_key(row: dict) -> tuple:
  return (row["run"], row["fold"], row.get("preset"))


def mean_std(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():.3f} ± {v.std():.3f}"


def dataset_line(rows: Sequence[dict]) -> list[str]:
  if not rows:
    return ["No finished runs yet.", ""]
  folds = sorted({r["fold"] for r in rows})
  lines = [
    f"Dataset: **{rows[0]['dataset']}**; folds {folds} "
    f"({len(folds)} fold(s)); preset `{rows[0]['preset']}`; "
    "mean ± std over folds (population std).",
    "",
  ]
  lines += plotting.synthetic_lines(rows[0]["synthetic"])
  return lines


def write_table(
  rows: Sequence[dict],
  *,
  names: Sequence[str],
  labels: dict | None = None,
  key: str = "run",
  reference=None,
) -> list[str]:
  """Markdown rows ``| label | model | kappa | F1 | AUC | final | macro-AUC
  | F1 (Eq. 16) | folds |`` for each name present, in the given order.

  F1 is the ODIR script's (accuracy over all entries); F1 (Eq. 16) the
  paper's over positive entries (``–`` for rows recorded before it was).
  ``reference(name) -> str`` adds a last column with the paper's published
  ``kappa / F1 / AUC`` (experiments._paper; the caller prints its caveat).
  """
  labels = labels or {}
  ref_head = " paper: kappa / F1 / AUC |" if reference else ""
  lines = [
    "| method | model | kappa | F1 | AUC | final | macro-AUC | F1 (Eq. 16) "
    "| folds |" + ref_head,
    "|---|---|---|---|---|---|---|---|---|" + ("---|" if reference else ""),
  ]
  for name in names:
    sub = [r for r in rows if r[key] == name]
    if not sub:
      continue
    cells = [mean_std([r[m] for r in sub]) for m in METRICS]
    eq16 = [r["f1_eq16"] for r in sub if "f1_eq16" in r]
    cells.append(mean_std(eq16) if len(eq16) == len(sub) else "–")
    ref = f" {reference(name) or '–'} |" if reference else ""
    lines.append(
      f"| {labels.get(name, name)} | {sub[0]['model']} | "
      + " | ".join(cells)
      + f" | {len(sub)} |"
      + ref
    )
  return lines + [""]


VAL_METRICS = ("val_kappa", "val_f1", "val_auc", "val_final", "val_macro_auc")


def validation_table(
  rows: Sequence[dict],
  *,
  names: Sequence[str],
  labels: dict | None = None,
  key: str = "run",
) -> list[str]:
  """Markdown rows of the validation scores (the split carved from each
  training fold, on which defaults are chosen), mean ± std over folds."""
  labels = labels or {}
  lines = [
    "| method | model | val kappa | val F1 | val AUC | val final | "
    "val macro-AUC | collapsed | folds |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name in names:
    sub = [r for r in rows if r[key] == name and "val_final" in r]
    if not sub:
      continue
    cells = [mean_std([r[m] for r in sub]) for m in VAL_METRICS]
    collapsed = sum(bool(r.get("collapsed")) for r in sub)
    lines.append(
      f"| {labels.get(name, name)} | {sub[0]['model']} | "
      + " | ".join(cells)
      + f" | {collapsed} | {len(sub)} |"
    )
  return lines + [""]


def paired_table(
  rows: Sequence[dict],
  *,
  names: Sequence[str],
  reference: str,
  labels: dict | None = None,
  key: str = "run",
) -> list[str]:
  """Per-fold differences ``variant - reference`` on the test folds both
  finished: mean ± std, and on how many folds the variant is ahead."""
  labels = labels or {}
  ref = {r["fold"]: r for r in rows if r[key] == reference}
  lines = [
    f"| method − {labels.get(reference, reference)} | Δ kappa | Δ F1 "
    "| Δ AUC | Δ final | Δ macro-AUC | folds ahead (kappa) |",
    "|---|---|---|---|---|---|---|",
  ]
  for name in names:
    if name == reference:
      continue
    sub = [r for r in rows if r[key] == name and r["fold"] in ref]
    if not sub:
      continue
    cells = []
    for m in METRICS:
      d = np.array([r[m] - ref[r["fold"]][m] for r in sub])
      cells.append(f"{d.mean():+.3f} ± {d.std():.3f}")
    ahead = sum(r["kappa"] > ref[r["fold"]]["kappa"] for r in sub)
    lines.append(
      f"| {labels.get(name, name)} | "
      + " | ".join(cells)
      + f" | {ahead}/{len(sub)} |"
    )
  return lines + [""]


def per_class_table(
  rows: Sequence[dict],
  *,
  names: Sequence[str],
  labels: dict | None = None,
  key: str = "run",
) -> list[str]:
  """Markdown: for each name, one line per class with the mean over folds
  of its test AUC, AP, F1 at 0.5, share called positive and mean p on
  negatives (whether a class loses by ranking or by calibration)."""
  labels = labels or {}
  lines = []
  for name in names:
    sub = [r for r in rows if r[key] == name and r.get("per_class")]
    if not sub:
      continue
    folds = sorted(r["fold"] for r in sub)
    lines += [
      f"### {labels.get(name, name)} ({sub[0]['model']}; folds " f"{folds})",
      "",
      "| class | AUC | AP | F1 (0.5) | called positive | "
      "mean p on negatives |",
      "|---|---|---|---|---|---|",
    ]
    for c in sub[0]["per_class"]:
      cells = []
      for k in PER_CLASS:
        v = np.array([r["per_class"][c][k] for r in sub], np.float64)
        v = v[np.isfinite(v)]
        cells.append(f"{v.mean():.3f}" if v.size else "–")
      lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("")
  return lines


def write_per_class_md(
  workdir,
  rows: Sequence[dict],
  *,
  names,
  labels=None,
  key: str = "run",
  title: str = "Per-class test " "results",
) -> list[str]:
  """Writes ``per_class.md`` (:func:`per_class_table` of ``rows``) and
  returns the report line linking it (none when no row has per-class
  results)."""
  body = per_class_table(rows, names=names, labels=labels, key=key)
  if not body:
    return []
  text = [f"# {title} (mean over folds)", "", *dataset_line(rows), *body]
  (pathlib.Path(workdir) / "per_class.md").write_text("\n".join(text))
  return ["Per-class tables: [per_class.md](per_class.md).", ""]


def bar_plot(
  rows: Sequence[dict],
  names: Sequence[str],
  out: pathlib.Path,
  title: str,
  labels: dict | None = None,
  key: str = "run",
  metric: str = "kappa",
) -> pathlib.Path | None:
  """Mean ± std of ``metric`` per name as a bar chart."""
  names = [n for n in names if any(r[key] == n for r in rows)]
  if not names:
    return None
  from agt_jax import plotting

  plt = plotting.pyplot()
  labels = labels or {}
  vals = [np.array([r[metric] for r in rows if r[key] == n]) for n in names]
  fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.2))
  ax.bar(
    range(len(names)),
    [v.mean() for v in vals],
    yerr=[v.std() for v in vals],
    capsize=3,
    color="#4477aa",
  )
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(
    [labels.get(n, n) for n in names], rotation=30, ha="right", fontsize=8
  )
  ax.set_ylabel(metric)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def run_and_report(
  runs,
  *,
  preset: str,
  folds,
  base,
  workdir,
  report,
  prog: str,
  argv,
  fold_major: bool = False,
) -> int:
  """``run_grid`` then ``report()``, with the project's errors as one line
  (exit 2) and interrupts as one line with the resume command (130/143).

  ``base`` is a callable so that bad ``--data``/``--set`` values are caught
  like any other input error.
  """
  from experiments import _cli

  def go() -> int:
    run_grid(
      runs,
      preset=preset,
      folds=folds,
      base=base(),
      workdir=workdir,
      fold_major=fold_major,
    )
    print(f"report: {report()}", flush=True)
    return 0

  # Relaunching the same command resumes: finished runs are skipped.
  return _cli.guarded(go, prog=prog, argv=argv)


def save_figure(fig, rows, path: pathlib.Path) -> pathlib.Path:
  """Titles the figure with the dataset (which says "synthetic" where it
  is), saves it and closes it."""
  import matplotlib.pyplot as plt

  if rows:
    fig.suptitle(rows[0]["dataset"], fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_report_md(workdir, lines) -> pathlib.Path:
  path = pathlib.Path(workdir) / "report.md"
  path.write_text("\n".join(lines))
  return path


def print_section(report: pathlib.Path, heading: str) -> None:
  """Prints one ``## heading`` section of a report (its tables) to stdout."""
  text = pathlib.Path(report).read_text().split("\n## ")
  for part in text[1:]:
    if part.startswith(heading):
      print("## " + part.rstrip(), flush=True)
