"""TFA-LT (paper 002): two residual adapters and a linear ensembler on a
frozen encoder's features, with Table 2's ablation rows.

  python -m experiments.tfa_lt --preset smoke
  python -m experiments.tfa_lt --preset quick                 # 3 folds, 3 seeds
  python -m experiments.tfa_lt --features clip.npz --text text.npz
  python -m experiments.tfa_lt --encoder runs/x/fold0/checkpoints/teacher \\
      --model resnet50 --data odir5k:/data/odir5k

Features come from one of:

* ``--features F.npz``: ``train_features [n, d]``, ``train_labels`` (``[n]``
  integers: single-label, the paper; ``[n, C]`` 0/1: multi-label),
  ``test_features``, ``test_labels``, optional ``class_names``; with
  ``--text T.npz`` holding ``text_embeddings [C, d]`` (same order). From
  open_clip, for example::

    model, _, pre = open_clip.create_model_and_transforms(
        "ViT-B-16", pretrained="openai")
    tok = open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():
      f = model.encode_image(torch.stack([pre(im) for im in images]))
      t = model.encode_text(tok([f"a fundus photograph of {c}"
                                 for c in class_names]))
    np.savez("text.npz", text_embeddings=t.numpy())

* ``--encoder CKPT``: a frozen agt_jax encoder (our checkpoint folder or a
  torchvision ``.pth``) over ``--data``'s folds, through the feature cache;
* neither: a stand-in encoder trained with plain BCE on each fold's training
  images (it has seen these labels, which CLIP has not; the report says so).

Without ``--text`` the class embeddings are fixed random orthonormal vectors
and every output says "no text guidance". On multi-label data (ODIR) the
adapters use a per-class sigmoid of the same similarity logits (BCE, then
sigmoid focal), labelled as an adaptation. Writes ``report.md``,
``sigma_lambda.png`` and ``results.json`` into the workdir.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from agt_jax import plotting
from experiments import _harness as h

PROG = "experiments.tfa_lt"
ROWS = [
  (
    "zero_shot",
    "–",
    "–",
    "zero-shot (similarity to the class " "embeddings only)",
  ),
  ("adapter", "✓", "–", "adapter, original set"),
  ("ensembler_logit", "–", "logit-wise", "ensembler only"),
  ("ensembler_feature", "–", "feature-wise", "ensembler only"),
  ("tfa_logit", "✓", "logit-wise", "TFA-LT (logit)"),
  ("tfa_feature", "✓", "feature-wise", "TFA-LT (feature)"),
]
PRESETS = {
  "paper": dict(
    stage1_epochs=200,
    stage2_epochs=100,
    seeds=3,
    encoder=dict(
      model="resnet50",
      image_size=256,
      crop=224,
      teacher_steps=3000,
      eval_every=250,
    ),
  ),
  "quick": dict(
    stage1_epochs=200,
    stage2_epochs=100,
    seeds=3,
    encoder=dict(
      model="resnet_tiny",
      image_size=56,
      crop=48,
      eval_batch_size=128,
      max_images=2400,
      teacher_steps=300,
      eval_every=50,
      log_every=25,
      ckpt_every=100,
    ),
  ),
  "smoke": dict(
    stage1_epochs=2,
    stage2_epochs=1,
    seeds=1,
    encoder=dict(teacher_steps=4, eval_every=2, log_every=2, ckpt_every=2),
  ),
}
ENCODER_RUN = dict(
  trainer="transfer",
  grouping="none",
  student=False,
  head="linear",
  select_metric="macro_f1",
  lr=1e-3,
)


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog=f"python -m {PROG}", description=__doc__.split("\n")[0]
  )
  h.add_common_args(p, folds=(0, 1, 2), preset="quick")
  p.add_argument(
    "--features",
    type=pathlib.Path,
    default=None,
    help="an .npz of train/test features and labels",
  )
  p.add_argument(
    "--text",
    type=pathlib.Path,
    default=None,
    help="an .npz with text_embeddings [C, d]",
  )
  p.add_argument(
    "--encoder",
    default=None,
    help="frozen encoder: our checkpoint folder or a .pth",
  )
  p.add_argument("--model", default=None, help="the encoder's architecture")
  p.add_argument(
    "--seeds", type=int, default=None, help="seeds per fold (paper: 3)"
  )
  p.add_argument(
    "--epochs", type=int, nargs=2, default=None, metavar=("STAGE1", "STAGE2")
  )
  a = p.parse_args(argv)
  from experiments import _cli

  workdir = a.workdir or pathlib.Path("runs") / "tfa-lt"
  return _cli.guarded(lambda: _go(a, workdir), prog=PROG, argv=argv)


def _go(a, workdir: pathlib.Path) -> int:
  from agt_jax.errors import ConfigError
  from agt_jax.train import tfa_lt

  if a.preset not in PRESETS:
    raise ConfigError(
      f"unknown preset {a.preset!r}; known: " f"{sorted(PRESETS)}."
    )
  preset = PRESETS[a.preset]
  e1, e2 = a.epochs or (preset["stage1_epochs"], preset["stage2_epochs"])
  seeds = a.seeds or preset["seeds"]
  workdir.mkdir(parents=True, exist_ok=True)
  if a.features:
    splits = [("features", *_read_features(a.features))]
    source = f"features from {a.features}"
  else:
    splits, source = _encoder_features(a, workdir, preset)
  names = splits[0][5]
  d = splits[0][1].shape[1]
  if a.text:
    text = _read_text(a.text, len(names), d)
    guidance = f"text embeddings from {a.text}"
  else:
    text = tfa_lt.orthonormal_embeddings(len(names), d)
    guidance = "no text guidance (fixed random orthonormal class embeddings)"
  results = []
  for split_name, xtr, ytr, xte, yte, _, synthetic, dataset in splits:
    multilabel = ytr.ndim == 2
    for seed in range(seeds):
      opts = tfa_lt.TFAOptions(
        objective="bce" if multilabel else "softmax",
        stage1_epochs=e1,
        stage2_epochs=e2,
        seed=seed,
      )
      out = tfa_lt.run_tfa_lt(xtr, ytr, xte, text, opts)
      counts = (
        ytr.sum(0) if multilabel else np.bincount(ytr, minlength=len(names))
      )
      scores = {
        row: _score(out["scores"][row], yte, counts, multilabel)
        for row, *_ in ROWS
      }
      results.append(
        {
          "split": split_name,
          "seed": seed,
          "dataset": dataset,
          "synthetic": synthetic,
          "multilabel": multilabel,
          "scores": scores,
          "sigma_lambda_last": {
            k: v[-1] for k, v in out["sigma_lambda"].items()
          },
          "loss": out["loss"],
        }
      )
      if not results[:-1]:
        _sigma_plot(
          out["sigma_lambda"],
          workdir / "sigma_lambda.png",
          f"{dataset}, {split_name}, seed {seed}",
        )
      print(
        json.dumps(
          {
            "split": split_name,
            "seed": seed,
            **{row: round(scores[row]["total"], 4) for row, *_ in ROWS},
          }
        ),
        flush=True,
      )
  (workdir / "results.json").write_text(
    json.dumps(
      {
        "source": source,
        "guidance": guidance,
        "epochs": [e1, e2],
        "runs": results,
      },
      indent=1,
    )
  )
  report = _report(workdir, results, source, guidance, (e1, e2))
  h.print_section(report, "Table 2")
  print(f"report: {report}", flush=True)
  return 0


# -- inputs ------------------------------------------------------------------------


def _read_features(path: pathlib.Path):
  from agt_jax.errors import ConfigError

  if not path.exists():
    raise ConfigError(
      f"--features {path}: no such file (an .npz with "
      "train_features, train_labels, test_features, "
      "test_labels)."
    )
  z = np.load(path, allow_pickle=False)
  need = ("train_features", "train_labels", "test_features", "test_labels")
  missing = [k for k in need if k not in z]
  if missing:
    raise ConfigError(
      f"--features {path}: missing arrays {missing} (has "
      f"{sorted(z.files)})."
    )
  xtr, ytr = z["train_features"].astype(np.float32), z["train_labels"]
  xte, yte = z["test_features"].astype(np.float32), z["test_labels"]
  if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
    raise ConfigError(
      f"--features {path}: features must be [n, d] with the "
      f"same d; got {xtr.shape} and {xte.shape}."
    )
  if len(ytr) != len(xtr) or len(yte) != len(xte):
    raise ConfigError(
      f"--features {path}: {len(xtr)} train features but "
      f"{len(ytr)} labels, or {len(xte)} test features but "
      f"{len(yte)} labels."
    )
  c = ytr.shape[1] if ytr.ndim == 2 else int(max(ytr.max(), yte.max())) + 1
  names = (
    [str(n) for n in z["class_names"]]
    if "class_names" in z
    else [f"class{k}" for k in range(c)]
  )
  if ytr.ndim == 1:
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
  return xtr, ytr, xte, yte, names, False, path.name


def _read_text(path: pathlib.Path, num_classes: int, d: int) -> np.ndarray:
  from agt_jax.errors import ConfigError

  if not path.exists():
    raise ConfigError(
      f"--text {path}: no such file (an .npz with " "text_embeddings [C, d])."
    )
  z = np.load(path, allow_pickle=False)
  if "text_embeddings" not in z:
    raise ConfigError(
      f"--text {path}: no text_embeddings array (has " f"{sorted(z.files)})."
    )
  t = z["text_embeddings"].astype(np.float32)
  if t.shape != (num_classes, d):
    raise ConfigError(
      f"--text {path}: text_embeddings is {t.shape}; the "
      f"features need ({num_classes}, {d})."
    )
  return t


def _encoder_features(a, workdir, preset):
  """Per fold: the frozen encoder's features of the fit and test images
  (cached), from ``--encoder`` or a stand-in trained on the fold."""
  from agt_jax import config as config_lib
  from agt_jax import models
  from agt_jax.data.registry import parse_data_spec
  from agt_jax.models import weights
  from agt_jax.runtime import make_mesh
  from agt_jax.train import feature_cache, loop, steps, transfer

  base = {
    **preset["encoder"],
    **ENCODER_RUN,
    **parse_data_spec(a.data),
    **({"model": a.model} if a.model else {}),
    **config_lib.parse_sets(a.set),
  }
  folds = h.parse_folds(a.folds)
  if a.preset == "smoke" and a.folds == ["0", "1", "2"]:
    folds = [0]
  out = []
  for fold in folds:
    cfg = config_lib.validate(
      config_lib.get_config(a.preset, **{**base, "fold": fold})
    )
    data = loop.load_fold(cfg)
    if a.encoder:
      model = models.Student(
        models.make_encoder(cfg.model), num_classes=len(data.names)
      )
      state = steps.init_state(
        model, steps.adam(1e-3, 0.9, 0.99), (cfg.crop, cfg.crop, 3), 0
      )
      state = weights.load_init(a.encoder, state)
      variables = {
        "params": state["params"],
        "batch_stats": state["batch_stats"],
      }
      source = f"frozen encoder {a.encoder}"
    else:
      h.run_grid(
        [h.Run("encoder", {}, "transfer", {"stage": "encoder"})],
        preset=a.preset,
        folds=[fold],
        base=base,
        workdir=workdir,
      )
      from agt_jax.models import weights

      model = transfer.transfer_model(cfg, len(data.names))
      like = steps.init_state(
        model, steps.adam(1e-3, 0.9, 0.99), (cfg.crop, cfg.crop, 3), 0
      )
      variables = weights.load_variables(
        workdir / "encoder" / f"fold{fold}" / "checkpoints" / "transfer_best",
        like,
      )
      source = (
        "stand-in encoder: plain BCE on each fold's training images "
        f"(`{cfg.model}`, {cfg.teacher_steps} steps; it has seen "
        "these labels, which CLIP has not)"
      )
    mesh = make_mesh(cfg.eval_batch_size, cfg.eval_batch_size)
    feats = {}
    for split, idx, y in (
      ("fit", data.fit_idx, data.y_fit),
      ("test", data.test_idx, data.y_test),
    ):
      feats[split] = feature_cache.features(
        model,
        variables,
        data.source,
        idx,
        y,
        cfg,
        mesh,
        cache_dir=workdir / "cache",
        dataset=cfg.dataset,
        model_name=cfg.model,
      )
    out.append(
      (
        f"fold {fold}",
        feats["fit"],
        data.y_fit.astype(np.float32),
        feats["test"],
        data.y_test.astype(np.float32),
        data.names,
        data.table.synthetic,
        data.table.name + (" (synthetic)" if data.table.synthetic else ""),
      )
    )
  return out, source


# -- scores and report --------------------------------------------------------------


def _score(scores, y, counts, multilabel: bool) -> dict:
  """Single-label: accuracy overall / many / medium / few and macro F1
  (paper 002's Total, F1). Multi-label: the ODIR final score as "total",
  macro F1 at 0.5 and macro AUC per shot tier."""
  from sklearn.metrics import f1_score

  from agt_jax import metrics

  if not multilabel:
    t = metrics.top1_report(y, scores, counts)
    return {
      "total": t["all"],
      "f1": float(
        f1_score(y, scores.argmax(1), average="macro", zero_division=0.0)
      ),
      "many": t["many"],
      "medium": t["medium"],
      "few": t["few"],
    }
  probs = 1 / (1 + np.exp(-np.asarray(scores, np.float64)))
  from agt_jax.train import evaluation

  r = evaluation.report(probs, y, [str(k) for k in range(y.shape[1])], counts)
  return {
    "total": r["odir"]["final"],
    "f1": r["macro_f1"],
    "macro_auc": r["macro_auc"],
    **{
      k: r["shots"][s]["auc"]
      for k, s in (("many", "head"), ("medium", "medium"), ("few", "tail"))
    },
  }


def _report(workdir, results, source, guidance, epochs) -> pathlib.Path:
  r0 = results[0]
  ml = r0["multilabel"]
  lines = [
    "# TFA-LT (paper 002)"
    + ("" if "text embeddings" in guidance else ": no text guidance"),
    "",
  ]
  lines += [
    f"Dataset: **{r0['dataset']}**; splits "
    f"{sorted({r['split'] for r in results})}; seeds "
    f"{sorted({r['seed'] for r in results})}; mean ± std over every "
    "(split, seed) run.",
    "",
  ]
  lines += plotting.synthetic_lines(r0["synthetic"])
  lines += [
    f"- features: {source}",
    f"- class embeddings: {guidance}",
    f"- SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 "
    f"cosine; {epochs[0]} epochs stage I, {epochs[1]} stage II; "
    "tau 0.01; focal gamma 2 in stage II; the last epoch is scored",
    "",
  ]
  if ml:
    lines += [
      "Multi-label **adaptation** (not in the paper): per-class "
      "sigmoid of the similarity logits plus a learned per-class "
      "bias; BCE in stage I, sigmoid focal in stage II; WRS weights "
      "an image by the sum of its classes' 1/n. Total is the ODIR "
      "final score at 0.5; many/medium/few are macro AUC per shot "
      "tier.",
      "",
    ]
  cols = ("total", "f1", "many", "medium", "few")
  text = "text embeddings" in guidance
  lines += [
    "## Table 2 layout (test" + ("" if text else "; no text guidance") + ")",
    "",
    "| adapter | ensembler | row | Total | F1 | many | medium | few |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for key, ad, ens, label in ROWS:
    cells = [h.mean_std([r["scores"][key][c] for r in results]) for c in cols]
    lines.append(f"| {ad} | {ens} | {label} | " + " | ".join(cells) + " |")
  sig = {
    k: [r["sigma_lambda_last"][k] for r in results]
    for k in ("wrs", "rus", "plain")
  }
  lines += [
    "",
    "σ(λ) at the end of stage I (weight of the original "
    "feature in Eq. 1): "
    + ", ".join(f"{k} {h.mean_std(v)}" for k, v in sig.items()),
    "",
    "![sigma lambda](sigma_lambda.png)",
    "",
    "Reference (paper 002, APTOS2019, CLIP ViT-B/16 with text): "
    "feature-wise TFA-LT 75.60 accuracy / 75.63 F1; logit-wise "
    "72.80 / 72.36; adapter only 61.60 / 58.88; zero-shot 20.40 / "
    "7.49.",
    "",
  ]
  return h.write_report_md(workdir, lines)


def _sigma_plot(sigma: dict, out: pathlib.Path, title: str) -> None:
  from agt_jax import plotting

  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3))
  for name, vals in sigma.items():
    ax.plot(
      np.arange(1, len(vals) + 1),
      vals,
      label={
        "wrs": "adapter (WRS)",
        "rus": "adapter (RUS)",
        "plain": "adapter (original set)",
      }[name],
    )
  ax.set_xlabel("stage I step")
  ax.set_ylabel("σ(λ)")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  raise SystemExit(run())
