"""Bad input, before any compute: the whole config, the workdir, the data
flag of every entry point, the device mesh, the experiment harness's record
of finished runs. Each gets one ``error:`` line and exit status 2, and a run
that fails this way leaves nothing that blocks a corrected rerun.
"""

import contextlib
import dataclasses
import io
import json
import os

import numpy as np
import pytest

from agt_jax import config as config_lib
from agt_jax.errors import ConfigError, ConfigMismatchError, InputError
from agt_jax.train import train_and_evaluate
from tests import fixtures
from tests.cli import cli
from tests.test_data_verify import broken_odir

# A fold that trains in a few seconds in-process.
TINY = dict(
  grouping="single",
  warmup_steps=0,
  teacher_steps=2,
  student=False,
  ckpt_every=2,
  eval_every=2,
  max_images=60,
)


def tiny(**kw):
  return config_lib.get_config("smoke", **{**TINY, **kw})


# -- the workdir -------------------------------------------------------------


def test_failed_cli_run_writes_nothing(tmp_path):
  wd = tmp_path / "w"
  for args, says in (
    (["--data", f"odir5k:{tmp_path}/none"], "ODIR-5K: no dataset found"),
    (["--fold", "7"], "fold=7 is out of range"),
    (["--set", "loss=foo"], "error: loss='foo' is not one of"),
    (["--set", "crop=64"], "crop=64 is larger than image_size=40"),
  ):
    out = cli(
      ["--preset", "smoke", "--workdir", str(wd), *args], tmp_path / "c"
    )
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert says in out.stderr and "Traceback" not in out.stderr, args
    # Rejected before any compute, and nothing written.
    assert "warmup" not in out.stderr, args
    assert not (wd / "config.json").exists(), args


def test_batch_that_does_not_split_over_devices_names_sizes(n_devices):
  from agt_jax.runtime import make_mesh

  assert n_devices == 8
  with pytest.raises(
    ConfigError,
    match=r"batch_size=12 does not split over "
    r"the 8 devices; use a multiple of 8 \(e\.g\. --set "
    r"batch_size=8 or 16\)",
  ):
    make_mesh(12)
  with pytest.raises(ConfigError, match="eval_batch_size=20"):
    make_mesh(16, 20)
  assert make_mesh(16, 64).devices.size == 8


def test_workdir_of_a_run_that_never_checkpointed_is_reused(
  tmp_path, monkeypatch
):
  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  wd = tmp_path / "w"
  # What a run killed in its warm-up leaves: config, groups, metrics, no
  # checkpoint, and another config than the corrected rerun.
  wd.mkdir()
  (wd / "config.json").write_text(tiny(alpha=0.25).to_json())
  (wd / "groups.json").write_text("{}")
  (wd / "metrics.jsonl").write_text('{"phase": "warmup", "step": 1}\n')
  res = train_and_evaluate(tiny(), wd)
  assert res["config"]["alpha"] == 0.5
  assert config_lib.from_json((wd / "config.json").read_text()) == tiny()
  phases = {
    json.loads(l)["phase"]
    for l in (wd / "metrics.jsonl").read_text().splitlines()
  }
  assert "warmup" not in phases
  # With checkpoints, it is a run: a rerun without --resume is refused.
  with pytest.raises(ConfigMismatchError, match="pass --resume"):
    train_and_evaluate(tiny(), wd)
  with pytest.raises(
    ConfigMismatchError,
    match=r"config differs in " r"\{'alpha': \(0\.5, 0\.25\)\}",
  ):
    train_and_evaluate(tiny(alpha=0.25), wd, resume=True)


def test_empty_split_and_bad_groups_fail_before_compute(tmp_path, monkeypatch):
  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  # 6 images of 3 patients cannot fill 5 folds.
  with pytest.raises(InputError, match="3 patients cannot make 5 folds"):
    train_and_evaluate(tiny(max_images=6, fold=4), tmp_path / "a")
  # An official split with no training image.
  from agt_jax.data import folds, odir

  t = odir.packaged_label_table().take(np.arange(6))
  t = dataclasses.replace(t, splits=np.array(["test"] * 6))
  with pytest.raises(
    InputError,
    match=r"test fold 0 of 5 holds 6 of 6 "
    r"images \(3 patients\), so its training split is "
    "empty",
  ):
    folds.fold_indices(t, 0, mode="official")
  with pytest.raises(InputError, match=r"unknown classes \['X'\]"):
    train_and_evaluate(
      tiny(grouping="relational", together=(("N", "X"),), warmup_steps=3),
      tmp_path / "b",
    )
  for wd in ("a", "b"):
    assert not (tmp_path / wd / "config.json").exists()


