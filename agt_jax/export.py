"""Export a trained run as an inference artefact that needs only ``jax``
(and, optionally, an ONNX file for onnxruntime).

  python -m agt_jax.export --model runs/odir-odir5k-synth-quick --out model/
  python -m agt_jax.export --model RUN --out model/ --onnx --tta flip

``model/`` then holds:

* ``model.stablehlo``: the phase's eval-mode function, weights included,
  serialised by :mod:`jax.export` with a symbolic batch dimension, lowered
  for CPU and CUDA. Its input is ``uint8 [batch, crop, crop, 3]`` RGB (the
  run's preprocessed view; see ``model.json``), its output ``float32
  [batch, C]`` probabilities (with the chosen temperature and test-time
  views applied);
* ``model.json``: the input spec and preprocessing, the class names, the
  decision thresholds (strict and, where the run tuned them, validation),
  the temperature, the views, and where it came from;
* ``model.onnx`` (``--onnx``; ``pip install 'agt-jax[onnx]'``): the same
  function converted by jax2onnx, a dynamic batch dimension ``B``.

Loading needs no agt_jax::

  import jax, numpy as np
  exp = jax.export.deserialize(bytearray(open("model/model.stablehlo", "rb").read()))
  probs = np.asarray(exp.call(images))   # images: uint8 [n, crop, crop, 3]

The preprocessing before the artefact (what ``model.json`` describes) is the
predictor's: crop to the circular field of view, pad to a square, resize to
``image_size``, centre-crop ``crop``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from agt_jax.errors import AgtError
from agt_jax.predict import add_model_arguments

FORMAT = "agt_jax inference artefact 1"
PLATFORMS = ("cpu", "cuda")


class ExportError(AgtError, ValueError):
  """An artefact that cannot be written; the message says what to do."""


def inference_function(predictor):
  """The pure ``uint8 [n, crop, crop, 3] -> float32 [n, C]`` probabilities
  of a :class:`~agt_jax.predict.Predictor` (its temperature and views),
  with its variables closed over."""
  import jax.numpy as jnp

  from agt_jax.train import steps

  temperature = predictor.temperatures.get(predictor.calibrate)
  temp = None if temperature is None else jnp.asarray(temperature, "float32")
  model, variables = predictor.model, predictor.variables

  def fn(images):
    probs, _ = steps.predict_step(
      variables, images, model=model, tta=predictor.tta, temperature=temp
    )
    return probs

  return fn


def spec(predictor) -> dict:
  """``model.json``: what the artefact takes, returns and decides with."""
  import jax

  c = predictor.config
  return {
    "format": FORMAT,
    "input": {
      "shape": ["batch", c.crop, c.crop, 3],
      "dtype": "uint8",
      "layout": "NHWC, RGB, 0-255",
      "preprocess": {
        "field_of_view_crop": True,
        "image_size": c.image_size,
        "crop": c.crop,
        "steps": (
          "crop the black border around the circular field of view (pixels "
          "whose brightest channel exceeds 15), pad to a centred square, "
          f"resize to {c.image_size} px (bilinear, antialiased), centre-crop "
          f"{c.crop} px; an image already {c.image_size} px square is only "
          "centre-cropped"
        ),
      },
    },
    "output": {
      "shape": ["batch", len(predictor.class_names)],
      "dtype": "float32",
      "meaning": "per-class probabilities (multi-label, independent)",
    },
    "class_names": list(predictor.class_names),
    "thresholds": {
      k: [float(x) for x in v] for k, v in predictor.thresholds.items()
    },
    "decision": "positive when probability > threshold",
    "temperature": {
      "kind": predictor.calibrate,
      "value": (
        None
        if predictor.calibrate == "none"
        else np.asarray(predictor.temperatures[predictor.calibrate]).tolist()
      ),
    },
    "tta": predictor.tta,
    "source": {
      "run": str(predictor.run_dir),
      "phase": predictor.phase,
      "model": c.model,
      "dataset": c.dataset,
      "synthetic": predictor.synthetic,
      "fold": c.fold,
    },
    "platforms": list(PLATFORMS),
    "jax_version": jax.__version__,
    "files": {"stablehlo": "model.stablehlo"},
  }


def export_stablehlo(predictor) -> bytes:
  """The serialised :mod:`jax.export` artefact (symbolic batch ``b``)."""
  import jax
  from jax import export

  c = predictor.config
  (b,) = export.symbolic_shape("b")
  arg = jax.ShapeDtypeStruct((b, c.crop, c.crop, 3), np.uint8)
  exported = export.export(
    jax.jit(inference_function(predictor)), platforms=PLATFORMS
  )(arg)
  return bytes(exported.serialize())


def export_onnx(predictor) -> bytes:
  """The predictor's ONNX model (jax2onnx; dynamic batch ``B``),
  serialised and checked against the model."""
  c = predictor.config
  fn = inference_function(predictor)
  data = onnx_bytes(fn, c.crop)
  check_onnx(data, fn, c.crop, what=c.model)
  return data


def onnx_bytes(fn, crop: int) -> bytes:
  """``fn: uint8 [B, crop, crop, 3] -> [B, C]`` converted by jax2onnx
  (input ``images``, output ``probabilities``), serialised."""
  import logging

  # jax2onnx logs a traceback for each optional plugin it cannot import.
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  try:
    import onnxruntime  # noqa: F401  (check_onnx needs it)
    from jax2onnx import to_onnx
  except ImportError:
    raise ExportError(
      "--onnx needs jax2onnx and onnxruntime: pip install 'agt-jax[onnx]'."
    ) from None
  import jax
  from jax import export

  arg = jax.ShapeDtypeStruct(
    export.symbolic_shape(f"B,{crop},{crop},3"), np.uint8
  )
  # The converter prints its tracing to stdout; the command's output is
  # one JSON line.
  with contextlib.redirect_stdout(io.StringIO()), _keep_transpose_pairs():
    proto = to_onnx(
      fn,
      [arg],
      model_name="agt_jax",
      input_names=["images"],
      output_names=["probabilities"],
    )
  return proto.SerializeToString()


@contextlib.contextmanager
def _keep_transpose_pairs():
  """jax2onnx's pass that cancels Transpose pairs drops one of a residual
  Add's transposes in ResNets (one input NHWC, the other NCHW: onnxruntime
  refuses the graph), in 0.13 and 0.17 alike; the graph is exact without
  it, at the cost of the transposes it would have removed. Off during our
  conversion only; :func:`check_onnx` verifies the result either way."""
  try:
    from jax2onnx.converter import ir_optimizations as passes
  except ImportError:  # another layout of the package: nothing to turn off
    yield
    return
  name = "remove_redundant_transpose_pairs_ir"
  original = getattr(passes, name, None)
  if original is None:
    yield
    return
  setattr(passes, name, lambda graph: None)
  try:
    yield
  finally:
    setattr(passes, name, original)


def check_onnx(
  data: bytes, fn, crop: int, *, what="model", rtol=1e-4, atol=1e-5
):
  """Runs the ONNX model on probe images (batches of 1 and 3) against
  ``fn``; a converter that mistranslates a graph fails here, in one line,
  rather than in a user's hands."""
  import jax
  import onnxruntime as ort

  try:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    sess = ort.InferenceSession(
      data, options, providers=["CPUExecutionProvider"]
    )
  except Exception as e:  # onnxruntime raises its own exception types
    raise ExportError(
      f"the ONNX graph jax2onnx made for this {what} does not load in "
      f"onnxruntime ({str(e).splitlines()[0][:200]}); export without "
      "--onnx (the StableHLO artefact is exact) or try another jax2onnx "
      "version."
    ) from None
  probe = np.random.default_rng(0).integers(0, 256, (3, crop, crop, 3))
  probe = probe.astype(np.uint8)
  fn = jax.jit(fn)
  for n in (1, 3):
    want = np.asarray(fn(probe[:n]))
    got = sess.run(None, {"images": probe[:n]})[0]
    err = float(np.max(np.abs(got - want) - rtol * np.abs(want)))
    if not err <= atol:
      raise ExportError(
        f"the ONNX graph jax2onnx made for this {what} gives other "
        f"probabilities than the model (batch {n}: off by {err + atol:.2e} "
        f"beyond rtol {rtol}); export without --onnx (the StableHLO "
        "artefact is exact) or try another jax2onnx version."
      )


