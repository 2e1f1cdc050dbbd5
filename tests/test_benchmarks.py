"""Benchmarks run at tiny sizes and print the documented JSON schema."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_loss_overhead_schema():
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "loss_overhead.py"),
      "--batch-size",
      "8",
      "--classes",
      "4",
      "--steps",
      "3",
      "--warmup",
      "1",
    ],
    check=True,
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={
      "JAX_PLATFORMS": "cpu",
      "PATH": "/usr/bin:/bin",
      "PYTHONPATH": str(ROOT),
    },
  ).stdout
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert {r["system"] for r in rows} == {"bce", "agt_reweighted_bce", "focal"}
  for r in rows:
    assert r["ms_median"] > 0 and r["ms_p90"] >= r["ms_median"]
    assert r["compile_s"] > 0


def test_input_pipeline_schema():
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "input_pipeline.py"),
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
    ],
    check=True,
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={
      "JAX_PLATFORMS": "cpu",
      "PATH": "/usr/bin:/bin",
      "PYTHONPATH": str(ROOT),
    },
  ).stdout
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert len(rows) == 1 and rows[0]["workers"] == 0
  assert rows[0]["images_per_s"] > 0 and rows[0]["crop"] == 48


def test_step_throughput_schema():
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "step_throughput.py"),
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
    ],
    check=True,
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={
      "JAX_PLATFORMS": "cpu",
      "PATH": "/usr/bin:/bin",
      "PYTHONPATH": str(ROOT),
    },
  ).stdout
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
