"""ODIR-5K diagnostic keywords -> image-level multi-hot labels.

Each eye carries a list of diagnostic keywords. The image label is the union
of the classes of its keywords, by the first matching rule:

1. quality keywords (``lens dust``, ``low image quality``, ``optic disk
   photographically invisible``, ``image offset``) and non-fundus keywords
   (``anterior segment image``, ``no fundus image``) contribute nothing;
2. ``normal fundus`` -> N; 3. ``*glaucoma*`` -> G; 4. ``*cataract*`` -> C;
5. ``*age-related macular degeneration*`` -> A;
6. ``*hypertensive retinopathy*`` -> H; 7. ``*myopi*`` -> M;
8. ``*diabetic retinopathy*`` or ``*proliferative retinopathy*`` -> D;
9. anything else -> O (drusen, tessellated fundus, peripapillary atrophy,
   laser spot, ERM, BRVO, ... are O).

The patient-level N..O columns of the annotation files are never used for
image labels: they are the union over both eyes.
"""

from __future__ import annotations

import re

import numpy as np

ODIR_CLASSES = ("N", "D", "G", "C", "A", "H", "M", "O")
QUALITY_KEYWORDS = frozenset(
  {
    "lens dust",
    "low image quality",
    "optic disk photographically invisible",
    "image offset",
  }
)
NON_FUNDUS_KEYWORDS = frozenset({"anterior segment image", "no fundus image"})
IGNORABLE_POLICIES = ("as_normal", "drop", "keep_zero")

_SPLIT = re.compile(r"[，,;；]")


def split_keywords(cell: str) -> list[str]:
  """Splits a keyword cell on the full-width comma, ASCII comma or `;`,
  lower-cases, collapses whitespace, drops empties (duplicates are kept)."""
  out = []
  for part in _SPLIT.split(str(cell or "")):
    kw = " ".join(part.strip().lower().split())
    if kw:
      out.append(kw)
  return out


def keyword_class(keyword: str) -> str | None:
  """The class letter of one normalised keyword, or None if it is ignorable."""
  if keyword in QUALITY_KEYWORDS or keyword in NON_FUNDUS_KEYWORDS:
    return None
  if keyword == "normal fundus":
    return "N"
  rules = (
    ("glaucoma", "G"),
    ("cataract", "C"),
    ("age-related macular degeneration", "A"),
    ("hypertensive retinopathy", "H"),
    ("myopi", "M"),
    ("diabetic retinopathy", "D"),
    ("proliferative retinopathy", "D"),
  )
  for needle, cls in rules:
    if needle in keyword:
      return cls
  return "O"


def keywords_to_labels(cell: str) -> np.ndarray:
  """`[8]` uint8 multi-hot vector (N D G C A H M O) for one keyword cell."""
  y = np.zeros(len(ODIR_CLASSES), np.uint8)
  for kw in split_keywords(cell):
    cls = keyword_class(kw)
    if cls is not None:
      y[ODIR_CLASSES.index(cls)] = 1
  return y


def keyword_flags(cell: str) -> dict[str, bool]:
  """``ignorable_only``, ``has_ignorable`` (quality) and ``non_fundus``."""
  kws = split_keywords(cell)
  classes = [keyword_class(k) for k in kws]
  return {
    "ignorable_only": bool(kws) and all(c is None for c in classes),
    "has_ignorable": any(k in QUALITY_KEYWORDS for k in kws),
    "non_fundus": any(k in NON_FUNDUS_KEYWORDS for k in kws),
  }


def apply_ignorable_policy(
  labels: np.ndarray,
  ignorable_only: np.ndarray,
  non_fundus: np.ndarray,
  policy: str = "as_normal",
) -> tuple[np.ndarray, np.ndarray]:
  """Applies the policy for images whose keywords are all ignorable.

  * ``as_normal`` (default, the official patient-level convention): quality-
    only images become N; non-fundus images are dropped.
  * ``drop``: every ignorable-only image is dropped.
  * ``keep_zero``: kept with an all-zero label vector.

  Returns ``(labels, keep)`` where ``keep`` is a boolean row mask.
  """
  if policy not in IGNORABLE_POLICIES:
    raise ValueError(
      f"ignorable policy must be one of {IGNORABLE_POLICIES}, "
      f"got {policy!r}."
    )
  labels = np.array(labels, np.uint8, copy=True)
  ign = np.asarray(ignorable_only, bool)
  nonf = np.asarray(non_fundus, bool)
  keep = np.ones(len(labels), bool)
  if policy == "as_normal":
    keep &= ~nonf
    labels[ign & ~nonf, ODIR_CLASSES.index("N")] = 1
  elif policy == "drop":
    keep &= ~(ign | nonf)
  return labels, keep
