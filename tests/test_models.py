"""Encoders, Teacher/Student, and weight import."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agt_jax import models
from agt_jax.models import weights


@pytest.mark.parametrize(
  "name,dim", [("resnet_tiny", 16), ("densenet_tiny", 16)]
)
def test_tiny_encoders(name, dim):
  enc = models.make_encoder(name)
  x = jnp.zeros((2, 32, 32, 3), jnp.uint8)
  v = enc.init(jax.random.key(0), x)
  f = enc.apply(v, x)
  assert f.shape == (2, dim) and f.dtype == jnp.float32
  f2, upd = enc.apply(v, x, train=True, mutable=["batch_stats"])
  assert "batch_stats" in upd


@pytest.mark.parametrize(
  "name,params,dim",
  [
    ("resnet50", 23_508_032, 2048),
    ("resnet18", 11_176_512, 512),
    ("densenet121", 6_953_856, 1024),
  ],
)
def test_full_size_parameter_counts_match_torchvision(name, params, dim):
  """torchvision's counts without the classifier (fc / classifier)."""
  enc = models.make_encoder(name)
  v = jax.eval_shape(
    enc.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.uint8)
  )
  assert sum(x.size for x in jax.tree.leaves(v["params"])) == params
  out = jax.eval_shape(enc.apply, v, jnp.zeros((1, 64, 64, 3), jnp.uint8))
  assert out.shape == (1, dim)


def test_cifar_resnet32_has_the_published_size():
  """ResNet-32 of He et al. (CIFAR): 0.46M parameters; with a 10-class
  linear layer (650) it is the 464,154 of the LDAM/GBG code."""
  enc = models.make_encoder("resnet32")
  v = jax.eval_shape(
    enc.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8)
  )
  assert sum(x.size for x in jax.tree.leaves(v["params"])) + 650 == 464_154
  # 3 stages x 5 blocks x 2 convs + the stem = 31 conv layers (+ fc = 32).
  convs = [
    k
    for k in jax.tree_util.tree_flatten_with_path(v["params"])[0]
    if "kernel" in jax.tree_util.keystr(k[0])
  ]
  assert len(convs) == 31
  out = jax.eval_shape(enc.apply, v, jnp.zeros((2, 32, 32, 3), jnp.uint8))
  assert out.shape == (2, 64)
  # Option-A shortcut: no projection parameters anywhere.
  assert not any("downsample" in jax.tree_util.keystr(k[0]) for k in convs)


