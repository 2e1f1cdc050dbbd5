"""Class groupings for alternate group training.

* :func:`relational_groups`: the paper's relational subsets (§3.3): PCA
  fitted on per-image features keeping 95% of the variance -> each class's
  centroid in that space -> K-Means, with forced pairs (N and O on ODIR) kept
  together in a group of their own.
* :func:`shot_groups`: head / medium / tail by training counts (Table 4).
* :func:`gradient_groups`: GBG (paper 004): per-class mean encoder gradients,
  affinity = cosine + 1, spectral clustering (the normalised cut).
* :func:`random_groups`, :func:`count_groups`: paper 004's Table 5 rivals.
* :func:`paper_groups`: the published ODIR subsets {D,A,H,M}, {G,C}, {N,O}.

Every strategy returns a tuple of class-index tuples that partitions the
classes; :func:`make_groups` picks one by name from a config.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans, spectral_clustering
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import ThreadpoolController

from agt_jax.errors import InputError

STRATEGIES = (
  "relational",
  "shot",
  "gradient",
  "random",
  "count",
  "paper",
  "single",
  "none",
)

PAPER_GROUPS = {"odir": (("D", "A", "H", "M"), ("G", "C"), ("N", "O"))}


def _names_to_index(groups, class_names):
  missing = [c for g in groups for c in g if c not in class_names]
  if missing:
    raise InputError(
      f"the grouping names classes {missing} that this "
      f"dataset does not have (its classes: {class_names})."
    )
  return tuple(tuple(class_names.index(c) for c in g) for g in groups)


def paper_groups(
  dataset: str = "odir",
  class_names: Sequence[str] = ("N", "D", "G", "C", "A", "H", "M", "O"),
) -> tuple[tuple[int, ...], ...]:
  """The paper's subsets as class indices."""
  if dataset not in PAPER_GROUPS:
    raise InputError(
      f"no published grouping for {dataset!r}; known: "
      f"{sorted(PAPER_GROUPS)}."
    )
  return _names_to_index(PAPER_GROUPS[dataset], list(class_names))


def _canonical(labels: np.ndarray) -> tuple[tuple[int, ...], ...]:
  """Groups from a cluster id per class, ordered by their first class."""
  groups = {}
  for c, k in enumerate(labels):
    groups.setdefault(int(k), []).append(c)
  return tuple(sorted((tuple(g) for g in groups.values()), key=lambda g: g[0]))


