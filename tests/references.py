"""Independent float64 numpy references, written from the formulas.

Nothing here imports agt_jax: these are what the library is checked against.
"""

import numpy as np


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def bce(z, y):
  return -(y * log_sigmoid(z) + (1 - y) * log_sigmoid(-z))


def ratio_stats(z, y, mask=None):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  mask = (
    np.ones_like(z)
    if mask is None
    else np.broadcast_to(
      np.asarray(mask, np.float64).reshape(len(z), -1), z.shape
    )
  )
  p = sigmoid(z)
  count = np.maximum(mask.sum(0), 1)
  return (
    (mask * y * (p - 1)).sum(0) / count,
    (mask * (1 - y) * p).sum(0) / count,
  )


def reweight(z, y, beta=2.0, eps=1e-8, mask=None):
  pos, neg = ratio_stats(z, y, mask)
  return np.minimum(1.0, (np.abs(pos) / (np.abs(neg) + eps)) ** beta)


def reweighted_bce(z, y, w):
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  return -(y * log_sigmoid(z) + w * (1 - y) * log_sigmoid(-z))


def binary_kl(zs, zt, T, direction):
  qs1, qt1 = sigmoid(zs / T), sigmoid(zt / T)
  qs = np.stack([1 - qs1, qs1])
  qt = np.stack([1 - qt1, qt1])
  if direction == "teacher_student":
    kl = (qt * (np.log(qt) - np.log(qs))).sum(0)
  else:
    kl = (qs * (np.log(qs) - np.log(qt))).sum(0)
  return T * T * kl


def cb_kd_weight(labels_row, counts):
  pos = np.flatnonzero(labels_row)
  if len(pos) == 0:
    return 1.0
  p_single = (1 / len(counts)) * max(1 / counts[c] for c in pos)
  p_multi = (1 / len(counts)) * sum(1 / counts[c] for c in pos)
  return p_single / p_multi


def torchvision_focal(z, y, alpha=0.25, gamma=2.0):
  p = sigmoid(z)
  ce = bce(z, y)
  p_t = p * y + (1 - p) * (1 - y)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
  return loss


def cb_weights(counts, beta):
  counts = np.asarray(counts, np.float64)
  w = (1 - beta) / (1 - beta**counts)
  return w / w.sum() * len(counts)


def cb_loss_official_total(z, y, counts, beta, gamma):
  """The TF reference's reduced loss: sum(a_i * mod * BCE) / sum(labels)."""
  w = cb_weights(counts, beta)
  a = (y * w).sum(1, keepdims=True)
  if gamma == 0:
    mod = 1.0
  else:
    mod = np.exp(-gamma * y * z - gamma * np.log1p(np.exp(-z)))
  return (a * mod * bce(z, y)).sum() / y.sum()


def db_loss(
  z,
  y,
  counts,
  n_train,
  neg_scale=2.0,
  init_bias=0.05,
  map_alpha=0.1,
  map_beta=10.0,
  map_gamma=0.2,
  focal_gamma=2.0,
  balance_param=2.0,
):
  z = np.array(z, np.float64)
  y = np.asarray(y, np.float64)
  counts = np.asarray(counts, np.float64)
  out = np.zeros_like(z)
  for i in range(z.shape[0]):
    r = sum(y[i, j] / counts[j] for j in range(z.shape[1]))
    for j in range(z.shape[1]):
      ratio = (1 / counts[j]) / r if r > 0 else np.inf
      w = sigmoid(map_beta * (ratio - map_gamma)) + map_alpha
      zz = z[i, j] - np.log(n_train / counts[j] - 1) * init_bias / neg_scale
      if y[i, j] == 1:
        l = -log_sigmoid(zz)
      else:
        l = -log_sigmoid(-neg_scale * zz)
        w = w / neg_scale
      pt = np.exp(-l)
      out[i, j] = balance_param * (1 - pt) ** focal_gamma * w * l
  return out