def test_bfloat16_compute_keeps_float32_params():
  enc = models.make_encoder("resnet_tiny", dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  v = enc.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  assert enc.apply(v, x).dtype == jnp.float32


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model"):
    models.make_encoder("vit")


def _shapes(enc, x) -> dict:
  """Zero variables of ``enc``'s shapes, without running its random
  initialisers (seconds for the big encoders): an import overwrites every
  entry."""
  return jax.tree.map(
    lambda a: np.zeros(a.shape, a.dtype),
    jax.eval_shape(enc.init, jax.random.key(0), jnp.asarray(x)),
  )


def test_torchvision_import_matches_torch_outputs():
  """Seeded torchvision-shaped weights (tests/references.py), imported,
  give the features torch computed from the same weights and images
  (tests/torch_references, made by make_torch_references.py)."""
  import json

  from tests import references as ref

  here = pathlib.Path(__file__).parent / "torch_references"
  specs = json.loads((here / "torchvision_specs.json").read_text())
  want = np.load(here / "torch_references.npz")
  x = ref.imagenet_input()
  for name in ("resnet50", "densenet121"):
    enc = models.make_encoder(name)
    v = _shapes(enc, x)
    state = ref.torchvision_like_state(specs[name])
    p, s = weights.from_torchvision(state, v["params"], v["batch_stats"])
    ours = np.asarray(jax.jit(enc.apply)({"params": p, "batch_stats": s}, x))
    # Tolerance: float32 accumulation-order differences through ~50 layers.
    np.testing.assert_allclose(
      ours, want[f"{name}_features"], rtol=1e-3, atol=1e-3
    )


# Encoder -> (the seeded state's options, as make_torch_references.py made
# it; rtol). Measured: EfficientNets ~4e-7, ConvNeXt <= 1.3e-6, ConvNeXt V2
# (timm) <= 1.8e-6, Swin 7e-7, the Swin V2 test layout 2.5e-6, RETFound's
# layout 2.8e-7. Swin V2-T/B: 7e-4 / 4.6e-4, float32 rounding under seeded
# logit scales up to 100 (our float64 forward is 2.7e-4 from torch, our
# float32 5.9e-4 from our float64); their test layout checks the same
# code at 1e-4.
IMPORTS = {
  "efficientnet_tiny": ({}, 1e-5),
  "efficientnet_b0": ({}, 1e-5),
  "efficientnet_v2_m": ({"conv_gain": 0.5}, 1e-5),
  "convnext_test": ({"linear": "fan_in"}, 1e-4),
  "convnext_tiny": ({"linear": "fan_in"}, 1e-4),
  "convnext_base": ({"linear": "fan_in"}, 1e-4),
  "swin_test": ({"linear": "fan_in"}, 1e-4),
  "swin_t": ({"linear": "fan_in"}, 1e-4),
  "swin_v2_test": ({"linear": "fan_in"}, 1e-4),
  "swin_v2_t": ({"linear": "fan_in"}, 2e-3),
  "swin_v2_b": ({"linear": "fan_in"}, 2e-3),
  "convnextv2_test": ({"linear": "fan_in"}, 1e-4),
  "convnextv2_base": ({"linear": "fan_in"}, 1e-4),
  "retfound_test": ({"linear": "fan_in"}, 1e-4),
}


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_torchvision_import_of_every_newer_encoder_matches_torch(name):
  """EfficientNet-B0 / V2-M (MBConv with squeeze-excite, fused MBConv,
  depthwise convolutions), ConvNeXt-T/B (7x7 depthwise conv, LayerNorm,
  MLP, layer scale, patchify stem and downsampling), ConvNeXt V2-B (timm:
  GRN, no layer scale), Swin-T (windowed attention with relative position
  bias, shifted windows and their mask, padding to the window, patch
  merging), Swin V2-T/B (cosine attention, clamped logit scale, the
  position-bias MLP, post-norm, V2 merging), RETFound's ViT layout (timm:
  average-pool head with fc_norm) and their test layouts: seeded torchvision
  / timm weights, imported, give torch's pooled features."""
  import json

  from tests import references as ref

  options, rtol = IMPORTS[name]
  here = pathlib.Path(__file__).parent / "torch_references"
  spec = json.loads((here / "torchvision_specs.json").read_text())[name]
  want = np.load(here / "torch_references.npz")[f"{name}_features"]
  x = ref.imagenet_input()
  enc = models.make_encoder(name)
  v = _shapes(enc, x)
  state = ref.torchvision_like_state(spec, **options)
  p, s = weights.from_state_dict(state, v["params"], v.get("batch_stats", {}))
  imported = {"params": p, "batch_stats": s} if s else {"params": p}
  ours = np.asarray(jax.jit(enc.apply)(imported, x))
  np.testing.assert_allclose(
    ours, want, rtol=rtol, atol=rtol * np.abs(want).max()
  )


def test_torchvision_vit_b16_import_matches_torch_outputs():
  """ViT-B/16: seeded weights with torchvision's 152 state-dict entries,
  imported, give torch's class token (after encoder.ln) for two 224 px
  images."""
  import json

  from tests import references as ref

  here = pathlib.Path(__file__).parent / "torch_references"
  spec = json.loads((here / "torchvision_specs.json").read_text())["vit_b16"]
  want = np.load(here / "torch_references.npz")["vit_b16_features"]
  x = ref.imagenet_input(size=224)
  enc = models.make_encoder("vit_b16")
  v = _shapes(enc, x[:1])
  n = sum(a.size for a in jax.tree.leaves(v["params"]))
  assert n == 85_798_656  # torchvision vit_b_16 without heads.head
  state = ref.torchvision_like_state(spec, linear="fan_in")
  p, _ = weights.from_torchvision(state, v["params"], {})
  ours = np.asarray(jax.jit(enc.apply)({"params": p}, x))
  np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-3)
  # A map of patch tokens when unpooled: 14 x 14 at 224 px.
  fmap = models.make_encoder("vit_b16", pool=False).apply({"params": p}, x[:1])
  assert fmap.shape == (1, 14, 14, 768)
  bad = dict(state)
  bad["encoder.layers.encoder_layer_0.mlp.9.weight"] = np.zeros((1,))
  with pytest.raises(KeyError, match="unexpected ViT"):
    weights.from_torchvision(bad, v["params"], {})