def fit_pca(
  image_features,
  *,
  variance: float = 0.95,
  n_components: int | None = None,
  seed: int = 0,
) -> PCA:
  """PCA fitted on per-image features (paper §3.3).

  Keeps the smallest number of components that explain at least
  ``variance`` of the variance, or exactly ``n_components`` (capped by the
  number of images and the feature size).

  Args:
    image_features: `[n, D]` encoder features of the training images.
    variance: explained-variance share to keep.
    n_components: fixed PCA size instead of ``variance``.
    seed: PCA seed (only randomised solvers use it).

  Returns:
    The fitted :class:`sklearn.decomposition.PCA`; ``n_components_`` is the
    number of components kept.
  """
  x = np.asarray(image_features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise InputError(f"`image_features` must be [n >= 2, D], got {x.shape}.")
  cap = min(x.shape)
  if n_components is not None:
    return PCA(n_components=min(n_components, cap), random_state=seed).fit(x)
  return PCA(
    n_components=variance if variance < 1 else cap,
    svd_solver="full",
    random_state=seed,
  ).fit(x)


def class_representations(image_features, labels, pca: PCA) -> np.ndarray:
  """`[C, k]` centroid of each class's positive images in PCA space.

  A class is represented by the mean projected feature of the images that
  carry it (multi-label images count for each of their classes); a class
  without a training image sits at the origin (the mean image).
  """
  z = pca.transform(np.asarray(image_features, np.float64))
  y = np.asarray(labels) > 0
  return np.stack(
    [
      z[y[:, c]].mean(0) if y[:, c].any() else np.zeros(z.shape[1])
      for c in range(y.shape[1])
    ]
  )


def _forced_and_free(c, together, class_names, n_groups):
  names = list(class_names) if class_names is not None else None
  forced = []
  for pair in together or ():
    if names is None:
      raise InputError("`class_names` is needed to resolve `together`.")
    missing = [p for p in pair if p not in names]
    if missing:
      raise InputError(f"`together` names unknown classes {missing}.")
    forced.append(tuple(names.index(p) for p in pair))
  fixed = {i for g in forced for i in g}
  free = [i for i in range(c) if i not in fixed]
  k = n_groups - len(forced)
  if k < 1 or k > len(free):
    raise InputError(
      f"cannot make {n_groups} groups from {len(free)} free "
      f"classes and {len(forced)} forced groups."
    )
  return forced, free, k


def check_together(
  num_classes: int, together, class_names, n_groups: int
) -> None:
  """Raises :class:`~agt_jax.errors.InputError` if ``together`` names an
  unknown class or ``n_groups`` cannot be formed (checked before any
  features are computed)."""
  _forced_and_free(num_classes, together, class_names, n_groups)


@functools.cache
def _threadpools() -> ThreadpoolController:
  """The process's thread pools, found once (a fresh scan of the loaded
  libraries per fit cost ~2 ms of a ~3.5 ms fit)."""
  return ThreadpoolController()


def cluster_classes(
  class_reps,
  *,
  n_groups: int,
  together: Sequence[Sequence[str]] = (("N", "O"),),
  class_names: Sequence[str] | None = None,
  seed: int = 0,
) -> tuple[tuple[int, ...], ...]:
  """K-Means (10 restarts) of the free classes' representations.

  Classes listed in ``together`` form fixed groups of their own (on ODIR the
  paper puts N and O in one subset: neither is a disease pattern and both
  are head classes); the others are clustered into
  ``n_groups - len(together)`` groups.

  Args:
    class_reps: `[C, k]` class representations (:func:`class_representations`).
    n_groups: total number of groups, forced ones included.
    together: tuples of class names kept in one group.
    class_names: the `C` names (needed for ``together``).
    seed: K-Means seed.

  Returns:
    A partition of ``range(C)`` as tuples of class indices.
  """
  x = np.asarray(class_reps, np.float64)
  c = x.shape[0]
  forced, free, k = _forced_and_free(c, together, class_names, n_groups)
  # A dozen points gain nothing from OpenMP threads, and on a loaded machine
  # their barriers made each fit ~30x slower (110 ms against 11 ms measured
  # with a training run beside it); one thread gives the same labels.
  with _threadpools().limit(limits=1, user_api="openmp"):
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x[free])
  labels = np.zeros(c, np.int64)
  labels[free] = km.labels_
  for j, g in enumerate(forced):
    labels[list(g)] = k + j
  return _canonical(labels)


def relational_groups(
  image_features,
  labels,
  *,
  n_groups: int,
  variance: float = 0.95,
  together: Sequence[Sequence[str]] = (("N", "O"),),
  class_names: Sequence[str] | None = None,
  seed: int = 0,
  n_components: int | None = None,
) -> tuple[tuple[int, ...], ...]:
  """Relational subsets (paper §3.3).

  PCA is fitted on the **per-image** features of the training images,
  keeping ``variance`` of the variance (the paper: 95%, 50 components for
  ImageNet ResNet-50 features); each class is represented by the centroid of
  its positive images in that space; K-Means groups the classes outside
  ``together`` (:func:`cluster_classes`).

  Args:
    image_features: `[n, D]` encoder features of the training images.
    labels: `[n, C]` multi-hot labels of the same images.
    n_groups: total number of groups, forced ones included.
    variance: explained-variance share kept by PCA.
    together: tuples of class names kept in one group.
    class_names: the `C` names (needed for ``together``).
    seed: K-Means seed.
    n_components: fixed PCA size instead of ``variance``.

  Returns:
    A partition of ``range(C)`` as tuples of class indices.
  """
  pca = fit_pca(
    image_features, variance=variance, n_components=n_components, seed=seed
  )
  return cluster_classes(
    class_representations(image_features, labels, pca),
    n_groups=n_groups,
    together=together,
    class_names=class_names,
    seed=seed,
  )


