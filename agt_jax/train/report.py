"""``report.md`` and plots from a finished run's results and metrics."""

from __future__ import annotations

import pathlib

import numpy as np

from agt_jax import io, plotting


def _fmt(x) -> str:
  return "n/a" if x is None or x != x else f"{x:.3f}"


MODELS = ("teacher", "student", "gbg", "transfer")


def read_metrics(path) -> list[dict]:
  """``metrics.jsonl`` as records in step order per phase.

  Robust to what a crash can leave: a torn last line is skipped, and a
  ``(phase, step)`` written twice (a resume from an older file) keeps its
  last record.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out: dict = {}
  for k, r in enumerate(io.read_jsonl(path)):
    key = (r.get("phase"), r["step"]) if "step" in r else ("line", k)
    out.pop(key, None)  # a rewrite moves to where it was written
    out[key] = r
  return list(out.values())


def plot_curves(metrics: list[dict], out: pathlib.Path, title: str) -> None:
  from agt_jax import plotting

  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for phase in ("warmup", *MODELS):
    rows = [m for m in metrics if m.get("phase") == phase and "loss" in m]
    if rows:
      ax.plot([m["step"] for m in rows], [m["loss"] for m in rows], label=phase)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.set_title(title, fontsize=9)
  _legend_or_note(ax, "no training loss logged yet")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


# Past this many classes, per-class curves are drawn faint and unlabelled:
# a 100-entry legend hides the curves and defeats the layout.
_MAX_LABELLED_CLASSES = 12


def _class_line(name: str, num_classes: int) -> dict:
  """Line keywords for one class's curve (labelled, or faint if many)."""
  if num_classes > _MAX_LABELLED_CLASSES:
    return dict(color="tab:blue", lw=0.5, alpha=0.3)
  return dict(label=name, lw=1)


def _legend_or_note(ax, note: str, **kw) -> None:
  """A legend, or a note in the axes when nothing was drawn (an empty plot
  should say why rather than show a blank frame)."""
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kw)
  else:
    ax.text(
      0.5,
      0.5,
      note,
      ha="center",
      va="center",
      fontsize=8,
      transform=ax.transAxes,
    )


