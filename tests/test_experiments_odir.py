"""The CLI end to end (smoke preset), kill-and-resume, and clear errors."""

import json
import pathlib
import signal
import sys

import numpy as np
import pytest

from tests import processes
from tests.cli import ROOT, cli, env

OUTPUTS = (
  "config.json",
  "folds.json",
  "groups.json",
  "metrics.jsonl",
  "results.json",
  "report.md",
  "curves.png",
  "gradients.png",
  "roc.png",
  "calibration.png",
  "validation.png",
  "checkpoints/teacher",
  "checkpoints/student",
  "checkpoints/teacher_best",
  "checkpoints/student_best",
)


# The smoke run several test files read (tests/runs.py makes it once).
SMOKE_ARGS = ("--fold", "0", "--preset", "smoke", "--set", "tta=flip")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from tests import runs

  return runs.smoke_odir(tmp_path_factory)


def test_smoke_writes_every_output(smoke_run):
  root, out, seconds = smoke_run
  wd = root / "run"
  for name in OUTPUTS:
    assert (wd / name).exists(), name
  assert out.stdout.splitlines()[0] == "preset: smoke (from --preset)"
  results = json.loads((wd / "results.json").read_text())
  assert results["synthetic"] and "synthetic" in results["dataset"]
  for model in ("teacher", "student"):
    assert set(results[model]["odir"]) == {"kappa", "f1", "auc", "final"}
    assert set(results[model]["per_class"]) == set("NDGCAHMO")
  report = (wd / "report.md").read_text()
  assert "Synthetic data" in report and "Calibration on the test fold" in report
  assert "Test-time augmentation on the test fold" in report
  for model in ("teacher", "student"):
    flip = results[model]["tta_flip"]
    assert set(flip["odir"]) == {"kappa", "f1", "auc", "final"}
    assert f"| {model} | flip | " in report
  for model in ("teacher", "student"):
    temp = results["selection"][model]["temperature"]
    assert temp["shared"] > 0 and len(temp["per_class"]) == 8
    scaled = results[model]["temperature_scaled"]
    # a shared temperature keeps every order and every logit's sign
    for k in ("auc", "kappa", "f1"):
      assert scaled["shared"]["odir"][k] == pytest.approx(
        results[model]["odir"][k], abs=1e-9
      )
  groups = json.loads((wd / "groups.json").read_text())
  flat = sorted(c for g in groups["groups"] for c in g)
  assert flat == list(range(8)) and ["N", "O"] in groups["names"]
  assert "warm-up" in groups["features"]
  cfg = json.loads((wd / "config.json").read_text())
  assert cfg["preset"] == "smoke" and cfg["dataset"] == "odir5k-synth"
  folds = json.loads((wd / "folds.json").read_text())
  assert folds["fold"] == 0 and folds["synthetic"]
  # The validation split: patients of the training fold, none in the test.
  assert folds["num_validation_images"] > 0
  assert not set(folds["validation_patients"]) & set(folds["test_patients"])
  # Selection on validation, test metrics for the selected and last models.
  for model in ("teacher", "student"):
    sel = results["selection"][model]
    assert sel["select"].startswith("best validation")
    assert 1 <= sel["step"] <= 6 and set(sel["val"]) == {
      "kappa",
      "f1",
      "auc",
      "final",
    }
    assert len(sel["thresholds"]) == 8 and len(sel["p_neg_last"]) == 8
    assert set(results[model]["tuned"]) == {
      "kappa",
      "f1",
      "auc",
      "final",
      "macro_f1",
    }
    assert 0 <= results[model]["tuned"]["macro_f1"] <= 1
  evals = [
    json.loads(l)
    for l in (wd / "metrics.jsonl").read_text().splitlines()
    if '"eval_teacher"' in l
  ]
  assert [e["step"] for e in evals] == [3, 6]
  assert all(e["split"] == "validation" for e in evals)
  best = max(evals, key=lambda e: e["final"])
  assert results["selection"]["teacher"]["step"] == best["step"]
  report = (wd / "report.md").read_text()
  assert "teacher loss: reweight=" in report and "PCA on" in report
  assert results["reweight_rule"].startswith("reweight=")
  groups = json.loads((wd / "groups.json").read_text())
  assert groups["pca"]["n_components"] >= 1
  assert groups["stability"]["seeds"] == 10
  teacher_rows = [
    json.loads(l)
    for l in (wd / "metrics.jsonl").read_text().splitlines()
    if '"teacher"' in l
  ]
  assert {
    "loss",
    "lr",
    "pos",
    "neg",
    "w",
    "grad_norm",
    "param_norm",
    "images_per_s",
    "group",
    "loss_mean",
    "grad_norm_mean",
  } <= set(teacher_rows[0])
  print(f"smoke CLI took {seconds:.1f} s")