def grouping_stability(
  image_features,
  labels,
  *,
  n_groups: int,
  together=(("N", "O"),),
  class_names=None,
  variance: float = 0.95,
  pca_sizes=(30, 50, 75, 100),
  seeds=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
) -> dict:
  """Agreement of relational groupings over PCA sizes and K-Means seeds.

  The reference is the grouping at ``variance`` (seed 0). Every PCA size in
  ``pca_sizes`` (capped at the number of images and the feature size, as
  PCA allows no more) is refitted on the image features, and K-Means is run
  with every seed; each grouping is compared with the reference by the
  adjusted Rand index (1 = the same partition).

  Returns:
    ``{"reference", "n_components", "explained_variance", "runs",
    "mean_ari", "min_ari"}``; ``runs`` lists the PCA size actually used
    (``pca``), the size asked for, the seed, the groups and the ARI.
  """
  x = np.asarray(image_features, np.float64)
  ref_pca = fit_pca(x, variance=variance)
  ref = cluster_classes(
    class_representations(x, labels, ref_pca),
    n_groups=n_groups,
    together=together,
    class_names=class_names,
    seed=0,
  )
  c = np.asarray(labels).shape[1]

  def as_labels(groups):
    out = np.zeros(c, np.int64)
    for k, g in enumerate(groups):
      out[list(g)] = k
    return out

  runs = []
  for n in pca_sizes:
    pca = fit_pca(x, n_components=n)
    reps = class_representations(x, labels, pca)
    for s in seeds:
      g = cluster_classes(
        reps,
        n_groups=n_groups,
        together=together,
        class_names=class_names,
        seed=s,
      )
      runs.append(
        {
          "pca": int(pca.n_components_),
          "pca_asked": int(n),
          "seed": int(s),
          "groups": [list(x) for x in g],
          "ari": float(adjusted_rand_score(as_labels(ref), as_labels(g))),
        }
      )
  aris = [r["ari"] for r in runs]
  return {
    "reference": [list(g) for g in ref],
    "n_components": int(ref_pca.n_components_),
    "explained_variance": float(ref_pca.explained_variance_ratio_.sum()),
    "runs": runs,
    "mean_ari": float(np.mean(aris)),
    "min_ari": float(np.min(aris)),
  }


def shot_groups(
  class_counts, *, many: int | None = None, few: int | None = None
) -> tuple[tuple[int, ...], ...]:
  """Head / medium / tail groups by training count (paper Table 4).

  Defaults split the sorted counts into three near-equal tiers when no
  thresholds are given (ODIR has no class under 20 images, so the CIFAR
  thresholds 100/20 would leave the tail empty). Empty tiers are dropped.
  """
  n = np.asarray(class_counts)
  if many is None or few is None:
    order = np.argsort(-n, kind="stable")
    tiers = np.array_split(order, 3)
  else:
    tiers = [
      np.flatnonzero(n > many),
      np.flatnonzero((n >= few) & (n <= many)),
      np.flatnonzero(n < few),
    ]
  return tuple(tuple(sorted(int(i) for i in t)) for t in tiers if len(t))


def gradient_groups(
  class_gradients, *, n_groups: int, seed: int = 0, affinity: str = "cos+1"
) -> tuple[tuple[int, ...], ...]:
  r"""GBG grouping (paper 004, Algorithm 1): the normalised cut of the
  classes' gradient-affinity graph.

  :math:`A_{ij} = \cos(\nabla_i, \nabla_j)` (Eq. 7) and the cut that
  minimises the affinity between groups (Eq. 9), relaxed as NCut and solved
  by spectral clustering (Ng, Jordan & Weiss; ``assign_labels=
  "cluster_qr"``, deterministic).

  ``affinity``: a normalised cut needs non-negative edge weights, and the
  cosine is negative for conflicting classes. ``"cos+1"`` (default) shifts
  it to :math:`[0, 2]` as the published code does, which keeps every
  ordering of Eq. 7; ``"cos"`` is Eq. 7 literally with negative edges cut
  to 0 (conflicting classes get no edge at all).

  Args:
    class_gradients: `[C, P]` mean encoder gradient of each class's loss
      (head parameters excluded).
    n_groups: number of groups (the paper's default is 4, Fig. 4).
    seed: spectral clustering seed.
    affinity: ``"cos+1"`` or ``"cos"``.
  """
  g = np.asarray(class_gradients, np.float64)
  g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  cos = g @ g.T
  if affinity == "cos+1":
    a = cos + 1.0
  elif affinity == "cos":
    a = np.maximum(cos, 0.0)
  else:
    raise InputError(f"affinity must be 'cos+1' or 'cos', got {affinity!r}.")
  if n_groups >= len(g):
    return tuple((c,) for c in range(len(g)))
  labels = spectral_clustering(
    a, n_clusters=n_groups, assign_labels="cluster_qr", random_state=seed
  )
  return _canonical(labels)


