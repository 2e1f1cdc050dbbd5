"""Encoder weights from elsewhere: our checkpoints or torchvision state dicts.

``load_encoder(path, state)`` returns ``(encoder_params, encoder_batch_stats)``
shaped like ``state``'s encoder, from

* a folder written by our orbax checkpoints (a phase folder such as
  ``<workdir>/checkpoints/teacher`` -- its latest step -- or one step folder);
* a torchvision ``.pth``/``.pt`` state dict of ResNet-18/50, DenseNet-121,
  EfficientNet-B0/V2-M, ConvNeXt-T/B, Swin-T, Swin V2-T/B or ViT-B/16
  (needs the ``torch`` extra; PyTorch's ``[O, I, kh, kw]`` kernels become
  flax's ``[kh, kw, I, O]``, linear ``[O, I]`` weights ``[I, O]`` kernels,
  running statistics ``batch_stats``);
* a timm state dict (``.pth``/``.bin``, or ``.safetensors`` without torch)
  of ConvNeXt V2 or a ViT such as RETFound's, bare or wrapped as
  ``{"model": ...}`` / ``{"state_dict": ...}`` (RETFound's and MAE's
  checkpoints; the MAE decoder is ignored).
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np


def _assign(target: dict, path: tuple, value: np.ndarray, *, name: str):
  node = target
  for key in path[:-1]:
    if key not in node:
      raise KeyError(f"{name}: no parameter {'/'.join(path)} in the model.")
    node = node[key]
  old = node.get(path[-1])
  if old is None:
    raise KeyError(f"{name}: no parameter {'/'.join(path)} in the model.")
  if tuple(old.shape) != tuple(value.shape):
    raise ValueError(
      f"{name}: {'/'.join(path)} has shape {value.shape}, the "
      f"model expects {tuple(old.shape)}."
    )
  node[path[-1]] = np.asarray(value, np.asarray(old).dtype)


def _flax_module_path(torch_module: str) -> tuple[str, ...]:
  """torchvision module path -> our flax module path (ResNet and DenseNet)."""
  m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", torch_module)
  if m:
    i, j, rest = m.groups()
    rest = {
      "downsample.0": "downsample_conv",
      "downsample.1": "downsample_bn",
    }.get(rest, rest)
    return (f"layer{i}_{j}", rest)
  m = re.fullmatch(
    r"features\.denseblock(\d+)\.denselayer(\d+)\.(\w+)", torch_module
  )
  if m:
    i, j, rest = m.groups()
    return (f"denseblock{i}_layer{j}", rest)
  m = re.fullmatch(r"features\.transition(\d+)\.(\w+)", torch_module)
  if m:
    return (f"transition{m.group(1)}", m.group(2))
  m = re.fullmatch(r"features\.(\w+)", torch_module)
  if m:
    return (m.group(1),)
  return (torch_module,)


def _numpy(tensor) -> np.ndarray:
  return (
    tensor.detach().cpu().numpy()
    if hasattr(tensor, "detach")
    else np.asarray(tensor)
  )


def _check_filled(params, filled, name):
  expected = {
    tuple(k.key for k in p)
    for p, _ in jax.tree_util.tree_leaves_with_path(params)
  }
  missing = sorted(expected - filled)
  if missing:
    raise KeyError(
      f"{name}: {len(missing)} encoder parameters are missing "
      f"from the state dict, e.g. {'/'.join(missing[0])}."
    )


def _from_torchvision_vit(state_dict, params, name):
  """torchvision ``VisionTransformer`` -> :class:`agt_jax.models.vit.ViT`."""
  filled = set()

  def put(path, value):
    _assign(params, path, value, name=name)
    filled.add(path)

  for key, tensor in state_dict.items():
    value = _numpy(tensor)
    if key.startswith("heads."):
      continue
    if key == "class_token":
      put(("class_token",), value)
    elif key == "encoder.pos_embedding":  # resized as torchvision's
      want = params["pos_embedding"].shape[1]
      value = resize_pos_embedding(value, want, align_corners=True)
      put(("pos_embedding",), value)
    elif key == "conv_proj.weight":
      put(("conv_proj", "kernel"), value.transpose(2, 3, 1, 0))
    elif key == "conv_proj.bias":
      put(("conv_proj", "bias"), value)
    elif key in ("encoder.ln.weight", "encoder.ln.bias"):
      put(("ln", "scale" if key.endswith("weight") else "bias"), value)
    else:
      m = re.fullmatch(r"encoder\.layers\.(encoder_layer_\d+)\.(.+)", key)
      if not m:
        raise KeyError(f"{name}: unexpected ViT state-dict key {key!r}.")
      layer, rest = m.groups()
      rest = rest.replace("linear_1", "0").replace("linear_2", "3")
      table = {
        "ln_1.weight": ("ln_1", "scale"),
        "ln_1.bias": ("ln_1", "bias"),
        "ln_2.weight": ("ln_2", "scale"),
        "ln_2.bias": ("ln_2", "bias"),
        "self_attention.in_proj_weight": (
          "self_attention",
          "in_proj",
          "kernel",
        ),
        "self_attention.in_proj_bias": ("self_attention", "in_proj", "bias"),
        "self_attention.out_proj.weight": (
          "self_attention",
          "out_proj",
          "kernel",
        ),
        "self_attention.out_proj.bias": ("self_attention", "out_proj", "bias"),
        "mlp.0.weight": ("mlp_0", "kernel"),
        "mlp.0.bias": ("mlp_0", "bias"),
        "mlp.3.weight": ("mlp_3", "kernel"),
        "mlp.3.bias": ("mlp_3", "bias"),
      }
      if rest not in table:
        raise KeyError(f"{name}: unexpected ViT state-dict key {key!r}.")
      path = (layer,) + table[rest]
      put(path, value.T if path[-1] == "kernel" else value)
  _check_filled(params, filled, name)
  return params


def _leaf(torch_leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """``(flax leaf, array)`` of a torch tensor: convolutions to
  ``[kh, kw, in, out]``, linear weights transposed, norm weights to
  ``scale``; ConvNeXt's layer scale flattened; tables and Swin V2's logit
  scale as they are."""
  if torch_leaf == "layer_scale":
    return "layer_scale", value.reshape(-1)
  if torch_leaf in ("bias", "relative_position_bias_table", "logit_scale"):
    return torch_leaf, value
  if value.ndim == 4:
    return "kernel", value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return "kernel", value.T
  return "scale", value


def _from_named(state_dict, params, path_of, name):
  """A state dict without batch statistics (ConvNeXt, Swin; timm's
  ConvNeXt V2) by ``path_of(key) -> (our module path, torch leaf) | None``."""
  filled = set()
  for key, tensor in state_dict.items():
    found = path_of(key)
    if found is None:
      continue
    path, leaf = found
    leaf, value = _leaf(leaf, _numpy(tensor))
    _assign(params, path + (leaf,), value, name=name)
    filled.add(path + (leaf,))
  _check_filled(params, filled, name)
  return params


def from_torchvision(
  state_dict: dict, params: dict, batch_stats: dict, name: str = "state dict"
) -> tuple[dict, dict]:
  """Converts a torchvision ResNet/DenseNet/EfficientNet/ConvNeXt/Swin/ViT
  state dict
  into copies of ``params``/``batch_stats`` (the encoder subtrees). The
  classifier (``fc``/``classifier``/``heads``) is ignored; every encoder
  parameter must be filled."""
  params = jax.tree.map(np.asarray, params)
  stats = jax.tree.map(np.asarray, batch_stats)
  if "class_token" in state_dict:
    return _from_torchvision_vit(state_dict, params, name), stats
  if "features.1.0.layer_scale" in state_dict:
    from agt_jax.models import convnext

    path_of = convnext.torchvision_path
    return _from_named(state_dict, params, path_of, name), stats
  if "features.1.0.attn.qkv.weight" in state_dict:
    from agt_jax.models import swin

    path_of = swin.torchvision_path
    return _from_named(state_dict, params, path_of, name), stats
  path_of = _flax_module_path
  if "features.1.0.block.0.0.weight" in state_dict:  # EfficientNet (V1/V2)
    from agt_jax.models import efficientnet

    stages = efficientnet.stages_of(state_dict)
    path_of = lambda m: efficientnet.torchvision_path(m, stages)
  filled = set()
  for key, tensor in state_dict.items():
    value = _numpy(tensor)
    module, _, leaf = key.rpartition(".")
    if module.startswith(("fc", "classifier")) or leaf == "num_batches_tracked":
      continue
    path = path_of(module)
    if leaf in ("weight", "bias"):
      ours, value = _leaf(leaf, value)
      _assign(params, path + (ours,), value, name=name)
      filled.add(path + (ours,))
    elif leaf == "running_mean":
      _assign(stats, path + ("mean",), value, name=name)
    elif leaf == "running_var":
      _assign(stats, path + ("var",), value, name=name)
  _check_filled(params, filled, name)
  return params, stats


def bicubic_matrix(
  n_in: int, n_out: int, *, align_corners: bool = False
) -> np.ndarray:
  """``[n_out, n_in]`` weights of torch's ``F.interpolate(mode="bicubic")``
  along one axis: cubic convolution with a = -0.75, edge indices clamped,
  no antialiasing; source position ``(i + 0.5) n_in / n_out - 0.5``, or
  ``i (n_in - 1) / (n_out - 1)`` with ``align_corners``. RETFound's and
  MAE's fine-tuning resize position embeddings without aligned corners,
  torchvision's ``interpolate_embeddings`` with them."""
  a = -0.75
  i = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
  else:
    src = (i + 0.5) * (n_in / n_out) - 0.5
  x0 = np.floor(src)
  t = src - x0

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  w = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  m = np.zeros((n_out, n_in))
  for k in range(4):
    idx = np.clip(x0.astype(int) - 1 + k, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, k])
  return m


