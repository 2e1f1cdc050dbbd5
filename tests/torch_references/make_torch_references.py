"""Regenerates the PyTorch reference outputs that CI compares against
without PyTorch.

  pip install -e '.[torch]' timm   # torch + torchvision + timm + numpy
  python tests/torch_references/make_torch_references.py
  python tests/torch_references/make_torch_references.py --only efficientnet_b0 ...

Writes, next to this file:
  torch_references.npz   RIDE and distribution-balanced loss gradients by
                         torch autograd (float64); ResNet-50, DenseNet-121,
                         EfficientNet-B0, EfficientNetV2-M, ConvNeXt-T/B,
                         ConvNeXt V2-B (timm), Swin-T, Swin V2-T/B, the
                         tiny layouts, ViT-B/16 (class token) and a tiny
                         RETFound-layout ViT (timm; also with its position
                         embeddings resized as RETFound's fine-tuning does)
                         pooled features of seeded weights and inputs
  torchvision_specs.json the models' state-dict keys and shapes (RETFound's
                         ViT-L/16: keys and shapes only)
  versions.json          the torch / torchvision / numpy that made each

``--only`` remakes the named entries and keeps the others as they are.

Inputs and weights come from ``tests/references.py`` (numpy, seeded), so the
tests rebuild exactly what was fed to torch here.
"""

import json
import pathlib
import sys

import numpy as np
import torch

try:
  import torchvision
except RuntimeError:
  # A CPU-only torch wheel beside a torchvision built for another: its
  # C operators (nms, ...) do not load, and the models need none of them.
  import torch.library

  _register = torch.library.register_fake
  torch.library.register_fake = lambda *a, **k: lambda f: f
  import torchvision

  torch.library.register_fake = _register
from functools import partial

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tests import references as ref  # noqa: E402

F = torch.nn.functional


def ride_gradient() -> np.ndarray:
  """d/dz of the RIDE loss with re-weighting: per expert LDAM-margin CE
  (scale 30) with class-balanced weights, and the diversity KL to the
  experts' mean at temperature T (weight -0.2)."""
  z, t = ref.ride_inputs()
  counts = torch.tensor(ref.PEER_COUNTS, dtype=torch.float64)
  m = counts**-0.25
  m = m * (0.5 / m.max())
  cw = torch.tensor(ref.cb_weights(ref.PEER_COUNTS, 0.9999))
  f = counts / counts.sum()
  tt = 8 * f * 0.05 + 0.95
  temp = tt / tt.max()
  tgt = torch.as_tensor(t)
  zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
  mean = zt.mean(0)
  total = 0.0
  for k in range(zt.shape[0]):
    x = zt[k] - F.one_hot(tgt, 8) * (30 * m)[None, :]
    total = total + F.cross_entropy(x, tgt, weight=cw)
    with torch.no_grad():
      target = F.softmax(mean / temp, dim=1)
    total = total + (-0.2) * temp.mean() ** 2 * F.kl_div(
      F.log_softmax(zt[k] / temp, dim=1), target, reduction="batchmean"
    )
  total.backward()
  return zt.grad.numpy()


def db_gradient() -> np.ndarray:
  """d/dz of the mean distribution-balanced loss (rebalancing weights,
  negative-tolerant regularisation, focal gamma 2)."""
  zb, yb = ref.peer_batch()
  counts = torch.tensor(ref.PEER_COUNTS, dtype=torch.float64)
  zt = torch.tensor(zb, dtype=torch.float64, requires_grad=True)
  yt = torch.tensor(yb, dtype=torch.float64)
  freq_inv = 1 / counts
  w = (
    torch.sigmoid(
      10 * (freq_inv[None] / (yt * freq_inv).sum(1, keepdim=True) - 0.2)
    )
    + 0.1
  )
  x = zt - torch.log(ref.PEER_N_TRAIN / counts - 1) * 0.05 / 2
  x = x * (1 - yt) * 2 + x * yt
  w = w / 2 * (1 - yt) + w * yt
  bce = F.binary_cross_entropy_with_logits(x, yt, reduction="none")
  pt = torch.exp(-bce)
  (2 * (1 - pt) ** 2 * w * bce).mean().backward()
  return zt.grad.numpy()