def eqlv2_step(z, y, pos_grad, neg_grad, pos_neg, gamma=12, mu=0.8, alpha=4.0):
  q = 1 / (1 + np.exp(-gamma * (pos_neg - mu)))
  w = (1 + alpha * (1 - q)) * y + q * (1 - y)
  loss = bce(z, y) * w
  p = sigmoid(z)
  g = np.abs(y * (p - 1) + (1 - y) * p) * w
  pg = pos_grad + (g * y).sum(0)
  ng = neg_grad + (g * (1 - y)).sum(0)
  return loss, pg, ng, pg / (ng + 1e-10)


def ride_loss(
  expert_logits,
  targets,
  counts,
  s=30.0,
  max_m=0.5,
  reweight=False,
  adf=-0.2,
  beta=0.9999,
  base_T=1.0,
  rf=0.05,
):
  z = np.asarray(expert_logits, np.float64)
  e, n, c = z.shape
  counts = np.asarray(counts, np.float64)
  m = 1 / np.sqrt(np.sqrt(counts))
  m = m * (max_m / m.max())
  mean = z.mean(0)
  if reweight:
    cw = cb_weights(counts, beta)
    f = counts / counts.sum()
    t = c * f * rf + 1 - rf
    T = base_T * t / t.max()
  else:
    cw = np.ones(c)
    T = np.full(c, base_T)
  Tm = T.mean()

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  total = 0.0
  tgt = np.exp(log_softmax(mean / T))
  for k in range(e):
    x = (z[k] if adf != 0 else mean).copy()
    x[np.arange(n), targets] -= s * m[targets]
    ce = -log_softmax(x)[np.arange(n), targets]
    w = cw[targets]
    total += (w * ce).sum() / w.sum()
    lq = log_softmax(z[k] / T)
    total += adf * Tm * Tm * (tgt * (np.log(tgt) - lq)).sum() / n
  return total


# -- MGDA: a plain-Python port of the reference solver's semantics ----------


def _from2(v11, v12, v22):
  if v12 >= v11:
    return 0.999, v11
  if v12 >= v22:
    return 0.001, v22
  g = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
  return g, v22 + g * (v12 - v22)


def _proj_simplex(y):
  m = len(y)
  s = np.flip(np.sort(y))
  tmpsum, tmax_f = 0.0, (np.sum(y) - 1.0) / m
  for i in range(m - 1):
    tmpsum += s[i]
    tmax = (tmpsum - 1) / (i + 1.0)
    if tmax > s[i + 1]:
      tmax_f = tmax
      break
  return np.maximum(y - tmax_f, 0.0)


def _next_point(cur, grad):
  n = len(cur)
  pg = grad - np.sum(grad) / n
  tm1 = -cur[pg < 0] / pg[pg < 0]
  tm2 = (1.0 - cur[pg > 0]) / pg[pg > 0]
  t = 1.0
  if (tm1 > 1e-7).any():
    t = np.min(tm1[tm1 > 1e-7])
  if (tm2 > 1e-7).any():
    t = min(t, np.min(tm2[tm2 > 1e-7]))
  return _proj_simplex(pg * t + cur)


def mgda_reference(vecs, tol=1e-5, max_iter=250):
  vecs = np.asarray(vecs, np.float64)
  k = len(vecs)
  G = vecs @ vecs.T
  dmin, sol = 1e8, None
  for i in range(k):
    for j in range(i + 1, k):
      c, d = _from2(G[i, i], G[i, j], G[j, j])
      if d < dmin:
        dmin, sol = d, ((i, j), c, d)
  x = np.zeros(k)
  x[sol[0][0]] = sol[1]
  x[sol[0][1]] = 1 - sol[1]
  if k < 3:
    return x, sol[2]
  for _ in range(max_iter):
    new = _next_point(x, -G @ x)
    nc, nd = _from2(x @ G @ x, x @ G @ new, new @ G @ new)
    nx = nc * x + (1 - nc) * new
    if np.abs(nx - x).sum() < tol:
      return x, nd
    x = nx
  return x, nd


