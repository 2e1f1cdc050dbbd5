"""Reduced-size JPEG decoding: what it decodes, and how close it stays."""

import numpy as np
import pytest
from PIL import Image

from agt_jax.data import images


def _fundus(path, h=800, w=1000, fmt="JPEG"):
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:h, :w]
  disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.48 * h) ** 2
  tex = rng.normal(0, 25, size=(h // 16 + 1, w // 16 + 1, 3))
  tex = np.kron(tex, np.ones((16, 16, 1)))[:h, :w]
  img = np.zeros((h, w, 3), np.uint8)
  img[disc] = np.clip(np.array([170, 80, 40]) + tex[disc], 0, 255)
  Image.fromarray(img).save(path, format=fmt, quality=92)
  return path


def test_at_least_picks_the_smallest_dct_scale_that_covers(tmp_path):
  p = _fundus(tmp_path / "a.jpg")
  assert images.read_image(p).shape == (800, 1000, 3)
  # 1/4 keeps 200 x 250 >= 200; 1/8 (100 x 125) would not.
  assert images.read_image(p, at_least=200).shape == (200, 250, 3)
  assert images.read_image(p, at_least=201).shape == (400, 500, 3)
  # A target above the file's size decodes it in full.
  assert images.read_image(p, at_least=900).shape == (800, 1000, 3)


def test_png_is_always_decoded_in_full(tmp_path):
  p = _fundus(tmp_path / "a.png", fmt="PNG")
  np.testing.assert_array_equal(
    images.read_image(p, at_least=200), images.read_image(p)
  )


@pytest.mark.parametrize("size", [112, 200, 512])
def test_reduced_decode_matches_a_full_decode_after_the_resize(tmp_path, size):
  """The prepared image differs from the full decode's by filtering only:
  a mean absolute difference under 2 grey levels (of 255)."""
  p = str(_fundus(tmp_path / "a.jpg"))
  full = images.FileImageSource((p,), size=size, reduced_decode=False)[0]
  fast = images.FileImageSource((p,), size=size)[0]
  assert fast.shape == full.shape == (size, size, 3)
  diff = np.abs(fast.astype(int) - full.astype(int))
  assert diff.mean() < 2.0, diff.mean()
  # and the disc sits in the same place (the FOV crop saw the same field):
  # its masks differ only along the rim, under 1% of the pixels.
  rim = (fast.max(-1) > 15) != (full.max(-1) > 15)
  assert rim.mean() < 0.01, rim.mean()
