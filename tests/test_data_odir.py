"""ODIR-5K keyword mapping and the real on-disk loaders, on tiny fixtures."""

import numpy as np
import pytest
from PIL import Image

from agt_jax.data import errors, odir
from agt_jax.data import odir_keywords as kw
from tests import fixtures


def test_keyword_mapping_reproduces_packaged_table():
  t = odir.packaged_label_table(ignorable_policy="keep_zero")
  assert len(t) == 7000
  recovered = np.stack([kw.keywords_to_labels(k) for k in t.keywords])
  np.testing.assert_array_equal(recovered, t.labels)
  np.testing.assert_array_equal(
    t.class_counts, [3098, 1801, 326, 313, 280, 193, 268, 1200]
  )


@pytest.mark.parametrize(
  "policy,n,n_normal,patients",
  [
    ("as_normal", 6997, 3125, 3500),
    ("drop", 6970, 3098, 3499),  # one patient loses both
    ("keep_zero", 7000, 3098, 3500),
  ],
)
def test_ignorable_policies(policy, n, n_normal, patients):
  t = odir.packaged_label_table(ignorable_policy=policy)
  assert len(t) == n and t.class_counts[0] == n_normal
  assert len(np.unique(t.patient_ids)) == patients
  with pytest.raises(ValueError, match="ignorable policy"):
    odir.packaged_label_table(ignorable_policy="normal")


def test_split_keywords_handles_both_commas_and_spaces():
  assert kw.split_keywords("lens dust，lens dust") == ["lens dust"] * 2
  assert kw.split_keywords("drusen, abnormal pigment ") == [
    "drusen",
    "abnormal pigment",
  ]
  assert kw.keyword_class("tessellated fundus") == "O"
  assert kw.keyword_class("myopic maculopathy") == "M"
  assert kw.keyword_class("drusen") == "O"
  assert kw.keyword_class("low image quality") is None


def test_challenge_xlsx_recovers_image_level_vectors(tmp_path):
  root = fixtures.make_odir_challenge(tmp_path / "odir")
  t = odir.load_odir5k(root, ignorable_policy="keep_zero")
  rows = fixtures.label_rows()
  assert list(t.image_ids) == [
    "2_left",
    "2_right",
    "305_left",
    "305_right",
    "372_left",
    "372_right",
  ]
  for i, image_id in enumerate(t.image_ids):
    np.testing.assert_array_equal(t.labels[i], rows[image_id]["labels"])
  assert t.patient_ids.tolist() == ["2", "2", "305", "305", "372", "372"]
  assert all(
    p.endswith(f"ODIR-5K_Training_Dataset/{i}.jpg")
    for p, i in zip(t.paths, t.image_ids)
  )
  # as_normal: 372_right ("low image quality" only) becomes N.
  t2 = odir.load_odir5k(root)
  np.testing.assert_array_equal(t2.labels[5], [1, 0, 0, 0, 0, 0, 0, 0])
  # The patient-level N..O columns are never used for image labels:
  # 305_left (D, H) differs from its patient row (D, H, O).
  np.testing.assert_array_equal(t.labels[2], [0, 1, 0, 0, 0, 1, 0, 0])


def test_kaggle_full_df_uses_own_eye_keywords(tmp_path):
  root = fixtures.make_odir_kaggle_csv(tmp_path / "kaggle")
  t = odir.load_odir5k(root)
  rows = fixtures.label_rows()
  assert list(t.image_ids) == list(fixtures.FULL_DF_IMAGES)
  for i, image_id in enumerate(t.image_ids):
    np.testing.assert_array_equal(t.labels[i], rows[image_id]["labels"])
  # 0_right is N although its patient row says C.
  np.testing.assert_array_equal(t.labels[0], [1, 0, 0, 0, 0, 0, 0, 0])
  assert t.eyes.tolist() == ["right", "right", "left", "left"]


def test_missing_root_explains_where_and_how(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as e:
    odir.load_odir5k(tmp_path / "nowhere")
  msg = str(e.value)
  assert "ODIR-5K_Training_Annotations(Updated)_V2.xlsx" in msg
  assert "full_df.csv" in msg and "odir2019.grand-challenge.org" in msg
  assert "odir5k-synth" in msg


def test_wrong_columns_name_file_and_columns(tmp_path):
  import openpyxl

  root = fixtures.make_odir_challenge(tmp_path / "odir")
  path = root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
  wb = openpyxl.load_workbook(path)
  wb.active.delete_cols(2)  # drop "Patient Age"
  wb.save(path)
  with pytest.raises(
    errors.LabelFileError, match=r"V2\.xlsx.*missing " r"\['Patient Age'\]"
  ):
    odir.load_odir5k(root)


def test_label_value_outside_binary_names_row_and_column(tmp_path):
  import openpyxl

  root = fixtures.make_odir_challenge(tmp_path / "odir")
  path = root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
  wb = openpyxl.load_workbook(path)
  wb.active.cell(row=3, column=9).value = 2  # column "D" of patient 305
  wb.save(path)
  with pytest.raises(
    errors.LabelFileError, match=r"row 3, column 'D': label value 2"
  ):
    odir.load_odir5k(root)


def test_kaggle_csv_bad_value(tmp_path):
  root = fixtures.make_odir_kaggle_csv(tmp_path / "kaggle")
  lines = (root / "full_df.csv").read_bytes().decode().split("\r\n")
  cells = lines[1].split(",")
  cells[7] = "x"  # column N of row 2
  lines[1] = ",".join(cells)
  (root / "full_df.csv").write_bytes("\r\n".join(lines).encode())
  with pytest.raises(
    errors.LabelFileError,
    match=r"full_df\.csv: row 2, " r"column 'N': label value 'x'",
  ):
    odir.load_odir5k(root)


def test_unreadable_image_names_file(tmp_path):
  from agt_jax.data import images

  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not a jpeg")
  with pytest.raises(errors.ImageReadError, match="broken.jpg"):
    images.read_image(bad)
  with pytest.raises(errors.ImageReadError, match="missing.png"):
    images.read_image(tmp_path / "missing.png")


def test_fov_crop_and_resize(tmp_path):
  from agt_jax.data import images

  root = fixtures.make_odir_challenge(tmp_path / "odir")
  t = odir.load_odir5k(root)
  raw = np.asarray(Image.open(t.paths[0]))
  top, bottom, left, right = images.fov_bbox(raw)
  assert (bottom - top) < raw.shape[0] and (right - left) < raw.shape[1]
  out = images.prepare_fundus(t.paths[0], size=64)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  # The disc touches the crop: the central column spans almost the full height.
  assert (out[:, 32].max(1) > 15).mean() > 0.85


def test_select_classes_keeps_every_image():
  from agt_jax.errors import InputError

  t = odir.packaged_label_table()
  sub = t.select_classes(("D", "G", "A"))
  assert sub.class_names == ("D", "G", "A") and len(sub) == len(t)
  np.testing.assert_array_equal(sub.labels, t.labels[:, [1, 2, 4]])
  assert (sub.labels.sum(1) == 0).any()  # images with none of them stay
  with pytest.raises(InputError, match=r"unknown \['X'\]"):
    t.select_classes(("D", "X"))
  with pytest.raises(InputError, match="empty or repeated"):
    t.select_classes(("D", "D"))
