"""Train-step throughput: AGT teacher vs plain BCE vs CB-KD student (JAX), and
PyTorch references, side by side in one run on one device.

Systems (one JSON line each): ``agt_teacher`` (the real
``agt_jax.train.steps.teacher_step``, 3 groups cycling every step),
``plain`` (multi-label BCE, same encoder), ``student`` (teacher forward +
student update), and when torch is importable ``torch_agt_eager``,
``torch_agt_compile``, ``torch_plain_eager``, ``torch_plain_compile``.
Each reports images/s, ms/step (median, p90), compile seconds, the number of
compilations while groups cycle, peak device memory and achieved TFLOP/s
(XLA cost analysis for JAX; null for torch). A markdown table and the ratios
follow. The Grain training pipeline (JPEG decode at 512/448 of the crop,
random crop + flip) is measured with ``--pipeline-workers`` processes and
reported against the teacher step's demand (``pipeline_over_agt_step``);
``--profile-steps N`` traces N teacher steps and prints the top ops.

  python benchmarks/step_throughput.py --model resnet50 --image-size 448 \\
      --batch-size 64 --dtype bfloat16 --steps 100 --profile-steps 10
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import input_pipeline
import jax
import jax.numpy as jnp
import numpy as np
from timing import time_steps

from agt_jax import grouping, models
from agt_jax.train import steps

MODELS = {
  "resnet50": "resnet50",
  "densenet121": "densenet121",
  "resnet18": "resnet18",
  "small": "resnet_small",  # the quick preset's encoder
  "tiny": "resnet_tiny",
}


def _peak_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001  (backends without memory stats)
    stats = {}
  return stats.get("peak_bytes_in_use")


def _compile(jitted, *args):
  """``(flops, seconds)``: compiles ``jitted`` for ``args`` (its later calls
  reuse the executable, so the step compiles once) and reads the compiled
  program's FLOPs."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - t0
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None, seconds
  except Exception:  # noqa: BLE001  (backends without a cost analysis)
    return None, seconds


def _measure(name, jitted, args, run, traces, a):
  """``(name, (first_call_s, median_s, p90_s), compilations, flops)``:
  ``jitted`` compiled once for ``args`` (timed into the first call), then
  ``run(t)`` timed."""
  flops, compile_s = _compile(jitted, *args)
  first, med, p90 = time_steps(run, a.steps, a.warmup)
  return name, (first + compile_s, med, p90), traces["n"], flops


# Host-side runtime and Python frames, not the work itself.
_NOT_OPS = (
  "$",
  "PjitFunction",
  "CommonPjRt",
  "Allocate",
  "Handle inputs",
  "ParseArguments",
  "PythonRefManager",
  "SlinkyThreadPool",
  "ThreadpoolListener",
  "TfrtCpu",
  "PjRt",
  "Thunk",
)


