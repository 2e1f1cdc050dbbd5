"""odir5k-synth: the real ODIR-5K image-level labels with rendered images.

The offline default dataset. Labels, keywords, eyes and patients are the real
ODIR-5K training table shipped with the package; the pixels come from
:func:`agt_jax.data.synth_render.render`. Everything built from it is marked
synthetic (``table.meta["synthetic"]``, the dataset name, reports, plots).

Images are rendered once into an on-disk uint8 cache
(``<cache_dir>/odir5k-synth/<size>px-seed<seed>-r<version>-<table>/``, the
last part a hash of the rendered table, so that another subset or
visibility setting gets its own folder and never rewrites a file that a
running process has mapped):

* ``images.u8``: a raw `[n, size, size, 3]` memmap;
* ``done.npy``: which rows are rendered, rewritten atomically after every
  chunk, so an interrupted build resumes where it stopped;
* ``meta.json``: written last, atomically; only a cache with it (and matching
  parameters) is ever read as complete.

CLI::

  python -m agt_jax.data.synth build --size 512 --workers 2
  python -m agt_jax.data.synth gallery --out docs/odir5k_synth_gallery.png
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import pathlib
import time
from collections.abc import Mapping

import numpy as np

from agt_jax import io
from agt_jax.data import odir, synth_render
from agt_jax.data import odir_keywords as kw
from agt_jax.data.images import ArrayImageSource
from agt_jax.data.table import ImageTable

NAME = "odir5k-synth"
SYNTHETIC_NOTE = (
  "synthetic: real ODIR-5K labels with procedurally rendered "
  "images (odir5k-synth)"
)


def synth_table(*, ignorable_policy: str = "as_normal") -> ImageTable:
  """The label table of odir5k-synth (no paths: images are rendered)."""
  t = odir.packaged_label_table(ignorable_policy=ignorable_policy)
  meta = {
    **t.meta,
    "synthetic": True,
    "note": SYNTHETIC_NOTE,
    "renderer_version": synth_render.RENDERER_VERSION,
  }
  return dataclasses.replace(t, name=NAME, meta=meta)


PRETRAIN_NAME = "odir5k-synth-pretrain"
# Render seeds of the pretraining stand-in start here: disjoint from every
# seed odir5k-synth and its shifted copies are rendered with (small ints).
PRETRAIN_SEED = 1_000_003
PRETRAIN_NOTE = (
  "synthetic pretraining stand-in (odir5k-synth-pretrain): label rows "
  "resampled with replacement from the ODIR-5K label table and rendered "
  f"with render seed {PRETRAIN_SEED} + seed under new image ids; it shares "
  "the label table (so label co-occurrences) and the renderer with "
  "odir5k-synth, and no image, image id or render seed"
)


def pretrain_table(
  *, seed: int = 0, ignorable_policy: str = "as_normal"
) -> ImageTable:
  """The pretraining stand-in's label table (for the ImageNet + FGADR
  pretraining every method starts from in the paper, which cannot be
  downloaded here): ``n`` rows drawn with replacement from the label table
  of odir5k-synth (``seed`` picks them), each its own patient, with new
  image ids ``pre<k>``, so nothing rendered from it is an odir5k-synth
  image."""
  base = synth_table(ignorable_policy=ignorable_policy)
  n = len(base)
  pick = np.random.default_rng((PRETRAIN_SEED, seed)).integers(n, size=n)
  t = base.take(pick)
  ids = np.array([f"pre{k}" for k in range(n)])
  meta = {
    **t.meta,
    "note": PRETRAIN_NOTE,
    "pretrain_seed": seed,
    "render_seed": PRETRAIN_SEED + seed,
  }
  return dataclasses.replace(
    t,
    name=PRETRAIN_NAME,
    image_ids=ids,
    patient_ids=ids.copy(),
    splits=None,
    meta=meta,
  )


def load_pretrain(
  cache_dir=None,
  *,
  size: int = 512,
  seed: int = 0,
  workers: int | None = None,
  progress: bool = True,
  max_images: int | None = None,
):
  """``(table, ArrayImageSource)`` of the pretraining stand-in
  (:func:`pretrain_table`), rendered into its own cache folder."""
  return _cached(
    pretrain_table(seed=seed),
    cache_dir,
    size=size,
    seed=PRETRAIN_SEED + seed,
    workers=workers,
    progress=progress,
    max_images=max_images,
    name=PRETRAIN_NAME,
  )


def row(table: ImageTable, i: int) -> dict:
  """The renderer's input for row ``i``."""
  keywords = str(table.keywords[i])
  return {
    "image": str(table.image_ids[i]),
    "eye": str(table.eyes[i]),
    "keywords": keywords,
    "labels": table.labels[i].tolist(),
    "has_ignorable": kw.keyword_flags(keywords)["has_ignorable"],
  }


