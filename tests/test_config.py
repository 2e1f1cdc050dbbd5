"""Config presets and overrides."""

import pytest

from agt_jax import config


def test_presets():
  paper = config.get_config("paper")
  assert (
    paper.model,
    paper.crop,
    paper.image_size,
    paper.batch_size,
    paper.lr,
    paper.b2,
    paper.alpha,
    paper.beta,
    paper.temperature,
    paper.gamma,
  ) == ("resnet50", 448, 512, 64, 1e-3, 0.99, 0.5, 2.0, 5.0, 1.0)
  assert config.get_config("smoke").max_images
  with pytest.raises(ValueError, match="unknown preset"):
    config.get_config("fast")


def test_overrides_are_typed():
  c = config.get_config(
    "smoke",
    **config.parse_sets(
      ["alpha=0.3", "student=false", "init=none", "together=N+O,G+C"]
    ),
  )
  assert c.alpha == 0.3 and c.student is False and c.init is None
  assert c.together == (("N", "O"), ("G", "C"))
  with pytest.raises(ValueError, match="unknown config key 'alfa'"):
    config.replace(c, alfa=1)
  with pytest.raises(ValueError, match="expected float"):
    config.replace(c, alpha="half")
  with pytest.raises(ValueError, match="key=value"):
    config.parse_sets(["alpha"])


def test_json_round_trip():
  c = config.get_config("quick", alpha=0.25)
  assert config.from_json(c.to_json()) == c


def test_classes_from_the_command_line_and_json():
  c = config.replace(config.get_config("smoke"), classes="D,G, A")
  assert c.classes == ("D", "G", "A")
  assert config.from_json(c.to_json()) == c
