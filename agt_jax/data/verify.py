"""Checks every image file of a real dataset before training starts.

A missing, corrupt or truncated image would otherwise surface mid-training,
inside a Grain worker, as a long traceback. :func:`check_images` opens every
file in parallel (threads: PIL releases the GIL while decoding), reads its
header, and decodes it at reduced scale (JPEG DCT scaling via
``Image.draft``), which still reads the whole compressed stream, so a
truncated file fails. Results are cached by ``(path, size, mtime)``, so the
check runs once per file version.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import warnings

import numpy as np
from PIL import Image

from agt_jax import io
from agt_jax.data.errors import BadImagesError

CACHE_VERSION = 1
_SHOWN = 20


def _check(path: str) -> str | None:
  """None if ``path`` decodes, else the reason."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        im.draft("RGB", (64, 64))
        im.load()
        if im.width < 1 or im.height < 1:
          return "empty image"
  except FileNotFoundError:
    return "missing"
  except Exception as e:  # PIL raises several types for bad files
    return f"does not decode ({type(e).__name__}: {e})"
  return None


def _key(path: str) -> list | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [st.st_size, st.st_mtime_ns]


def check_images(
  paths, *, cache_file=None, workers: int | None = None, progress: bool = True
) -> list[dict]:
  """``[{"path", "reason"}]`` for every file in ``paths`` that is missing or
  does not decode; ``[]`` when all are good.

  Args:
    paths: image file paths.
    cache_file: JSON file remembering files already found good (keyed by
      path, size and mtime); ``None`` checks everything.
    workers: threads (default: CPU count, at most 16).
    progress: show a progress bar (tqdm) when files are checked.
  """
  paths = [str(p) for p in paths]
  cache = {}
  if cache_file is not None and pathlib.Path(cache_file).exists():
    try:
      saved = json.loads(pathlib.Path(cache_file).read_text())
      if saved.get("version") == CACHE_VERSION:
        cache = saved["good"]
    except (json.JSONDecodeError, KeyError):
      cache = {}
  keys = {p: _key(p) for p in paths}
  todo = [p for p in paths if keys[p] is None or cache.get(p) != keys[p]]
  bad = {p: "missing" for p in todo if keys[p] is None}
  todo = [p for p in todo if keys[p] is not None]
  if todo:
    bar = None
    if progress:
      try:
        from tqdm.auto import tqdm

        bar = tqdm(
          total=len(todo),
          desc="checking image files",
          unit="file",
          mininterval=1.0,
        )
      except ImportError:
        bar = None
    n = workers or min(16, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
      for p, reason in zip(todo, pool.map(_check, todo, chunksize=16)):
        if reason is None:
          cache[p] = keys[p]
        else:
          bad[p] = reason
        if bar is not None:
          bar.update(1)
    if bar is not None:
      bar.close()
    if cache_file is not None:
      cache_file = pathlib.Path(cache_file)
      cache_file.parent.mkdir(parents=True, exist_ok=True)
      io.atomic_write_text(
        cache_file, json.dumps({"version": CACHE_VERSION, "good": cache})
      )
  return [{"path": p, "reason": bad[p]} for p in paths if p in bad]


def bad_images_message(name: str, bad: list[dict], total: int) -> str:
  """One line: how many files are bad, up to 20 of them, and what to do."""
  shown = "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:_SHOWN])
  more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
  return (
    f"{name}: {len(bad)} of {total} image files are missing or do not "
    f"decode: {shown}{more}. Replace them, or pass --set "
    "skip_bad_images=true to train without them (the list is written "
    "to the workdir as skipped_images.json)."
  )


def verified(
  table, name: str, *, skip_bad: bool, cache_file=None, progress: bool = True
):
  """``table`` with every image file checked: raises
  :class:`~agt_jax.data.errors.BadImagesError` listing the bad files, or
  (``skip_bad``) drops their rows and records them in
  ``table.meta["skipped_images"]``."""
  bad = check_images(table.paths, cache_file=cache_file, progress=progress)
  if not bad:
    return table
  if not skip_bad:
    raise BadImagesError(bad_images_message(name, bad, len(table)))
  dropped = {b["path"] for b in bad}
  keep = np.array([str(p) not in dropped for p in table.paths])
  ids = dict(zip(map(str, table.paths), map(str, table.image_ids)))
  out = table.take(np.flatnonzero(keep))
  return dataclasses.replace(
    out,
    meta={
      **out.meta,
      "skipped_images": [{**b, "image_id": ids[b["path"]]} for b in bad],
    },
  )
