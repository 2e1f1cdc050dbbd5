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


def test_paper_readings_are_fields_with_legacy_values_and_checks():
  from agt_jax.errors import ConfigError

  c = config.get_config("smoke")
  assert (c.kd_scale, c.teacher_objective, c.teacher_sampler) == (
    "t2",
    "all",
    "group_mixed",
  )
  assert c.gbg_group_loss == "mean"  # the paper's; records before: "sum"
  old = config.from_json('{"preset": "smoke", "trainer": "gbg"}')
  assert old.gbg_group_loss == "sum" and old.kd_scale == "t2"
  ok = dict(
    grouping="single", reweight="none", student=False, prior_correction="none"
  )
  config.validate(
    config.get_config("smoke", teacher_sampler="class_balanced", **ok)
  )
  config.validate(config.get_config("smoke", teacher_objective="group"))
  config.validate(config.get_config("smoke", fold_mode="official_val"))
  bad = {
    "teacher_objective='group' (Eq. 14)": dict(
      teacher_objective="group", loss="focal"
    ),
    "one-head CB-sampling baseline": dict(teacher_sampler="class_balanced"),
    "got grouping='single', prior_correction='loss'": dict(
      teacher_sampler="class_balanced", grouping="single"
    ),
    "belongs to trainer='gbg'": dict(gbg_group_loss="sum"),
    "kd_scale='T2' is not one of": dict(kd_scale="T2"),
    "fold=1 is out of range": dict(fold_mode="official_val", fold=1),
  }
  for msg, kw in bad.items():
    with pytest.raises(
      ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")
    ):
      config.validate(config.get_config("smoke", **kw))


def test_record_comparison_ignores_other_trainers_fields_only():
  """A record from before a field existed counts as its LEGACY value; a
  field only another trainer reads never makes a record stale."""
  import json

  from agt_jax.train.workdir import config_difference

  def record(c, drop):
    d = json.loads(c.to_json())
    for k in drop:
      d.pop(k)
    return d

  agt = config.get_config("smoke")
  assert (
    config_difference(record(agt, ["gbg_group_loss", "kd_scale"]), agt) == {}
  )
  gbg = config.get_config("smoke", trainer="gbg", student=False)
  diff = config_difference(record(gbg, ["gbg_group_loss"]), gbg)
  assert diff == {"gbg_group_loss": ("sum", "mean")}
  t2 = config.get_config("smoke", kd_scale="none")
  assert config_difference(record(t2, ["kd_scale"]), t2) == {
    "kd_scale": ("t2", "none")
  }