def test_resume_requires_flag_and_same_config(smoke_run):
  root, _, _ = smoke_run
  wd = str(root / "run")
  out = cli([*SMOKE_ARGS, "--workdir", wd], root / "cache")
  assert out.returncode == 2 and "pass --resume" in out.stderr
  out = cli(
    [*SMOKE_ARGS, "--workdir", wd, "--resume", "--set", "alpha=0.25"],
    root / "cache",
  )
  assert out.returncode == 2 and "config differs" in out.stderr
  assert "alpha" in out.stderr


def test_unknown_preset_key_and_data(tmp_path):
  out = cli(["--preset", "fast"], tmp_path)
  assert out.returncode != 0 and "unknown preset 'fast'" in out.stderr
  out = cli(["--preset", "smoke", "--set", "alfa=0.2"], tmp_path)
  assert "unknown config key 'alfa'" in out.stderr
  out = cli(["--preset", "smoke", "--data", "imagenet"], tmp_path)
  assert "--data: expected" in out.stderr
  out = cli(
    [
      "--preset",
      "smoke",
      "--data",
      f"odir5k:{tmp_path}/none",
      "--workdir",
      str(tmp_path / "w"),
    ],
    tmp_path,
  )
  assert out.returncode == 2 and "odir2019.grand-challenge.org" in out.stderr


def _final_state(ckpt_dir):
  import orbax.checkpoint as ocp

  steps = sorted(
    int(p.name) for p in pathlib.Path(ckpt_dir).iterdir() if p.name.isdigit()
  )
  path = pathlib.Path(ckpt_dir) / str(steps[-1]) / "state"
  # Onto this process's first device, whatever topology wrote it (a
  # multi-process run's checkpoint names devices this process lacks).
  import jax

  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  meta = ocp.StandardCheckpointer().metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta
  )
  return ocp.StandardCheckpointer().restore(path, target), steps[-1]


