"""The CLI killed, interrupted and terminated, on 1 and on 8 devices.

Every interrupted run is resumed and must end bit-identical to an
uninterrupted one: the same final train states, selections and test
metrics, and a ``metrics.jsonl`` with each step once. SIGKILL points are
placed exactly by a driver that wraps the CLI and kills its own process
after a given step is logged, or right after an async checkpoint save is
issued (while it is being written).
"""

import json
import os
import pathlib
import shlex
import signal
import sys
import time

import numpy as np
import pytest

from tests import processes
from tests.cli import ROOT, env
from tests.test_experiments_odir import _final_state

SETS = [
  "--set",
  "teacher_steps=10",
  "--set",
  "student_steps=6",
  "--set",
  "ckpt_every=4",
  "--set",
  "log_every=1",
  "--set",
  "eval_every=3",
  "--set",
  "reweight=feedback",
]
BASE = ["--fold", "0", "--preset", "smoke", *SETS]
EIGHT = "--xla_force_host_platform_device_count=8"

DRIVER = """
import os, signal, sys
from agt_jax import runtime
from agt_jax.train import checkpoint
kind, where, step = os.environ["AGT_TEST_KILL"].split(":")
step = int(step)
def die():
  os.kill(os.getpid(), signal.SIGKILL)
if kind == "step":    # after the step's metrics are logged
  write = runtime.MetricWriter.write
  def patched(self, rec):
    write(self, rec)
    if rec.get("phase") == where and rec.get("step") == step:
      die()
  runtime.MetricWriter.write = patched
elif kind == "save":   # an async save issued, not yet finished
  save = checkpoint.Checkpoints.save
  def patched(self, s, *a, **k):
    save(self, s, *a, **k)
    if self.directory.name == where and s == step:
      die()
  checkpoint.Checkpoints.save = patched
else:                 # "finalise": SIGTERM inside orbax's wait as the
  import orbax.checkpoint as ocp  # phase closes its checkpoints
  wait = ocp.CheckpointManager.wait_until_finished
  def patched(self):
    closing = sys._getframe(1).f_code.co_name == "close"
    if closing and os.path.basename(str(self.directory)) == where:
      os.kill(os.getpid(), signal.SIGTERM)
    return wait(self)
  ocp.CheckpointManager.wait_until_finished = patched
import importlib
module = os.environ.get("AGT_TEST_MODULE", "experiments.odir")
module = importlib.import_module(module)
raise SystemExit((getattr(module, "main", None) or module.run)(sys.argv[1:]))
"""


def run(args, cache, devices=1, module="experiments.odir"):
  return processes.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env(cache, devices),
    watch=processes.metrics_of(args),
  )


def driven(point, args, cache, devices=1, module="experiments.odir", **extra):
  return processes.run(
    [sys.executable, "-c", DRIVER, *args],
    cwd=ROOT,
    env=env(
      cache, devices, AGT_TEST_KILL=point, AGT_TEST_MODULE=module, **extra
    ),
    watch=processes.metrics_of(args),
    fork=True,  # the driver patches the CLI's modules, then runs it
  )


def killed_at(point, args, cache, devices=1, **extra):
  out = driven(point, args, cache, devices, **extra)
  assert out.returncode == -signal.SIGKILL, (point, out.stderr[-2000:])


def _alive_with(marker: str) -> list[int]:
  """PIDs of live processes whose environment holds ``AGT_TEST_RUN=marker``
  (the run's own process and whatever it started)."""
  want = f"AGT_TEST_RUN={marker}".encode()
  pids = []
  for d in pathlib.Path("/proc").iterdir():
    if not d.name.isdigit():
      continue
    try:
      if want in (d / "environ").read_bytes().split(b"\0"):
        state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state != "Z":  # a zombie has exited; its parent reaps it
          pids.append(int(d.name))
    except OSError:  # gone meanwhile, or not ours to read
      continue
  return pids


def metric_keys(wd):
  return [
    (r["phase"], r["step"])
    for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())
  ]


def assert_same_run(ref, wd):
  """Bit-identical end states, selections and metrics; no duplicated
  history."""
  import jax

  for phase in ("teacher", "student"):
    a, sa = _final_state(ref / "checkpoints" / phase)
    b, sb = _final_state(wd / "checkpoints" / phase)
    assert sa == sb
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra = json.loads((ref / "results.json").read_text())
  rb = json.loads((wd / "results.json").read_text())
  assert ra["groups"]["groups"] == rb["groups"]["groups"]
  assert ra["selection"] == rb["selection"]
  for model in ("teacher", "student"):
    assert ra[model]["odir"] == rb[model]["odir"]
  keys = metric_keys(wd)
  assert len(keys) == len(set(keys)), "a step is logged twice"
  assert sorted(keys, key=str) == sorted(metric_keys(ref), key=str)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  out = run([*BASE, "--workdir", str(root / "ref")], root / "cache")
  assert out.returncode == 0, out.stderr[-3000:]
  return root


