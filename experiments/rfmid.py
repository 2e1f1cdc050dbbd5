"""Paper Table 2: AGT and the baselines on RFMiD (29 classes: NORMAL, the 27
main conditions, OTHER), under one of two protocols:

* ``--protocol paper`` (default): trained on the official training set (a
  validation split for model selection carved from it) and scored on the
  official validation set, as the paper's Table 2 ("since the test set
  annotations are not publicly available"); the test set is not needed;
* ``--protocol official``: trained on train + validation, scored on the
  official test set.

  python -m experiments.rfmid --data rfmid:/data/RFMiD --preset paper
  python -m experiments.rfmid --data rfmid:/data/RFMiD --methods ride ours ours_ride

RFMiD cannot be downloaded at run time: ``--data rfmid:PATH`` names the folder of the
IEEE DataPort release (either layout; see ``agt_jax.data.rfmid``). There is
no ODIR "N with O" pair on RFMiD, so relational grouping runs without
forced pairs. Resumable like every experiment (``results.jsonl``,
``report.md``, ``table1_<backbone>.png`` plots with Table 2 data).
"""

from __future__ import annotations

import argparse
import pathlib

from experiments import _harness as h
from experiments import odir_table1

# Table 2 lists these methods (the others of Table 1 also work here).
DEFAULT_METHODS = (
  "bce",
  "cb_sampling",
  "focal",
  "db",
  "ride",
  "multi_teacher_kd",
  "ours",
  "ours_ride",
)


# --protocol -> (fold_mode, the line every report carries)
PROTOCOLS = {
  "paper": (
    "official_val",
    "trained on the official training set (selection split carved from "
    "it), scored on the official validation set, as the paper's Table 2.",
  ),
  "official": (
    "official",
    "trained on the official training + validation sets, scored on the "
    "official test set (not the paper's Table 2 protocol).",
  ),
}


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.rfmid", description=__doc__.split("\n")[0]
  )
  h.add_common_args(p, folds=(0,), data=None, example="rfmid:/data/RFMiD")
  p.add_argument(
    "--methods",
    nargs="+",
    default=list(DEFAULT_METHODS),
    choices=list(odir_table1.METHODS),
  )
  p.add_argument("--backbones", nargs="+", default=None)
  p.add_argument(
    "--protocol",
    choices=list(PROTOCOLS),
    default="paper",
    help="paper: train -> validation set (Table 2); official: train + "
    "validation -> test set",
  )
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  from agt_jax.data.registry import parse_data_spec

  workdir = a.workdir or pathlib.Path(f"runs/rfmid_{a.protocol}")
  fold_mode, protocol_line = PROTOCOLS[a.protocol]
  backbones = a.backbones or odir_table1.BACKBONES.get(
    a.preset, odir_table1.BACKBONES["paper"]
  )
  return h.run_and_report(
    odir_table1.runs_for(a.methods, backbones),
    preset=a.preset,
    prog="experiments.rfmid",
    argv=argv,
    folds=h.parse_folds(a.folds),
    workdir=workdir,
    base=lambda: {
      **parse_data_spec(a.data),
      "fold_mode": fold_mode,
      "together": (),
      **config_lib.parse_sets(a.set),
    },
    report=lambda: odir_table1.write_report(
      h.read_rows(workdir),
      workdir,
      title=f"Table 2 (RFMiD, {a.protocol} protocol)",
      table=2,
      notes=[
        f"Protocol `{a.protocol}`: {protocol_line}",
        "",
        "The paper's RFMiD F1 is read as Eq. 16 (positive entries): compare "
        "it with our F1 (Eq. 16) column, not the script's F1 "
        "(docs/metrics.md).",
        "",
      ],
    ),
  )


if __name__ == "__main__":
  raise SystemExit(run())