def test_kill_and_resume_is_bit_identical(tmp_path):
  # The feedback rule with one row of statistics per group: they live in
  # the train state and must come back with it (the global form's resume is
  # tested in test_faults_signals); the prior-corrected loss too.
  sets = [
    "--set",
    "teacher_steps=12",
    "--set",
    "student_steps=4",
    "--set",
    "ckpt_every=2",
    "--set",
    "log_every=1",
    "--set",
    "reweight=feedback",
    "--set",
    "rw_stats=group",
    "--set",
    "prior_correction=loss",
  ]
  base = ["--fold", "0", "--preset", "smoke", *sets]
  full = cli([*base, "--workdir", str(tmp_path / "full")], tmp_path / "c")
  assert full.returncode == 0, full.stderr[-2000:]

  wd = tmp_path / "killed"
  proc = processes.Watched(
    [sys.executable, "-m", "experiments.odir", *base, "--workdir", str(wd)],
    cwd=ROOT,
    env=env(tmp_path / "c"),
  )
  ckpt = wd / "checkpoints" / "teacher"

  def saved_6():
    done = (
      [p for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
    )
    return any(int(p.name) >= 6 for p in done)

  processes.wait_until(saved_6, proc, watch=[wd / "metrics.jsonl"])
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.close()
  latest = max(int(p.name) for p in ckpt.glob("*") if p.name.isdigit())
  assert latest < 12, "the run finished before it could be killed"

  resumed = cli([*base, "--workdir", str(wd), "--resume"], tmp_path / "c")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  import jax

  for phase in ("teacher", "student"):
    a, sa = _final_state(tmp_path / "full" / "checkpoints" / phase)
    b, sb = _final_state(wd / "checkpoints" / phase)
    assert sa == sb
    if phase == "teacher":
      assert "loss_state" in a
      count = np.asarray(a["loss_state"]["count"])
      assert count.shape == (3,) and count.sum() == 12  # 4 steps a group
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The same selected checkpoints and test metrics.
  ra = json.loads((tmp_path / "full" / "results.json").read_text())
  rb = json.loads((wd / "results.json").read_text())
  assert ra["selection"] == rb["selection"]
  assert ra["teacher"]["odir"] == rb["teacher"]["odir"]
  assert ra["student"]["odir"] == rb["student"]["odir"]


def test_diverged_state_is_never_saved(tmp_path):
  # An infinite learning rate: step 1's loss is finite (initial weights) but
  # its update is not, so the state after step 1 is NaN. That state must not
  # be written as a checkpoint (the loss alone would say step 1 was fine).
  out = cli(
    [
      "--fold",
      "0",
      "--preset",
      "smoke",
      "--workdir",
      str(tmp_path / "w"),
      "--set",
      "lr=inf",
      "--set",
      "grouping=paper",
      "--set",
      "teacher_steps=12",
      "--set",
      "ckpt_every=1",
    ],
    tmp_path / "c",
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert (
    "teacher: the state after step 1 is not finite" in out.stderr
    and "nothing was saved, no checkpoint was written yet" in out.stderr
  ), out.stderr[-1000:]
  ckpt = tmp_path / "w" / "checkpoints" / "teacher"
  assert not [p for p in ckpt.iterdir() if p.name.isdigit()]


def test_summarize_folds_mean_and_std(tmp_path):
  from agt_jax.train import summarize_folds

  fake = [
    {
      "dataset": "odir5k-synth (synthetic)",
      "synthetic": True,
      "fold": k,
      "teacher": {
        "odir": {"kappa": 0.1 * k, "f1": 0.5, "auc": 0.8, "final": 0.4},
        "macro_auc": 0.7,
      },
    }
    for k in range(3)
  ]
  path = summarize_folds(fake, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["models"]["teacher"]["kappa"]["mean"] == pytest.approx(0.1)
  assert summary["models"]["teacher"]["kappa"]["std"] == pytest.approx(
    np.std([0.0, 0.1, 0.2])
  )
  text = path.read_text()
  assert "3 folds" in text and "0.100 ± 0.082" in text and "synthetic" in text


def test_logged_interval_means_are_exact(tmp_path, monkeypatch):
  """``loss_mean`` over a log interval of 3 equals the mean of the three
  per-step losses of an identical run that logs every step."""
  from agt_jax import config as config_lib
  from agt_jax.train import train_and_evaluate
  from agt_jax.train.report import read_metrics

  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  base = dict(
    grouping="single",
    reweight="none",
    student=False,
    warmup_steps=0,
    teacher_steps=6,
    ckpt_every=6,
  )
  losses = {}
  for every in (1, 3):
    wd = tmp_path / f"every{every}"
    train_and_evaluate(
      config_lib.get_config("smoke", log_every=every, **base), wd
    )
    losses[every] = [
      m
      for m in read_metrics(wd / "metrics.jsonl")
      if m.get("phase") == "teacher"
    ]
  per_step = [m["loss"] for m in losses[1]]
  np.testing.assert_allclose(
    [m["loss_mean"] for m in losses[1]], per_step, rtol=1e-6
  )
  np.testing.assert_allclose(
    [m["loss_mean"] for m in losses[3]],
    [np.mean(per_step[:3]), np.mean(per_step[3:])],
    rtol=1e-5,
  )


def test_class_subset_runs_end_to_end(tmp_path):
  """``--classes D,G,A`` (paper 001's task): three label columns, every
  image kept, the N/O pair dropped from the grouping."""
  wd = tmp_path / "dga"
  out = cli(
    [
      "--preset",
      "smoke",
      "--classes",
      "D,G,A",
      "--set",
      "n_groups=2",
      "--set",
      "student_steps=2",
      "--workdir",
      str(wd),
    ],
    tmp_path / "c",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads((wd / "results.json").read_text())
  assert r["class_names"] == ["D", "G", "A"]
  assert r["config"]["classes"] == ["D", "G", "A"]
  assert sorted(c for g in r["groups"]["names"] for c in g) == ["A", "D", "G"]
  assert set(r["teacher"]["per_class"]) == {"D", "G", "A"}
  assert len(r["train_class_counts"]) == 3