def random_groups(
  num_classes: int, *, n_groups: int, seed: int = 0
) -> tuple[tuple[int, ...], ...]:
  """Classes shuffled with ``seed`` and cut into ``n_groups`` near-equal
  groups (paper 004, Table 5's random strategy)."""
  order = np.random.default_rng(seed).permutation(num_classes)
  parts = np.array_split(order, min(n_groups, num_classes))
  return tuple(
    sorted(
      (tuple(sorted(int(c) for c in p)) for p in parts), key=lambda g: g[0]
    )
  )


def membership(groups, num_classes: int) -> np.ndarray:
  """``[G, C]`` float32, 1 where class ``c`` is in group ``g``."""
  m = np.zeros((len(groups), num_classes), np.float32)
  for g, classes in enumerate(groups):
    m[g, list(classes)] = 1.0
  return m


def subset_imbalance(class_counts, groups) -> dict:
  """The paper's class imbalance ratio :math:`\rho = N_{max} / N_{min}`
  (§3.3) of the whole training split and of each subset, over the classes
  with at least one positive (a subset of one class has :math:`\rho = 1`).

  Returns:
    ``{"dataset": rho, "subsets": [rho_g, ...]}``.
  """
  n = np.asarray(class_counts, np.float64)

  def rho(idx) -> float:
    v = n[list(idx)]
    v = v[v > 0]
    return float(v.max() / v.min()) if v.size else float("nan")

  return {
    "dataset": rho(range(len(n))),
    "subsets": [rho(g) for g in groups],
  }


def count_groups(class_counts, *, n_groups: int) -> tuple[tuple[int, ...], ...]:
  """Classes sorted by training count and cut into ``n_groups`` near-equal
  groups of similar count (paper 004, Table 5's instance-number strategy,
  after Li et al. 2020)."""
  n = np.asarray(class_counts)
  order = np.argsort(-n, kind="stable")
  parts = np.array_split(order, min(n_groups, len(n)))
  return tuple(tuple(sorted(int(c) for c in p)) for p in parts)


def make_groups(
  strategy: str,
  *,
  num_classes: int,
  class_names=None,
  class_counts=None,
  image_features=None,
  labels=None,
  class_gradients=None,
  n_groups: int = 3,
  together=(("N", "O"),),
  dataset="odir",
  seed: int = 0,
  many: int | None = None,
  few: int | None = None,
):
  """A grouping by name: ``relational``, ``shot``, ``gradient``, ``paper``,
  or ``single`` (one group of all classes, i.e. no alternation)."""
  if strategy == "relational":
    return relational_groups(
      image_features,
      labels,
      n_groups=n_groups,
      together=together,
      class_names=class_names,
      seed=seed,
    )
  if strategy == "shot":
    return shot_groups(class_counts, many=many, few=few)
  if strategy == "gradient":
    return gradient_groups(class_gradients, n_groups=n_groups, seed=seed)
  if strategy == "random":
    return random_groups(num_classes, n_groups=n_groups, seed=seed)
  if strategy == "count":
    return count_groups(class_counts, n_groups=n_groups)
  if strategy == "paper":
    return paper_groups(dataset, class_names)
  if strategy in ("single", "none"):
    return (tuple(range(num_classes)),)
  raise InputError(f"unknown grouping {strategy!r}; known: {STRATEGIES}.")