def ib_loss(z, y, h, counts, alpha=1000.0, eps=1e-3):
  """Multi-label IB, one sample at a time."""
  z, y, h = (np.asarray(a, np.float64) for a in (z, y, h))
  inv = 1.0 / np.asarray(counts, np.float64)
  lam = inv * len(inv) / inv.sum()
  out = np.zeros_like(z)
  for i in range(len(z)):
    infl = np.abs(sigmoid(z[i]) - y[i]).sum() * np.abs(h[i]).sum()
    ib = alpha / (infl + eps)
    for j in range(z.shape[1]):
      v = lam[j] if y[i, j] else 1.0
      out[i, j] = ib * v * bce(z[i, j], y[i, j])
  return out


def ride_multilabel(zs, y, counts, s=30.0, max_m=0.5, div=-0.2, T=1.0, w=None):
  zs, y = np.asarray(zs, np.float64), np.asarray(y, np.float64)
  m = np.asarray(counts, np.float64) ** -0.25
  m = m * max_m / m.max() * s
  w = np.ones(zs.shape[2]) if w is None else np.asarray(w, np.float64)
  mean = zs.mean(0)
  total = 0.0
  for e in range(len(zs)):
    for i in range(zs.shape[1]):
      for j in range(zs.shape[2]):
        zm = zs[e, i, j] - (m[j] if y[i, j] else 0.0)
        total += (
          -log_sigmoid(zm) if y[i, j] else -w[j] * log_sigmoid(-zm)
        ) / zs.shape[1]
        pt = sigmoid(mean[i, j] / T)
        ps = sigmoid(zs[e, i, j] / T)
        kl = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
        total += div * T * T * kl / zs.shape[1]
  return total


def bags_all_kept(z, o, y, groups):
  """BAGS multi-label loss with every "others" row kept."""
  z, o, y = (np.asarray(a, np.float64) for a in (z, o, y))
  total = 0.0
  for g, cls in enumerate(groups):
    n = len(z)
    for i in range(n):
      fg = y[i, list(cls)].sum() > 0
      total += bce(o[i, g], 0.0 if fg else 1.0) / n
      for c in cls:
        total += bce(z[i, c], y[i, c]) / n
  return total


def feedback_step(z, y, pos, neg, count, beta=2.0, decay=0.99, eps=1e-8):
  """Float64 loop reference of the feedback re-weighting: weights from the
  statistics before the step, then the moving averages of sum_pos (1 - p)
  and of the weighted sum_neg p."""
  z = np.asarray(z, np.float64)
  y = np.asarray(y, np.float64)
  n, c = z.shape
  w = np.ones(c)
  if count > 0:
    for j in range(c):
      w[j] = min(1.0, (pos[j] / (neg[j] + eps)) ** beta)
  loss = np.zeros((n, c))
  new_pos, new_neg = np.zeros(c), np.zeros(c)
  for i in range(n):
    for j in range(c):
      p = 1 / (1 + np.exp(-z[i, j]))
      if y[i, j]:
        loss[i, j] = -np.log(p)
        new_pos[j] += 1 - p
      else:
        loss[i, j] = -w[j] * np.log(1 - p)
        new_neg[j] += p
  return (
    loss,
    w,
    decay * pos + (1 - decay) * new_pos,
    decay * neg + (1 - decay) * w * new_neg,
    count + 1,
  )


# -- inputs shared with the PyTorch reference script --------------------------
# (tests/torch_references/make_torch_references.py): numpy only, seeded, so
# the script and the tests build the very same arrays.

PEER_COUNTS = np.array([1000, 500, 250, 120, 60, 30, 15, 8])
PEER_N_TRAIN = 2000


def peer_batch(n=16, seed=0):
  """Logits and multi-hot labels for the peer-loss tests."""
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(n, 8)) * 2).astype(np.float32)
  y = (rng.random((n, 8)) < PEER_COUNTS / 1200).astype(np.float32)
  y[0] = 0  # one sample without positives
  y[1, 0] = y[1, 7] = 1  # one multi-label sample with head + tail
  return z, y