def test_a_group_list_missing_a_class_is_named():
  from agt_jax.data import samplers

  names = list("NDGCAHMO")
  with pytest.raises(
    InputError,
    match=r"classes \['G', 'O'\] are in no "
    "group; groups must cover all 8 classes",
  ):
    samplers.validate_groups(((0, 1), (3, 4, 5, 6)), 8, names)
  labels = np.eye(8, dtype=np.uint8)[np.arange(40) % 8]
  with pytest.raises(InputError, match="are in no group"):
    samplers.group_mixed_batches(
      labels, ((0, 1), (3, 4, 5, 6)), batch_size=8, alpha=0.5, seed=0
    )
  from agt_jax import grouping

  with pytest.raises(InputError, match=r"does not have"):
    grouping.paper_groups("odir", [f"c{i}" for i in range(29)])


# -- the data flag -------------------------------------------------------------

ENTRY_POINTS = {
  "odir": ("main", "odir5k"),
  "odir_table1": ("run", "odir5k"),
  "odir_ablation": ("run", "odir5k"),
  "sweeps": ("run", "odir5k"),
  "gradient_dynamics": ("run", "odir5k"),
  "rfmid": ("run", "rfmid"),
  "cifar_forgetting": ("run", "cifar100"),
}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_takes_data_and_names_it_in_errors(
  module, tmp_path, monkeypatch
):
  import importlib

  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  fn_name, name = ENTRY_POINTS[module]
  fn = getattr(importlib.import_module(f"experiments.{module}"), fn_name)
  extra = (
    ["--folds", "0"]
    if module in ("odir_table1", "odir_ablation", "sweeps")
    else []
  )
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = fn(
      [
        "--data",
        f"{name}:{tmp_path}/none",
        "--preset",
        "smoke",
        "--workdir",
        str(tmp_path / "w"),
        *extra,
      ]
    )
  assert code == 2, err.getvalue()[-2000:]
  text = err.getvalue()
  assert text.startswith("error: ") and str(tmp_path / "none") in text
  # The message names the flag this very command takes.
  assert f"--data {name}:/data/" in text, text
  with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
    fn(["--data-dir", str(tmp_path)])


def test_data_spec_errors():
  from agt_jax.data.registry import parse_data_spec

  assert parse_data_spec("odir5k:/d") == {"dataset": "odir5k", "data_dir": "/d"}
  assert parse_data_spec("cifar100:/c")["dataset"] == "cifar100-lt-100"
  for bad in ("imagenet", "odir5k", "odir5k-synth:/x", "rfmid:"):
    with pytest.raises(ConfigError, match="--data: expected"):
      parse_data_spec(bad)


def test_bad_image_files_are_one_error_line_in_the_cli(tmp_path):
  root, bad = broken_odir(tmp_path / "odir")
  out = cli(
    [
      "--preset",
      "smoke",
      "--data",
      f"odir5k:{root}",
      "--workdir",
      str(tmp_path / "w"),
    ],
    tmp_path / "c",
  )
  assert out.returncode == 2 and "Traceback" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1
  assert "3 of 6 image files" in lines[0]
  assert all(str(p) in lines[0] for p in bad.values())


def _drop_age_column(path):
  import openpyxl

  wb = openpyxl.load_workbook(path)
  wb.active.delete_cols(2)
  wb.save(path)


def _label_two(path):
  import openpyxl

  wb = openpyxl.load_workbook(path)
  wb.active.cell(row=3, column=9).value = 2  # column "D" of patient 305
  wb.save(path)


