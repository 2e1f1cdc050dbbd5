"""experiments.pretrain (the pretraining stand-in as an --init checkpoint)
and experiments.agt_regimes (its rows and report)."""

import json

import numpy as np

from agt_jax import config as config_lib
from experiments import _harness as h
from experiments import agt_regimes, pretrain

NAMES = list("NDGCAHMO")


def test_pretrain_smoke_writes_an_init_checkpoint_and_is_reused(
  tmp_path, monkeypatch
):
  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  wd = tmp_path / "pre"
  path, row = pretrain.ensure("smoke", wd)
  assert (
    path.is_dir()
    and row["dataset"].startswith("odir5k-synth-pretrain")
    and row["synthetic"]
  )
  results = json.loads((wd / "results.json").read_text())
  assert results["config"]["dataset"] == "odir5k-synth-pretrain"
  assert results["config"]["grouping"] == "single"
  assert not results["config"]["student"]
  # It loads as --init into an AGT teacher: the encoder is the pretrained
  # one.
  from agt_jax import models
  from agt_jax.models import weights
  from agt_jax.train import agt, steps

  cfg = config_lib.validate(config_lib.get_config("smoke", init=str(path)))
  enc = models.make_encoder(cfg.model)
  teacher, tx, _, _ = agt.build_teacher(
    cfg, enc, ((0, 7), (1, 2, 3, 4, 5, 6)), np.ones(8), 10
  )
  state = steps.init_state(teacher, tx, (cfg.crop, cfg.crop, 3), 0)
  # A relative --init (as the README writes it) loads too.
  monkeypatch.chdir(tmp_path)
  loaded = weights.load_init(str(path.relative_to(tmp_path)), state)
  saved, _ = weights.load_encoder(str(path), state)
  first = lambda t: np.asarray(next(iter(__import__("jax").tree.leaves(t))))
  np.testing.assert_array_equal(
    first(loaded["params"]["encoder"]), first(saved)
  )
  assert not np.array_equal(first(state["params"]["encoder"]), first(saved))
  # A second call reuses the finished run.
  mtime = (wd / "results.json").stat().st_mtime
  assert pretrain.ensure("smoke", wd)[0] == path
  assert (wd / "results.json").stat().st_mtime == mtime


def test_regime_rows_validate_and_the_matched_baseline_has_agts_steps():
  for preset in ("smoke", "quick", "paper"):
    cfg = config_lib.get_config(preset)
    runs = agt_regimes.core(cfg) + agt_regimes.extras(cfg)
    for r in runs:
      config_lib.validate(config_lib.get_config(preset, **r.overrides))
    matched = {r.name: r for r in runs}["bce_matched"]
    assert matched.overrides["teacher_steps"] == (
      cfg.teacher_steps + cfg.student_steps
    )
    assert {r.name: r for r in runs}["agt_kd"].overrides[
      "prior_correction"
    ] == "none"
    assert all(r.name in agt_regimes.LABELS for r in runs)


def _row(regime, name, fold, kappa, model="student"):
  pc = {
    c: {"auc": 0.7, "ap": 0.3, "f1": 0.2, "called_positive": 0.1, "p_neg": 0.05}
    for c in NAMES
  }
  return {
    "run": f"{regime}/{name}",
    "regime": regime,
    "row": name,
    "fold": fold,
    "model": model,
    "preset": "smoke",
    "dataset": "odir5k-synth (synthetic)",
    "synthetic": True,
    "kappa": kappa,
    "f1": 0.8,
    "auc": 0.8,
    "final": 0.7,
    "macro_auc": 0.7,
    "val_kappa": kappa,
    "val_f1": 0.8,
    "val_auc": 0.8,
    "val_final": 0.7,
    "val_macro_auc": 0.7,
    "kappa_global": kappa + 0.05,
    "global_threshold": 0.35,
    "per_class": pc,
    "collapsed": False,
    **(
      {
        "teacher": {
          "kappa": kappa - 0.1,
          "kappa_global": kappa,
          "macro_auc": 0.7,
          "per_class": pc,
        }
      }
      if model == "student"
      else {}
    ),
  }


def test_regimes_report_tables_paired_differences_and_per_class(tmp_path):
  rows = []
  for fold in (0, 1):
    rows += [
      _row("scratch", "bce_matched", fold, 0.50, "teacher"),
      _row("scratch", "agt_kd", fold, 0.40 + 0.02 * fold),
      _row("pretrained", "bce_matched", fold, 0.60, "teacher"),
      _row("pretrained", "agt_kd_pc", fold, 0.65),
    ]
  for r in rows:
    h.append_row(tmp_path, r)
  report = agt_regimes.write_report(
    h.read_rows(tmp_path), tmp_path, config_lib.get_config("smoke")
  )
  text = report.read_text()
  assert "## scratch: from scratch" in text
  assert "## pretrained: pretrained on odir5k-synth-pretrain" in text
  assert "Synthetic data" in text
  # AGT + KD - matched BCE: -0.10 and -0.08 on the two folds.
  assert "| AGT + KD (paper: no prior correction) | -0.090 ± 0.010" in text
  assert "| AGT + KD + prior correction (loss) | +0.050 ± 0.000" in text
  assert "0/2 |" in text and "2/2 |" in text
  per_class = (tmp_path / "per_class.md").read_text()
  assert "| C | 0.700 | 0.300 | 0.200 | 0.100 | 0.050 |" in per_class
  assert "— teacher" in per_class


def test_export_records_copies_records_and_named_checkpoints_only(tmp_path):
  src, dst = tmp_path / "grid", tmp_path / "out"
  run = src / "scratch" / "bce" / "fold0"
  (run / "checkpoints" / "teacher" / "7").mkdir(parents=True)
  (run / "checkpoints" / "teacher" / "7" / "state").write_text("big")
  for name in ("config.json", "done.json", "results.json", "metrics.jsonl"):
    (run / name).write_text("{}")
  best = src / "pretrain" / "checkpoints" / "teacher_best" / "5"
  best.mkdir(parents=True)
  (best / "variables").write_text("w")
  (src / "results.jsonl").write_text("")
  n = h.export_records(src, dst, ["pretrain/checkpoints/teacher_best"])
  got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
  assert (
    got
    == [
      "pretrain/checkpoints/teacher_best/5/variables",
      "results.jsonl",
      "scratch/bce/fold0/config.json",
      "scratch/bce/fold0/done.json",
      "scratch/bce/fold0/results.json",
    ]
    and n == 5
  )