def profile_top_ops(run, n_steps: int, top: int = 12) -> dict:
  """Runs ``n_steps`` under ``jax.profiler`` and sums the traced op
  durations by name (device kernels on GPU, fusions on CPU): ``top_ops``
  per op and ``top_kinds`` per op kind (the name without its ``.N``)."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for t in range(n_steps):
        jax.block_until_ready(run(t))
    files = glob.glob(
      os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True
    )
    if not files:
      return {"top_ops": [], "top_kinds": []}
    with gzip.open(files[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not str(e.get("name", "")).startswith(_NOT_OPS):
      total[e["name"]] += e.get("dur", 0.0)
  kinds = collections.Counter()
  for k, v in total.items():
    kinds[re.sub(r"[._]\d+$", "", k)] += v
  s = sum(total.values()) or 1.0

  def rows(counter):
    return [
      {"name": k, "ms_per_step": v / 1e3 / n_steps, "share": v / s}
      for k, v in counter.most_common(top)
    ]

  return {"top_ops": rows(total), "top_kinds": rows(kinds)}


def jax_systems(a, batch):
  dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
  groups = grouping.paper_groups("odir")
  enc = models.make_encoder(MODELS[a.model], dtype=dtype)
  shape = (a.image_size, a.image_size, 3)
  out = []

  teacher = models.Teacher(enc, groups=groups, num_classes=8)
  ttx = steps.teacher_tx(3, 1e-3, b1=0.9, b2=0.99)
  traces = {"n": 0}

  def tstep(state, b):
    traces["n"] += 1  # runs once per trace (compilation)
    return steps.teacher_step(
      state, b, model=teacher, tx=ttx, options=steps.LossOptions()
    )

  tjit = jax.jit(tstep, donate_argnums=0)
  state = {"s": steps.init_state(teacher, ttx, shape, 0)}
  batches = [{**batch, "group": np.int32(g)} for g in range(3)]

  def run_t(t):
    state["s"], m = tjit(state["s"], batches[t % 3])
    return m["loss"]

  out.append(
    _measure("agt_teacher", tjit, (state["s"], batches[0]), run_t, traces, a)
  )
  if a.profile_steps:
    print(
      json.dumps(
        {
          "profile": "agt_teacher",
          "steps": a.profile_steps,
          **profile_top_ops(run_t, a.profile_steps),
        }
      ),
      flush=True,
    )
  teacher_vars = {
    "params": state["s"]["params"],
    "batch_stats": state["s"]["batch_stats"],
  }

  student = models.Student(enc, num_classes=8)
  stx = steps.adam(1e-3, 0.9, 0.99)
  ptraces = {"n": 0}

  def pstep(s, b):
    ptraces["n"] += 1
    return steps.plain_step(s, b, model=student, tx=stx)

  pjit = jax.jit(pstep, donate_argnums=0)
  pstate = {"s": steps.init_state(student, stx, shape, 1)}

  def run_p(t):
    pstate["s"], m = pjit(pstate["s"], batches[0])
    return m["loss"]

  out.append(
    _measure("plain", pjit, (pstate["s"], batches[0]), run_p, ptraces, a)
  )

  counts = jnp.array([3125, 1801, 326, 313, 280, 193, 268, 1200], jnp.float32)
  straces = {"n": 0}

  def sstep(s, b, tv):
    straces["n"] += 1
    return steps.student_step(
      s,
      b,
      tv,
      model=student,
      teacher_model=teacher,
      tx=stx,
      class_counts=counts,
      options=steps.KDOptions(),
    )

  sjit = jax.jit(sstep, donate_argnums=0)
  sstate = {"s": steps.init_state(student, stx, shape, 2)}

  def run_s(t):
    sstate["s"], m = sjit(sstate["s"], batches[0], teacher_vars)
    return m["loss"]

  args = (sstate["s"], batches[0], teacher_vars)
  out.append(_measure("student", sjit, args, run_s, straces, a))
  return out


def torch_systems(a, batch_np):
  try:
    import torch
    import torchvision
  except ImportError:
    return []
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  groups = grouping.paper_groups("odir")
  ctor = {
    "resnet50": torchvision.models.resnet50,
    "densenet121": torchvision.models.densenet121,
    "resnet18": torchvision.models.resnet18,
    # torchvision has no ResNet this small; its row runs resnet18.
    "small": torchvision.models.resnet18,
    # torchvision has no tiny ResNet: with --model tiny the torch rows
    # only check that the harness runs; do not compare them.
    "tiny": torchvision.models.resnet18,
  }[a.model]
  x = torch.tensor(batch_np["image"]).permute(0, 3, 1, 2).float().div(255)
  x = x.to(dev).contiguous(memory_format=torch.channels_last)
  y = torch.tensor(batch_np["labels"], dtype=torch.float32, device=dev)
  amp = dict(
    device_type="cuda" if dev == "cuda" else "cpu",
    dtype=torch.bfloat16,
    enabled=a.dtype == "bfloat16",
  )
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def encoder():
    net = ctor(weights=None)
    dim = (
      net.fc.in_features if hasattr(net, "fc") else net.classifier.in_features
    )
    if hasattr(net, "fc"):
      net.fc = torch.nn.Identity()
    else:
      net.classifier = torch.nn.Identity()
    return net.to(dev).to(memory_format=torch.channels_last), dim

  def agt_model():
    enc, dim = encoder()
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(g)) for g in groups)
    order = torch.tensor(np.argsort(np.concatenate(groups)), device=dev)
    return enc, heads.to(dev), order

  def agt_step_fn(enc, heads, order, opt):
    def step(t):
      g = t % len(groups)
      for k, h in enumerate(heads):
        h.requires_grad_(k == g)
      with torch.autocast(**amp):
        f = enc(x)
        logits = torch.cat([h(f) for h in heads], 1)[:, order].float()
      with torch.no_grad():
        p = torch.sigmoid(logits)
        pos = (y * (p - 1)).mean(0).abs()
        neg = ((1 - y) * p).mean(0)
        w = torch.clamp((pos / (neg + 1e-8)) ** 2, max=1.0)
      loss = (
        -(
          y * torch.nn.functional.logsigmoid(logits)
          + w * (1 - y) * torch.nn.functional.logsigmoid(-logits)
        )
        .sum(1)
        .mean()
      )
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss

    return step

  def plain_step_fn(enc, head, opt):
    def step(t):
      with torch.autocast(**amp):
        logits = head(enc(x)).float()
      loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(
          logits, y, reduction="none"
        )
        .sum(1)
        .mean()
      )
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss

    return step

  def time_torch(step):
    def synced(loss):
      sync()
      return loss

    return time_steps(step, a.steps, a.warmup, sync=synced)

  out = []
  for compiled in (False, True):
    enc, heads, order = agt_model()
    opt = torch.optim.Adam(
      list(enc.parameters()) + list(heads.parameters()),
      lr=1e-3,
      betas=(0.9, 0.99),
    )
    step = agt_step_fn(enc, heads, order, opt)
    if compiled:
      enc = torch.compile(enc)
      step = agt_step_fn(enc, heads, order, opt)
    if dev == "cuda":
      torch.cuda.reset_peak_memory_stats()
    r = time_torch(step)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    out.append(
      (f"torch_agt_{'compile' if compiled else 'eager'}", r, None, None, peak)
    )
    enc, dim = encoder()
    head = torch.nn.Linear(dim, 8).to(dev)
    opt = torch.optim.Adam(
      list(enc.parameters()) + list(head.parameters()),
      lr=1e-3,
      betas=(0.9, 0.99),
    )
    if compiled:
      enc = torch.compile(enc)
    if dev == "cuda":
      torch.cuda.reset_peak_memory_stats()
    r = time_torch(plain_step_fn(enc, head, opt))
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    out.append(
      (f"torch_plain_{'compile' if compiled else 'eager'}", r, None, None, peak)
    )
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--model", choices=sorted(MODELS), default="resnet50")
  p.add_argument("--image-size", type=int, default=448)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument(
    "--pipeline-workers",
    type=int,
    default=os.cpu_count(),
    help="Grain decode processes for the pipeline check " "(-1 skips it)",
  )
  p.add_argument("--profile-steps", type=int, default=0)
  a = p.parse_args(argv)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.integers(
      0, 255, (a.batch_size, a.image_size, a.image_size, 3), dtype=np.uint8
    ),
    "labels": (rng.random((a.batch_size, 8)) < 0.2).astype(np.uint8),
  }
  settings = {
    "model": a.model,
    "image_size": a.image_size,
    "batch_size": a.batch_size,
    "dtype": a.dtype,
    "steps": a.steps,
    "device": str(jax.devices()[0].device_kind),
    "jax": jax.__version__,
  }
  rows = []
  for name, (compile_s, med, p90), n_compiles, flops in jax_systems(a, batch):
    rows.append(
      {
        "system": name,
        "images_per_s": a.batch_size / med,
        "ms_per_step_median": med * 1e3,
        "ms_per_step_p90": p90 * 1e3,
        "compile_s": compile_s,
        "compilations": n_compiles,
        "peak_memory_bytes": _peak_bytes(),
        "tflops": flops / med / 1e12 if flops else None,
        **settings,
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  if not a.no_torch:
    for name, (compile_s, med, p90), _, _, peak in torch_systems(a, batch):
      rows.append(
        {
          "system": name,
          "images_per_s": a.batch_size / med,
          "ms_per_step_median": med * 1e3,
          "ms_per_step_p90": p90 * 1e3,
          "compile_s": compile_s,
          "compilations": None,
          "peak_memory_bytes": peak,
          "tflops": None,
          **settings,
        }
      )
      print(json.dumps(rows[-1]), flush=True)
  print(
    "\n| system | images/s | ms/step (median) | p90 | compile s | "
    "compilations | TFLOP/s |\n|---|---|---|---|---|---|---|"
  )
  for r in rows:
    tf = f"{r['tflops']:.1f}" if r["tflops"] else "-"
    print(
      f"| {r['system']} | {r['images_per_s']:.1f} | "
      f"{r['ms_per_step_median']:.2f} | {r['ms_per_step_p90']:.2f} | "
      f"{r['compile_s']:.1f} | {r['compilations'] or '-'} | {tf} |"
    )
  by = {r["system"]: r["images_per_s"] for r in rows}
  ratios = {}
  if "plain" in by:
    ratios["agt_over_plain"] = by["agt_teacher"] / by["plain"]
    ratios["student_over_plain"] = by["student"] / by["plain"]
  if a.pipeline_workers >= 0:
    src_size = max(a.image_size, round(a.image_size * 512 / 448))
    pipe = input_pipeline.measure(
      workers=a.pipeline_workers,
      batch_size=a.batch_size,
      image_size=src_size,
      crop=a.image_size,
      batches=max(4, a.steps // 2),
      warmup=2,
      num_images=64,
    )
    print(json.dumps(pipe), flush=True)
    ratios["pipeline_over_agt_step"] = pipe["images_per_s"] / by["agt_teacher"]
  if "torch_agt_compile" in by:
    ratios["agt_over_torch_agt_compile"] = (
      by["agt_teacher"] / by["torch_agt_compile"]
    )
  print(json.dumps({"ratios": ratios, **settings}))


if __name__ == "__main__":
  main()