def plot_alpha(
  metrics: list[dict], group_names, out: pathlib.Path, title: str
) -> pathlib.Path | None:
  """GBG's MGDA weights ``alpha_g`` per step (stacked), and each group's
  cosine with the update and with the plain batch gradient."""
  rows = [m for m in metrics if m.get("phase") == "gbg" and "alpha" in m]
  if not rows:
    return None
  from agt_jax import plotting

  plt = plotting.pyplot()
  steps = [m["step"] for m in rows]
  alpha = np.array([m["alpha"] for m in rows])
  labels = ["{" + ",".join(g) + "}" for g in group_names]
  if len(labels) != alpha.shape[1]:  # per-class objectives
    labels = [f"objective {k}" for k in range(alpha.shape[1])]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  axes[0].stackplot(steps, alpha.T, labels=labels)
  axes[0].set_ylim(0, 1)
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("alpha_g (MGDA weight)")
  axes[0].legend(fontsize=7, loc="upper right")
  for key, style in (("cos_update", "-"), ("cos_batch", ":")):
    if key in rows[0]:
      c = np.array([m[key] for m in rows])
      for k in range(c.shape[1]):
        axes[1].plot(
          steps,
          c[:, k],
          style,
          color=f"C{k}",
          label=f"{labels[k]} {key.split('_')[1]}",
        )
  axes[1].axhline(0, color="k", lw=0.5)
  axes[1].set_xlabel("step")
  axes[1].set_ylabel("cosine")
  axes[1].set_title(
    "group gradient vs update (-) and vs plain batch " "gradient (:)",
    fontsize=8,
  )
  axes[1].legend(fontsize=6)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_gradients(
  metrics: list[dict], class_names, out: pathlib.Path, title: str
) -> None:
  """Per-class |pos| and neg gradients and w over teacher steps (paper Fig. 6
  style), with the active group shaded."""
  from agt_jax import plotting

  plt = plotting.pyplot()
  rows = [m for m in metrics if m.get("phase") == "teacher" and "pos" in m]
  if not rows:
    return
  steps = np.array([m["step"] for m in rows])
  pos = np.abs(np.array([m["pos"] for m in rows]))
  neg = np.array([m["neg"] for m in rows])
  w = np.array([m["w"] for m in rows])
  many = len(class_names) > _MAX_LABELLED_CLASSES
  fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
  for j, name in enumerate(class_names):
    kw = _class_line(name, len(class_names))
    axes[0].plot(steps, pos[:, j], **kw)
    axes[1].plot(steps, neg[:, j], **kw)
    axes[2].plot(steps, w[:, j], **kw)
  axes[0].set_ylabel("|pos_j|")
  axes[1].set_ylabel("neg_j")
  axes[2].set_ylabel("w_j")
  axes[2].set_xlabel("teacher step")
  axes[0].set_title(
    title + (f" ({len(class_names)} classes, unlabelled)" if many else ""),
    fontsize=9,
  )
  if not many:
    axes[0].legend(ncol=len(class_names), fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_validation(metrics: list[dict], out: pathlib.Path, title: str) -> None:
  """Validation ODIR final score and kappa over steps per phase, with the
  selected step marked."""
  rows = [
    m
    for m in metrics
    if str(m.get("phase", "")).startswith("eval_") and "final" in m
  ]
  if not rows:
    return
  from agt_jax import plotting

  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for phase in sorted({m["phase"] for m in rows}):
    sub = [m for m in rows if m["phase"] == phase]
    name = phase[len("eval_") :]
    (line,) = ax.plot(
      [m["step"] for m in sub],
      [m["final"] for m in sub],
      marker="o",
      ms=3,
      label=f"{name}: final",
    )
    ax.plot(
      [m["step"] for m in sub],
      [m["kappa"] for m in sub],
      ls="--",
      color=line.get_color(),
      label=f"{name}: kappa",
    )
    best = sub[-1].get("best_step")
    if best is not None:
      ax.axvline(best, color=line.get_color(), lw=0.8, ls=":")
  ax.set_xlabel("step")
  ax.set_ylabel("validation score")
  ax.set_title(f"{title}: validation (dotted: selected step)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _model_panels(n: int):
  """``(plt, fig, axes)``: one panel per model, side by side."""
  from agt_jax import plotting

  plt = plotting.pyplot()
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), layout="constrained")
  return plt, fig, np.atleast_1d(axes)