@dataclasses.dataclass(frozen=True)
class RenderSource:
  """Renders image ``i`` on access (deterministic; no cache)."""

  table: ImageTable
  size: int = 512
  seed: int = 0
  visibility: tuple = ()

  def __len__(self) -> int:
    return len(self.table)

  def __getitem__(self, i: int) -> np.ndarray:
    return synth_render.render(
      row(self.table, int(i)),
      self.size,
      seed=self.seed,
      visibility=dict(self.visibility) or None,
    )


# -- the cache ---------------------------------------------------------------


def _fingerprint(table: ImageTable, size: int, seed: int, visibility) -> str:
  h = hashlib.sha256()
  h.update(
    json.dumps(
      [
        synth_render.RENDERER_VERSION,
        size,
        seed,
        sorted((visibility or {}).items()),
      ]
    ).encode()
  )
  h.update(np.ascontiguousarray(table.labels).tobytes())
  h.update("\n".join(table.image_ids.tolist()).encode())
  h.update("\n".join(table.keywords.tolist()).encode())
  return h.hexdigest()


def _save_done(path: pathlib.Path, done: np.ndarray) -> None:
  io.atomic_write(path, lambda f: np.save(f, done))


def cache_path(
  cache_dir, size: int, seed: int, fingerprint: str, name: str = NAME
) -> pathlib.Path:
  """The cache folder of one rendered table (``fingerprint``: its
  :func:`_fingerprint`)."""
  return (
    pathlib.Path(cache_dir).expanduser()
    / name
    / f"{size}px-seed{seed}-r{synth_render.RENDERER_VERSION}-{fingerprint[:16]}"
  )


_WORKER: dict = {}


def _init_worker(table, size, seed, visibility, images_path, n):
  _WORKER.update(
    table=table,
    size=size,
    seed=seed,
    visibility=visibility,
    images=np.memmap(images_path, np.uint8, "r+", shape=(n, size, size, 3)),
  )


def _render_chunk(chunk: np.ndarray) -> np.ndarray:
  w = _WORKER
  for i in chunk:
    w["images"][i] = synth_render.render(
      row(w["table"], int(i)),
      w["size"],
      seed=w["seed"],
      visibility=w["visibility"],
    )
  w["images"].flush()
  return chunk


