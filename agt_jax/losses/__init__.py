"""Losses for long-tailed multi-label classification, in the style of
``optax.losses``: per-element outputs, keyword-only hyperparameters, no
reduction inside unless stated.

AGT (Jian et al., Sci. Rep. 2026):
  gradient_ratio_stats, gradient_reweight_weights, count_reweight_weights,
  reweighted_bce, gradient_reweighted_bce (the paper's rule, exactly);
  feedback_reweight_init, feedback_reweight_weights, feedback_reweighted_bce,
  FeedbackState (its stable form: statistics of the weighted gradient);
  binary_kl_divergence, class_balanced_kd_weights, class_balanced_kd
  (per-sample reading), eq7_kd_weights, eq7_class_balanced_kd (Eq. 7 as
  written).

Peers, with their published conventions:
  sigmoid_focal_loss (optax's own; torchvision's defaults are alpha=0.25,
  gamma=2), class_balanced_weights, class_balanced_loss,
  class_balanced_positive_bce (paper 001's positive-only form),
  distribution_balanced_loss, eqlv2_init, eqlv2_loss, EQLv2State, ride_loss,
  ldam_margins; multi-label adaptations (documented in each docstring):
  influence_balanced_loss, influence_balanced_weights, ride_multilabel_loss,
  bags_loss, subset_kd_weights (the multi-teacher baseline's KD).
"""

from optax.losses import sigmoid_focal_loss

from agt_jax.losses._bags import bags_loss
from agt_jax.losses._class_balanced import (
  class_balanced_loss,
  class_balanced_positive_bce,
  class_balanced_weights,
)
from agt_jax.losses._distillation import (
  binary_kl_divergence,
  class_balanced_kd,
  class_balanced_kd_weights,
  eq7_class_balanced_kd,
  eq7_kd_weights,
  subset_kd_weights,
)
from agt_jax.losses._distribution_balanced import distribution_balanced_loss
from agt_jax.losses._eqlv2 import EQLv2State, eqlv2_init, eqlv2_loss
from agt_jax.losses._feedback_reweighting import (
  FeedbackState,
  feedback_reweight_init,
  feedback_reweight_weights,
  feedback_reweighted_bce,
)
from agt_jax.losses._influence_balanced import (
  influence_balanced_loss,
  influence_balanced_weights,
)
from agt_jax.losses._reweighting import (
  count_reweight_weights,
  gradient_ratio_stats,
  gradient_reweight_weights,
  gradient_reweighted_bce,
  reweighted_bce,
)
from agt_jax.losses._ride import ldam_margins, ride_loss, ride_multilabel_loss

__all__ = [
  "EQLv2State",
  "FeedbackState",
  "bags_loss",
  "binary_kl_divergence",
  "class_balanced_kd",
  "class_balanced_kd_weights",
  "class_balanced_loss",
  "class_balanced_positive_bce",
  "class_balanced_weights",
  "count_reweight_weights",
  "distribution_balanced_loss",
  "eq7_class_balanced_kd",
  "eq7_kd_weights",
  "eqlv2_init",
  "eqlv2_loss",
  "feedback_reweight_init",
  "feedback_reweight_weights",
  "feedback_reweighted_bce",
  "gradient_ratio_stats",
  "gradient_reweight_weights",
  "gradient_reweighted_bce",
  "influence_balanced_loss",
  "influence_balanced_weights",
  "ldam_margins",
  "reweighted_bce",
  "ride_loss",
  "ride_multilabel_loss",
  "sigmoid_focal_loss",
  "subset_kd_weights",
]