def ride_inputs(seed=0, n=12, e=3):
  """Expert logits ``[e, n, 8]`` and single-label targets for RIDE."""
  rng = np.random.default_rng(seed)
  z = (rng.normal(size=(e, n, 8)) * 5).astype(np.float32)
  t = rng.integers(0, 8, size=n)
  return z, t


def torchvision_like_state(
  spec: dict, seed: int = 0, linear: str = "small", conv_gain: float = 1.0
) -> dict:
  """A state dict with the keys and shapes of ``spec`` (a torchvision
  model's, in order) and seeded values: He-normal convolutions, batch-norm
  scales near 1, small shifts and non-trivial running statistics.
  ``linear="fan_in"`` draws linear weights with std ``1/sqrt(fan_in)``
  (ViT: attention that is not uniform), ``"small"`` with std 0.01.
  ``conv_gain`` scales the convolutions' std: deep nets whose running
  statistics do not match their activations (EfficientNetV2-M) otherwise
  grow to 1e9, where float32 rounding alone decides the SE gates."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in spec.items():
    leaf = key.rpartition(".")[2]
    if leaf in ("class_token", "pos_embedding", "cls_token", "pos_embed"):
      out[key] = rng.normal(0, 0.5, shape).astype(np.float32)
    elif leaf == "logit_scale":  # Swin V2: some above the clamp at log 100
      out[key] = rng.uniform(1.5, 5.5, shape).astype(np.float32)
    elif leaf == "relative_coords_table":  # a buffer: its true values
      out[key] = _swin_v2_coords((shape[1] + 1) // 2).reshape(shape)
    elif leaf == "in_proj_weight" or (
      leaf == "weight" and len(shape) == 2 and linear == "fan_in"
    ):
      out[key] = rng.normal(0, 1 / np.sqrt(shape[1]), shape).astype(np.float32)
    elif leaf == "in_proj_bias":
      out[key] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    elif leaf == "relative_position_bias_table":  # Swin: a visible bias
      out[key] = rng.normal(0, 1.0, shape).astype(np.float32)
    elif leaf == "relative_position_index":  # a buffer: its true values
      out[key] = _swin_index(round(shape[0] ** 0.25))
    elif leaf == "layer_scale":  # ConvNeXt: big enough that blocks count
      out[key] = rng.uniform(0.2, 0.6, shape).astype(np.float32)
    elif leaf == "num_batches_tracked":
      out[key] = np.zeros(shape, np.int64)
    elif leaf == "weight" and len(shape) == 4:
      fan_in = int(np.prod(shape[1:]))
      std = conv_gain * np.sqrt(2 / fan_in)
      out[key] = rng.normal(0, std, shape).astype(np.float32)
    elif leaf == "weight" and len(shape) == 2:
      out[key] = rng.normal(0, 0.01, shape).astype(np.float32)
    elif leaf == "weight":
      out[key] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    elif leaf in ("bias", "running_mean"):
      out[key] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    elif leaf == "running_var":
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      raise KeyError(f"unexpected state-dict entry {key}")
  return out


def _swin_v2_coords(w: int) -> np.ndarray:
  """Swin V2's log-spaced relative coordinates of a w x w window (the
  paper's Eq. 4), float32 as torchvision's buffer."""
  r = np.arange(-(w - 1), w, dtype=np.float32)
  t = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1) / np.float32(w - 1)
  t = t * np.float32(8)
  return (np.sign(t) * np.log2(np.abs(t) + 1) / np.float32(3)).astype(
    np.float32
  )


def _swin_index(w: int) -> np.ndarray:
  """Swin's relative position index of a w x w window (the paper's
  formula), int64 as torchvision's buffer."""
  ys, xs = np.divmod(np.arange(w * w), w)
  dy = ys[:, None] - ys[None, :] + w - 1
  dx = xs[:, None] - xs[None, :] + w - 1
  return (dy * (2 * w - 1) + dx).reshape(-1).astype(np.int64)


def imagenet_input(n=2, size=64, seed=0):
  """uint8 ``[n, size, size, 3]`` images for the encoder import check."""
  return np.random.default_rng(seed).integers(
    0, 255, (n, size, size, 3), np.uint8
  )