def resize_pos_embedding(
  pos: np.ndarray, tokens: int, *, align_corners: bool = False
) -> np.ndarray:
  """``[1, 1 + g*g, d]`` position embeddings (the class token's first) to
  ``tokens`` = ``1 + G*G``: the grid resized bicubically as torch's (see
  :func:`bicubic_matrix`), the class token's kept."""
  g, big = round((pos.shape[1] - 1) ** 0.5), round((tokens - 1) ** 0.5)
  if g * g + 1 != pos.shape[1] or big * big + 1 != tokens:
    raise ValueError(
      f"position embeddings of {pos.shape[1]} tokens cannot be resized "
      f"to {tokens}: both must be a class token and a square grid."
    )
  if g == big:
    return pos
  m = bicubic_matrix(g, big, align_corners=align_corners)
  grid = pos[0, 1:].reshape(g, g, -1).astype(np.float64)
  grid = np.einsum("ia,abd,jb->ijd", m, grid, m).reshape(1, big * big, -1)
  return np.concatenate([pos[:, :1], grid.astype(pos.dtype)], axis=1)


_TIMM_VIT = {
  "norm1": "ln_1",
  "norm2": "ln_2",
  "attn.qkv": "self_attention/in_proj",
  "attn.proj": "self_attention/out_proj",
  "mlp.fc1": "mlp_0",
  "mlp.fc2": "mlp_3",
}


