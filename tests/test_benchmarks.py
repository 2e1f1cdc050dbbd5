"""Benchmarks run at tiny sizes and print the documented JSON schema."""

import json
import pathlib
import sys

from tests import processes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench(script, *args) -> str:
  """A benchmark script's stdout, run on CPU with a bare environment."""
  return processes.run(
    [sys.executable, str(ROOT / "benchmarks" / script), *args],
    check=True,
    cwd=ROOT,
    env={
      "JAX_PLATFORMS": "cpu",
      "PATH": "/usr/bin:/bin",
      "PYTHONPATH": str(ROOT),
    },
  ).stdout


def test_loss_overhead_schema():
  out = bench(
    "loss_overhead.py",
    "--batch-size",
    "8",
    "--classes",
    "4",
    "--steps",
    "3",
    "--warmup",
    "1",
  )
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert {r["system"] for r in rows} == {"bce", "agt_reweighted_bce", "focal"}
  for r in rows:
    assert r["ms_median"] > 0 and r["ms_p90"] >= r["ms_median"]
    assert r["compile_s"] > 0


def test_input_pipeline_schema():
  out = bench(
    "input_pipeline.py",
    "--workers",
    "0",
    "--batch-size",
    "4",
    "--image-size",
    "64",
    "--crop",
    "48",
    "--batches",
    "2",
    "--warmup",
    "1",
    "--num-images",
    "8",
    "--source-size",
    "128",
    "--decode",
    "full",
    "reduced",
  )
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [(r["decode"], r["workers"]) for r in rows] == [
    ("full", 0),
    ("reduced", 0),
  ]
  assert all(r["images_per_s"] > 0 and r["crop"] == 48 for r in rows)
  assert all(r["source_size"] == 128 and r["image_size"] == 64 for r in rows)


def test_step_throughput_schema():
  out = bench(
    "step_throughput.py",
    "--model",
    "tiny",
    "--image-size",
    "32",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--batch-size",
    "8",
    "--dtype",
    "float32",
    "--no-torch",
    "--pipeline-workers",
    "0",
    "--profile-steps",
    "2",
  )
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  systems = [r for r in rows if "system" in r]
  assert [r["system"] for r in systems] == [
    "agt_teacher",
    "plain",
    "student",
    "input_pipeline",
  ]
  systems = systems[:3]
  for r in systems:
    assert {
      "images_per_s",
      "ms_per_step_median",
      "ms_per_step_p90",
      "compile_s",
      "compilations",
      "peak_memory_bytes",
      "tflops",
    } <= set(r)
    assert r["compilations"] == 1  # the teacher cycled 3 groups
  assert "agt_over_plain" in rows[-1]["ratios"]
  assert rows[-1]["ratios"]["pipeline_over_agt_step"] > 0
  pipe = [r for r in rows if r.get("system") is None and "workers" in r] or [
    r for r in rows if r.get("system") == "input_pipeline"
  ]
  assert pipe and pipe[0]["crop"] == 32
  prof = [r for r in rows if "profile" in r]
  assert prof and prof[0]["top_ops"] and prof[0]["top_kinds"], "no ops"
  assert all(
    o["ms_per_step"] >= 0 and 0 <= o["share"] <= 1 for o in prof[0]["top_ops"]
  )
  assert "| agt_teacher |" in out


def test_cpu_levers_schema():
  """Each lever runs in its own process; its numerics are compared with the
  first (default) lever's, which differs from itself by exactly 0."""
  out = bench(
    "cpu_levers.py",
    "--model",
    "tiny",
    "--image-size",
    "32",
    "--batch-size",
    "2",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--no-torch",
    "--levers",
    "default",
    "ynn_off",
  )
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [(r["lever"], r["system"]) for r in rows] == [
    (lever, system)
    for lever in ("default", "ynn_off")
    for system in ("agt_teacher", "plain", "student")
  ]
  assert rows[0]["numerics"]["logits_max_abs_diff"] == 0.0
  assert rows[0]["numerics"]["params_after_step_max_abs_diff"] == 0.0
  assert rows[-1]["numerics"]["logits_max_abs_diff"] < 1e-3
  assert "| ynn_off | agt_teacher |" in out
