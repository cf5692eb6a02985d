"""DAVIS measures: region similarity J (IoU) and boundary accuracy F.

Both follow the DAVIS evaluation toolkits exactly (same boundary extraction,
same disk-shaped tolerance, same edge cases), so scores are comparable with
published numbers.

Conventions (documented choices):

* The first frame (given as input) and the last frame of a sequence are not
  scored: their entries are None / null, as in the DAVIS toolkits.
* The objects of a sequence are the ids in its first ground-truth frame; an
  object that only appears later is not scored.
* Per sequence, ``J``/``F`` hold per-frame values averaged over the objects, and
  ``objects`` holds each object's own per-frame lists. ``J_mean``/``F_mean`` of a
  sequence are the mean over its objects of each object's mean over the scored
  frames (equal to the mean of the per-frame averages).
* Overall, following DAVIS-2017, ``J_mean``/``F_mean`` are means over all objects of
  all sequences (for single-object DAVIS-2016 that is the mean over sequences),
  and ``J&F`` = (J_mean + F_mean) / 2.
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import cv2
import numpy as np

from .errors import VOSInputError
from .io import _fs
from .io.masks import read_id_map

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS default)


class EvaluationError(VOSInputError):
    """Results or ground truth that cannot be scored (the message names the file)."""


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray) -> float:
    """Region similarity J: |A ∩ S| / |A ∪ S| of two binary masks; 1 when both are empty."""
    a = np.asarray(annotation).astype(bool)
    s = np.asarray(segmentation).astype(bool)
    union = np.count_nonzero(a | s)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & s) / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask, as the DAVIS toolkit's seg2bmap:
    a pixel is on the boundary when it differs from its east, south or
    south-east neighbour; the last row/column compare along the edge only."""
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """Disk structuring element: offsets (dy, dx) with dy² + dx² ≤ radius² (scikit-image's ``disk``)."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def _dilate(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # cv2's default border for dilation adds nothing outside the image, like binary_dilation's border 0.
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of two binary masks: boundaries match within
    ``bound_th`` × image diagonal pixels (rounded up), or ``bound_th`` pixels when it is ≥ 1."""
    a = np.asarray(annotation).astype(bool)
    s = np.asarray(segmentation).astype(bool)
    if a.shape != s.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {s.shape}")
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*a.shape))
    kernel = disk(int(radius))
    gt_b, fg_b = seg2bmap(a), seg2bmap(s)
    n_gt, n_fg = np.count_nonzero(gt_b), np.count_nonzero(fg_b)
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:  # the toolkit's precision/recall of 1 and 0 give F = 0
        return 0.0
    precision = np.count_nonzero(fg_b & _dilate(gt_b, kernel)) / n_fg
    recall = np.count_nonzero(gt_b & _dilate(fg_b, kernel)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _mean(values: list[float | None]) -> float | None:
    scored = [v for v in values if v is not None]
    return float(np.mean(scored)) if scored else None


def evaluate_sequence(gt_masks: Iterable[np.ndarray], pred_masks: Iterable[np.ndarray],
                      object_ids: list[int] | None = None, bound_th: float = BOUND_TH) -> dict:
    """Scores one sequence. ``gt_masks``/``pred_masks``: id maps frame by frame
    (consumed in step, one frame held back to know which is last). ``object_ids``:
    default the non-zero ids of the first ground-truth frame.

    Returns {"J": [...], "F": [...], "J_mean", "F_mean", "objects": {id: {"J", "F", "J_mean", "F_mean"}}}
    with None for the unscored first and last frames (see the module notes)."""
    return _evaluate_pairs(_zip_same_length(gt_masks, pred_masks), object_ids, bound_th)


def _evaluate_pairs(pairs: Iterable[tuple[np.ndarray, np.ndarray]], object_ids: list[int] | None,
                    bound_th: float) -> dict:
    per_object: dict[int, dict[str, list]] = {}
    pending = None  # the frame before the current one: scored once we know it is not the last
    n_frames = 0
    for t, (gt, pred) in enumerate(pairs):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"frame {t}: ground truth is {gt.shape[::-1]} but the prediction is {pred.shape[::-1]}")
        n_frames += 1
        if t == 0:
            ids = object_ids if object_ids is not None else [int(i) for i in np.unique(gt) if i != 0]
            if not ids:
                raise ValueError("the first ground-truth frame has no object (only background)")
            per_object = {i: {"J": [None], "F": [None]} for i in ids}
            continue
        if pending is not None:
            _score_frame(per_object, *pending, bound_th)
        pending = (gt, pred)
    if n_frames == 0:
        raise ValueError("no frames to evaluate")
    if pending is not None:
        for scores in per_object.values():
            scores["J"].append(None)
            scores["F"].append(None)
    return _summarise(per_object)