def _from_timm_vit(state_dict, params, name):
  """timm ``VisionTransformer`` (RETFound, MAE) -> :class:`ViT`; the
  position embeddings resized to the model's grid; with the average-pool
  head (``fc_norm``) the final ``norm`` is unused and an absent ``fc_norm``
  starts as the identity, as RETFound's fine-tuning starts it."""
  filled = set()
  avg = "fc_norm" in params

  def put(path, value):
    _assign(params, path, value, name=name)
    filled.add(path)

  for key, tensor in state_dict.items():
    if key.startswith(("head.", "decoder", "mask_token")):
      continue  # the classifier, MAE's decoder
    value = _numpy(tensor)
    module, _, leaf = key.rpartition(".")
    if key == "cls_token":
      put(("class_token",), value)
    elif key == "pos_embed":
      want = params["pos_embedding"].shape[1]
      put(("pos_embedding",), resize_pos_embedding(value, want))
    elif module == "patch_embed.proj":
      leaf, value = _leaf(leaf, value)
      put(("conv_proj", leaf), value)
    elif module in ("norm", "fc_norm"):
      if module == "norm" and avg:
        continue
      if module == "fc_norm" and not avg:
        raise KeyError(
          f"{name}: a global-average-pool checkpoint (fc_norm) for a "
          "class-token model; use an average-pool layout such as "
          "`retfound`."
        )
      leaf, value = _leaf(leaf, value)
      put(("fc_norm" if avg else "ln", leaf), value)
    else:
      m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
      if not m or m.group(2) not in _TIMM_VIT:
        raise KeyError(f"{name}: unexpected ViT state-dict key {key!r}.")
      leaf, value = _leaf(leaf, value)
      path = (f"encoder_layer_{m.group(1)}",)
      path += tuple(_TIMM_VIT[m.group(2)].split("/"))
      put(path + (leaf,), value)
  if avg and ("fc_norm", "scale") not in filled:
    d = params["fc_norm"]["scale"].shape
    put(("fc_norm", "scale"), np.ones(d, np.float32))
    put(("fc_norm", "bias"), np.zeros(d, np.float32))
  _check_filled(params, filled, name)
  return params