def build_cache(
  table: ImageTable,
  cache_dir=None,
  *,
  size: int = 512,
  seed: int = 0,
  workers: int | None = None,
  chunk_size: int = 32,
  visibility: Mapping | None = None,
  progress: bool = True,
  max_chunks: int | None = None,
  name: str = NAME,
) -> pathlib.Path:
  """Renders every image of ``table`` into the cache (resuming if partial).

  Args:
    table: the odir5k-synth table (or a subset).
    cache_dir: root of caches (default :func:`agt_jax.io.cache_dir`).
    size: image side.
    seed: dataset seed.
    workers: rendering processes (default: all cores).
    chunk_size: images per unit of work and per progress checkpoint.
    visibility: per-class sign strength multipliers.
    progress: show a progress bar with ETA.
    max_chunks: stop after this many chunks (for tests of interrupted
      builds); the cache is then left incomplete.
    name: the cache's folder (and bar) name: the dataset's.

  Returns:
    The cache folder (complete unless ``max_chunks`` stopped it).
  """
  fp = _fingerprint(table, size, seed, visibility)
  folder = cache_path(cache_dir or io.cache_dir(), size, seed, fp, name)
  if _is_complete(folder, fp):
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  # One builder at a time (runs started together, a grid beside a
  # stacking run); the others wait here and then find the cache complete.
  with open(folder / "build.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      return _build_locked(
        table,
        folder,
        fp,
        size=size,
        seed=seed,
        workers=workers,
        chunk_size=chunk_size,
        visibility=visibility,
        progress=progress,
        max_chunks=max_chunks,
        name=name,
      )
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(
  table,
  folder,
  fp,
  *,
  size,
  seed,
  workers,
  chunk_size,
  visibility,
  progress,
  max_chunks,
  name,
) -> pathlib.Path:
  n = len(table)
  meta_path, done_path = folder / "meta.json", folder / "done.npy"
  images_path = folder / "images.u8"
  if _is_complete(folder, fp):
    return folder
  if meta_path.exists():  # complete but for other parameters: rebuild
    meta_path.unlink()
    done_path.unlink(missing_ok=True)
  expected_bytes = n * size * size * 3
  if not images_path.exists() or images_path.stat().st_size != expected_bytes:
    with open(images_path, "wb") as f:
      f.truncate(expected_bytes)
    done_path.unlink(missing_ok=True)
  fp_path = folder / "fingerprint"
  if not fp_path.exists() or fp_path.read_text() != fp:
    done_path.unlink(missing_ok=True)
    io.atomic_write_bytes(fp_path, fp.encode())
  done = np.load(done_path) if done_path.exists() else np.zeros(n, bool)
  todo = np.flatnonzero(~done)
  chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
  if max_chunks is not None:
    chunks = chunks[:max_chunks]
  workers = workers or os.cpu_count() or 1
  bar = None
  if progress:
    try:
      from tqdm.auto import tqdm
    except ImportError:  # a bare environment: no bar, same result
      tqdm = None
    if tqdm is not None:
      bar = tqdm(
        total=n,
        initial=int(done.sum()),
        unit="img",
        desc=f"rendering {name} {size}px (synthetic)",
      )
  t0 = time.perf_counter()
  args = (
    table,
    size,
    seed,
    dict(visibility or {}) or None,
    str(images_path),
    n,
  )
  if workers <= 1:
    _init_worker(*args)
    results = map(_render_chunk, chunks)
    pool = None
  else:
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=args)
    results = pool.imap_unordered(_render_chunk, chunks)
  try:
    for chunk in results:
      done[chunk] = True
      _save_done(done_path, done)
      if bar is not None:
        bar.update(len(chunk))
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    if bar is not None:
      bar.close()
    _WORKER.clear()
  if done.all():
    meta = {
      "name": name,
      "synthetic": True,
      "note": SYNTHETIC_NOTE if name == NAME else PRETRAIN_NOTE,
      "images": n,
      "size": size,
      "seed": seed,
      "renderer_version": synth_render.RENDERER_VERSION,
      "fingerprint": fp,
      "build_seconds": time.perf_counter() - t0,
      "workers": workers,
    }
    io.atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
  return folder


def _is_complete(folder: pathlib.Path, fingerprint: str) -> bool:
  meta_path = folder / "meta.json"
  if not meta_path.exists():
    return False
  try:
    meta = json.loads(meta_path.read_text())
  except json.JSONDecodeError:
    return False
  return meta.get("fingerprint") == fingerprint


