"""Figures and the words every synthetic output carries.

A leaf module: matplotlib is imported on first use (on the file-only Agg
backend), so importing this costs nothing.
"""

from __future__ import annotations

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