def test_sigkill_at_three_points_per_phase_and_during_saves(reference):
  """Killed eleven times, at every kind of point, resumed each time."""
  root, wd = reference, reference / "killed"
  points = [
    "step:warmup:1",
    "step:warmup:3",
    "step:warmup:4",
    "step:teacher:1",  # before the first teacher checkpoint
    "step:teacher:6",  # between checkpoints 4 and 8
    "save:teacher:8",  # while checkpoint 8 is written
    "step:teacher:10",  # last step, before its save
    "step:student:2",
    "save:student:4",
    "step:student:5",
    "save:student:6",
  ]  # the final save
  for k, point in enumerate(points):
    args = [*BASE, "--workdir", str(wd)] + (["--resume"] if k else [])
    killed_at(point, args, root / "cache")
    partial = [p for p in (wd / "checkpoints").glob("*/*") if "tmp" in p.name]
    # Whatever the kill left half-written is never taken for a checkpoint.
    assert all(not p.name.isdigit() for p in partial)
  out = run([*BASE, "--workdir", str(wd), "--resume"], root / "cache")
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(root / "ref", wd)


def _wait_for(wd, phase, step, proc):
  path = wd / "metrics.jsonl"
  processes.wait_until(
    lambda: path.exists()
    and any(k[0] == phase and k[1] >= step for k in metric_keys_safe(path)),
    proc,
    watch=[path],
  )


def metric_keys_safe(path):
  keys = []
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    keys.append((r.get("phase"), r.get("step")))
  return keys


