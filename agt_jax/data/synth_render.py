"""Procedural fundus photographs driven by ODIR-5K keywords (odir5k-synth).

``render(row, size, seed=...)`` draws one colour fundus image: a circular field
of view, an optic disc placed by eye, a macula, arcades of arteries and veins,
an orange-red textured background, and the signs of every disease the row's
keywords name, each scaled by a severity. Every image also gets the same
nuisance distribution (field of view, exposure, white balance, blur, noise,
pigmentation, faint tessellation) whatever its label, so that only the lesions
carry the label.

Determinism: all randomness comes from ``numpy.random.Generator(PCG64)``
``random()`` draws (uniforms; normals are made by Box-Muller here), seeded by
``(seed, crc32(image id))``; drawing uses PIL primitives. The same inputs give
the same bytes across processes and runs.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from agt_jax.data import odir_keywords as kw

RENDERER_VERSION = "1"

# Per-class visibility knobs: multiply each class's sign strength.
DEFAULT_VISIBILITY = {
  "N": 1.0,
  "D": 1.0,
  "G": 1.0,
  "C": 1.0,
  "A": 1.0,
  "H": 1.0,
  "M": 1.0,
  "O": 1.0,
}
SUBTLE_FRACTION = 0.15  # share of positives rendered with severity < 0.15

# Colours (linear-ish RGB in [0, 1]).
_BG = np.array([0.78, 0.34, 0.13], np.float32)
_VEIN = np.array([0.42, 0.07, 0.05], np.float32)
_ARTERY = np.array([0.66, 0.17, 0.08], np.float32)
_DISC = np.array([0.98, 0.80, 0.52], np.float32)
_CUP = np.array([1.0, 0.88, 0.62], np.float32)
_HAEM = np.array([0.40, 0.03, 0.03], np.float32)
_EXUDATE = np.array([0.98, 0.88, 0.42], np.float32)
_CWS = np.array([0.93, 0.88, 0.80], np.float32)
_DRUSEN = np.array([0.95, 0.85, 0.50], np.float32)
_ATROPHY = np.array([0.93, 0.80, 0.62], np.float32)
_PIGMENT = np.array([0.18, 0.08, 0.05], np.float32)
_CNV = np.array([0.35, 0.30, 0.18], np.float32)
_WHITE = np.array([0.97, 0.95, 0.92], np.float32)


class _Rng:
  """Uniform-only wrapper: stable streams, explicit distributions.

  Uniforms are drawn in blocks (Python-level speed) from PCG64's ``random()``,
  whose output is fixed by the bit generator; normals use Box-Muller here.
  """

  _BLOCK = 1024

  def __init__(self, *key: int):
    self._g = np.random.Generator(
      np.random.PCG64(
        np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key])
      )
    )
    self._buf: list[float] = []

  def _next(self) -> float:
    if not self._buf:
      self._buf = self._g.random(self._BLOCK).tolist()[::-1]
    return self._buf.pop()

  def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * self._next()

  def chance(self, p: float) -> bool:
    return self._next() < p

  def int(self, lo: int, hi: int) -> int:
    """Integer in [lo, hi)."""
    return lo + min(int(self._next() * (hi - lo)), hi - lo - 1)

  def normal(self, mu: float = 0.0, sigma: float = 1.0) -> float:
    u1, u2 = self._next(), self._next()
    return mu + sigma * math.sqrt(-2 * math.log(1 - u1)) * math.cos(
      2 * math.pi * u2
    )

  def array(self, shape) -> np.ndarray:
    return self._g.random(shape, dtype=np.float64).astype(np.float32)


def image_seed(image_id: str, seed: int) -> tuple[int, int]:
  return seed, zlib.crc32(str(image_id).encode())


# -- severity from keywords --------------------------------------------------


def _d_stage(kws) -> float | None:
  stage = None
  for k in kws:
    if "proliferative diabetic" in k or (
      k.startswith("proliferative") and "non" not in k
    ):
      s = 0.95 if "severe" in k else 0.85
    elif "severe non" in k or "severe nonproliferative" in k:
      s = 0.7
    elif "moderate" in k and "retinopathy" in k and "hypertensive" not in k:
      s = 0.5
    elif "mild" in k and "retinopathy" in k and "hypertensive" not in k:
      s = 0.25
    elif "diabetic retinopathy" in k:
      s = 0.45 if "suspect" not in k else 0.2
    else:
      continue
    if "suspect" in k:
      s = min(s, 0.25)
    stage = s if stage is None else max(stage, s)
  return stage


def severities(
  keywords: str,
  labels,
  rng: _Rng,
  visibility: Mapping[str, float] | None = None,
) -> dict:
  """Per-class severity in [0, 1] for the positive classes of one image.

  Keyword grades set the range (e.g. mild NPDR low, PDR high); about
  ``SUBTLE_FRACTION`` of positives are made subtle (< 0.15).
  """
  vis = {**DEFAULT_VISIBILITY, **(visibility or {})}
  kws = kw.split_keywords(keywords)
  out = {}
  for c, present in zip(kw.ODIR_CLASSES, labels):
    if not present or c == "N":
      continue
    if c == "D":
      base = _d_stage(kws) or 0.45
      s = float(np.clip(base + rng.normal(0, 0.08), 0.1, 1.0))
    elif c == "G":
      suspect = any("suspected glaucoma" in k for k in kws)
      s = rng.u(0.2, 0.45) if suspect else rng.u(0.4, 1.0)
    elif c == "C":
      suspect = any("suspected cataract" in k for k in kws)
      s = rng.u(0.2, 0.4) if suspect else rng.u(0.3, 1.0)
    else:
      s = rng.u(0.3, 1.0)
    if rng.chance(SUBTLE_FRACTION):
      s = rng.u(0.03, 0.15)
    if s * vis[c] > 0:  # visibility 0 removes the class's signs
      out[c] = s * vis[c]
  return out


# -- the canvas --------------------------------------------------------------


@dataclasses.dataclass
class _Geometry:
  size: int
  cx: float
  cy: float
  radius: float
  side: int  # +1: disc on the viewer's right (right eye)
  disc: tuple  # (y, x)
  disc_r: float  # disc radius (horizontal)
  disc_ratio: float  # vertical / horizontal
  disc_angle: float
  fovea: tuple


def _geometry(size: int, eye: str, rng: _Rng, offset: bool) -> _Geometry:
  radius = size * rng.u(0.44, 0.49)
  cx = size / 2 + size * rng.u(-0.02, 0.02)
  cy = size / 2 + size * rng.u(-0.02, 0.02)
  if offset:
    cx += size * rng.u(0.12, 0.22) * (1 if rng.chance(0.5) else -1)
  side = 1 if eye == "right" else -1
  fovea = (
    cy + radius * rng.u(0.02, 0.08),
    cx - side * radius * rng.u(0.08, 0.16),
  )
  dd = 2 * 0.135 * radius
  ang = math.radians(rng.u(4, 10))  # fovea 4-10 degrees below the disc
  dist = dd * rng.u(2.3, 2.6)
  disc = (
    fovea[0] - dist * math.sin(ang),
    fovea[1] + side * dist * math.cos(ang),
  )
  return _Geometry(
    size,
    cx,
    cy,
    radius,
    side,
    disc,
    dd / 2 * rng.u(0.75, 1.3),
    rng.u(1.05, 1.15),
    0.0,
    fovea,
  )


def _upsampled_noise(rng: _Rng, size: int, cells: int) -> np.ndarray:
  small = Image.fromarray(rng.array((cells, cells)), "F")
  return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))


def _stamp(
  img: np.ndarray,
  cy: float,
  cx: float,
  ry: float,
  rx: float,
  color,
  alpha: float,
  *,
  soft: float = 0.35,
  angle: float = 0.0,
  ring: float = 0.0,
) -> None:
  """Blends an elliptical spot into ``img`` in place (local window only)."""
  s = img.shape[0]
  r = max(ry, rx) * (1 + soft) + 1
  y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, s)
  x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, s)
  if y0 >= y1 or x0 >= x1:
    return
  yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
  xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
  if angle:
    ca, sa = math.cos(angle), math.sin(angle)
    yy, xx = ca * yy - sa * xx, sa * yy + ca * xx
  d = np.sqrt((yy / max(ry, 0.5)) ** 2 + (xx / max(rx, 0.5)) ** 2)
  if ring:
    d = np.abs(d - 1.0) / ring
  m = np.clip((1.0 + soft - d) / max(soft, 1e-3), 0.0, 1.0) * alpha
  win = img[y0:y1, x0:x1]
  color = np.asarray(color, np.float32)
  if img.dtype == np.uint8:
    w = win.astype(np.float32)
    w += (color * 255.0 - w) * m[..., None]
    win[...] = np.clip(w + 0.5, 0, 255).astype(np.uint8)
  else:
    win += (color - win) * m[..., None]


class _Vessels:
  """Artery and vein trees as polylines (Murray-like width decay)."""

  def __init__(self, size: int):
    self.size = size
    self.segments = []  # (kind, points, width)

  def grow(
    self,
    rng: _Rng,
    kind: str,
    y: float,
    x: float,
    theta: float,
    width: float,
    length: float,
    curve: float,
    depth: int,
    tortuosity: float = 0.0,
    avoid=None,
  ) -> None:
    pts = [(x, y)]
    step = self.size * 0.015
    n = max(int(length / step), 2)
    next_branch = rng.int(4, 10)
    for i in range(n):
      theta += curve + rng.normal(0, 0.03 + tortuosity)
      if avoid is not None:  # arc around the fovea
        fy, fx, fr = avoid
        dy, dx = y - fy, x - fx
        dist = math.hypot(dy, dx)
        if dist < fr * 2.2:
          away = math.atan2(dy, dx)
          diff = (away - theta + math.pi) % (2 * math.pi) - math.pi
          theta += 0.2 * diff * (1 - dist / (fr * 2.2))
      y += step * math.sin(theta)
      x += step * math.cos(theta)
      pts.append((x, y))
      if depth > 0 and i == next_branch:
        next_branch = i + rng.int(6, 14)
        sign = 1 if rng.chance(0.5) else -1
        child = width * rng.u(0.55, 0.75)
        self.grow(
          rng,
          kind,
          y,
          x,
          theta + sign * rng.u(0.5, 1.0),
          child,
          length * rng.u(0.25, 0.5),
          rng.normal(0, 0.02),
          depth - 1,
          tortuosity,
          None,
        )
        width = (max(width**3 - child**3, (0.5 * width) ** 3)) ** (1 / 3)
    self.segments.append((kind, pts, width))

  def draw(
    self, image: Image.Image, artery_scale: float, artery_color, vein_color
  ) -> None:
    d = ImageDraw.Draw(image)
    a_rgb = tuple(int(v * 255) for v in artery_color)
    v_rgb = tuple(int(v * 255) for v in vein_color)
    # Veins first, then arteries on top with a central light reflex.
    for kind, pts, width in sorted(self.segments, key=lambda t: t[0] == "art"):
      if kind == "vein":
        d.line(pts, fill=v_rgb, width=max(int(round(width)), 1), joint="curve")
      else:
        w = max(int(round(width * artery_scale)), 1)
        d.line(pts, fill=a_rgb, width=w, joint="curve")
        if w >= 3:
          reflex = tuple(min(255, int(c * 1.25)) for c in a_rgb)
          d.line(pts, fill=reflex, width=1)


# -- the renderer ------------------------------------------------------------


def render(
  row: Mapping,
  size: int,
  *,
  seed: int = 0,
  visibility: Mapping[str, float] | None = None,
  annotations: dict | None = None,
) -> np.ndarray:
  """One synthetic fundus image for a label-table row.

  Args:
    row: mapping with ``image`` (id), ``eye``, ``keywords`` (``;``-joined),
      ``labels`` (8 ints, N D G C A H M O) and optionally ``has_ignorable``.
    size: output side in pixels.
    seed: global seed (the dataset's), combined with the image id.
    visibility: per-class multipliers of sign strength.
    annotations: a dict to fill with what the renderer knows it drew: the
      FGADR-style lesion masks ``{lesion: bool [size, size]}`` for
      :data:`LESIONS` (IRMA is never drawn: always empty) and ``"dr_grade"``
      (:func:`dr_grade`). The image is the same with or without it.

  Returns:
    `[size, size, 3]` uint8 RGB.
  """
  rng = _Rng(*image_seed(row["image"], seed))
  labels = [int(v) for v in row["labels"]]
  kws = kw.split_keywords(row.get("keywords", ""))
  sev = severities(row.get("keywords", ""), labels, rng, visibility)
  quality = set(kws) & kw.QUALITY_KEYWORDS
  offset = bool(
    quality & {"image offset", "optic disk photographically invisible"}
  )
  geo = _geometry(size, row.get("eye", "left"), rng, offset)
  s = size
  fy, fx = geo.fovea
  mr = geo.disc_r * 2.4

  # Background at quarter size, resized once: pigmentation, fBm texture with a
  # fine "sensor" octave, vignetting and the darker macula (one distribution
  # for every class).
  pig = rng.u(0.8, 1.15)
  tint = np.array(
    [rng.u(0.95, 1.05), rng.u(0.85, 1.15), rng.u(0.8, 1.2)], np.float32
  )
  q = max(s // 4, 8)
  tex = (
    0.5 * _upsampled_noise(rng, q, 6)
    + 0.25 * _upsampled_noise(rng, q, 18)
    + 0.15 * _upsampled_noise(rng, q, 48)
    + 0.1 * rng.array((q, q))
  )
  k = s / q
  qy = (np.arange(q, dtype=np.float32)[:, None] + 0.5) * k
  qx = (np.arange(q, dtype=np.float32)[None, :] + 0.5) * k
  r2 = ((qy - geo.cy) ** 2 + (qx - geo.cx) ** 2) / geo.radius**2
  mac = rng.u(0.3, 0.5) * np.exp(
    -((qy - fy) ** 2 + (qx - fx) ** 2) / (2 * (1.1 * mr) ** 2)
  )
  tex_amp = rng.u(0.2, 0.75)
  tilt = rng.u(0.0, 0.25)  # uneven illumination, any direction
  ang = rng.u(0, 2 * math.pi)
  grad = tilt * (
    ((qy - geo.cy) * math.sin(ang) + (qx - geo.cx) * math.cos(ang)) / geo.radius
  )
  shade_q = (
    (1.0 - 0.35 * r2)
    * (1.0 - tex_amp / 2 + tex_amp * tex)
    * (1.0 - mac)
    * (1.0 + grad)
  )
  shade = np.asarray(
    Image.fromarray(shade_q.astype(np.float32), "F").resize(
      (s, s), Image.Resampling.BILINEAR
    )
  )

  # Choroidal tessellation: faint in a quarter of all images; strong in M and
  # in the O keyword "tessellated fundus".
  tess = rng.u(0.1, 0.5) if rng.chance(0.35) else 0.0
  if "M" in sev:
    tess = max(tess, 0.3 + 0.5 * sev["M"])
  if "tessellated fundus" in kws:
    tess = max(tess, rng.u(0.4, 0.9))
  if tess > 0:
    m = _tessellation_mask(rng, s)
    # Mean-preserving: stripes add contrast, not global darkness.
    shade = shade * (1.0 - 0.5 * tess * (m - float(m.mean())))
  base = _BG * tint * pig * 255.0
  img = np.clip(shade[..., None] * base, 0, 255).astype(np.uint8)
  _stamp(img, fy, fx, 1.3 * s / 512, 1.3 * s / 512, _WHITE, 0.6, soft=0.8)

  # Optic disc and cup; the vessels cross both, as in real photographs (a
  # cup painted over them would also erase edges, a global shortcut).
  _disc(img, rng, geo, sev, kws)
  _cup(img, rng, geo, sev)

  # Vessels: four arcades. Hypertension narrows and straightens-then-twists
  # the arterioles, brightens their reflex and nicks the veins.
  h = sev.get("H", 0.0)
  vessels = _Vessels(s)
  dy, dx = geo.disc
  base_w = s * 0.013 * rng.u(0.9, 1.1)
  for kind, wscale in (("vein", 1.0), ("art", 0.7)):
    for vert in (-1, 1):
      off = 0.2 * geo.disc_r * (1 if kind == "art" else -1)
      y0 = dy + vert * geo.disc_r * 0.3
      theta0 = math.atan2(vert * 1.0, -geo.side * 0.5)
      vessels.grow(
        rng,
        kind,
        y0,
        dx + off,
        theta0,
        base_w * wscale,
        geo.radius * 1.7,
        vert * geo.side * 0.024,
        2,
        0.03 * h,
        (fy, fx, mr),
      )
      vessels.grow(
        rng,
        kind,
        y0,
        dx + off,
        math.atan2(vert * 1.0, geo.side * 0.7),
        base_w * wscale * 0.65,
        geo.radius * 0.8,
        0.0,
        2,
        0.03 * h,
      )
  canvas = Image.fromarray(img)
  vessels.draw(canvas, 1.0 - 0.35 * h, _ARTERY * (1 + 0.12 * h), _VEIN)
  img = np.array(canvas)
  if h > 0:
    _av_nicking(img, rng, vessels, h)

  _distractors(img, rng, geo)

  # Disease signs.
  masks = None
  if annotations is not None:
    masks = {k: np.zeros((s, s), bool) for k in LESIONS}
    annotations["dr_grade"] = dr_grade(sev.get("D"))
  if "D" in sev:
    _diabetic(img, rng, geo, sev["D"], masks)
  if "A" in sev:
    _amd(img, rng, geo, sev["A"], kws)
  if h > 0.6:
    _hypertensive_lesions(img, rng, geo, h)
  if "M" in sev:
    _myopia(img, rng, geo, sev["M"])
  if "O" in sev:
    _other(img, rng, geo, sev["O"], kws)

  # Camera: exposure, media haze (cataract), gamma, white balance as per-
  # channel lookup tables; then the field-of-view mask, dust and blur.
  blur = rng.u(0.4, 1.2) if rng.chance(0.15) else 0.0
  veil = rng.u(0.03, 0.15) if rng.chance(0.12) else 0.0
  if "C" in sev:
    blur = max(blur, 0.5 + 2.5 * sev["C"])
    veil = max(veil, 0.05 + 0.35 * sev["C"])
  if {"refractive media opacity", "vitreous degeneration"} & set(kws):
    blur = max(blur, rng.u(0.8, 2.0))
    veil = max(veil, rng.u(0.05, 0.2))
  exposure = rng.u(0.85, 1.15)
  if "low image quality" in quality:
    exposure *= rng.u(0.5, 0.7)
    blur = max(blur, rng.u(1.0, 2.5))
  gamma = rng.u(0.9, 1.1)
  levels = np.arange(256, dtype=np.float32) / 255.0
  haze = np.array([0.95, 0.78, 0.6], np.float32)
  for c in range(3):
    lut = np.clip(levels * exposure * (1 - veil) + haze[c] * veil, 0, 1)
    img[..., c] = np.take(
      (lut**gamma * 255 + 0.5).astype(np.uint8), img[..., c]
    )
  # Sensor noise, its level varying per image (same law for every class).
  noise = rng.u(0.0, 7.0)
  if noise > 0.5:
    tile = _noise_tile(seed)
    oy, ox = (
      rng.int(0, _TILE - s + 1) if s < _TILE else 0,
      rng.int(0, _TILE - s + 1) if s < _TILE else 0,
    )
    n = tile[oy : oy + s, ox : ox + s] * noise
    if n.shape != (s, s):  # images larger than the tile: repeat it
      n = np.resize(tile, (s, s)) * noise
    img = np.clip(img + n[..., None], 0, 255).astype(np.uint8)
  fov = Image.new("L", (s, s))
  ImageDraw.Draw(fov).ellipse(
    (
      geo.cx - geo.radius,
      geo.cy - geo.radius,
      geo.cx + geo.radius,
      geo.cy + geo.radius,
    ),
    fill=1,
  )
  img *= np.asarray(fov)[..., None]
  if row.get("has_ignorable") and "lens dust" in kws:
    _lens_dust(img, s, seed)
  if blur > 0:
    img = _blur(img, blur * s / 512)
  if masks is not None:  # lesions exist inside the field of view only
    inside = np.asarray(fov, bool)
    annotations.update({k: m & inside for k, m in masks.items()})
  return img


_TILE = 1024
_NOISE_TILES: dict = {}


def _noise_tile(seed: int) -> np.ndarray:
  """A `[1024, 1024]` zero-mean noise field per dataset seed; each image
  takes a random window of it (cheaper than fresh per-pixel noise)."""
  if seed not in _NOISE_TILES:
    _NOISE_TILES[seed] = (_Rng(seed, 0x5E50).array((_TILE, _TILE)) - 0.5) * 2
  return _NOISE_TILES[seed]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur; strong blurs run at half resolution (4x cheaper)."""
  if sigma < 0.3:
    return img
  im = Image.fromarray(img)
  if sigma < 0.9:
    return np.asarray(im.filter(ImageFilter.GaussianBlur(sigma)))
  s = img.shape[0]
  half = im.resize((s // 2, s // 2), Image.Resampling.BILINEAR)
  half = half.filter(ImageFilter.GaussianBlur(sigma / 2))
  return np.asarray(half.resize((s, s), Image.Resampling.BILINEAR))


def _distractors(img, rng, geo):
  """Nuisance shared by every class: nerve-fibre-layer reflex sheen along the
  arcades, pigment clumps and bright specks."""
  px = img.shape[0] / 512
  dy, dx = geo.disc
  if rng.chance(0.4):
    for _ in range(rng.int(2, 7)):
      a = rng.u(-0.9, 0.9) + (math.pi / 2 if rng.chance(0.5) else -math.pi / 2)
      d = geo.disc_r * rng.u(1.5, 4.0)
      _stamp(
        img,
        dy + d * math.sin(a),
        dx - geo.side * d * abs(math.cos(a)),
        px * rng.u(4, 8),
        px * rng.u(15, 30),
        _WHITE,
        rng.u(0.08, 0.2),
        soft=1.5,
        angle=rng.u(0, math.pi),
      )
  if rng.chance(0.3):
    for _ in range(rng.int(1, 6)):
      y, x = _posterior_pole(rng, geo, 0.9)
      r = px * rng.u(1.5, 3.5)
      _stamp(img, y, x, r, r, _PIGMENT, rng.u(0.4, 0.8), soft=0.5)
  if rng.chance(0.3):
    for _ in range(rng.int(1, 8)):
      y, x = _posterior_pole(rng, geo, 0.9)
      r = px * rng.u(1.0, 2.5)
      _stamp(img, y, x, r, r, _WHITE, rng.u(0.3, 0.7), soft=0.6)
  if rng.chance(0.35):  # vessel stubs seen end-on: red dots like MAs
    for _ in range(rng.int(1, 5)):
      y, x = _posterior_pole(rng, geo, 0.9)
      r = px * rng.u(0.8, 1.7)
      _stamp(img, y, x, r, r, _HAEM, rng.u(0.25, 0.6), soft=0.4)


def _tessellation_mask(rng, s) -> np.ndarray:
  """`[s, s]` in [0, 1]: dark stripes between choroidal vessels."""
  layer = Image.new("L", (s, s))
  d = ImageDraw.Draw(layer)
  for _ in range(30):
    y, x = rng.u(0, s), rng.u(0, s)
    theta = rng.u(0, 2 * math.pi)
    pts = [(x, y)]
    for _ in range(10):
      theta += rng.normal(0, 0.35)
      y += s * 0.03 * math.sin(theta)
      x += s * 0.03 * math.cos(theta)
      pts.append((x, y))
    d.line(pts, fill=255, width=max(int(s * 0.014), 1), joint="curve")
  small = layer.resize((s // 2, s // 2), Image.Resampling.BILINEAR)
  return np.asarray(
    small.resize((s, s), Image.Resampling.BILINEAR), np.float32
  ) * (1.0 / 255)


def _av_nicking(img, rng, vessels, h):
  """Gaps in veins next to arterioles (AV nicking), more with severity."""
  s = img.shape[0]
  arts = [p for k, p, w in vessels.segments if k == "art"]
  for _ in range(int(2 + 8 * h)):
    pts = arts[rng.int(0, len(arts))]
    x, y = pts[rng.int(0, len(pts))]
    if not (0 <= y < s and 0 <= x < s):
      continue
    bg = img[int(y), int(x)].astype(np.float32) / 255 * 1.6
    r = s * 0.01
    _stamp(
      img,
      y,
      x,
      r,
      r * 1.8,
      np.clip(bg, 0, 1),
      0.4 * h,
      soft=0.6,
      angle=rng.u(0, math.pi),
    )


def _disc(img, rng, geo, sev, kws):
  dy, dx = geo.disc
  r = geo.disc_r
  ratio, angle = geo.disc_ratio, 0.0
  if "M" in sev:  # tilted, oval disc
    ratio = 1.15 + 0.35 * sev["M"]
    angle = rng.u(-0.4, 0.4)
  geo.disc_ratio, geo.disc_angle = ratio, angle
  _stamp(
    img,
    dy,
    dx,
    r * ratio,
    r,
    _DISC * rng.u(0.78, 1.0),
    0.9,
    soft=0.3,
    angle=angle,
  )
  if "G" in sev and rng.chance(0.3):  # peripapillary atrophy in glaucoma
    _stamp(
      img,
      dy,
      dx - geo.side * r * 0.9,
      r * 0.9,
      r * 0.35,
      _ATROPHY,
      0.5,
      soft=0.4,
    )
  if "myelinated nerve fibers" in kws:
    for _ in range(6):
      a = rng.u(0, 2 * math.pi)
      _stamp(
        img,
        dy + r * 1.4 * math.sin(a),
        dx + r * 1.4 * math.cos(a),
        r * 0.8,
        r * 0.3,
        _WHITE,
        0.7,
        soft=0.8,
        angle=a,
      )


def _cup(img, rng, geo, sev):
  """Pale cup over the vessels' origin; glaucoma enlarges it vertically."""
  dy, dx = geo.disc
  r = geo.disc_r
  # Physiological cups scale with the disc: big discs have big cups, so cup
  # area alone does not tell glaucoma (the cup-to-disc ratio and shape do).
  disc_scale = geo.disc_r / (0.135 * geo.radius)
  cdr, elong = float(np.clip(rng.u(0.1, 0.45) * disc_scale**1.5, 0.1, 0.6)), 1.0
  if "G" in sev:
    g = sev["G"]
    cdr = 0.5 + 0.4 * g
    elong = 1.0 + 0.3 * g
    if rng.chance(0.1):  # splinter haemorrhage at the rim
      _stamp(
        img,
        dy + r * geo.disc_ratio * 0.9,
        dx + r * 0.3,
        r * 0.25,
        r * 0.06,
        _HAEM,
        0.8,
        soft=0.3,
        angle=rng.u(-0.3, 0.3),
      )
  cr = r * cdr
  _stamp(
    img,
    dy,
    dx,
    cr * geo.disc_ratio * elong,
    cr,
    _CUP,
    rng.u(0.45, 0.75),
    soft=0.4,
    angle=geo.disc_angle,
  )


def _posterior_pole(rng, geo, spread=0.55):
  fy, fx = geo.fovea
  a = rng.u(0, 2 * math.pi)
  d = geo.radius * spread * math.sqrt(rng.u(0.02, 1.0))
  return fy + d * math.sin(a), fx + d * math.cos(a)


# FGADR's six lesion masks, in its folder order (agt_jax.data.fgadr).
LESIONS = ("MA", "HE", "EX", "SE", "IRMA", "NV")


def dr_grade(s_d: float | None) -> int:
  """The DR grade (0-4) an image's drawn diabetic signs stand for: none 0;
  microaneurysms only (severity <= 0.4) 1; haemorrhages and exudates 2 and
  3 (<= 0.6, <= 0.8); neovascular tufts 4."""
  if s_d is None:
    return 0
  return 1 + int(s_d > 0.4) + int(s_d > 0.6) + int(s_d > 0.8)


def _lesion(img, masks, kind, *args, **kwargs) -> None:
  """:func:`_stamp` on the image, and its footprint (where the spot's blend
  weight passes one half of its peak) into ``masks[kind]`` when lesion
  masks are asked for. Draws no random number: the image is the same."""
  _stamp(img, *args, **kwargs)
  if masks is not None:
    cy, cx, ry, rx, _, alpha = args
    m = np.zeros((*img.shape[:2], 1), np.float32)
    _stamp(m, cy, cx, ry, rx, (1.0,), 1.0, **kwargs)
    masks[kind] |= m[..., 0] >= 0.5


def _diabetic(img, rng, geo, s_d, masks=None):
  s = img.shape[0]
  px = s / 512
  # Lesion contrast grows with severity, so subtle cases are faint as well
  # as few.
  alpha = 0.25 + 0.55 * min(s_d, 1.0)
  for _ in range(int(1 + 14 * s_d)):  # microaneurysms
    y, x = _posterior_pole(rng, geo)
    r = px * rng.u(0.8, 1.7)
    _lesion(img, masks, "MA", y, x, r, r, _HAEM, alpha, soft=0.4)
  if s_d > 0.4:  # dot/blot haemorrhages, hard exudates, cotton-wool spots
    for _ in range(int(14 * (s_d - 0.35))):
      y, x = _posterior_pole(rng, geo, 0.75)
      r = px * rng.u(2.5, 6.0)
      _lesion(
        img, masks, "HE", y, x, r, r * rng.u(0.7, 1.3), _HAEM, alpha, soft=0.5
      )
    cy, cx = _posterior_pole(rng, geo, 0.3)
    for _ in range(int(22 * (s_d - 0.35))):
      y = cy + rng.normal(0, 12 * px)
      x = cx + rng.normal(0, 12 * px)
      r = px * rng.u(1.2, 3.0)
      _lesion(img, masks, "EX", y, x, r, r, _EXUDATE, alpha, soft=0.3)
    for _ in range(int(5 * (s_d - 0.35))):
      y, x = _posterior_pole(rng, geo, 0.7)
      r = px * rng.u(6, 11)
      _lesion(
        img,
        masks,
        "SE",
        y,
        x,
        r,
        r * 1.3,
        _CWS,
        0.6,
        soft=1.2,
        angle=rng.u(0, 3),
      )
  if s_d > 0.8:  # neovascular tufts and a preretinal haemorrhage
    dy, dx = geo.disc
    for _ in range(3):
      y = dy + rng.normal(0, geo.disc_r)
      x = dx + rng.normal(0, geo.disc_r)
      for _ in range(8):
        _lesion(
          img,
          masks,
          "NV",
          y + rng.normal(0, 4 * px),
          x + rng.normal(0, 4 * px),
          px * 0.8,
          px * 5,
          _HAEM * 1.4,
          0.7,
          soft=0.4,
          angle=rng.u(0, math.pi),
        )
    y, x = _posterior_pole(rng, geo, 0.6)
    _lesion(img, masks, "HE", y, x, px * 16, px * 24, _HAEM, 0.9, soft=0.15)


def _amd(img, rng, geo, s_a, kws):
  fy, fx = geo.fovea
  px = img.shape[0] / 512
  wet = any("wet" in k for k in kws) or (
    not any("dry" in k for k in kws) and rng.chance(0.3)
  )
  alpha = 0.3 + 0.5 * min(s_a, 1.0)
  for _ in range(int(2 + 12 * s_a)):  # drusen within ~1.5 DD of the fovea
    a, d = rng.u(0, 2 * math.pi), geo.disc_r * 3 * math.sqrt(rng.u(0, 1))
    r = px * (rng.u(3, 6) if rng.chance(0.4) else rng.u(1.5, 3))
    _stamp(
      img,
      fy + d * math.sin(a),
      fx + d * math.cos(a),
      r,
      r,
      _DRUSEN,
      alpha,
      soft=1.0,
    )
  for _ in range(int(8 * s_a)):  # RPE mottling
    a, d = rng.u(0, 2 * math.pi), geo.disc_r * 2 * math.sqrt(rng.u(0, 1))
    r = px * rng.u(2, 5)
    _stamp(
      img,
      fy + d * math.sin(a),
      fx + d * math.cos(a),
      r,
      r,
      _PIGMENT,
      0.5,
      soft=0.8,
    )
  if wet:
    r = px * (8 + 18 * s_a)
    _stamp(img, fy, fx, r, r * 1.2, _CNV, alpha, soft=0.6)
    for _ in range(int(3 + 8 * s_a)):  # exudates around the lesion
      a = rng.u(0, 2 * math.pi)
      rr = px * rng.u(1.5, 3)
      _stamp(
        img,
        fy + r * 1.5 * math.sin(a),
        fx + r * 1.6 * math.cos(a),
        rr,
        rr,
        _EXUDATE,
        alpha,
        soft=0.3,
      )
  elif s_a > 0.7:  # geographic atrophy
    r = px * (8 + 16 * s_a)
    _stamp(img, fy, fx, r, r * 1.1, _ATROPHY, alpha, soft=0.1)


def _hypertensive_lesions(img, rng, geo, h):
  dy, dx = geo.disc
  px = img.shape[0] / 512
  for _ in range(int(8 * (h - 0.5))):  # flame haemorrhages, radial to disc
    a = rng.u(0, 2 * math.pi)
    d = geo.disc_r * rng.u(1.5, 4)
    _stamp(
      img,
      dy + d * math.sin(a),
      dx + d * math.cos(a),
      px * 2,
      px * 9,
      _HAEM,
      0.85,
      soft=0.4,
      angle=-a + math.pi / 2,
    )
  for _ in range(int(4 * (h - 0.5))):
    y, x = _posterior_pole(rng, geo, 0.6)
    _stamp(img, y, x, px * 7, px * 9, _CWS, 0.55, soft=1.2)


def _myopia(img, rng, geo, s_m):
  dy, dx = geo.disc
  r = geo.disc_r
  # Peripapillary atrophy: a temporal crescent with a pigment edge.
  cx = dx - geo.side * r * (0.7 + 0.4 * s_m)
  _stamp(img, dy, cx, r * 1.2, r * (0.5 + 0.6 * s_m), _ATROPHY, 0.6, soft=0.3)
  _stamp(
    img,
    dy,
    cx - geo.side * r * 0.5 * s_m,
    r * 1.1,
    r * 0.15,
    _PIGMENT,
    0.3,
    soft=0.6,
  )
  if s_m > 0.5:  # diffuse/patchy atrophy at the posterior pole, Fuchs spot
    fy, fx = geo.fovea
    for _ in range(int(1 + 4 * (s_m - 0.5))):
      y, x = _posterior_pole(rng, geo, 0.35)
      rr = r * rng.u(0.4, 0.9)
      _stamp(img, y, x, rr, rr * rng.u(0.8, 1.3), _ATROPHY, 0.7, soft=0.15)
    if rng.chance(0.4):
      _stamp(img, fy, fx, r * 0.2, r * 0.25, _PIGMENT, 0.8, soft=0.5)


def _other(img, rng, geo, s_o, kws):
  px = img.shape[0] / 512
  alpha = 0.3 + 0.45 * min(s_o, 1.0)
  fy, fx = geo.fovea
  dy, dx = geo.disc
  drew = False
  for k in kws:
    if kw.keyword_class(k) != "O":
      continue
    if "epiretinal membrane" in k:
      for _ in range(8):
        _stamp(
          img,
          fy + rng.normal(0, 15 * px),
          fx + rng.normal(0, 15 * px),
          px * 1.2,
          px * 14,
          _WHITE,
          0.35 * (0.5 + s_o),
          soft=1.0,
          angle=rng.u(0, math.pi),
        )
      drew = True
    elif "drusen" in k:
      for _ in range(int(6 + 20 * s_o)):
        a, d = rng.u(0, 2 * math.pi), geo.disc_r * 3 * math.sqrt(rng.u(0, 1))
        r = px * rng.u(1.5, 4)
        _stamp(
          img,
          fy + d * math.sin(a),
          fx + d * math.cos(a),
          r,
          r,
          _DRUSEN,
          alpha,
          soft=1.0,
        )
      drew = True
    elif "laser" in k or "photocoagulation" in k:
      for _ in range(int(15 + 30 * s_o)):
        y, x = _posterior_pole(rng, geo, 0.95)
        if math.hypot(y - fy, x - fx) < geo.disc_r * 2.5:
          continue
        r = px * rng.u(3, 5)
        _stamp(img, y, x, r, r, _ATROPHY, alpha, soft=0.2)
        _stamp(img, y, x, r * 0.5, r * 0.5, _PIGMENT, alpha * 0.8, soft=0.4)
      drew = True
    elif "myelinated" in k:
      drew = True  # drawn with the disc
    elif "vein occlusion" in k or "brvo" in k or "crvo" in k:
      a0 = rng.u(0, 2 * math.pi)
      for _ in range(int(10 + 20 * s_o)):
        a = a0 + rng.normal(0, 0.35)
        d = geo.disc_r * rng.u(1.5, 6)
        _stamp(
          img,
          dy + d * math.sin(a),
          dx + d * math.cos(a),
          px * 2,
          px * 8,
          _HAEM,
          alpha,
          soft=0.4,
          angle=-a + math.pi / 2,
        )
      drew = True
    elif "atrophy" in k or "pigment" in k:
      for _ in range(int(2 + 4 * s_o)):
        y, x = _posterior_pole(rng, geo, 0.8)
        rr = geo.disc_r * rng.u(0.3, 0.8)
        _stamp(
          img,
          y,
          x,
          rr,
          rr,
          _ATROPHY if "atrophy" in k else _PIGMENT,
          alpha,
          soft=0.3,
        )
      drew = True
    elif "retinitis pigmentosa" in k:
      for _ in range(int(20 + 30 * s_o)):
        y, x = _posterior_pole(rng, geo, 1.0)
        _stamp(
          img,
          y,
          x,
          px * 2,
          px * 6,
          _PIGMENT,
          0.8,
          soft=0.3,
          angle=rng.u(0, math.pi),
        )
      drew = True
  if not drew:  # generic pool for rare keywords: a few mixed lesions
    for _ in range(int(2 + 6 * s_o)):
      y, x = _posterior_pole(rng, geo, 0.8)
      col = (_PIGMENT, _ATROPHY, _HAEM, _WHITE)[rng.int(0, 4)]
      r = px * rng.u(3, 12)
      _stamp(img, y, x, r, r * rng.u(0.6, 1.4), col, alpha * 0.8, soft=0.5)


def _lens_dust(out: np.ndarray, size: int, seed: int) -> None:
  """Faint grey blobs at the same positions in every image (dust on the lens
  of the camera); positions depend only on the dataset seed."""
  rng = _Rng(seed, 0xD057)
  for _ in range(rng.int(3, 7)):
    y, x = rng.u(0.2, 0.8) * size, rng.u(0.2, 0.8) * size
    r = size * rng.u(0.01, 0.025)
    _stamp(
      out, y, x, r, r, np.array([0.35, 0.3, 0.28], np.float32), 0.35, soft=0.8
    )