def _zip_same_length(a: Iterable, b: Iterable):
    sentinel = object()
    ia, ib = iter(a), iter(b)
    while True:
        x, y = next(ia, sentinel), next(ib, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise ValueError("ground truth and prediction have different numbers of frames")
        yield x, y


def _score_frame(per_object: dict, gt: np.ndarray, pred: np.ndarray, bound_th: float) -> None:
    for oid, scores in per_object.items():
        g, p = gt == oid, pred == oid
        scores["J"].append(float(db_eval_iou(g, p)))
        scores["F"].append(float(db_eval_boundary(g, p, bound_th)))


def _summarise(per_object: dict) -> dict:
    objects = {oid: {"J": s["J"], "F": s["F"], "J_mean": _mean(s["J"]), "F_mean": _mean(s["F"])}
               for oid, s in per_object.items()}
    frame_avg = {}
    for key in ("J", "F"):
        frame_avg[key] = [None if objects_at[0] is None else float(np.mean(objects_at))
                          for objects_at in zip(*(o[key] for o in objects.values()))]
    return {
        "J": frame_avg["J"], "F": frame_avg["F"],
        "J_mean": _mean([o["J_mean"] for o in objects.values()]),
        "F_mean": _mean([o["F_mean"] for o in objects.values()]),
        "objects": objects,
    }


def _sequence_masks(gt_uris: list[str], pred_dir: str, storage_options: dict | None):
    """(ground truth, prediction) id maps for each ground-truth frame, read one pair at a time."""
    fs, pred_path = _fs.resolve(pred_dir, storage_options)
    for gt_uri in gt_uris:
        name = _fs.basename(gt_uri)
        pred_uri = f"{pred_dir}/{name}"
        if not fs.exists(f"{pred_path}/{name}"):
            raise EvaluationError(f"{pred_uri}: missing result for ground-truth frame {gt_uri}")
        gt = read_id_map(gt_uri, storage_options)
        pred = read_id_map(pred_uri, storage_options)
        if gt.shape != pred.shape:
            raise EvaluationError(f"{pred_uri}: is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                                  f"{gt_uri} is {gt.shape[1]}x{gt.shape[0]}")
        yield gt, pred


def _png_uris(uri: str, storage_options: dict | None) -> list[str]:
    fs, path = _fs.resolve(uri, storage_options)
    return [_fs.display(fs, p) for p in _fs.list_files(fs, path, (".png",))]


def _subfolders(uri: str, storage_options: dict | None) -> list[str]:
    fs, path = _fs.resolve(uri, storage_options)
    if not fs.isdir(path):
        raise EvaluationError(f"{uri}: no such folder")
    return [_fs.basename(d) for d in _fs.list_dirs(fs, path)]


def evaluate_folders(results_dir: str | os.PathLike, annotations_dir: str | os.PathLike,
                     sequences: list[str] | None = None, bound_th: float = BOUND_TH,
                     storage_options: dict | None = None) -> dict:
    """Scores ``<results_dir>/<seq>/<frame>.png`` against ``<annotations_dir>/<seq>/<frame>.png``
    (local or fsspec URLs). Every ground-truth frame needs a result of the same name.
    ``sequences``: default, every sequence folder in ``results_dir``.

    Returns {"sequences": {seq: {"J", "F", "J_mean", "F_mean", "objects"}}, "J_mean", "F_mean", "J&F"}
    (JSON-ready; see the module notes for how objects and frames are averaged)."""
    results_dir, annotations_dir = str(results_dir).rstrip("/"), str(annotations_dir).rstrip("/")
    if sequences is None:
        sequences = _subfolders(results_dir, storage_options)
        if not sequences:
            raise EvaluationError(f"{results_dir}: no sequence folders (expected <seq>/<frame>.png)")
    annotated = set(_subfolders(annotations_dir, storage_options))
    scores, object_j, object_f = {}, [], []
    for seq in sequences:
        if seq not in annotated:
            raise EvaluationError(f"{annotations_dir}/{seq}: no ground truth for result sequence '{seq}'")
        gt_uris = _png_uris(f"{annotations_dir}/{seq}", storage_options)
        if not gt_uris:
            raise EvaluationError(f"{annotations_dir}/{seq}: no ground-truth PNGs")
        try:
            seq_scores = _evaluate_pairs(_sequence_masks(gt_uris, f"{results_dir}/{seq}", storage_options),
                                         None, bound_th)
        except ValueError as e:  # first frame without objects...
            if isinstance(e, VOSInputError):
                raise
            raise EvaluationError(f"{annotations_dir}/{seq}: {e}") from e
        seq_scores["objects"] = {str(k): v for k, v in seq_scores["objects"].items()}  # JSON keys are strings
        scores[seq] = seq_scores
        object_j += [o["J_mean"] for o in seq_scores["objects"].values() if o["J_mean"] is not None]
        object_f += [o["F_mean"] for o in seq_scores["objects"].values() if o["F_mean"] is not None]
    j_mean = float(np.mean(object_j)) if object_j else None
    f_mean = float(np.mean(object_f)) if object_f else None
    return {
        "sequences": scores,
        "J_mean": j_mean,
        "F_mean": f_mean,
        "J&F": (j_mean + f_mean) / 2 if j_mean is not None and f_mean is not None else None,
    }
