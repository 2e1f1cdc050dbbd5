"""Decoding, field-of-view cropping, resizing and augmentation of fundus images.

Host-side numpy/PIL: these run in Grain workers, not under jit.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image, ImageOps

from agt_jax.data.errors import ImageReadError


def read_image(path, *, at_least: int | None = None) -> np.ndarray:
  """Decodes an image file to uint8 `[H, W, 3]` RGB; names the file on error.

  The EXIF orientation is applied (a phone or camera photograph stored
  sideways comes out upright), grayscale and RGBA are converted, and 16-bit
  images are scaled to 8 bits (PIL's own conversion would clip them).
  ``at_least``: a JPEG is decoded at the smallest of libjpeg's DCT scales
  (1/2, 1/4, 1/8) that keeps both sides at least ``at_least`` pixels
  (``PIL.Image.draft``): a 2,000 px photograph meant for a 512 cache is
  decoded at 1/2 or 1/4 of the work. Other formats decode in full.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as im:
      if at_least and im.format == "JPEG":
        im.draft("RGB", (at_least, at_least))
      ImageOps.exif_transpose(im, in_place=True)
      if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise ImageReadError(f"image file not found: {path}") from None
  except Exception as e:  # PIL raises several types for corrupt files
    raise ImageReadError(f"cannot decode image {path}: {e}") from e


def fov_bbox(
  image: np.ndarray, *, threshold: int = 15
) -> tuple[int, int, int, int]:
  """``(top, bottom, left, right)`` of the circular field of view: the rows and
  columns whose brightest channel exceeds ``threshold`` somewhere. Falls back
  to the whole image when nothing is bright."""
  bright = image.max(axis=2) > threshold
  rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
  if len(rows) == 0 or len(cols) == 0:
    return 0, image.shape[0], 0, image.shape[1]
  return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_to_fov(image: np.ndarray, *, threshold: int = 15) -> np.ndarray:
  """Crops the black border around the field of view and pads the crop to a
  centred square (black), so resizing keeps the disc round."""
  t, b, l, r = fov_bbox(image, threshold=threshold)
  crop = image[t:b, l:r]
  h, w = crop.shape[:2]
  s = max(h, w)
  out = np.zeros((s, s, 3), np.uint8)
  out[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = crop
  return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Square resize with PIL (area-like filtering when shrinking)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  im = Image.fromarray(image)
  return np.asarray(
    im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
  )


def prepare_fundus(path, *, size: int = 512, fov: bool = True) -> np.ndarray:
  """File -> FOV crop -> `[size, size, 3]` uint8 (the paper resizes to 512)."""
  image = read_image(path)
  if fov:
    image = crop_to_fov(image)
  return resize(image, size)


def random_crop_flip(
  image: np.ndarray, crop: int, rng: np.random.Generator
) -> np.ndarray:
  """Training augmentation: a random ``crop`` square and a horizontal flip
  with probability 1/2 (paper §3.8: 512 -> random 448 crop)."""
  h, w = image.shape[:2]
  if crop > min(h, w):
    raise ValueError(f"crop {crop} is larger than the image {h}x{w}.")
  top = int(rng.integers(h - crop + 1))
  left = int(rng.integers(w - crop + 1))
  out = image[top : top + crop, left : left + crop]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def flip_rotate(
  image: np.ndarray,
  crop: int,
  rng: np.random.Generator,
  *,
  degrees: float = 15.0,
) -> np.ndarray:
  """Paper 001's training augmentation: horizontal and vertical flips (each
  with probability 1/2) and a rotation drawn uniformly from ±``degrees``
  (bilinear, black corners as the fundus background), then the central
  ``crop`` square, the same crop as evaluation."""
  out = image
  if rng.random() < 0.5:
    out = out[:, ::-1]
  if rng.random() < 0.5:
    out = out[::-1]
  angle = float(rng.uniform(-degrees, degrees))
  out = np.asarray(
    Image.fromarray(np.ascontiguousarray(out)).rotate(
      angle, resample=Image.Resampling.BILINEAR
    )
  )
  return center_crop(out, crop)


AUGMENTATIONS = ("crop_flip", "flip_rotate")


def center_crop(image: np.ndarray, crop: int) -> np.ndarray:
  """Evaluation: the central ``crop`` square."""
  h, w = image.shape[:2]
  if crop > min(h, w):
    raise ValueError(f"crop {crop} is larger than the image {h}x{w}.")
  top, left = (h - crop) // 2, (w - crop) // 2
  return np.ascontiguousarray(image[top : top + crop, left : left + crop])


@dataclasses.dataclass(frozen=True)
class FileImageSource:
  """Images read from files, FOV-cropped and resized to ``size`` on access.

  Files already at ``size`` x ``size`` (e.g. a prepared 512 copy) skip the
  crop and resize. ``reduced_decode`` decodes a JPEG at the smallest DCT
  scale that still covers ``size`` (:func:`read_image`'s ``at_least``); the
  field of view then spans nearly the decoded height, so the final resize
  still shrinks. Pixels differ from a full decode by the filtering only
  (``tests/test_data_images.py`` bounds it).
  """

  paths: tuple[str, ...]
  size: int = 512
  fov: bool = True
  reduced_decode: bool = True

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> np.ndarray:
    image = read_image(
      self.paths[int(i)], at_least=self.size if self.reduced_decode else None
    )
    if image.shape[:2] == (self.size, self.size):
      return image
    if self.fov:
      image = crop_to_fov(image)
    return resize(image, self.size)


@dataclasses.dataclass(frozen=True)
class ArrayImageSource:
  """Images from a `[n, S, S, 3]` uint8 array or memmap (a prepared cache)."""

  array: np.ndarray

  def __len__(self) -> int:
    return len(self.array)

  def __getitem__(self, i: int) -> np.ndarray:
    return np.asarray(self.array[int(i)])


@dataclasses.dataclass(frozen=True)
class ConcatSource:
  """The images of ``first`` then those of ``second`` (a split with
  generated images appended)."""

  first: object
  second: object

  def __len__(self) -> int:
    return len(self.first) + len(self.second)

  def __getitem__(self, i: int) -> np.ndarray:
    i = int(i)
    n = len(self.first)
    return self.first[i] if i < n else self.second[i - n]


@dataclasses.dataclass(frozen=True)
class SubsetSource:
  """Index ``i`` of a split -> image ``indices[i]`` of the full source."""

  source: object
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.source[int(self.indices[int(i)])]