def efficientnet_tiny(weights=None):
  """agt_jax's EfficientNetTiny table in torchvision's class."""
  from torchvision.models import efficientnet as e

  del weights
  table = [
    e.FusedMBConvConfig(1, 3, 1, 8, 8, 2),
    e.FusedMBConvConfig(2, 3, 2, 8, 16, 1),
    e.MBConvConfig(2, 3, 2, 16, 16, 2),
    e.MBConvConfig(3, 5, 1, 16, 24, 1),
  ]
  return e.EfficientNet(
    table,
    0.2,
    last_channel=32,
    norm_layer=partial(torch.nn.BatchNorm2d, eps=1e-3),
  )


def convnext_test(weights=None):
  """agt_jax's ConvNeXtTest table in torchvision's class."""
  from torchvision.models import convnext as c

  del weights
  return c.ConvNeXt(
    [c.CNBlockConfig(16, 32, 1), c.CNBlockConfig(32, None, 2)], 0.1
  )


def swin_test(weights=None):
  """agt_jax's SwinTest layout in torchvision's class."""
  from torchvision.models import swin_transformer as sw

  del weights
  return sw.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], 4.0)


def swin_v2_test(weights=None):
  """agt_jax's SwinV2Test layout in torchvision's class."""
  from torchvision.models import swin_transformer as sw

  del weights
  return sw.SwinTransformer(
    [4, 4],
    16,
    [2, 2],
    [2, 4],
    [4, 4],
    4.0,
    block=sw.SwinTransformerBlockV2,
    downsample_layer=sw.PatchMergingV2,
  )


def _timm():
  import timm

  return timm


def convnextv2_base(weights=None):
  del weights
  return _timm().create_model("convnextv2_base", pretrained=False)


def convnextv2_test(weights=None):
  """agt_jax's ConvNeXtV2Test layout in timm's class."""
  del weights
  from timm.models.convnext import ConvNeXt

  return ConvNeXt(
    depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), use_grn=True, ls_init_value=None
  )


def _retfound_layout(**sizes):
  """timm's ``VisionTransformer`` with RETFound's fine-tuning head (global
  average pool, fc_norm)."""
  from timm.models.vision_transformer import VisionTransformer

  return VisionTransformer(
    mlp_ratio=4.0, global_pool="avg", fc_norm=True, **sizes
  )


def retfound_test(weights=None, img_size=64):
  """agt_jax's RETFoundTest layout."""
  del weights
  return _retfound_layout(
    img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=4
  )


def retfound(weights=None):
  """RETFound's ViT-L/16 (keys and shapes only)."""
  del weights
  return _retfound_layout(patch_size=16, embed_dim=1024, depth=24, num_heads=16)


def _mae_resize(pos, grid):
  """MAE/RETFound's ``interpolate_pos_embed``: the class token kept, the
  patch grid resized by bicubic F.interpolate (align_corners=False)."""
  g = round((pos.shape[1] - 1) ** 0.5)
  tokens = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
  tokens = F.interpolate(
    tokens, size=(grid, grid), mode="bicubic", align_corners=False
  )
  tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
  return torch.cat([pos[:, :1], tokens], dim=1)


