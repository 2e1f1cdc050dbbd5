"""The CLI as two processes x 4 fake CPU devices, joined by JAX's
distributed runtime on 127.0.0.1, against one process x 8 devices; and both
processes killed and resumed.

Tolerance against one process: the two runs hold the same global batches
and statistics, but the 2-process all-reduces (gloo) sum in another order,
so float32 results agree to rtol 1e-4 on losses and 2e-4 (atol 2e-5) on
parameters after 12 steps, not bit for bit. Between 2-process runs
(killed + resumed vs uninterrupted) they are bit-identical.
"""

import json
import signal
import socket
import sys

import numpy as np
import pytest

from tests import processes
from tests.cli import ROOT, env
from tests.test_experiments_odir import _final_state
from tests.test_faults_signals import DRIVER, assert_same_run

SETS = [
  "--set",
  "warmup_steps=2",
  "--set",
  "teacher_steps=6",
  "--set",
  "student_steps=4",
  "--set",
  "ckpt_every=2",
  "--set",
  "log_every=1",
  "--set",
  "eval_every=3",
  "--set",
  "reweight=feedback",
]
BASE = ["--fold", "0", "--preset", "smoke", *SETS]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(cache, devices, **extra):
  # Later runs reuse the first one's compiled steps (unless ``extra`` names
  # another cache).
  return env(
    cache, devices, **{"JAX_COMPILATION_CACHE_DIR": str(cache / "xla"), **extra}
  )


def two_processes(args, cache, kill=None):
  """Runs the CLI as processes 0 and 1; returns their (returncode, stderr).
  ``kill``: a driver kill point (both processes kill themselves there).
  A hang is a stretch without progress (:mod:`tests.processes`), never a
  total time: under load the pair may train slowly and is still healthy."""
  port = _free_port()
  procs = []
  for i in range(2):
    flags = [
      "--coordinator",
      f"127.0.0.1:{port}",
      "--num-processes",
      "2",
      "--process-id",
      str(i),
    ]
    head = ["-c", DRIVER] if kill else ["-m", "experiments.odir"]
    extra = {"AGT_TEST_KILL": kill} if kill else {}
    # One compilation cache per process id: two processes writing the same
    # cache entry at once could hand the other a torn file.
    extra["JAX_COMPILATION_CACHE_DIR"] = str(cache / f"xla-p{i}")
    # Output goes to files, not pipes: a pipe nobody reads yet (process
    # 1's, while we wait on process 0) fills at 64 KiB and blocks its
    # writer, which then never reaches the next collective or barrier.
    procs.append(
      processes.Watched(
        [sys.executable, *head, *args, *flags],
        cwd=ROOT,
        env=_env(cache, 4, **extra),
      )
    )
  try:
    processes.wait(procs, watch=processes.metrics_of(args))
    return [(p.returncode, p.stderr()) for p in procs]
  finally:
    for p in procs:
      p.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distributed")
  cache = root / "cache"
  one = processes.run(
    [
      sys.executable,
      "-m",
      "experiments.odir",
      *BASE,
      "--workdir",
      str(root / "one"),
    ],
    cwd=ROOT,
    env=_env(cache, 8),
  )
  assert one.returncode == 0, one.stderr[-3000:]
  two = two_processes([*BASE, "--workdir", str(root / "two")], cache)
  for code, err in two:
    assert code == 0, err[-3000:]
  return root, two


def test_two_processes_match_one_process_on_eight_devices(runs):
  root, two = runs
  ra = json.loads((root / "one" / "results.json").read_text())
  rb = json.loads((root / "two" / "results.json").read_text())
  assert rb["devices"] == {"count": 8, "processes": 2}
  assert ra["devices"] == {"count": 8, "processes": 1}
  assert ra["groups"]["groups"] == rb["groups"]["groups"]
  assert (
    ra["selection"]["teacher"]["step"] == rb["selection"]["teacher"]["step"]
  )
  for model in ("teacher", "student"):
    for m in ("kappa", "f1", "auc", "final"):
      assert abs(ra[model]["odir"][m] - rb[model]["odir"][m]) <= 1e-3, (
        model,
        m,
      )

  def losses(wd):
    return [
      (r["phase"], r["step"], r["loss"])
      for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())
      if "loss" in r
    ]

  la, lb = losses(root / "one"), losses(root / "two")
  assert [x[:2] for x in la] == [x[:2] for x in lb]  # each step once
  np.testing.assert_allclose([x[2] for x in lb], [x[2] for x in la], rtol=1e-4)
  import jax

  for phase in ("teacher", "student"):
    a, _ = _final_state(root / "one" / "checkpoints" / phase)
    b, _ = _final_state(root / "two" / "checkpoints" / phase)
    for x, y in zip(
      jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True
    ):
      np.testing.assert_allclose(
        np.asarray(y), np.asarray(x), rtol=2e-4, atol=2e-5
      )
  # Process 0 writes and shows the bar; process 1 logs one line a phase.
  err1 = two[1][1]
  assert "process 1 of 2: teacher fold 0 from step 0 of 6" in err1
  assert "%|" not in err1  # no progress bar on process 1


def test_two_processes_killed_and_resumed_are_bit_identical(runs):
  root, _ = runs
  wd, cache = root / "killed", root / "cache"
  for code, err in two_processes(
    [*BASE, "--workdir", str(wd)], cache, kill="step:teacher:3"
  ):
    assert code == -signal.SIGKILL, err[-3000:]
  # One checkpoint, written by both processes together.
  step = wd / "checkpoints" / "teacher" / "2"
  assert sorted(p.name for p in (step / "data").glob("process_*")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]
  for code, err in two_processes(
    [*BASE, "--workdir", str(wd), "--resume"], cache
  ):
    assert code == 0, err[-3000:]
  assert_same_run(root / "two", wd)
  # One process resuming it is refused before training, naming the count.
  out = processes.run(
    [
      sys.executable,
      "-m",
      "experiments.odir",
      *BASE,
      "--workdir",
      str(wd),
      "--resume",
    ],
    cwd=ROOT,
    env=_env(cache, 8),
  )
  assert out.returncode == 2, out.stderr[-3000:]
  assert (
    "was written by 2 process(es) and this run has 1: resume with 2"
    in out.stderr.strip().splitlines()[-1]
  )
