"""XLA:CPU levers for the training step, one subprocess per lever, side by
side in one run.

XLA reads ``XLA_FLAGS`` once, when jax initialises, so each lever runs
``step_throughput.py`` (JAX systems only) in a fresh process with its own
environment, and the PyTorch eager reference runs once at the end on the
same cores. Each lever also reports its numerics against the default path:
the largest absolute difference of the initial model's logits on a fixed
batch, and of every parameter after one AGT teacher step (``numerics``).

One JSON line per (lever, system), then a markdown table:

  python benchmarks/cpu_levers.py --model resnet50 --image-size 224 \\
      --batch-size 16 --steps 4 --warmup 1

A lever that fails to compile or run is reported with its error, not
skipped: a lever that does not help is a result too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (XLA_FLAGS, extra argv for step_throughput, what it is)
LEVERS = {
  "default": ("", [], "jaxlib's XLA:CPU defaults (YNNPACK convolutions)"),
  "ynn_off": (
    "--xla_cpu_experimental_ynn_fusion_type=",
    [],
    "no YNNPACK fusions: XLA's own (Eigen) convolutions",
  ),
  "onednn": ("--xla_cpu_use_onednn=true", [], "XLA:CPU's oneDNN rewrites"),
  "onednn_conv": (
    "--xla_cpu_use_onednn=true "
    "--xla_cpu_experimental_onednn_fusion_type=individual_convolution "
    "--xla_cpu_experimental_ynn_fusion_type=",
    [],
    "convolutions as oneDNN fusions, YNNPACK off",
  ),
  "onednn_custom_call": (
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    [],
    "oneDNN custom calls",
  ),
  "xnnpack": ("--xla_cpu_use_xnnpack=true", [], "XNNPACK kernels"),
  "single_thread_eigen": (
    "--xla_cpu_multi_thread_eigen=false",
    [],
    "Eigen on one thread (thread setting)",
  ),
  "bf16": ("", ["--dtype", "bfloat16"], "bfloat16 compute, f32 parameters"),
}


def numerics_worker(a) -> None:
  """Writes the initial logits on a fixed batch and the parameters after one
  teacher step to ``a.numerics_out`` (under this process's XLA_FLAGS)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from agt_jax import grouping, models
  from agt_jax.train import steps

  dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
  groups = grouping.paper_groups("odir")
  from step_throughput import MODELS

  enc = models.make_encoder(MODELS[a.model], dtype=dtype)
  teacher = models.Teacher(enc, groups=groups, num_classes=8)
  tx = steps.teacher_tx(3, 1e-3, b1=0.9, b2=0.99)
  shape = (a.image_size, a.image_size, 3)
  state = steps.init_state(teacher, tx, shape, 0)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (a.batch_size, *shape), dtype=np.uint8)
  labels = (rng.random((a.batch_size, 8)) < 0.2).astype(np.uint8)
  # Jitted: op-by-op dispatch would compile every layer's ops one by one.
  logits, _ = jax.jit(lambda v, x: teacher.apply(v, x, train=False))(
    {"params": state["params"], "batch_stats": state["batch_stats"]},
    jnp.asarray(image),
  )
  batch = {"image": image, "labels": labels, "group": np.int32(1)}
  state, _ = jax.jit(
    lambda s, b: steps.teacher_step(
      s, b, model=teacher, tx=tx, options=steps.LossOptions()
    )
  )(state, batch)
  flat = {
    jax.tree_util.keystr(k): np.asarray(v, np.float32)
    for k, v in jax.tree_util.tree_leaves_with_path(state["params"])
  }
  np.savez(a.numerics_out, logits=np.asarray(logits, np.float32), **flat)


def _compare(ref: str, other: str) -> dict:
  import numpy as np

  r, o = np.load(ref), np.load(other)
  params = [k for k in r.files if k != "logits"]
  return {
    "logits_max_abs_diff": float(np.abs(r["logits"] - o["logits"]).max()),
    "logits_max_abs": float(np.abs(r["logits"]).max()),
    "params_after_step_max_abs_diff": max(
      float(np.abs(r[k] - o[k]).max()) for k in params
    ),
  }


def _run(argv, flags, timeout):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
  return subprocess.run(
    [sys.executable, *argv],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=HERE,
  )


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--model", default="resnet50")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--levers", nargs="+", default=list(LEVERS))
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--timeout", type=float, default=1800)
  p.add_argument("--numerics-out", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.numerics_out:
    return numerics_worker(a)
  sizes = [
    "--model",
    a.model,
    "--image-size",
    str(a.image_size),
    "--batch-size",
    str(a.batch_size),
  ]
  timing = [
    *sizes,
    "--dtype",
    a.dtype,
    "--steps",
    str(a.steps),
    "--warmup",
    str(a.warmup),
    "--pipeline-workers",
    "-1",
  ]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    ref = None
    for name in a.levers:
      flags, extra, what = LEVERS[name]
      dtype = (
        extra[extra.index("--dtype") + 1] if "--dtype" in extra else a.dtype
      )
      base = {"lever": name, "xla_flags": flags, "what": what, "dtype": dtype}
      out = os.path.join(tmp, f"{name}.npz")
      num = _run(
        [__file__, *sizes, "--dtype", dtype, "--numerics-out", out],
        flags,
        a.timeout,
      )
      numerics = None
      if num.returncode == 0:
        ref = ref or out
        numerics = _compare(ref, out)
      bench = _run(
        ["step_throughput.py", *timing, "--no-torch", *extra], flags, a.timeout
      )
      lines = [
        json.loads(x)
        for x in bench.stdout.splitlines()
        if x.startswith('{"system"')
      ]
      if bench.returncode or not lines:
        err = (bench.stderr.strip().splitlines() or ["no output"])[-1]
        rows.append({**base, "system": None, "error": err[:300]})
        print(json.dumps(rows[-1]), flush=True)
        continue
      for r in lines:
        rows.append({**r, **base, "numerics": numerics})
        print(json.dumps(rows[-1]), flush=True)
    if not a.no_torch:
      bench = _run(["step_throughput.py", *timing], "", a.timeout)
      for x in bench.stdout.splitlines():
        if x.startswith('{"system": "torch_'):
          rows.append({**json.loads(x), "lever": "pytorch", "xla_flags": None})
          print(json.dumps(rows[-1]), flush=True)
  _table(rows)


def _table(rows) -> None:
  torch_eager = next(
    (r["images_per_s"] for r in rows if r.get("system") == "torch_agt_eager"),
    None,
  )
  print(
    "\n| lever | system | images/s | ms/step | vs torch AGT eager | "
    "max |Δ logits| | max |Δ params| after 1 step |\n|---|---|---|---|---|---|---|"
  )
  for r in rows:
    if r.get("system") is None:
      print(f"| {r['lever']} | failed: {r['error']} | | | | | |")
      continue
    n = r.get("numerics") or {}
    ratio = (
      f"{r['images_per_s'] / torch_eager:.2f}x"
      if torch_eager and r["system"] == "agt_teacher"
      else ""
    )
    dl = n.get("logits_max_abs_diff")
    dp = n.get("params_after_step_max_abs_diff")
    print(
      f"| {r['lever']} | {r['system']} | {r['images_per_s']:.2f} | "
      f"{r['ms_per_step_median']:.0f} | {ratio} | "
      f"{'' if dl is None else f'{dl:.2e}'} | {'' if dp is None else f'{dp:.2e}'} |"
    )


if __name__ == "__main__":
  main()
