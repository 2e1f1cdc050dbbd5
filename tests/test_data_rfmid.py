"""RFMiD: both layouts, 29 classes, official splits, bad input."""

import numpy as np
import pytest

from agt_jax.data import errors, rfmid
from tests import fixtures


def expected_29(raw):
  col = {c: i + 1 for i, c in enumerate(rfmid.CONDITIONS)}
  out = [1 - raw[:, 0]] + [raw[:, col[c]] for c in rfmid.MAIN_27]
  out.append(raw[:, [col[c] for c in rfmid.RARE_18]].max(1))
  return np.stack(out, 1)


@pytest.mark.parametrize("layout", ["challenge", "dataport"])
def test_both_layouts_and_29_classes(tmp_path, layout):
  raw = fixtures.make_rfmid(tmp_path, layout)
  t = rfmid.load_rfmid(tmp_path)
  assert len(rfmid.CSV_COLUMNS) == 47 and len(t.class_names) == 29
  assert t.class_names[0] == "NORMAL" and t.class_names[-1] == "OTHER"
  assert t.meta["layout"] == layout
  for split in ("train", "val", "test"):
    s = t.split(split)
    np.testing.assert_array_equal(s.labels, expected_29(raw[split]))
    assert s.image_ids[0] == f"{split}/1" and s.paths[0].endswith("1.png")
  assert len(t.split("train")) == 6


def test_missing_root_lists_both_layouts(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as e:
    rfmid.load_rfmid(tmp_path)
  msg = str(e.value)
  assert "RFMiD_Training_Labels.csv" in msg and "2. Groundtruths" in msg
  assert "ieee-dataport" in msg


def test_bad_csv_columns_and_values(tmp_path):
  fixtures.make_rfmid(tmp_path)
  path = tmp_path / "Training_Set/Training_Set/RFMiD_Training_Labels.csv"
  good = path.read_bytes()
  path.write_bytes(good.replace(b",ODE,", b",ODX,", 1))
  with pytest.raises(
    errors.LabelFileError,
    match=r"Labels\.csv.*missing " r"\['ODE'\], unexpected \['ODX'\]",
  ):
    rfmid.load_rfmid(tmp_path)
  lines = good.decode().split("\r\n")
  cells = lines[2].split(",")
  cells[3] = "3"  # column ARMD (ID, Disease_Risk, DR, ARMD) of file row 3
  lines[2] = ",".join(cells)
  path.write_bytes("\r\n".join(lines).encode())
  with pytest.raises(
    errors.LabelFileError, match=r"row 3, column 'ARMD': label value '3'"
  ):
    rfmid.load_rfmid(tmp_path)


def _fold_of(root, fold_mode):
  from agt_jax import config as config_lib
  from agt_jax.train import loop

  c = config_lib.get_config(
    "smoke",
    dataset="rfmid",
    data_dir=str(root),
    cache_dir=str(root / "cache"),
    max_images=None,
    fold_mode=fold_mode,
    together=(),
    val_fraction=0.2,
  )
  return loop.load_fold(config_lib.validate(c))


def test_paper_protocol_trains_on_train_and_scores_validation(tmp_path):
  fixtures.make_rfmid(tmp_path, sizes={"train": 10, "val": 4, "test": 3})
  d = _fold_of(tmp_path, "official_val")
  split = d.table.splits
  # Models learn from and are selected on the training split only; the
  # official validation set is what is scored; the test set is not touched.
  assert set(split[d.fit_idx]) == {"train"}
  assert set(split[d.val_idx]) == {"train"}
  assert sorted(d.test_idx.tolist()) == np.flatnonzero(split == "val").tolist()
  assert len(d.fit_idx) + len(d.val_idx) == 10 and len(d.val_idx) == 2
  assert d.assignment["mode"] == "official_val"
  assert d.assignment["num_unused_images"] == 3
  # The official protocol: train + val -> test.
  o = _fold_of(tmp_path, "official")
  assert set(o.table.splits[o.fit_idx]) | set(o.table.splits[o.val_idx]) == {
    "train",
    "val",
  }
  assert set(o.table.splits[o.test_idx]) == {"test"}
  assert len(o.fit_idx) + len(o.val_idx) == 14


def test_paper_protocol_needs_no_test_set(tmp_path):
  fixtures.make_rfmid(tmp_path, sizes={"train": 8, "val": 4})
  t = rfmid.load_rfmid(tmp_path)
  assert set(t.splits) == {"train", "val"}
  d = _fold_of(tmp_path, "official_val")
  assert len(d.test_idx) == 4
  from agt_jax.errors import InputError

  with pytest.raises(InputError, match="needs a table with an official 'test'"):
    _fold_of(tmp_path, "official")