def plot_roc(
  labels, probs_by_model: dict, class_names, out: pathlib.Path, title: str
) -> None:
  from sklearn.metrics import roc_curve

  plt, fig, axes = _model_panels(len(probs_by_model))
  many = len(class_names) > _MAX_LABELLED_CLASSES
  for ax, (name, probs) in zip(axes, probs_by_model.items()):
    drawn = 0
    for j, c in enumerate(class_names):
      y = labels[:, j]
      if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, probs[:, j])
        ax.plot(fpr, tpr, **_class_line(c, len(class_names)))
        drawn += 1
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(
      f"{name}: ROC per class"
      + (f" ({drawn} classes, unlabelled)" if many else ""),
      fontsize=9,
    )
    ax.set_xlabel("FPR")
    ax.set_ylabel("TPR")
    if not many or not drawn:
      _legend_or_note(ax, "no class has both labels in this split", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _imbalance_lines(groups: dict) -> list[str]:
  if "imbalance" not in groups:
    return []
  im = groups["imbalance"]
  return [
    f"- class imbalance ratio rho = N_max / N_min (§3.3): training split "
    f"{im['dataset']:.1f}; subsets "
    + ", ".join(f"{r:.1f}" for r in im["subsets"])
  ]


def _pca_lines(groups: dict) -> list[str]:
  out = []
  if "pca" in groups:
    p = groups["pca"]
    out.append(
      f"- PCA on {p['fitted_on']}: {p['n_components']} components "
      f"keep {p['explained_variance']:.1%} of the variance; classes "
      f"as {p['class_representation']}"
    )
  if "stability" in groups:
    s = groups["stability"]
    out.append(
      f"- stability over PCA sizes {s['pca_sizes']} x "
      f"{s.get('seeds', '?')} K-Means seeds: adjusted Rand index "
      f"mean {s['mean_ari']:.3f}, min {s['min_ari']:.3f}"
    )
  return out


# Readings of the paper a trainer's config chooses between, shown in every
# run report with what each value means.
_READINGS = {
  "teacher_objective": "all: every class, §3.4.3; group: Eq. 14",
  "teacher_sampler": "group_mixed: AGT; class_balanced: CB sampling",
  "kd_scale": "t2: KL x T²; none: Eqs. 6-8 as written",
  "gbg_group_loss": "mean: paper 004; sum: its published code",
}


def _objective_lines(config: dict) -> list[str]:
  """The split protocol and the trainer's readings of the paper (a record
  from before a field existed ran as its config.LEGACY value)."""
  from agt_jax.config import with_legacy
  from agt_jax.train.trainers import TRAINERS

  c = with_legacy(config)
  owns = TRAINERS[c.get("trainer", "agt")].owns
  out = [f"- split: fold_mode `{c.get('fold_mode', 'random')}`"]
  out += [
    f"- {k} `{c[k]}` ({note})"
    for k, note in _READINGS.items()
    if k in owns and k in c
  ]
  return out


def _header(results: dict) -> list[str]:
  """Title, synthetic note, the run in a few lines, warnings."""
  lines: list[str] = []
  ds = results["dataset"]
  lines += [
    f"# AGT run: {ds}, fold {results['fold']}",
    "",
    *plotting.synthetic_lines(results.get("synthetic")),
    f"- preset `{results['config']['preset']}`, model "
    f"`{results['config']['model']}`, crop {results['config']['crop']}"
    f", train images {results['train_images']}, test images "
    f"{results['test_images']}",
    f"- groups ({results['groups']['strategy']}, features from "
    f"{results['groups'].get('features', 'n/a')}): "
    + ", ".join("{" + ",".join(g) + "}" for g in results["groups"]["names"]),
    *_pca_lines(results["groups"]),
    *_imbalance_lines(results["groups"]),
    f"- teacher loss: {results.get('reweight_rule', 'n/a')}",
    f"- prior correction: {results.get('prior_correction', 'n/a')}",
    *_objective_lines(results["config"]),
    f"- encoder initialised from: "
    f"{results['config'].get('init') or 'random weights'}",
    f"- validation: {results.get('validation_images', 0)} images "
    "carved from the training fold (patient level); the test fold is "
    "scored once, at the end",
    "",
  ]
  for w in results.get("warnings", []):
    lines += [f"> **Warning.** {w}", ""]
  return lines


def _scores(results: dict) -> list[str]:
  """The headline table: official strict 0.5 ODIR scores."""
  lines: list[str] = []
  lines += [
    "## ODIR score (test fold, official `> 0.5`)",
    "",
    "F1 is the ODIR script's (accuracy over all entries); F1 (Eq. 16) is "
    "2TP / (2TP + FP + FN) over positive entries (docs/metrics.md).",
    "",
    "| model | checkpoint | kappa | F1 | AUC | final | macro-AUC | mAP "
    "| F1 (Eq. 16) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name in MODELS:
    for key in (name, f"{name}_last"):
      if key in results:
        r = results[key]
        o = r["odir"]
        sel = results.get("selection", {}).get(name, {})
        which = (
          "last"
          if key.endswith("_last") or sel.get("select") == "last"
          else f"best on validation (step {sel.get('step')})"
        )
        lines.append(
          f"| {name} | {which} | {_fmt(o['kappa'])} | "
          f"{_fmt(o['f1'])} | {_fmt(o['auc'])} | "
          f"{_fmt(o['final'])} | {_fmt(r['macro_auc'])} | "
          f"{_fmt(r['map'])} | {_fmt(r.get('f1_eq16', float('nan')))} |"
        )
  return lines


def _tuned(results: dict) -> list[str]:
  """Scores at per-class thresholds tuned on validation."""
  lines: list[str] = []
  tuned = [n for n in MODELS if "tuned" in results.get(n, {})]
  if tuned:
    lines += [
      "",
      "Beside the headline: the selected checkpoints with "
      "per-class thresholds tuned for F1 on the validation split "
      "(not the official metric).",
      "",
      "| model | kappa | F1 | AUC | final | thresholds |",
      "|---|---|---|---|---|---|",
    ]
    for n in tuned:
      o = results[n]["tuned"]
      th = results["selection"][n].get("thresholds", [])
      lines.append(
        f"| {n} | {_fmt(o['kappa'])} | {_fmt(o['f1'])} | "
        f"{_fmt(o['auc'])} | {_fmt(o['final'])} | "
        + " ".join(f"{t:.2f}" for t in th)
        + " |"
      )
  return lines


def _global_threshold(results: dict) -> list[str]:
  """Scores at one validation-tuned global threshold."""
  lines: list[str] = []
  glob = [n for n in MODELS if "global_threshold" in results.get(n, {})]
  if glob:
    lines += [
      "",
      "One global threshold tuned for kappa on the validation "
      "split (the same rule for every method; shows how much of a "
      "strict-0.5 kappa is calibration):",
      "",
      "| model | threshold | kappa | F1 | final |",
      "|---|---|---|---|---|",
    ]
    for n in glob:
      o = results[n]["global_threshold"]
      lines.append(
        f"| {n} | {o['threshold']:.2f} | {_fmt(o['kappa'])} | "
        f"{_fmt(o['f1'])} | {_fmt(o['final'])} |"
      )
  return lines


def _top1(results: dict) -> list[str]:
  """Top-1 accuracy by shot (single-label datasets)."""
  lines: list[str] = []
  top1 = [n for n in MODELS if "top1" in results.get(n, {})]
  if top1:
    lines += [
      "",
      "## Top-1 accuracy (single-label, test split)",
      "",
      "| model | all | many (>100) | medium (20-100) | few (<20) |",
      "|---|---|---|---|---|",
    ]
    for n in top1:
      t = results[n]["top1"]
      lines.append(
        f"| {n} | {_fmt(t['all'])} | {_fmt(t['many'])} | "
        f"{_fmt(t['medium'])} | {_fmt(t['few'])} |"
      )
  return lines


def _per_class(results: dict) -> list[str]:
  """Per-class AUC, and the per-class evidence table."""
  lines: list[str] = []
  names = results["class_names"]
  lines += [
    "",
    "## Per-class AUC (test fold)",
    "",
    "| model | " + " | ".join(names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for name in MODELS:
    if name in results:
      pc = results[name]["per_class"]
      lines.append(
        f"| {name} | " + " | ".join(_fmt(pc[c]["auc"]) for c in names) + " |"
      )
  lines += [
    "",
    "## Per-class evidence (test fold, selected checkpoints)",
    "",
    "AUC and AP rank; F1, the share called positive and the "
    "mean probability on negatives are at the strict 0.5.",
    "",
    "| model | class | AUC | AP | F1 | called positive | "
    "mean p on negatives |",
    "|---|---|---|---|---|---|---|",
  ]
  for name in MODELS:
    if name in results:
      pc = results[name]["per_class"]
      for c in names:
        v = pc[c]
        lines.append(
          f"| {name} | {c} | {_fmt(v['auc'])} | "
          f"{_fmt(v['ap'])} | {_fmt(v['f1'])} | "
          f"{_fmt(v.get('called_positive'))} | "
          f"{_fmt(v.get('p_neg'))} |"
        )
  return lines


def _closing(results: dict) -> list[str]:
  """Throughput, the plots, and the dataset line."""
  lines: list[str] = []
  if "throughput" in results:
    lines += [
      "",
      "## Throughput",
      "",
      "| phase | images/s | steps |",
      "|---|---|---|",
    ]
    for phase, t in results["throughput"].items():
      lines.append(f"| {phase} | {t['images_per_s']:.1f} | {t['steps']} |")
  lines += [
    "",
    "Plots: `curves.png` (training losses), `gradients.png` "
    "(per-class |pos|, neg and w over teacher steps), "
    "`validation.png` (validation scores and the selected steps), "
    "`roc.png`, `calibration.png` (reliability diagrams).",
    "",
    f"Dataset: {results['dataset']}.",
  ]
  return lines


def _calibration(results: dict) -> list[str]:
  """ECE (15 bins, pooled over entries) and what validation-fitted
  temperature scaling does to it and to the official score."""
  have = [n for n in MODELS if "ece" in results.get(n, {})]
  if not have:
    return []
  lines = [
    "",
    "Calibration on the test fold (expected calibration error, 15 bins, "
    "pooled over every image and class; `calibration.png` has the "
    "reliability diagrams), and temperature scaling fitted on the "
    "validation split. A temperature keeps every logit's sign, so the "
    "strict 0.5 decisions (kappa, F1) do not change; per-class "
    "temperatures can reorder classes against each other and so move the "
    "pooled AUC and the final score:",
    "",
    "| model | ECE | final | shared T | ECE (T) | final (T) | ECE "
    "(per-class T) | final (per-class T) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for n in have:
    r = results[n]
    ts = r.get("temperature_scaled")
    temp = results.get("selection", {}).get(n, {}).get("temperature")
    if ts is None or temp is None:
      lines.append(
        f"| {n} | {_fmt(r['ece'])} | {_fmt(r['odir']['final'])} | – | – | – "
        "| – | – |"
      )
      continue
    lines.append(
      f"| {n} | {_fmt(r['ece'])} | {_fmt(r['odir']['final'])} | "
      f"{temp['shared']:.2f} | {_fmt(ts['shared']['ece'])} | "
      f"{_fmt(ts['shared']['odir']['final'])} | "
      f"{_fmt(ts['per_class']['ece'])} | "
      f"{_fmt(ts['per_class']['odir']['final'])} |"
    )
  return lines


def plot_reliability(
  labels, probs_by_model: dict, class_names, out: pathlib.Path, title: str
) -> None:
  """Reliability diagrams: per model, each class's share positive against
  its mean probability in 10 bins (classes unlabelled past 12)."""
  from agt_jax import metrics

  plt, fig, axes = _model_panels(len(probs_by_model))
  labels = np.asarray(labels)
  for ax, (name, probs) in zip(axes, probs_by_model.items()):
    for j, c in enumerate(class_names):
      conf, acc, count = metrics.reliability_bins(labels[:, j], probs[:, j])
      keep = count > 0
      ax.plot(
        conf[keep], acc[keep], "o-", ms=3, **_class_line(c, len(class_names))
      )
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("share positive")
    ax.set_title(f"{name}: reliability per class", fontsize=9)
    if len(class_names) <= _MAX_LABELLED_CLASSES:
      _legend_or_note(ax, "no class to draw", fontsize=6, ncol=2)
  fig.suptitle(title, fontsize=9)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _exact_match(results: dict) -> list[str]:
  """Sample-level exact match by labels per image (the paper's §5.2)."""
  have = [n for n in MODELS if "exact_match" in results.get(n, {})]
  if not have:
    return []
  ks = [k for k in results[have[0]]["exact_match"] if k != "all"]
  lines = [
    "",
    "Exact match (every label of an image right, strict 0.5) by labels per "
    "image, test fold (§5.2):",
    "",
    "| model | " + " | ".join(f"{k} labels" for k in ks) + " | all |",
    "|---|" + "---|" * (len(ks) + 1),
  ]
  for n in have:
    em = results[n]["exact_match"]
    lines.append(
      f"| {n} | "
      + " | ".join(
        f"{em[k]['exact']:.3f} ({em[k]['images']})" for k in [*ks, "all"]
      )
      + " |"
    )
  return lines


def _tta(results: dict) -> list[str]:
  """Test-time augmentation beside the single crop (``tta`` != none)."""
  rows = []
  for n in MODELS:
    r = results.get(n, {})
    for key in (k for k in r if k.startswith("tta_")):
      t = r[key]
      rows.append(
        f"| {n} | {key[4:]} | {_fmt(r['odir']['final'])} -> "
        f"{_fmt(t['odir']['final'])} | {_fmt(r['odir']['kappa'])} -> "
        f"{_fmt(t['odir']['kappa'])} | {_fmt(r['macro_auc'])} -> "
        f"{_fmt(t['macro_auc'])} | {_fmt(r['ece'])} -> {_fmt(t['ece'])} |"
      )
  if not rows:
    return []
  return [
    "",
    "Test-time augmentation on the test fold (single centre crop -> the "
    "mean probability over the views; the same selected model):",
    "",
    "| model | views | final | kappa | macro-AUC | ECE |",
    "|---|---|---|---|---|---|",
    *rows,
  ]


def write_report(workdir, results: dict) -> pathlib.Path:
  """``report.md`` of a finished run."""
  lines = []
  for section in (
    _header,
    _scores,
    _tuned,
    _global_threshold,
    _top1,
    _calibration,
    _tta,
    _exact_match,
    _per_class,
    _closing,
  ):
    lines += section(results)
  path = pathlib.Path(workdir) / "report.md"
  io.atomic_write_text(path, "\n".join(lines) + "\n")
  return path
