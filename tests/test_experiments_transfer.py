"""experiments.transfer_odir (paper 001) end to end at smoke size, and its
staging: every task after Task 1.2 starts from 1.2's selected model; the
stand-in pretraining sees only the other classes."""

import json

import numpy as np

from tests.cli import rows, run_cli


def test_transfer_odir_smoke_under_a_minute_then_skips(
  tmp_path, cache, monkeypatch
):
  import time

  wd = tmp_path / "transfer"
  args = ["--preset", "smoke", "--workdir", str(wd)]
  t0 = time.perf_counter()
  out = run_cli("experiments.transfer_odir", args, cache)
  seconds = time.perf_counter() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  got = rows(wd)
  tasks = ["frozen", "full", "mha", "vae", "gradcam"]
  # Task 4a runs last: its VAE is fitted when it is reached.
  assert [r["task"] for r in got] == ["frozen", "full", "mha", "gradcam", "vae"]
  assert all(r["model"] == "transfer" for r in got)
  assert "## Macro F" in out.stdout and "| Task 3 MHA |" in out.stdout
  configs = {
    t: json.loads((wd / t / "fold0" / "config.json").read_text()) for t in tasks
  }
  assert (
    configs["frozen"]["freeze_encoder"] and configs["frozen"]["init"] is None
  )
  best = str(wd / "frozen" / "fold0" / "checkpoints" / "transfer_best")
  for t in ("full", "mha", "vae", "gradcam"):
    assert configs[t]["init"] == best and not configs[t]["freeze_encoder"]
  assert configs["mha"]["attention"] == "mha"
  # Task 4a: MHA on the training split plus the VAE's balancing images
  # (drawn from that split alone); validation and test untouched.
  vae_cfg, mha_cfg = configs["vae"], configs["mha"]
  samples = wd / "vae_images" / "fold0" / "samples.npz"
  assert vae_cfg["extra_train"] == str(samples.absolute())
  assert {**vae_cfg, "extra_train": None} == mha_cfg
  summary = json.loads((samples.parent / "summary.json").read_text())
  assert len(set(summary["counts_after"])) == 1  # balanced
  with np.load(samples) as z:
    assert z["images"].shape == (summary["generated_images"], 40, 40, 3)
    assert z["images"].dtype == np.uint8
    stored = dict(z)
  # The sheet's real tiles are stored beside the samples: training images
  # of the label sets drawn most.
  assert stored["real_images"].shape[1:] == (40, 40, 3)
  assert 0 < len(stored["real_images"]) == len(stored["real_labels"])
  drawn = {tuple(r) for r in stored["labels"].tolist()}
  assert {tuple(r) for r in stored["real_labels"].tolist()} <= drawn
  res_vae = json.loads((wd / "vae" / "fold0" / "results.json").read_text())
  res_mha = json.loads((wd / "mha" / "fold0" / "results.json").read_text())
  assert (
    res_vae["train_images"]
    == res_mha["train_images"] + summary["generated_images"]
  )
  assert res_vae["test_images"] == res_mha["test_images"]
  assert res_vae["validation_images"] == res_mha["validation_images"]
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
    "Task 4a VAE + MHA",
    "Task 4c Grad-CAM entropy",
  ):
    assert f"| {label} | D |" in report, label
  assert "## VAE augmentation (Task 4a)" in report
  assert (wd / "vae_samples.png").stat().st_size > 1000
  assert "| task | macro F (0.5) | macro F (val-tuned) | macro AUC |" in report
  assert (wd / "macro_f.png").stat().st_size > 1000
  assert (wd / "gradcam.png").stat().st_size > 1000
  print(f"experiments.transfer_odir --preset smoke: {seconds:.1f} s")
  # Samples written before the real tiles were stored: the sheet finds them
  # in the fold on the rerun.
  legacy = {k: v for k, v in stored.items() if not k.startswith("real_")}
  np.savez_compressed(samples.with_name("legacy.npz"), **legacy)
  samples.with_name("legacy.npz").replace(samples)
  (wd / "vae_samples.png").unlink()
  again = run_cli("experiments.transfer_odir", args, cache)
  assert again.returncode == 0 and again.stdout.count("finished, skipped") == 5
  assert "[vae]" not in again.stdout  # the generated images are reused
  assert (wd / "vae_samples.png").stat().st_size > 1000
  _report_over_merged_records(wd, tasks, cache, monkeypatch)


def _report_over_merged_records(wd, tasks, cache, monkeypatch):
  """Records merged from another workdir keep their results but not their
  checkpoints or drawn images: the report's pictures come from the first fold
  that has them, and say which."""
  import shutil

  from experiments import transfer_odir

  monkeypatch.setenv("AGT_JAX_CACHE", str(cache))
  lines = (wd / "results.jsonl").read_text().splitlines()
  moved = [json.dumps({**json.loads(l), "fold": 1}) for l in lines]
  (wd / "results.jsonl").write_text("\n".join(lines + moved) + "\n")
  for d in [wd / t for t in tasks] + [wd / "vae_images"]:
    shutil.copytree(d / "fold0", d / "fold1")
  for t in tasks:  # fold 0 as merged from elsewhere
    shutil.rmtree(wd / t / "fold0" / "checkpoints")
  (wd / "vae_images" / "fold0" / "samples.npz").unlink()
  for png in ("vae_samples.png", "gradcam.png"):
    (wd / png).unlink()
  report = transfer_odir.write_report(wd, tasks, stand_in=False).read_text()
  assert "folds [0, 1]" in report
  assert "`vae_samples.png` (fold 1)" in report
  assert "`gradcam.png`: Grad-CAM at the last stage of `mha` (fold 1)" in report
  for png in ("vae_samples.png", "gradcam.png"):
    assert (wd / png).stat().st_size > 1000


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
