"""Dataset statistics (the paper's Fig. 1): class counts, labels per image,
class co-occurrence and the imbalance ratio, from the label table alone (no
image is read or rendered).

  python -m experiments.dataset_stats                      # odir5k-synth labels
  python -m experiments.dataset_stats --data odir5k:/data/odir5k
  python -m experiments.dataset_stats --data rfmid:/data/RFMiD

Writes ``stats.json``, ``stats.md`` and ``fig1_<dataset>.png`` (a: images
per class, long-tailed order; b: images by number of labels; c: the
co-occurrence matrix) into ``--workdir`` (default ``runs/dataset_stats``).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from experiments import _cli


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.dataset_stats",
    description=__doc__.split("\n")[0],
  )
  _cli.add_data_arg(p)
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  a = p.parse_args(argv)

  def go() -> int:
    from agt_jax.data import registry, stats

    spec = registry.parse_data_spec(a.data)
    table = registry.load_labels(spec["dataset"], data_dir=spec["data_dir"])
    s = stats.label_stats(table)
    s["synthetic_images"] = bool(table.meta.get("synthetic", False))
    wd = a.workdir or pathlib.Path("runs/dataset_stats")
    wd.mkdir(parents=True, exist_ok=True)
    from agt_jax import io

    io.atomic_write_text(wd / "stats.json", json.dumps(s, indent=1))
    png = _figure(s, wd / f"fig1_{s['dataset']}.png")
    io.atomic_write_text(wd / "stats.md", "\n".join(_markdown(s, png)) + "\n")
    print(f"stats: {wd / 'stats.md'}", flush=True)
    return 0

  return _cli.guarded(go, prog="experiments.dataset_stats", argv=argv)


def _markdown(s: dict, png: pathlib.Path) -> list[str]:
  lines = [
    f"# Dataset statistics: {s['dataset']}",
    "",
    f"{s['images']} images, {s['patients']} patients, "
    f"{len(s['classes'])} classes; {s['multi_label_share']:.1%} of images "
    f"carry more than one label; imbalance ratio rho = N_max / N_min "
    f"= {s['rho']:.1f}.",
    "",
  ]
  if s["synthetic_images"]:
    lines += [
      "The labels are the real ODIR-5K image-level labels; the images of "
      "this dataset are synthetic (these counts are those of the labels).",
      "",
    ]
  lines += ["| class | images | share |", "|---|---|---|"]
  for c in s["order"]:
    n = s["class_counts"][c]
    lines.append(f"| {c} | {n} | {n / s['images']:.1%} |")
  lines += ["", "| labels per image | images |", "|---|---|"]
  lines += [f"| {k} | {n} |" for k, n in s["labels_per_image"].items()]
  return lines + ["", f"![Fig. 1]({png.name})"]


def _figure(s: dict, out: pathlib.Path) -> pathlib.Path:
  import numpy as np

  from agt_jax import plotting

  plt = plotting.pyplot()
  order = s["order"]
  many = len(order) > 12
  fig, ax = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
  ax[0].bar(range(len(order)), [s["class_counts"][c] for c in order])
  ax[0].set_xticks(range(len(order)), order, rotation=90 if many else 0)
  ax[0].set_title("(a) images per class")
  ks = list(s["labels_per_image"])
  ax[1].bar(ks, [s["labels_per_image"][k] for k in ks])
  ax[1].set_yscale("log")
  ax[1].set_title("(b) images by number of labels")
  ax[1].set_xlabel("labels per image")
  idx = [s["classes"].index(c) for c in order]
  co = np.asarray(s["cooccurrence"], np.float64)[np.ix_(idx, idx)]
  im = ax[2].imshow(np.log1p(co), cmap="viridis")
  ax[2].set_xticks(range(len(order)), order, rotation=90, fontsize=7)
  ax[2].set_yticks(range(len(order)), order, fontsize=7)
  ax[2].set_title("(c) co-occurrence, log(1 + images)")
  fig.colorbar(im, ax=ax[2], shrink=0.8)
  fig.suptitle(f"{s['dataset']}: label statistics", fontsize=9)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


if __name__ == "__main__":
  raise SystemExit(run())
