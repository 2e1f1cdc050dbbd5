"""Images/s of the AGT training input pipeline, per worker count.

Decode 512x512 JPEGs -> random 448 crop + flip -> batches of 64, driven by
`group_mixed_batches` on the real ODIR label table. One JSON line per worker
count. The JPEGs are generated into a temporary folder (or --image-dir).

  python benchmarks/input_pipeline.py --workers 0 1 2 --batches 20
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image

from agt_jax.data import images, odir, pipeline, samplers


def make_jpegs(folder: pathlib.Path, n: int, size: int) -> list[str]:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size]
  disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
  paths = []
  for i in range(n):
    img = np.zeros((size, size, 3), np.uint8)
    tex = rng.normal(0, 20, size=(size // 8, size // 8, 3))
    tex = np.kron(tex, np.ones((8, 8, 1)))
    img[disc] = np.clip(np.array([180, 80, 40]) + tex[disc], 0, 255)
    p = folder / f"{i}.jpg"
    Image.fromarray(img).save(p, quality=90)
    paths.append(str(p))
  return paths


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--image-size", type=int, default=512)
  p.add_argument("--crop", type=int, default=448)
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num-images", type=int, default=256)
  p.add_argument("--image-dir", type=pathlib.Path, default=None)
  a = p.parse_args(argv)

  table = odir.packaged_label_table()
  tmp = None
  if a.image_dir is None:
    tmp = tempfile.TemporaryDirectory()
    a.image_dir = pathlib.Path(tmp.name)
  paths = make_jpegs(a.image_dir, a.num_images, a.image_size)
  # Image i of the label table reads JPEG i mod num_images.
  src = images.FileImageSource(
      tuple(paths[i % len(paths)] for i in range(len(table))),
      size=a.image_size, fov=False)
  batches = samplers.group_mixed_batches(
      table.labels, (("D", "A", "H", "M"), ("G", "C"), ("N", "O")),
      batch_size=a.batch_size, alpha=0.5, seed=0,
      class_names=table.class_names)
  ds = pipeline.with_images(batches, src, crop=a.crop, train=True)
  for workers in a.workers:
    it = pipeline.to_iterator(ds, workers=workers, prefetch=4)
    t0 = time.perf_counter()
    for _ in range(a.warmup):
      next(it)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.batches):
      b = next(it)
    dt = time.perf_counter() - t0
    assert b["image"].shape == (a.batch_size, a.crop, a.crop, 3)
    print(json.dumps({
        "system": "input_pipeline", "workers": workers,
        "images_per_s": a.batches * a.batch_size / dt,
        "batches": a.batches, "batch_size": a.batch_size,
        "image_size": a.image_size, "crop": a.crop,
        "startup_s": startup, "host_cpus": os.cpu_count()}), flush=True)
    del it
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