@pytest.mark.parametrize(
  "damage,says",
  [
    (_drop_age_column, r"V2\.xlsx: .*missing \['Patient Age'\]"),
    (_label_two, r"V2\.xlsx: row 3, column 'D': label value 2"),
  ],
)
def test_bad_label_files_are_one_error_line(
  damage, says, tmp_path, monkeypatch
):
  import re

  from experiments import odir as odir_cli

  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  root = fixtures.make_odir_challenge(tmp_path / "odir")
  damage(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx")
  err = io.StringIO()
  with (
    contextlib.redirect_stderr(err),
    contextlib.redirect_stdout(io.StringIO()),
  ):
    code = odir_cli.main(
      [
        "--preset",
        "smoke",
        "--data",
        f"odir5k:{root}",
        "--workdir",
        str(tmp_path / "w"),
      ]
    )
  assert code == 2
  lines = err.getvalue().strip().splitlines()
  assert len(lines) == 1 and re.search(says, lines[0]), lines
  assert not (tmp_path / "w" / "config.json").exists()


def test_skipped_images_are_written_to_the_workdir(tmp_path):
  from agt_jax.data import registry
  from agt_jax.train import loop
  from agt_jax.train import workdir as workdir_lib

  root, bad = broken_odir(tmp_path / "odir")
  table, source = registry.load_dataset(
    "odir5k",
    data_dir=root,
    cache_dir=tmp_path / "c",
    progress=False,
    skip_bad_images=True,
  )
  data = loop.FoldData(
    table, source, np.arange(2), np.arange(0), np.arange(2, 3), {"fold": 0}
  )
  workdir_lib.claim(tiny(), tmp_path / "w", False, data)
  listed = json.loads((tmp_path / "w" / "skipped_images.json").read_text())
  assert sorted(s["path"] for s in listed) == sorted(map(str, bad.values()))


# -- the experiment harness ------------------------------------------------------


def test_harness_reruns_unfinished_and_refuses_another_config(
  tmp_path, monkeypatch
):
  from agt_jax import train as train_pkg
  from agt_jax.train.outputs import write_outputs
  from experiments import _harness as h

  calls = []

  def fake_train(cfg, wd, resume=False):
    calls.append((cfg.fold, resume))
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.json").write_text(cfg.to_json())
    results = {
      "config": json.loads(cfg.to_json()),
      "class_names": ["a"],
      "dataset": "d",
      "synthetic": False,
      "fold": cfg.fold,
      "teacher": {
        "odir": dict(kappa=0.1, f1=0.2, auc=0.3, final=0.2),
        "macro_auc": 0.3,
      },
    }
    monkeypatch.setattr(
      "agt_jax.train.report.write_report", lambda *a, **k: None
    )
    write_outputs(
      wd, results, {"teacher": np.zeros((1, 1))}, np.zeros((1, 1)), np.arange(1)
    )
    return results

  monkeypatch.setattr(train_pkg, "train_and_evaluate", fake_train)
  runs = [h.Run("r", {}, "teacher")]
  grid = lambda base: h.run_grid(
    runs, preset="smoke", folds=[0], base=base, workdir=tmp_path
  )
  grid({})
  assert calls == [(0, False)]
  grid({})  # finished: skipped
  assert calls == [(0, False)]
  # A results.json without its done.json marker: stopped while writing.
  (tmp_path / "r" / "fold0" / "done.json").unlink()
  grid({})
  assert calls == [(0, False), (0, True)]
  with pytest.raises(
    ConfigMismatchError,
    match=r"finished with another " r"config \(differs in \['alpha'\]\)",
  ):
    grid({"alpha": 0.25})
  # A record written before a config field existed: the field counts as
  # the value that behaves as the code did then (prior_correction none),
  # and only as that.
  done_path = tmp_path / "r" / "fold0" / "done.json"
  done = json.loads(done_path.read_text())
  del done["config"]["prior_correction"]
  done_path.write_text(json.dumps(done))
  with pytest.raises(ConfigMismatchError, match="prior_correction"):
    grid({})  # today's default: loss
  grid({"prior_correction": "none"})  # what the record ran with
  assert calls == [(0, False), (0, True)]


def test_result_files_are_atomic_and_the_marker_comes_last(
  tmp_path, monkeypatch
):
  from agt_jax.train import outputs

  results = {
    "config": {"a": 1},
    "class_names": ["a"],
    "dataset": "d",
    "fold": 0,
  }

  def crash(*a, **k):
    raise OSError("disk gone while writing report.md")

  monkeypatch.setattr("agt_jax.train.report.plot_curves", crash)
  with pytest.raises(OSError):
    outputs.write_outputs(
      tmp_path,
      results,
      {"teacher": np.zeros((1, 1))},
      np.zeros((1, 1)),
      np.arange(1),
    )
  assert json.loads((tmp_path / "results.json").read_text()) == results
  assert not (tmp_path / "done.json").exists()
  assert outputs.read_done(tmp_path) is None
  assert not list(tmp_path.glob(".*tmp*"))


def test_config_validation_covers_ranges_and_combinations():
  for kw, says in (
    (dict(model="vit"), "model='vit' is not one of"),
    (dict(dataset="odir5k"), "pass --data odir5k:PATH"),
    (dict(crop=64, image_size=40), "crop=64 is larger"),
    (dict(batch_size=0), "batch_size must be > 0"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(teacher_steps=-1), "teacher_steps must be >= 0"),
    (dict(init="/no/such/weights.pth"), "no such file"),
  ):
    with pytest.raises(ConfigError, match=says):
      config_lib.validate(config_lib.get_config("smoke", **kw))


def test_a_second_live_run_on_a_workdir_is_refused_and_a_killed_one_leaves_no_lock(
  tmp_path,
):
  import signal
  import subprocess
  import sys
  import textwrap

  from agt_jax.errors import WorkdirBusyError
  from agt_jax.train import workdir as workdir_lib

  wd = tmp_path / "w"
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      textwrap.dedent(f"""
      import sys, time
      from agt_jax.train import workdir
      with workdir.lock({str(wd)!r}):
        print("held", flush=True)
        time.sleep(120)
      """),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError) as e:
      with workdir_lib.lock(wd):
        pass
    msg = str(e.value)
    assert f"pid {holder.pid}" in msg and str(wd) in msg
    assert "\n" not in msg
    # Through the library's entry point too, before anything is written.
    with pytest.raises(WorkdirBusyError):
      train_and_evaluate(tiny(), wd)
    assert not (wd / "config.json").exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The killed holder left the file but no lock.
  assert (wd / ".lock").exists()
  with workdir_lib.lock(wd):
    assert f"pid {os.getpid()}" in (wd / ".lock").read_text()