def open_cache(
  table: ImageTable,
  cache_dir=None,
  *,
  size: int = 512,
  seed: int = 0,
  visibility: Mapping | None = None,
  name: str = NAME,
) -> np.memmap:
  """The complete cache as a read-only memmap; raises if it is incomplete."""
  fp = _fingerprint(table, size, seed, visibility)
  folder = cache_path(cache_dir or io.cache_dir(), size, seed, fp, name)
  if not _is_complete(folder, fp):
    raise FileNotFoundError(
      f"{NAME}: no complete {size}px cache in {folder} (an interrupted "
      "build is finished by build_cache or `python -m agt_jax.data.synth "
      "build`)."
    )
  return np.memmap(
    folder / "images.u8", np.uint8, "r", shape=(len(table), size, size, 3)
  )


def load_synth(
  cache_dir=None,
  *,
  size: int = 512,
  seed: int = 0,
  ignorable_policy: str = "as_normal",
  build: bool = True,
  workers: int | None = None,
  progress: bool = True,
  visibility: Mapping | None = None,
  max_images: int | None = None,
):
  """``(table, ArrayImageSource)`` of odir5k-synth (its first ``max_images``
  rows if given), building the cache first when needed."""
  return _cached(
    synth_table(ignorable_policy=ignorable_policy),
    cache_dir,
    size=size,
    seed=seed,
    build=build,
    workers=workers,
    progress=progress,
    visibility=visibility,
    max_images=max_images,
  )


def _cached(
  table: ImageTable,
  cache_dir,
  *,
  size: int,
  seed: int,
  build: bool = True,
  workers=None,
  progress: bool = True,
  visibility=None,
  max_images=None,
  name: str = NAME,
):
  """``(table, ArrayImageSource)`` of ``table``'s first ``max_images``
  rows, rendered into the cache ``name`` first when ``build``."""
  if max_images:
    table = table.take(np.arange(min(max_images, len(table))))
  if build:
    build_cache(
      table,
      cache_dir,
      size=size,
      seed=seed,
      workers=workers,
      progress=progress,
      visibility=visibility,
      name=name,
    )
  return table, ArrayImageSource(
    open_cache(
      table, cache_dir, size=size, seed=seed, visibility=visibility, name=name
    )
  )


# -- gallery -----------------------------------------------------------------


