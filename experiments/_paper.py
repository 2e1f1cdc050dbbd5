"""The AGT paper's published numbers, printed beside ours in every report.

Source: Jian et al., *Long-tailed multi-label retinal disease classification
using alternate group training and gradient-based re-weighting*, Sci. Rep.
2026 (the accepted manuscript): Tables 1-4, as printed (mean ± std over 5
folds on ODIR-5K; one split on RFMiD). They come from **real** fundus
photographs, ResNet-50 or DenseNet-121 at 448², every method initialised
from FGADR-pretrained weights: a reference, never a result of this code.

Keys are our method / variant names; a row of ours with no counterpart in
the paper has no entry. Where our row is not the paper's method as
published (our shot grouping uses the stable re-weighting, the paper's its
own), the label says so.
"""

from __future__ import annotations

# The one line every report prints above a reference column.
CAVEAT = (
  "**paper** columns: the AGT paper's published kappa / F1 / AUC on real "
  "data (ResNet-50 or DenseNet-121 at 448², FGADR-pretrained, its own "
  "code), printed for orientation; they are not comparable with our rows "
  "(other data, encoder, schedule and initialisation)."
)

# Table 1 (ODIR-5K) and Table 2 (RFMiD): backbone column -> method -> value.
_T1_RESNET50 = {
  "bce": "0.553 / 0.874 / 0.887",  # IB sampling
  "cb_sampling": "0.601 / 0.886 / 0.920",
  "focal": "0.625 / 0.895 / 0.930",
  "db": "0.673 / 0.930 / 0.940",
  "multi_teacher_kd": "0.660 / 0.920 / 0.935",  # RSKD (shot subsets)
  "ride": "0.685 / 0.932 / 0.941",
  "ours": "0.707 / 0.932 / 0.941",
  "ours_ride": "0.722 / 0.941 / 0.953",
}
_T1_DENSENET121 = {
  "ride": "0.713 / 0.943 / 0.951",
  "ours": "0.735 / 0.954 / 0.957",
  "ours_focal": "0.753 / 0.957 / 0.965",
  "ours_ride": "0.778 / 0.973 / 0.977",
}
_T2_RESNET50 = {
  "bce": "0.401 / 0.561 / 0.768",
  "cb_sampling": "0.427 / 0.578 / 0.791",
  "focal": "0.449 / 0.592 / 0.812",
  "db": "0.486 / 0.634 / 0.836",
  "multi_teacher_kd": "0.471 / 0.621 / 0.825",
  "ride": "0.501 / 0.642 / 0.841",
  "ours": "0.519 / 0.648 / 0.846",
  "ours_ride": "0.547 / 0.673 / 0.872",
}
_T2_DENSENET121 = {
  "ride": "0.516 / 0.653 / 0.856",
  "ours": "0.524 / 0.657 / 0.861",
  "ours_focal": "0.539 / 0.666 / 0.872",
  "ours_ride": "0.558 / 0.682 / 0.892",
}
# Tables 3 and 4 (ODIR-5K, ResNet-50), by ablation variant.
_T3 = {
  "baseline": "0.553 / 0.874 / 0.887",
  "agt_kd": "0.645 / 0.913 / 0.933",
  "agt_rw_kd": "0.683 / 0.925 / 0.937",
  "agt_rw_kd_pretrained": "0.707 / 0.932 / 0.941",
}
_T4 = {
  "shot_grouping": "0.695 / 0.921 / 0.927",  # the paper's RW, ours stable
  "count_rw": "0.672 / 0.916 / 0.924",
  "unweighted_kd": "0.681 / 0.922 / 0.934",
}


def family(backbone: str) -> str | None:
  """The paper's column a backbone of ours stands in for (our small CPU
  encoders stand in for the paper's by family)."""
  if backbone.startswith("resnet"):
    return "ResNet-50"
  if backbone.startswith("densenet"):
    return "DenseNet-121"
  return None


def reference(table: int, name: str, backbone: str | None = None) -> str:
  """``"kappa / F1 / AUC"`` of the paper for our row ``name``, or ``""``.

  Args:
    table: the paper's table (1-4).
    name: our method (Tables 1-2) or ablation variant (Tables 3-4).
    backbone: our encoder (Tables 1-2), mapped by :func:`family`.
  """
  if table in (1, 2):
    col = family(backbone or "")
    src = {
      (1, "ResNet-50"): _T1_RESNET50,
      (1, "DenseNet-121"): _T1_DENSENET121,
      (2, "ResNet-50"): _T2_RESNET50,
      (2, "DenseNet-121"): _T2_DENSENET121,
    }.get((table, col), {})
    return src.get(name, "")
  return {3: _T3, 4: _T4}.get(table, {}).get(name, "")
