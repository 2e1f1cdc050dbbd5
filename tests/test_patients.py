"""The eye-fusion rule: a disease when either eye has it, normal only when
both eyes are; the submission file; and names without a patient."""

import csv

import numpy as np
import pytest

from agt_jax import patients

NAMES = list("NDGCAHMO")


def test_fusion_rule_by_hand():
  p = np.array(
    [
      [0.9, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.3],  # 10_left: normal
      [0.4, 0.7, 0.1, 0.0, 0.0, 0.0, 0.0, 0.1],  # 10_right: diabetic
      [np.nan] * 8,  # 2_left: unreadable
      [0.8, 0.2, 0.6, 0.1, 0.0, 0.0, 0.0, 0.0],  # 2_right
      [np.nan] * 8,  # 3_left: unreadable, so patient 3 is dropped
    ]
  )
  owners = [
    patients.patient_of(f"/x/{n}.jpg")
    for n in ("10_left", "10_right", "2_left", "2_Right", "3_left")
  ]
  assert owners == ["10", "10", "2", "2", "3"]
  ids, fused = patients.fuse(p, owners, NAMES)
  assert ids == ["2", "10"]  # numeric ids in numeric order
  np.testing.assert_allclose(fused[0], p[3])
  want = np.maximum(p[0], p[1])
  want[0] = 0.4  # N: both eyes must be normal, so the smaller
  np.testing.assert_allclose(fused[1], want)
  # Thresholding the fused probabilities = fusing the eyes' decisions.
  t = np.full(8, 0.5)
  calls = (p[:2] > t).astype(int)
  fused_calls = np.r_[calls[:, :1].min(0), calls[:, 1:].max(0)]
  np.testing.assert_array_equal(fused[1] > t, fused_calls.astype(bool))


def test_classes_without_a_normal_class_take_the_maximum():
  p = np.array([[0.1, 0.8], [0.6, 0.2]])
  ids, fused = patients.fuse(p, ["a", "a"], ["X", "Y"])
  assert ids == ["a"]
  np.testing.assert_allclose(fused, [[0.6, 0.8]])


def test_submission_format_and_unknown_patients(tmp_path):
  out = tmp_path / "s" / "sub.csv"
  patients.write_submission(out, ["1", "7"], np.eye(2, 8) * 0.25, NAMES)
  rows = list(csv.reader(open(out)))
  assert rows[0] == ["ID", *NAMES]
  assert rows[1] == ["1", "0.250000"] + ["0.000000"] * 7
  assert [f.name for f in out.parent.iterdir()] == ["sub.csv"]
  assert patients.patient_of("scan.png", given="p-17") == "p-17"
  with pytest.raises(patients.PatientError, match="<id>_left.jpg"):
    patients.patient_of("/data/scan.png")
