"""Figures and the words every synthetic output carries.

A leaf module: matplotlib is imported on first use (on the file-only Agg
backend), so importing this costs nothing.
"""

from __future__ import annotations

import os
import pathlib

# The one sentence every report, table and figure made from odir5k-synth
# carries.
SYNTHETIC_NOTE = (
  "**Synthetic data**: real ODIR-5K labels with procedurally "
  "rendered images; these numbers say nothing about real "
  "fundus photographs."
)


def synthetic_lines(synthetic: bool) -> list[str]:
  """The synthetic-data paragraph (and a blank line) for a markdown
  report, or nothing for real data."""
  return [SYNTHETIC_NOTE, ""] if synthetic else []


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (files, no display)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def cam_overlay(
  view, cams, labels, path, *, alpha: float = 0.45, min_side: int = 160
) -> None:
  """One PNG: the image the model saw, then one panel per map of ``cams``
  (`[K, h, w]` in [0, 1], resized to the image) blended over it in the jet
  colour map, each titled by its ``labels`` entry; an image under
  ``min_side`` pixels is enlarged by a whole factor first. PIL only (fast enough
  for a folder of thousands of images); the colour map is matplotlib's."""
  import matplotlib
  import numpy as np
  from PIL import Image, ImageDraw

  view = np.asarray(view, np.uint8)
  if min(view.shape[:2]) < min_side:  # room for the titles
    k = -(-min_side // min(view.shape[:2]))
    big = (view.shape[1] * k, view.shape[0] * k)
    view = np.asarray(Image.fromarray(view).resize(big, Image.BILINEAR))
  h, w = view.shape[:2]
  jet = matplotlib.colormaps["jet"]
  panels = [Image.fromarray(view)]
  for cam, label in zip(cams, labels):
    m = Image.fromarray(np.asarray(cam, np.float32)).resize(
      (w, h), Image.BILINEAR
    )
    heat = jet(np.clip(np.asarray(m), 0.0, 1.0))[..., :3] * 255.0
    blend = (1 - alpha) * view + alpha * heat
    panel = Image.fromarray(blend.round().astype(np.uint8))
    ImageDraw.Draw(panel).text((3, 2), label, fill=(255, 255, 255))
    panels.append(panel)
  sheet = Image.new("RGB", (w * len(panels), h))
  for i, p in enumerate(panels):
    sheet.paste(p, (i * w, 0))
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  sheet.save(tmp, format="PNG")  # whole or not at all
  os.replace(tmp, path)