def retfound_resized():
  """The tiny RETFound layout's seeded 64 px weights run at 32 and 96 px
  with the position embeddings resized as RETFound does (4x4 and 12x12
  grids from 8x8)."""
  net = retfound_test()
  spec = {k: list(v.shape) for k, v in net.state_dict().items()}
  state = {
    k: torch.from_numpy(v)
    for k, v in ref.torchvision_like_state(spec, linear="fan_in").items()
  }
  out = {}
  for size in (32, 96):
    small = retfound_test(img_size=size).eval()
    sd = dict(state, pos_embed=_mae_resize(state["pos_embed"], size // 8))
    small.load_state_dict(sd)
    x = ref.imagenet_input(size=size)
    with torch.no_grad():
      feats = small.forward_head(
        small.forward_features(_normalised(x)), pre_logits=True
      )
    out[f"retfound_test_{size}px_features"] = feats.numpy()
  return out


# (n_in, n_out) pairs of the one-axis bicubic resize references.
BICUBIC = ((4, 6), (8, 4), (14, 4), (14, 16))


def bicubic_matrices():
  """torch's bicubic ``F.interpolate`` as ``[n_out, n_in]`` matrices (an
  identity basis resized along one axis), with and without aligned
  corners."""
  out = {}
  for n_in, n_out in BICUBIC:
    basis = torch.eye(n_in, dtype=torch.float64)[None, :, :, None]
    for align in (False, True):
      r = F.interpolate(
        basis, size=(n_out, 1), mode="bicubic", align_corners=align
      )
      out[f"bicubic_{n_in}_{n_out}_{int(align)}"] = r[0, :, :, 0].T.numpy()
  return out


def _normalised(x):
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  return torch.tensor(
    ((x - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32
  )


# Only the state dict's keys and shapes are kept (no features).
SPEC_ONLY = {"retfound"}


# Convolution std x gain: EfficientNetV2-M's seeded activations otherwise
# reach 1e9 (tests/references.py says why that matters).
CONV_GAIN = {"efficientnet_v2_m": 0.5}


def encoder_features(name, ctor):
  net = ctor(weights=None).eval()
  spec = {k: list(v.shape) for k, v in net.state_dict().items()}
  if name in SPEC_ONLY:
    return spec, None
  vit = name == "vit_b16"
  state = ref.torchvision_like_state(
    spec,
    linear="fan_in"
    if vit or name.startswith(("convnext", "swin", "retfound"))
    else "small",
    conv_gain=CONV_GAIN.get(name, 1.0),
  )
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  xt = _normalised(ref.imagenet_input(size=224 if vit else 64))
  with torch.no_grad():
    if name == "resnet50":
      net.fc = torch.nn.Identity()
      out = net(xt)
    elif vit:
      net.heads = torch.nn.Identity()  # the class token after encoder.ln
      out = net(xt)
    elif name.startswith(("convnextv2", "retfound")):  # timm
      out = net.forward_head(net.forward_features(xt), pre_logits=True)
    elif name.startswith("efficientnet"):
      out = F.adaptive_avg_pool2d(net.features(xt), 1).flatten(1)
    elif name.startswith("swin"):  # tokens normalised, then pooled
      out = net.flatten(net.avgpool(net.permute(net.norm(net.features(xt)))))
    elif name.startswith("convnext"):  # pooled, through classifier.0 (norm)
      out = net.classifier[:2](F.adaptive_avg_pool2d(net.features(xt), 1))
    else:
      out = F.adaptive_avg_pool2d(torch.relu(net.features(xt)), 1).flatten(1)
  return spec, out.numpy()


ENCODERS = {
  "resnet50": torchvision.models.resnet50,
  "densenet121": torchvision.models.densenet121,
  "vit_b16": torchvision.models.vit_b_16,
  "efficientnet_b0": torchvision.models.efficientnet_b0,
  "efficientnet_v2_m": torchvision.models.efficientnet_v2_m,
  "efficientnet_tiny": efficientnet_tiny,
  "convnext_tiny": torchvision.models.convnext_tiny,
  "convnext_base": torchvision.models.convnext_base,
  "convnext_test": convnext_test,
  "swin_t": torchvision.models.swin_t,
  "swin_test": swin_test,
  "swin_v2_t": torchvision.models.swin_v2_t,
  "swin_v2_b": torchvision.models.swin_v2_b,
  "swin_v2_test": swin_v2_test,
  "convnextv2_base": convnextv2_base,
  "convnextv2_test": convnextv2_test,
  "retfound_test": retfound_test,
  "retfound": retfound,
}


def main(argv=None):
  import argparse

  p = argparse.ArgumentParser()
  p.add_argument(
    "--only", nargs="+", choices=sorted(ENCODERS) + ["losses", "bicubic"]
  )
  only = p.parse_args(argv).only
  torch.manual_seed(0)
  npz, spec_path = (
    HERE / "torch_references.npz",
    HERE / "torchvision_specs.json",
  )
  arrays = dict(np.load(npz)) if only and npz.exists() else {}
  specs = json.loads(spec_path.read_text()) if only else {}
  versions = json.loads((HERE / "versions.json").read_text()) if only else {}
  if not only or any(n.startswith(("convnextv2", "retfound")) for n in only):
    _timm()  # imported here so that versions.json names it
  made = {
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
    "timm": getattr(sys.modules.get("timm"), "__version__", None),
    "numpy": np.__version__,
    "python": sys.version.split()[0],
  }
  if not only or "losses" in only:
    arrays.update(ride_grad=ride_gradient(), db_grad=db_gradient())
  if not only or "bicubic" in only:
    arrays.update(bicubic_matrices())
  for name, ctor in ENCODERS.items():
    if only and name not in only:
      continue
    specs[name], features = encoder_features(name, ctor)
    if features is not None:
      arrays[f"{name}_features"] = features
    if name == "retfound_test":
      arrays.update(retfound_resized())
  if only:  # which versions made which entries
    versions.setdefault("entries", {}).update({name: made for name in only})
  else:
    versions = made
  np.savez_compressed(npz, **arrays)
  spec_path.write_text(json.dumps(specs))
  (HERE / "versions.json").write_text(json.dumps(versions, indent=1))
  print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
  main()
