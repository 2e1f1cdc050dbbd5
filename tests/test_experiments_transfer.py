"""experiments.transfer_odir (paper 001) end to end at smoke size, and its
staging: every task after Task 1.2 starts from 1.2's selected model; the
stand-in pretraining sees only the other classes."""

import json

from tests.test_experiments import cache, rows, run_cli  # noqa: F401


def test_transfer_odir_smoke_under_a_minute_then_skips(tmp_path, cache):
  import time

  wd = tmp_path / "transfer"
  args = ["--preset", "smoke", "--workdir", str(wd)]
  t0 = time.perf_counter()
  out = run_cli("experiments.transfer_odir", args, cache)
  seconds = time.perf_counter() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  got = rows(wd)
  assert [r["task"] for r in got] == ["frozen", "full", "mha", "gradcam"]
  assert all(r["model"] == "transfer" for r in got)
  assert "## Macro F" in out.stdout and "| Task 3 MHA |" in out.stdout
  configs = {
    t: json.loads((wd / t / "fold0" / "config.json").read_text())
    for t in ("frozen", "full", "mha", "gradcam")
  }
  assert (
    configs["frozen"]["freeze_encoder"] and configs["frozen"]["init"] is None
  )
  best = str(wd / "frozen" / "fold0" / "checkpoints" / "transfer_best")
  for t in ("full", "mha", "gradcam"):
    assert configs[t]["init"] == best and not configs[t]["freeze_encoder"]
  assert configs["mha"]["attention"] == "mha"
  assert configs["gradcam"]["cam_entropy"] == 0.01
  for c in configs.values():
    assert c["classes"] == ["D", "G", "A"]
    assert c["select_metric"] == "macro_f1" and c["augment"] == "flip_rotate"
  res = json.loads((wd / "full" / "fold0" / "results.json").read_text())
  assert res["class_names"] == ["D", "G", "A"]
  assert (
    res["selection"]["transfer"]["select"] == "best validation macro F1 at 0.5"
  )
  report = (wd / "report.md").read_text()
  assert "synthetic" in report.lower()
  for label in (
    "Task 1.2 frozen backbone",
    "Task 1.3 all layers",
    "Task 3 MHA",
    "Task 4c Grad-CAM entropy",
  ):
    assert f"| {label} | D |" in report, label
  assert "| task | macro F (0.5) | macro F (val-tuned) | macro AUC |" in report
  assert (wd / "macro_f.png").stat().st_size > 1000
  assert (wd / "gradcam.png").stat().st_size > 1000
  print(f"experiments.transfer_odir --preset smoke: {seconds:.1f} s")
  again = run_cli("experiments.transfer_odir", args, cache)
  assert again.returncode == 0 and again.stdout.count("finished, skipped") == 4


def test_stand_in_pretraining_uses_the_other_classes(tmp_path, cache):
  wd = tmp_path / "pre"
  out = run_cli(
    "experiments.transfer_odir",
    [
      "--preset",
      "smoke",
      "--workdir",
      str(wd),
      "--tasks",
      "frozen",
      "--set",
      "teacher_steps=2",
      "--classes",
      "G,A",
      "--pretrain-steps",
      "2",
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  pre = json.loads((wd / "pretrain" / "fold0" / "config.json").read_text())
  assert pre["classes"] == ["N", "D", "C", "H", "M", "O"]
  assert pre["head"] == "linear" and not pre["freeze_encoder"]
  assert pre["teacher_steps"] == 2
  frozen = json.loads((wd / "frozen" / "fold0" / "config.json").read_text())
  assert frozen["classes"] == ["G", "A"]
  assert frozen["init"] == str(
    wd / "pretrain" / "fold0" / "checkpoints" / "transfer_best"
  )
  # Same training images and test fold: the pretraining never saw a test
  # image.
  fa = json.loads((wd / "pretrain" / "fold0" / "results.json").read_text())
  fb = json.loads((wd / "frozen" / "fold0" / "results.json").read_text())
  assert fa["test_images"] == fb["test_images"]
  assert fa["train_images"] == fb["train_images"]
  assert "stand-in, not ImageNet" in (wd / "report.md").read_text()
  bad = run_cli(
    "experiments.transfer_odir",
    [
      "--preset",
      "smoke",
      "--workdir",
      str(tmp_path / "bad"),
      "--classes",
      "D,Q",
    ],
    cache,
  )
  assert bad.returncode == 2 and "'Q'" in bad.stderr