def export_run(
  run_dir,
  out,
  *,
  phase=None,
  calibrate="none",
  tta="none",
  onnx: bool = False,
) -> dict:
  """Writes the artefact of ``run_dir``'s ``phase`` into ``out`` (built in
  a temporary folder beside it and renamed: a crash leaves nothing under
  ``out``). Returns what was written."""
  from agt_jax.predict import load_predictor

  out = pathlib.Path(out).expanduser()
  if out.exists() and any(out.iterdir()):
    raise ExportError(
      f"--out {out}: not empty; give a new folder (an artefact is never "
      "written over another)."
    )
  predictor = load_predictor(run_dir, phase=phase, calibrate=calibrate, tta=tta)
  info = spec(predictor)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    (tmp / "model.stablehlo").write_bytes(export_stablehlo(predictor))
    if onnx:
      (tmp / "model.onnx").write_bytes(export_onnx(predictor))
      info["files"]["onnx"] = "model.onnx"
    (tmp / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
      out.rmdir()  # empty, checked above
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return {
    "out": str(out),
    "phase": predictor.phase,
    "files": {k: (out / v).stat().st_size for k, v in info["files"].items()},
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m agt_jax.export", description=__doc__.split("\n")[0]
  )
  add_model_arguments(p)
  p.add_argument("--out", required=True, help="a new folder for the artefact")
  p.add_argument(
    "--onnx",
    action="store_true",
    help="also write model.onnx (pip install 'agt-jax[onnx]')",
  )
  a = p.parse_args(argv)
  start = time.perf_counter()
  try:
    written = export_run(
      a.model,
      a.out,
      phase=a.phase,
      calibrate=a.calibrate,
      tta=a.tta,
      onnx=a.onnx,
    )
  except AgtError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  written["seconds"] = round(time.perf_counter() - start, 2)
  print(json.dumps(written), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