def test_retfound_checkpoint_imports_as_retfound_fine_tunes_it(tmp_path):
  """RETFound's ViT-L/16: every entry of its MAE checkpoint layout
  (``{"model": ...}`` with the decoder, the mask token and the final norm)
  lands in our ``retfound`` encoder, and its fine-tuning head's
  ``fc_norm``, absent there, starts as the identity; on the tiny layout the
  64 px weights run at 32 and 96 px with the position embeddings resized as
  RETFound's fine-tuning resizes them (torch: bicubic ``F.interpolate``),
  and a ``.safetensors`` file reads without torch."""
  import json

  from safetensors.numpy import save_file

  from tests import references as ref

  here = pathlib.Path(__file__).parent / "torch_references"
  specs = json.loads((here / "torchvision_specs.json").read_text())
  refs = np.load(here / "torch_references.npz")
  # The full ViT-L/16: keys and shapes (zeros: no 300M seeded values).
  big = models.make_encoder("retfound")
  v = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert sum(a.size for a in jax.tree.leaves(v)) == 303_301_632
  mae = {
    k: np.zeros(shape, np.float32)
    for k, shape in specs["retfound"].items()
    if not k.startswith(("fc_norm", "head"))
  }
  mae.update(
    {
      "norm.weight": np.zeros(1024, np.float32),
      "norm.bias": np.zeros(1024, np.float32),
      "mask_token": np.zeros((1, 1, 512), np.float32),
      "decoder_embed.weight": np.zeros((512, 1024), np.float32),
    }
  )
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), v["params"])
  p, _ = weights.from_state_dict({"model": mae, "epoch": 799}, zeros, {})
  np.testing.assert_array_equal(p["fc_norm"]["scale"], 1.0)
  np.testing.assert_array_equal(p["fc_norm"]["bias"], 0.0)
  # The tiny layout at other sizes, from a safetensors file.
  state = ref.torchvision_like_state(specs["retfound_test"], linear="fan_in")
  path = tmp_path / "retfound_test.safetensors"
  save_file(state, str(path))
  enc = models.make_encoder("retfound_test")
  for size in (32, 96):
    x = ref.imagenet_input(size=size)
    imported = weights.load_encoder(
      path,
      {"params": {"encoder": _shapes(enc, x)["params"]}, "batch_stats": {}},
    )[0]
    ours = np.asarray(jax.jit(enc.apply)({"params": imported}, x))
    want = refs[f"retfound_test_{size}px_features"]
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
  bad = dict(state, **{"blocks.0.ls1.gamma": np.ones(32, np.float32)})
  with pytest.raises(KeyError, match="unexpected ViT"):
    weights.from_timm(bad, _shapes(enc, x)["params"], {})
  # An average-pool checkpoint is not silently read as a class-token one.
  from agt_jax.models.vit import RETFoundTest

  token = RETFoundTest(head="token")
  with pytest.raises(KeyError, match="fc_norm"):
    weights.from_timm(state, _shapes(token, x)["params"], {})


