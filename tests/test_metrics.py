import json

import numpy as np
import pytest

from conftest import require_shared
from vos_core.io import write_palette_png
from vos_core.metrics import (EvaluationError, db_eval_boundary, db_eval_iou, disk, evaluate_folders,
                              evaluate_sequence, seg2bmap)


def _max_diff(got: list, ref: list) -> float:
    assert [g is None for g in got] == [r is None for r in ref]  # the same frames unscored
    return max(abs(g - r) for g, r in zip(got, ref) if r is not None)


def test_reproduces_the_davis2016_toolkit_on_stm_predictions():
    root = require_shared("davis16-val-public")
    ref = json.loads((root / "STM_reference_scores.json").read_text())["sequence"]
    scores = evaluate_folders(root / "STM_predictions", root / "Annotations")
    assert sorted(scores["sequences"]) == sorted(ref)
    for seq, expected in ref.items():
        got = scores["sequences"][seq]
        assert got["J"][0] is None and got["J"][-1] is None and len(got["J"]) == len(expected["J"])
        assert _max_diff(got["J"], expected["J"]) < 1e-6, seq
        # same boundary extraction and disk as the toolkit: F matches to rounding, not just closely
        assert _max_diff(got["F"], expected["F"]) < 1e-9, seq
        assert got["J_mean"] == pytest.approx(expected["J_mean"], abs=1e-9)
        assert got["F_mean"] == pytest.approx(expected["F_mean"], abs=1e-9)
        assert got["objects"]["1"]["J"] == got["J"]  # one object: its list is the sequence's
    j = np.mean([v["J_mean"] for v in ref.values()])
    f = np.mean([v["F_mean"] for v in ref.values()])
    assert scores["J&F"] == pytest.approx((j + f) / 2, abs=1e-9)


def test_iou_edge_cases():
    empty, square = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    square[2:6, 2:6] = True
    assert db_eval_iou(empty, empty) == 1.0
    assert db_eval_iou(square, empty) == 0.0
    half = np.zeros_like(square)
    half[2:6, 2:4] = True
    assert db_eval_iou(square, half) == pytest.approx(0.5)


def test_boundary_map_and_disk():
    seg = np.zeros((5, 5), bool)
    seg[1:3, 1:3] = True
    # the toolkit marks pixels that differ from their east, south or south-east neighbour
    expected = np.zeros((5, 5), bool)
    for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]:
        expected[r, c] = True
    np.testing.assert_array_equal(seg2bmap(seg), expected)
    assert not seg2bmap(np.ones((5, 5), bool)).any()  # the image border is not a boundary
    d = disk(2)
    assert d.shape == (5, 5) and d.sum() == 13 and d[0, 2] and not d[0, 1]


def test_boundary_f_edge_cases():
    empty = np.zeros((50, 50), bool)
    blob = empty.copy()
    blob[10:30, 10:30] = True
    assert db_eval_boundary(empty, empty) == 1.0
    assert db_eval_boundary(blob, empty) == 0.0 and db_eval_boundary(empty, blob) == 0.0
    assert db_eval_boundary(blob, blob) == 1.0
    shifted = np.roll(blob, 1, axis=1)  # within the 1-pixel tolerance of a 50×50 image
    assert db_eval_boundary(blob, shifted) == 1.0
    far = np.roll(blob, 15, axis=1)
    assert db_eval_boundary(blob, far) < 0.6


def test_multi_object_sequence():
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 10:18, 10:18] = 2
    gt[2, 0, 0] = 5  # an id absent from the first frame is not scored
    pred = gt.copy()
    pred[:, 10:18, 10:18] = 0  # object 2 lost after the first frame
    scores = evaluate_sequence(list(gt), list(pred))
    assert sorted(scores["objects"]) == [1, 2]
    assert scores["objects"][1]["J"] == [None, 1.0, 1.0, None]
    assert scores["objects"][2]["J"] == [None, 0.0, 0.0, None]
    assert scores["J"] == [None, 0.5, 0.5, None] and scores["J_mean"] == 0.5
    assert scores["F_mean"] == 0.5
    with pytest.raises(ValueError, match="numbers of frames"):
        evaluate_sequence(list(gt), list(pred[:3]))


def test_missing_result_frame_is_named(tmp_path):
    gt_dir, res_dir = tmp_path / "gt" / "seq", tmp_path / "res" / "seq"
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    for t in range(3):
        write_palette_png(gt_dir / f"{t:05d}.png", mask)
    for t in range(2):
        write_palette_png(res_dir / f"{t:05d}.png", mask)
    with pytest.raises(EvaluationError, match="00002.png"):
        evaluate_folders(tmp_path / "res", tmp_path / "gt")
    write_palette_png(res_dir / "00002.png", mask)
    assert evaluate_folders(tmp_path / "res", tmp_path / "gt")["J&F"] == 1.0
