"""Label statistics of a multi-label dataset (the paper's Fig. 1): class
counts, labels per image, co-occurrence, and the imbalance ratio rho.

Pure numpy on an :class:`~agt_jax.data.table.ImageTable`'s labels; the
figure is drawn by ``experiments.dataset_stats``.
"""

from __future__ import annotations

import numpy as np

from agt_jax.data.table import ImageTable


def label_stats(table: ImageTable) -> dict:
  """JSON-serialisable statistics of ``table.labels`` (images, not
  patients).

  Returns:
    ``images``, ``patients``, ``classes``; ``class_counts`` (images with
    each class, descending order in ``order``); ``labels_per_image``
    (``{k: images with k labels}``); ``cooccurrence`` (`[C, C]`: images
    with both classes; the diagonal is the class count); ``rho``
    (:math:`N_{max} / N_{min}` over classes with an image, §3.3);
    ``multi_label_share`` (images with more than one label).
  """
  y = np.asarray(table.labels, np.int64)
  counts = y.sum(0)
  k = y.sum(1)
  present = counts[counts > 0]
  return {
    "dataset": table.name,
    "images": int(len(y)),
    "patients": int(len(np.unique(table.patient_ids))),
    "classes": list(table.class_names),
    "class_counts": {c: int(n) for c, n in zip(table.class_names, counts)},
    "order": [table.class_names[i] for i in np.argsort(-counts, kind="stable")],
    "labels_per_image": {
      str(int(n)): int((k == n).sum()) for n in np.unique(k)
    },
    "multi_label_share": float((k > 1).mean()) if len(k) else 0.0,
    "cooccurrence": (y.T @ y).tolist(),
    "rho": float(present.max() / present.min()) if present.size else None,
  }