def gallery(
  path, *, size: int = 192, per_class: int = 4, multi: int = 4, seed: int = 0
) -> pathlib.Path:
  """Writes a PNG grid: ``per_class`` single-label examples per class, then
  ``multi`` multi-label images, each captioned with its labels."""
  from PIL import Image, ImageDraw

  table = synth_table()
  names = table.class_names
  single = table.labels.sum(1) == 1
  picks, captions = [], []
  for c, name in enumerate(names):
    idx = np.flatnonzero(single & (table.labels[:, c] == 1))
    idx = idx[np.linspace(0, len(idx) - 1, per_class).astype(int)]
    picks += idx.tolist()
    captions += [name] * per_class
  idx = np.flatnonzero(table.labels.sum(1) >= 2)
  idx = idx[np.linspace(0, len(idx) - 1, multi).astype(int)]
  picks += idx.tolist()
  captions += [
    "+".join(n for n, v in zip(names, table.labels[i]) if v) for i in idx
  ]
  cols = per_class
  rows_n = -(-len(picks) // cols)
  pad, head = 4, 28
  canvas = Image.new(
    "RGB",
    (cols * (size + pad) + pad, head + rows_n * (size + pad) + pad),
    (255,) * 3,
  )
  draw = ImageDraw.Draw(canvas)
  draw.text(
    (pad, 8),
    f"{NAME} - SYNTHETIC images rendered from real ODIR-5K " "labels",
    fill=(0, 0, 0),
  )
  for k, (i, cap) in enumerate(zip(picks, captions)):
    img = synth_render.render(row(table, i), size, seed=seed)
    x = pad + (k % cols) * (size + pad)
    y = head + (k // cols) * (size + pad)
    canvas.paste(Image.fromarray(img), (x, y))
    kws = str(table.keywords[i]).split(";")[0][:28]
    draw.rectangle((x, y, x + size, y + 14), fill=(0, 0, 0))
    draw.text((x + 3, y + 2), f"{cap}: {kws}", fill=(255, 255, 255))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  canvas.save(path, optimize=True)
  return path


def export_images(
  out,
  *,
  patients: int = 20,
  run=None,
  size: int = 512,
  seed: int = 0,
) -> dict:
  """Writes the photographs of ``patients`` patients as ODIR names them
  (``<id>_left.jpg``, ``<id>_right.jpg``), ``labels.csv`` (image, patient,
  the image-level labels) and ``SYNTHETIC.txt``: a folder to try
  ``agt_jax.predict`` on. With ``run`` (a run directory), the patients are
  that run's held-out test patients (its ``folds.json``); else the table's
  first."""
  import csv

  from PIL import Image

  table = synth_table()
  ids = list(dict.fromkeys(table.patient_ids.tolist()))
  if run is not None:
    folds = pathlib.Path(run) / "folds.json"
    if not folds.is_file():
      raise FileNotFoundError(
        f"{folds}: not found; --run takes a run directory of "
        f"{NAME} (it writes folds.json)."
      )
    info = json.loads(folds.read_text())
    if info.get("dataset") != NAME:
      raise ValueError(
        f"{folds}: a run on {info.get('dataset')!r}, not {NAME}."
      )
    ids = info["test_patients"]
  ids = ids[:patients]
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  want = set(ids)
  rows = [
    i for i in range(len(table.image_ids)) if table.patient_ids[i] in want
  ]
  with open(out / "labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "patient", *table.class_names])
    for i in rows:
      name = f"{table.image_ids[i]}.jpg"
      img = synth_render.render(row(table, i), size, seed=seed)
      Image.fromarray(img).save(out / name, quality=95)
      w.writerow([name, table.patient_ids[i], *table.labels[i].tolist()])
  (out / "SYNTHETIC.txt").write_text(
    f"{NAME}: SYNTHETIC images, procedurally rendered from real ODIR-5K "
    "image-level labels (labels.csv). Scores on them say nothing about "
    "real fundus photographs.\n"
  )
  return {"out": str(out), "patients": len(ids), "images": len(rows)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    prog="python -m agt_jax.data.synth", description=__doc__.split("\n")[0]
  )
  sub = p.add_subparsers(dest="cmd", required=True)
  b = sub.add_parser("build", help="render the image cache")
  b.add_argument("--cache-dir", type=pathlib.Path, default=None)
  b.add_argument("--size", type=int, default=512)
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--workers", type=int, default=None)
  g = sub.add_parser("gallery", help="write a PNG grid of examples")
  g.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("odir5k_synth_gallery.png")
  )
  g.add_argument("--size", type=int, default=192)
  e = sub.add_parser(
    "export", help="write photographs named as ODIR does, to try predict on"
  )
  e.add_argument("--out", type=pathlib.Path, required=True)
  e.add_argument("--patients", type=int, default=20)
  e.add_argument(
    "--run", default=None, help="take this run's held-out test patients"
  )
  e.add_argument("--size", type=int, default=512)
  a = p.parse_args(argv)
  if a.cmd == "export":
    t0 = time.perf_counter()
    info = export_images(a.out, patients=a.patients, run=a.run, size=a.size)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps({**info, "synthetic": True}))
    return
  if a.cmd == "build":
    t0 = time.perf_counter()
    folder = build_cache(
      synth_table(), a.cache_dir, size=a.size, seed=a.seed, workers=a.workers
    )
    print(
      json.dumps(
        {
          "cache": str(folder),
          "seconds": time.perf_counter() - t0,
          "synthetic": True,
        }
      )
    )
  else:
    print(gallery(a.out, size=a.size))


if __name__ == "__main__":
  main()
