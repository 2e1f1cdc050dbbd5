"""The public API: names other projects import, and their documentation."""

import inspect

import pytest

from agt_jax import losses, metrics, mgda

LOSSES_API = [
  "gradient_ratio_stats",
  "gradient_reweight_weights",
  "count_reweight_weights",
  "reweighted_bce",
  "gradient_reweighted_bce",
  "binary_kl_divergence",
  "class_balanced_kd_weights",
  "class_balanced_kd",
  "sigmoid_focal_loss",
  "class_balanced_weights",
  "class_balanced_loss",
  "distribution_balanced_loss",
  "eqlv2_init",
  "eqlv2_loss",
  "ride_loss",
  "feedback_reweight_init",
  "feedback_reweight_weights",
  "feedback_reweighted_bce",
  "eq7_kd_weights",
  "eq7_class_balanced_kd",
]
DOCUMENTED = [
  getattr(losses, n)
  for n in losses.__all__
  if n not in ("EQLv2State", "FeedbackState")
] + [mgda.min_norm_weights, mgda.gradient_normalizers, metrics.odir_score]


def test_issue_api_names_exist():
  for name in LOSSES_API:
    assert callable(getattr(losses, name)), name
    assert name in losses.__all__


@pytest.mark.parametrize("fn", DOCUMENTED, ids=lambda f: f.__name__)
def test_docstring_has_math_shapes_and_reference(fn):
  doc = inspect.getdoc(fn)
  assert doc and len(doc) > 200, fn.__name__
  assert ".. math::" in doc or ":math:" in doc, f"{fn.__name__}: no math"
  assert "Returns:" in doc and "Args:" in doc, f"{fn.__name__}: no Args/Returns"
  assert "[" in doc, f"{fn.__name__}: no shapes"
  assert "Reference" in doc, f"{fn.__name__}: no reference"


@pytest.mark.parametrize(
  "name", [n for n in LOSSES_API if n != "sigmoid_focal_loss"]
)
def test_hyperparameters_are_keyword_only(name):
  sig = inspect.signature(getattr(losses, name))
  for p in sig.parameters.values():
    if p.default is not inspect.Parameter.empty:
      assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