def from_timm(
  state_dict: dict, params: dict, batch_stats: dict, name: str = "state dict"
) -> tuple[dict, dict]:
  """Converts a timm ConvNeXt (V1/V2) or ViT state dict (RETFound's and
  MAE's included) into copies of ``params``/``batch_stats``; the classifier
  is ignored, every encoder parameter must be filled."""
  params = jax.tree.map(np.asarray, params)
  stats = jax.tree.map(np.asarray, batch_stats)
  if "cls_token" in state_dict:
    return _from_timm_vit(state_dict, params, name), stats
  if "stem.0.weight" in state_dict:
    from agt_jax.models import convnext

    return _from_named(state_dict, params, convnext.timm_path, name), stats
  raise KeyError(
    f"{name}: not a timm ConvNeXt or ViT state dict (no stem.0.weight "
    "or cls_token)."
  )


def from_state_dict(
  state_dict: dict, params: dict, batch_stats: dict, name: str = "state dict"
) -> tuple[dict, dict]:
  """:func:`from_timm` or :func:`from_torchvision`, by the keys; a
  checkpoint wrapped as ``{"model": ...}`` or ``{"state_dict": ...}`` is
  unwrapped first."""
  for wrapper in ("model", "state_dict"):
    if isinstance(state_dict.get(wrapper), dict):
      state_dict = state_dict[wrapper]
      break
  timm = "cls_token" in state_dict or "stem.0.weight" in state_dict
  convert = from_timm if timm else from_torchvision
  return convert(state_dict, params, batch_stats, name=name)


def read_state_dict(path) -> dict:
  """A PyTorch state dict from ``.pth``/``.pt``/``.bin`` (torch) or
  ``.safetensors`` (the ``safetensors`` package; no torch)."""
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ImportError(
        f"--init {path}: reading .safetensors needs the safetensors "
        "package: pip install 'agt-jax[torch]'."
      ) from None
    return load_file(str(path))
  try:
    import torch
  except ImportError:
    raise ImportError(
      f"--init {path}: a {path.suffix} file needs PyTorch: pip install "
      "'agt-jax[torch]'."
    ) from None
  import argparse

  # MAE-style checkpoints (RETFound's) carry their argparse.Namespace.
  with torch.serialization.safe_globals([argparse.Namespace]):
    return torch.load(path, map_location="cpu", weights_only=True)


PYTORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def _restore_ours(path: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """``(step folder, {"params", "batch_stats", ...})`` of one of our
  checkpoints: a phase folder (its latest step), a best-variables folder
  (``<phase>_best``) or one step folder."""
  import orbax.checkpoint as ocp

  # orbax restores absolute paths only; --init is usually relative.
  path = pathlib.Path(path).expanduser().absolute()

  def item(d):
    return next(
      (d / n for n in ("state", "variables") if (d / n).exists()), None
    )

  step_dir = path
  if item(path) is None:
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
    if not steps:
      raise FileNotFoundError(
        f"--init {path}: not a checkpoint folder (no "
        "step folders and no state/)."
      )
    step_dir = path / str(steps[-1])
  if item(step_dir) is None:
    raise FileNotFoundError(
      f"--init {step_dir}: no state/ or variables/ in " "it."
    )
  return step_dir, ocp.StandardCheckpointer().restore(item(step_dir))


def load_variables(path, like: dict) -> dict | None:
  """Every ``params``/``batch_stats`` of one of our checkpoints when its
  model is ``like``'s (same tree, same shapes), else None (a ``.pth``, or
  another model: use :func:`load_encoder`)."""
  path = pathlib.Path(path).expanduser()
  if path.suffix in PYTORCH_SUFFIXES or not path.exists():
    return None
  _, restored = _restore_ours(path)
  got = {
    k: jax.tree.map(np.shape, restored.get(k, {}))
    for k in ("params", "batch_stats")
  }
  want = {
    k: jax.tree.map(np.shape, like.get(k, {}))
    for k in ("params", "batch_stats")
  }
  if got != want:
    return None
  return {k: restored.get(k, {}) for k in ("params", "batch_stats")}


def load_encoder(path, state: dict) -> tuple[dict, dict]:
  """Encoder params and batch stats from ``path``, shaped like ``state``."""
  path = pathlib.Path(path).expanduser()
  enc_params = state["params"]["encoder"]
  enc_stats = state["batch_stats"].get("encoder", {})
  if not path.exists():
    raise FileNotFoundError(f"--init {path}: no such file or folder.")
  if path.suffix in PYTORCH_SUFFIXES:
    sd = read_state_dict(path)
    return from_state_dict(sd, enc_params, enc_stats, name=str(path))
  step_dir, restored = _restore_ours(path)
  try:
    p = restored["params"]["encoder"]
    b = restored["batch_stats"].get("encoder", {})
  except KeyError:
    raise KeyError(
      f"--init {step_dir}: the checkpoint has no encoder."
    ) from None
  got = jax.tree.map(np.shape, p)
  want = jax.tree.map(np.shape, enc_params)
  if got != want:
    raise ValueError(
      f"--init {step_dir}: its encoder does not match this "
      "model (different architecture or width)."
    )
  return p, b


def load_init(path, state: dict) -> dict:
  """``state`` with its encoder weights copied from ``path`` (our checkpoint
  folder, or a torchvision / timm state dict); a multi-teacher's
  ``encoder_g*`` all start from the same weights."""
  keys = [
    k for k in state["params"] if k == "encoder" or k.startswith("encoder_g")
  ]
  params, stats = dict(state["params"]), dict(state["batch_stats"])
  for k in keys:
    view = {
      "params": {"encoder": params[k]},
      "batch_stats": {"encoder": stats.get(k, {})},
    }
    params[k], stats[k] = load_encoder(path, view)
  return {**state, "params": params, "batch_stats": stats}
