"""AGT on ODIR-5K (or the offline odir5k-synth): one fold or all five.

  python -m experiments.odir --fold 0
  python -m experiments.odir --folds all --preset quick
  python -m experiments.odir --fold 0 --data odir5k:/data/odir5k --preset paper
  python -m experiments.odir --fold 0 --set alpha=0.3 --set reweight=none
  srun python -m experiments.odir --fold 0 --data odir5k:/data/odir5k

Thin entry point: parse flags, build the config (written to the workdir), call
``agt_jax.train.train_and_evaluate``. Ctrl-C (or SIGTERM) checkpoints the
current step and prints the command that resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from experiments import _cli

PROG = "experiments.odir"


def _default_preset() -> tuple[str, str]:
  import jax

  backend = jax.default_backend()
  if backend in ("gpu", "cuda", "rocm", "tpu"):
    return "paper", f"a {backend} backend is present"
  return "quick", "only a CPU backend is present"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog=f"python -m {PROG}", description=__doc__.split("\n")[0]
  )
  g = p.add_mutually_exclusive_group()
  g.add_argument("--fold", type=int, default=None, help="test fold 0-4")
  g.add_argument("--folds", choices=["all"], default=None)
  _cli.add_data_arg(p)
  p.add_argument("--preset", default=None, help="paper | quick | smoke")
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  p.add_argument("--resume", action="store_true")
  p.add_argument(
    "--init",
    default=None,
    help="encoder weights: checkpoint " "folder or torchvision .pth",
  )
  p.add_argument(
    "--classes",
    default=None,
    metavar="C1,C2,...",
    help="train on these classes only, e.g. D,G,A",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override any config field (repeatable)",
  )
  _cli.add_distributed_args(p)
  a = p.parse_args(argv)
  return _cli.guarded(
    lambda: _run(a), prog=PROG, argv=argv, resume_flag="--resume"
  )


def _run(a) -> int:
  from agt_jax import config as config_lib
  from agt_jax import distributed
  from agt_jax.data.registry import parse_data_spec

  _cli.start_distributed(a)
  if a.preset is None:
    preset, why = _default_preset()
    print(f"preset: {preset} (no --preset given and {why})", flush=True)
  else:
    preset = a.preset
    print(f"preset: {preset} (from --preset)", flush=True)
  overrides = {**parse_data_spec(a.data), **config_lib.parse_sets(a.set)}
  if a.init:
    overrides["init"] = a.init
  if a.classes:
    overrides["classes"] = tuple(
      c.strip() for c in a.classes.split(",") if c.strip()
    )
  base = config_lib.get_config(preset, **overrides)
  # Every fold's config is checked before the first one trains.
  folds = range(base.num_folds) if a.folds == "all" else [a.fold or 0]
  configs = [
    config_lib.validate(config_lib.replace(base, fold=k)) for k in folds
  ]

  from agt_jax.train import train_and_evaluate

  workdir = a.workdir or pathlib.Path("runs") / f"odir-{base.dataset}-{preset}"
  results = []
  for cfg in configs:
    k = cfg.fold
    wd = workdir / f"fold{k}" if a.folds == "all" else workdir
    results.append(train_and_evaluate(cfg, wd, resume=a.resume))
    r = results[-1]
    if not distributed.is_primary():
      continue  # process 0 prints the results
    print(
      f"fold {k}: groups "
      + " ".join("{" + ",".join(g) + "}" for g in r["groups"]["names"])
      + f"; teacher loss {r['reweight_rule']}",
      flush=True,
    )
    for name in ("teacher", "student", "gbg", "transfer"):
      if name in r:
        o = r[name]["odir"]
        print(
          json.dumps(
            {
              "fold": k,
              "model": name,
              "dataset": r["dataset"],
              **{m: round(o[m], 4) for m in o},
              "macro_auc": round(r[name]["macro_auc"], 4),
            }
          ),
          flush=True,
        )
  if not distributed.is_primary():
    return 0
  if a.folds == "all":
    from agt_jax.train import summarize_folds

    path = summarize_folds(results, workdir)
    print(f"summary: {path}")
  print(f"outputs: {workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
