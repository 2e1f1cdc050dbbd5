"""AGT on ODIR-5K (or the offline odir5k-synth): one fold or all five.

  python -m experiments.odir --fold 0
  python -m experiments.odir --folds all --preset quick
  python -m experiments.odir --fold 0 --data odir5k:/data/odir5k --preset paper
  python -m experiments.odir --fold 0 --set alpha=0.3 --set reweight=none

Thin entry point: parse flags, build the config (written to the workdir), call
``agt_jax.train.train_and_evaluate``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _default_preset() -> tuple[str, str]:
  import jax
  backend = jax.default_backend()
  if backend in ("gpu", "cuda", "rocm", "tpu"):
    return "paper", f"a {backend} backend is present"
  return "quick", "only a CPU backend is present"


def _data_overrides(spec: str) -> dict:
  if spec == "odir5k-synth":
    return {"dataset": "odir5k-synth"}
  name, _, path = spec.partition(":")
  if name in ("odir5k", "odir5k-kaggle", "rfmid") and path:
    return {"dataset": "rfmid" if name == "rfmid" else "odir5k",
            "data_dir": path}
  raise SystemExit(f"--data: expected odir5k-synth, odir5k:PATH, "
                   f"odir5k-kaggle:PATH or rfmid:PATH, got {spec!r}.")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.odir",
                              description=__doc__.split("\n")[0])
  g = p.add_mutually_exclusive_group()
  g.add_argument("--fold", type=int, default=None, help="test fold 0-4")
  g.add_argument("--folds", choices=["all"], default=None)
  p.add_argument("--data", default="odir5k-synth")
  p.add_argument("--preset", default=None, help="paper | quick | smoke")
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  p.add_argument("--resume", action="store_true")
  p.add_argument("--init", default=None, help="encoder weights: checkpoint "
                 "folder or torchvision .pth")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override any config field (repeatable)")
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  if a.preset is None:
    preset, why = _default_preset()
    print(f"preset: {preset} (no --preset given and {why})", flush=True)
  else:
    preset = a.preset
    print(f"preset: {preset} (from --preset)", flush=True)
  try:
    overrides = {**_data_overrides(a.data), **config_lib.parse_sets(a.set)}
    if a.init:
      overrides["init"] = a.init
    base = config_lib.get_config(preset, **overrides)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None

  from agt_jax.train import train_and_evaluate
  folds = range(base.num_folds) if a.folds == "all" else [a.fold or 0]
  workdir = a.workdir or pathlib.Path("runs") / f"odir-{base.dataset}-{preset}"
  results = []
  for k in folds:
    cfg = config_lib.replace(base, fold=k)
    wd = workdir / f"fold{k}" if a.folds == "all" else workdir
    try:
      results.append(train_and_evaluate(cfg, wd, resume=a.resume))
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    r = results[-1]
    print(f"fold {k}: groups "
          + " ".join("{" + ",".join(g) + "}" for g in r["groups"]["names"])
          + f"; teacher loss {r['reweight_rule']}", flush=True)
    for name in ("teacher", "student"):
      if name in r:
        o = r[name]["odir"]
        print(json.dumps({"fold": k, "model": name, "dataset": r["dataset"],
                          **{m: round(o[m], 4) for m in o},
                          "macro_auc": round(r[name]["macro_auc"], 4)}),
              flush=True)
  if a.folds == "all":
    from agt_jax.train import summarize_folds
    path = summarize_folds(results, workdir)
    print(f"summary: {path}")
  print(f"outputs: {workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
