"""FGADR's Seg-set loader on a fixture in the release's layout, its bad
input, and the synthetic stand-in's masks."""

import numpy as np
import pytest

from agt_jax.data import errors, fgadr, synth, synth_render
from tests import fixtures


def test_loads_the_release_layout_grades_and_masks(tmp_path):
  want = fixtures.make_fgadr(tmp_path)
  for root in (tmp_path, tmp_path / "Seg-set"):  # either folder
    t = fgadr.load_fgadr(root)
    assert t.name == "fgadr" and len(t) == 5
    np.testing.assert_array_equal(t.grades, want["grades"])
    assert t.image_ids[0] == "0001_0"
    assert t.mask_paths["NV"][0] == "" and t.meta["missing_masks"]["NV"] == 1
  x, m = fgadr.arrays(t, 40)
  assert x.shape == (5, 40, 40, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(m, want["masks"])
  assert t.grade_onehot.sum(1).tolist() == [1] * 5
  # Stacked for the pipeline: image, then masks as 0/255.
  s = fgadr.StackedSource(x, m, np.array([2]))[0]
  assert s.shape == (40, 40, 9)
  np.testing.assert_array_equal(s[..., 3:] == 255, m[2])


def test_a_header_row_is_tolerated(tmp_path):
  seg = fixtures.make_fgadr(tmp_path)["seg"]
  csv = seg / fgadr.GRADES
  csv.write_text("image,grade\n" + csv.read_text())
  assert len(fgadr.load_fgadr(tmp_path)) == 5


def test_bad_input_gets_one_clear_line(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as e:
    fgadr.load_fgadr(tmp_path)
  assert "DR_Seg_Grading_Label.csv" in str(e.value)
  seg = fixtures.make_fgadr(tmp_path)["seg"]
  csv = seg / fgadr.GRADES
  good = csv.read_text()
  csv.write_text(good.replace(",", ",7", 1))
  with pytest.raises(errors.LabelFileError, match=r"row 1, column 2 \(grade\)"):
    fgadr.load_fgadr(tmp_path)
  csv.write_text(good + "0009_9.png,2\n")
  with pytest.raises(errors.LabelFileError, match=r"row 6 names '0009_9.png'"):
    fgadr.load_fgadr(tmp_path)
  csv.write_text(good + good.splitlines()[0] + "\n")
  with pytest.raises(errors.LabelFileError, match="graded twice"):
    fgadr.load_fgadr(tmp_path)
  csv.write_text(good)
  (seg / "IRMA_Masks").rename(seg / "irma")
  with pytest.raises(errors.DatasetNotFoundError, match="IRMA masks"):
    fgadr.load_fgadr(tmp_path)


def test_renderer_annotations_leave_the_image_unchanged():
  t = synth.synth_table()
  d = t.class_names.index("D")
  rows = [i for i in range(len(t)) if t.labels[i, d]][:6]
  rows += [int(np.flatnonzero(t.labels[:, d] == 0)[0])]
  for i in rows:
    r = synth.row(t, i)
    ann = {}
    img = synth_render.render(r, 96, seed=5, annotations=ann)
    np.testing.assert_array_equal(img, synth_render.render(r, 96, seed=5))
    assert set(ann) == {*fgadr.LESIONS, "dr_grade"}
    assert not ann["IRMA"].any()
    # lesions only inside the field of view (the image is black outside)
    for k in fgadr.LESIONS:
      assert not (ann[k] & (img.max(-1) == 0)).any()
    if not t.labels[i, d]:
      assert ann["dr_grade"] == 0 and not any(
        ann[k].any() for k in fgadr.LESIONS
      )
  assert [synth_render.dr_grade(s) for s in (None, 0.3, 0.5, 0.7, 0.9)] == [
    0,
    1,
    2,
    3,
    4,
  ]


def test_synthetic_stand_in_is_disjoint_and_cached(tmp_path):
  t, x, m = fgadr.load(
    "fgadr-synth", size=48, cache_dir=tmp_path, max_images=40
  )
  assert t.meta["synthetic"] and t.image_ids[0] == "fg0"
  assert t.meta["render_seed"] not in (0, synth.PRETRAIN_SEED)
  assert x.shape == (40, 48, 48, 3) and m.shape == (40, 48, 48, 6)
  assert (t.grades > 0).mean() > 0.7 and m[..., 0].any()  # MA drawn
  t2, x2, m2 = fgadr.load(
    "fgadr-synth", size=48, cache_dir=tmp_path, max_images=40
  )
  np.testing.assert_array_equal(x2, x)
  np.testing.assert_array_equal(t2.grades, t.grades)