@pytest.mark.parametrize(
  "sig,phase,code",
  [(signal.SIGINT, "teacher", 130), (signal.SIGTERM, "student", 143)],
)
def test_signal_checkpoints_prints_one_line_and_resumes(
  reference, sig, phase, code
):
  root, wd = reference, reference / f"sig{int(sig)}"
  proc = processes.Watched(
    [sys.executable, "-m", "experiments.odir", *BASE, "--workdir", str(wd)],
    cwd=ROOT,
    env=env(root / "cache"),
  )
  _wait_for(wd, phase, 2, proc)
  proc.send_signal(sig)
  processes.wait([proc], watch=[wd / "metrics.jsonl"])
  err = proc.stderr()
  assert proc.returncode == code, err[-2000:]
  assert "Traceback" not in err and "Exception" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  name = signal.Signals(sig).name
  assert last.startswith(f"interrupted ({name}) at step "), last
  assert f"of the {phase} (checkpoint saved in" in last
  step = int(last.split(" at step ")[1].split()[0])
  assert (wd / "checkpoints" / phase / str(step)).is_dir()
  # The printed command, run as printed, finishes the run.
  command = last.split("resume with: ")[1]
  argv = shlex.split(command)
  assert argv[:3] == ["python", "-m", "experiments.odir"]
  assert argv[-1] == "--resume"
  out = processes.run(
    [sys.executable, *argv[1:]],
    cwd=ROOT,
    env=env(root / "cache"),
    watch=[wd / "metrics.jsonl"],
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(root / "ref", wd)


@pytest.fixture(scope="module")
def eight(reference):
  out = run(
    [*BASE, "--workdir", str(reference / "ref8")],
    reference / "cache",
    devices=8,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return reference / "ref8"


def test_eight_devices_match_one_device(reference, eight):
  """The same run data-parallel over 8 devices: identical groups and, up
  to float reduction order, the same training and test metrics."""
  ref = reference / "ref"
  ra = json.loads((ref / "results.json").read_text())
  rb = json.loads((eight / "results.json").read_text())
  assert ra["groups"]["groups"] == rb["groups"]["groups"]
  assert ra["device"] == rb["device"]

  def losses(wd):
    return [
      r["loss"]
      for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())
      if r["phase"] in ("warmup", "teacher", "student")
    ]

  # Tolerance: float32 sums in a different order over a few steps.
  np.testing.assert_allclose(losses(eight), losses(ref), rtol=1e-4)
  for model in ("teacher", "student"):
    for m in ("auc", "kappa", "f1", "final"):
      assert abs(ra[model]["odir"][m] - rb[model]["odir"][m]) <= 0.02, (
        model,
        m,
      )


def test_eight_devices_sigkill_and_resume_is_bit_identical(reference, eight):
  wd = reference / "killed8"
  killed_at(
    "step:teacher:6",
    [*BASE, "--workdir", str(wd)],
    reference / "cache",
    devices=8,
  )
  out = run(
    [*BASE, "--workdir", str(wd), "--resume"], reference / "cache", devices=8
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(eight, wd)


# Known defect (docs/reliability.md): after an interrupt with Grain worker
# processes, Python's resource tracker warns at exit about the shared-memory
# blocks of batches the workers had queued and nobody read. Only those two
# lines are set aside; anything else after the one line fails.
_TRACKER = ("resource_tracker: There appear to be", "warnings.warn('resource_")


def _one_line(err, sig=signal.SIGTERM):
  assert "Traceback" not in err and "Exception" not in err, err[-3000:]
  assert "failed" not in err.lower(), err[-3000:]
  lines = [
    l for l in err.strip().splitlines() if not any(t in l for t in _TRACKER)
  ]
  last = lines[-1]
  assert last.startswith(f"interrupted ({signal.Signals(sig).name}) "), last
  return last


def test_sigterm_while_orbax_finalises_a_save(reference):
  """SIGTERM inside orbax's wait as the teacher closes its checkpoints: the
  save finishes, the run stops with one line naming that stage (no orbax
  thread errors, no traceback) and the resume ends bit-identical."""
  root, wd = reference, reference / "finalise"
  out = driven(
    "finalise:teacher:0", [*BASE, "--workdir", str(wd)], root / "cache"
  )
  assert out.returncode == 143, out.stderr[-3000:]
  last = _one_line(out.stderr)
  assert "at the end of the teacher (all 10 steps checkpointed" in last, last
  assert (wd / "checkpoints" / "teacher" / "10").is_dir()
  out = run([*BASE, "--workdir", str(wd), "--resume"], root / "cache")
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(root / "ref", wd)


def test_workers_sigkill_and_sigterm_resume_bit_identical(reference):
  """With 2 decode worker processes: killed during the teacher, then
  SIGTERM'd during the student, resumed each time; the run equals the
  in-process reference (a batch depends on (seed, step, slot) alone)."""
  root, wd = reference, reference / "workers"
  args = [*BASE, "--set", "workers=2", "--workdir", str(wd)]
  marker = f"workers-{os.getpid()}-{time.time_ns()}"
  killed_at("step:teacher:6", args, root / "cache", AGT_TEST_RUN=marker)
  # Its two decode workers do not outlive it (pipeline.exit_with_parent
  # checks the parent once a second); without that they lived on forever.
  deadline = time.monotonic() + 60
  while _alive_with(marker) and time.monotonic() < deadline:
    time.sleep(0.5)
  assert not _alive_with(marker), "decode workers outlived a SIGKILLed run"
  proc = processes.Watched(
    [sys.executable, "-m", "experiments.odir", *args, "--resume"],
    cwd=ROOT,
    env=env(root / "cache"),
  )
  _wait_for(wd, "student", 2, proc)
  proc.send_signal(signal.SIGTERM)
  processes.wait([proc], watch=[wd / "metrics.jsonl"])
  assert proc.returncode == 143, proc.stderr()[-3000:]
  last = _one_line(proc.stderr())
  # Mid-phase, or (on a fast machine) after the student's last step.
  assert (
    "of the student (checkpoint saved in" in last
    or "at the end of the student (all 6 steps checkpointed" in last
  ), last
  proc.close()
  out = run([*args, "--resume"], root / "cache")
  assert out.returncode == 0, out.stderr[-3000:]
  ra = json.loads((root / "ref" / "config.json").read_text())
  rb = json.loads((wd / "config.json").read_text())
  assert rb["workers"] == 2 and ra["workers"] == 0
  assert_same_run(root / "ref", wd)


def test_sigterm_while_finalising_in_the_harness_path(reference):
  """The same in an experiment grid (``experiments.gbg``): one line naming
  the end of the GBG phase, not a stale stage, and the relaunch finishes."""
  root, wd = reference, reference / "gbg-finalise"
  args = [
    "--preset",
    "smoke",
    "--folds",
    "0",
    "--grouping",
    "gradient",
    "--moo",
    "mgda",
    "--no-baselines",
    "--workdir",
    str(wd),
  ]
  out = driven("finalise:gbg:0", args, root / "cache", module="experiments.gbg")
  assert out.returncode == 143, out.stderr[-3000:]
  last = _one_line(out.stderr)
  assert "at the end of the gbg (all " in last, last
  assert "choosing the class groups" not in last, last
  out = run(args, root / "cache", module="experiments.gbg")
  assert out.returncode == 0, out.stderr[-3000:]
  assert (wd / "gradient+mgda" / "fold0" / "done.json").exists()