def test_bicubic_resize_matches_torchs():
  """One axis: torch's bicubic ``F.interpolate`` of an identity basis
  (committed, both corner modes; up and down), and one hand case: 2 -> 4
  without aligned corners puts the first output at source -0.25 (t = 0.75
  from index -1, clamped)."""
  refs = np.load(
    pathlib.Path(__file__).parent / "torch_references" / "torch_references.npz"
  )
  for n_in, n_out in ((4, 6), (8, 4), (14, 4), (14, 16)):
    for align in (False, True):
      want = refs[f"bicubic_{n_in}_{n_out}_{int(align)}"]
      got = weights.bicubic_matrix(n_in, n_out, align_corners=align)
      np.testing.assert_allclose(got, want, atol=1e-12)
  a, t = -0.75, 0.75
  w = [
    ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
    ((a + 2) * t - (a + 3)) * t * t + 1,
    ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1,
    ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
  ]
  m = weights.bicubic_matrix(2, 4)
  np.testing.assert_allclose(m[0], [w[0] + w[1] + w[2], w[3]], rtol=1e-12)
  np.testing.assert_array_equal(weights.bicubic_matrix(3, 3), np.eye(3))


def test_import_rejects_incomplete_state_dict():
  enc = models.make_encoder("resnet_tiny")
  v = enc.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  sd = {"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}
  with pytest.raises(KeyError, match="missing"):
    weights.from_torchvision(sd, v["params"], v["batch_stats"])
  sd = {"conv1.weight": np.zeros((9, 3, 7, 7), np.float32)}
  with pytest.raises(ValueError, match="shape"):
    weights.from_torchvision(sd, v["params"], v["batch_stats"])


def test_load_encoder_from_our_checkpoint(tmp_path):
  import orbax.checkpoint as ocp

  from agt_jax.train import steps

  teacher = models.Teacher(
    models.make_encoder("resnet_tiny"), groups=((0, 1), (2,)), num_classes=3
  )
  tx = steps.teacher_tx(2, 1e-3)
  state = steps.init_state(teacher, tx, (32, 32, 3), seed=3)
  ckpt = ocp.CheckpointManager(tmp_path / "teacher")
  ckpt.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  ckpt.wait_until_finished()
  student = models.Student(models.make_encoder("resnet_tiny"), num_classes=3)
  sstate = steps.init_state(
    student, steps.adam(1e-3, 0.9, 0.99), (32, 32, 3), seed=4
  )
  p, b = weights.load_encoder(tmp_path / "teacher", sstate)
  np.testing.assert_array_equal(
    p["conv1"]["kernel"], state["params"]["encoder"]["conv1"]["kernel"]
  )
  with pytest.raises(FileNotFoundError, match="no such"):
    weights.load_encoder(tmp_path / "nope", sstate)


@pytest.mark.parametrize(
  "name", ["swin_v2_test", "swin_test", "convnextv2_test", "retfound_test"]
)
def test_gradients_are_finite_where_windows_pad(name):
  """40 px: Swin's 10 x 10 map pads to 12 x 12 windows, whose zero tokens
  have zero keys; Swin V2's cosine attention normalises them (torch's
  F.normalize) and must give them a zero gradient, not NaN (a plain
  ``a / max(norm(a), eps)`` does: norm's derivative at 0)."""
  enc = models.make_encoder(name)
  x = jnp.asarray(ref_images(40), jnp.uint8)
  v = jax.jit(enc.init)(jax.random.key(0), x)  # eager: 4x slower, same
  g = jax.jit(
    jax.grad(lambda p: jnp.sum(enc.apply({**v, "params": p}, x) ** 2))
  )(v["params"])
  bad = [
    jax.tree_util.keystr(k)
    for k, a in jax.tree_util.tree_leaves_with_path(g)
    if not np.all(np.isfinite(a))
  ]
  assert not bad, bad


def ref_images(size):
  from tests import references as ref

  return ref.imagenet_input(size=size)
