"""Images/s of the AGT training input pipeline, per worker count and
decode mode.

Decode ``--source-size`` JPEGs (ODIR's photographs are about 2,000 px wide;
a prepared copy is 512) -> resize to ``--image-size`` -> random ``--crop``
+ flip -> batches of 64, driven by `group_mixed_batches` on the real ODIR
label table. ``--decode full reduced`` compares a full decode with libjpeg's
reduced-size decode (``FileImageSource(reduced_decode=...)``) in one run.
One JSON line per (decode, workers). The JPEGs are generated into a
temporary folder (or --image-dir).

  python benchmarks/input_pipeline.py --workers 0 1 2 --batches 20 \
      --source-size 2048 --image-size 512 --crop 448 --decode full reduced
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
    tex = rng.normal(0, 20, size=(size // 8 + 1, size // 8 + 1, 3))
    tex = np.kron(tex, np.ones((8, 8, 1)))[:size, :size]
    img[disc] = np.clip(np.array([180, 80, 40]) + tex[disc], 0, 255)
    p = folder / f"{i}.jpg"
    Image.fromarray(img).save(p, quality=90)
    paths.append(str(p))
  return paths


def measure(
  *,
  workers: int,
  batch_size: int,
  image_size: int,
  crop: int,
  batches: int,
  warmup: int,
  num_images: int,
  image_dir: pathlib.Path | None = None,
  source_size: int | None = None,
  decode: str = "reduced",
) -> dict:
  """Images/s of the training pipeline with ``workers`` decode processes."""
  table = odir.packaged_label_table()
  with tempfile.TemporaryDirectory() as tmp:
    source_size = source_size or image_size
    paths = make_jpegs(pathlib.Path(image_dir or tmp), num_images, source_size)
    # Image i of the label table reads JPEG i mod num_images.
    src = images.FileImageSource(
      tuple(paths[i % len(paths)] for i in range(len(table))),
      size=image_size,
      fov=False,
      reduced_decode=decode == "reduced",
    )
    ds = pipeline.with_images(
      samplers.group_mixed_batches(
        table.labels,
        (("D", "A", "H", "M"), ("G", "C"), ("N", "O")),
        batch_size=batch_size,
        alpha=0.5,
        seed=0,
        class_names=table.class_names,
      ),
      src,
      crop=crop,
      train=True,
    )
    it = pipeline.to_iterator(ds, workers=workers, prefetch=4)
    t0 = time.perf_counter()
    for _ in range(warmup):
      next(it)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
      b = next(it)
    dt = time.perf_counter() - t0
    assert b["image"].shape == (batch_size, crop, crop, 3)
    del it
  return {
    "system": "input_pipeline",
    "workers": workers,
    "images_per_s": batches * batch_size / dt,
    "batches": batches,
    "batch_size": batch_size,
    "source_size": source_size,
    "decode": decode,
    "image_size": image_size,
    "crop": crop,
    "startup_s": startup,
    "host_cpus": os.cpu_count(),
  }


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--image-size", type=int, default=512)
  p.add_argument("--crop", type=int, default=448)
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num-images", type=int, default=256)
  p.add_argument("--image-dir", type=pathlib.Path, default=None)
  p.add_argument("--source-size", type=int, default=None)
  p.add_argument(
    "--decode", nargs="+", choices=["full", "reduced"], default=["reduced"]
  )
  a = p.parse_args(argv)
  for decode, workers in [(d, w) for d in a.decode for w in a.workers]:
    print(
      json.dumps(
        measure(
          workers=workers,
          batch_size=a.batch_size,
          image_size=a.image_size,
          crop=a.crop,
          batches=a.batches,
          warmup=a.warmup,
          num_images=a.num_images,
          image_dir=a.image_dir,
          source_size=a.source_size,
          decode=decode,
        )
      ),
      flush=True,
    )


if __name__ == "__main__":
  main()
