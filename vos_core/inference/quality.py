"""The per-frame quality estimate: the predicted region J (IoU with the true mask) of each object's mask.

Quality is a pure function of per-frame signals the segmenter already has or gets cheaply: the uncertainty
and probability statistics of the object, how its mask compares with the mask it was last given (its
annotation or correction: area, box, position) and with the previous frame's, and how far it agrees with a
second opinion: the mask decoded from the object's reference memory, its given frame and a few recent
frames that agreed with it (``ref_agreement``, the strongest single signal: a mask that drifted onto the
background was memorised, so the full bank agrees with it, but the reference memory, which drifted frames
never enter, does not; reference.py). :func:`object_signals` computes them;
a fitted estimator (``vos calibrate``, on sequences with ground truth, stored in the checkpoint as plain
tensors) maps them to a J estimate in [0, 1]: a :class:`LinearIsotonicModel` (a linear score of a few
signals and a monotone curve: ``vos calibrate``'s default and the shipped weights') or a
:class:`QualityModel` (a small gradient-boosted tree ensemble: ``--estimator gbr``). A checkpoint
without one gets :func:`fallback_quality`, a fixed, uncalibrated rule (documented as such in the README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

#: The estimator's inputs, in order.
SIGNALS = (
    "u_mean", "u_p95", "mean_prob", "band_ratio", "empty",
    "log_area_ref", "log_bbox_ref", "log_width_ref", "log_height_ref", "shift_ref",
    "log_area_prev", "shift_prev", "components", "largest_frac", "log_frames_since_ref", "ref_agreement",
)
QUALITY_FORMAT = 1  # the tree ensemble (QualityModel)
LINEAR_ISOTONIC_FORMAT = 2  # a linear score mapped to J by an isotonic curve (LinearIsotonicModel)


@dataclass
class MaskShape:
    area: int
    bbox: list[int] | None  # [x, y, w, h]
    centroid: tuple[float, float] | None  # (x, y)


@dataclass
class ObjectTrack:
    """What an object's signals compare against: its mask where it was last given, and the previous frame's."""

    reference: MaskShape
    reference_frame: int
    previous: MaskShape = field(default=None)

    def __post_init__(self):
        if self.previous is None:
            self.previous = self.reference


def _log_ratio(a: float, b: float) -> float:
    return math.log((a + 1.0) / (b + 1.0))


def _shift(c, ref: MaskShape) -> float:
    """Centroid displacement in units of the reference object's size (sqrt of its area)."""
    if c is None or ref.centroid is None:
        return 0.0
    return math.hypot(c[0] - ref.centroid[0], c[1] - ref.centroid[1]) / math.sqrt(max(ref.area, 1))


def object_signals(stats, shape: MaskShape, track: ObjectTrack, components: int, largest: int,
                   frame_index: int, ref_agreement: float | None = None) -> dict[str, float | None]:
    """The signals of one object at one frame. ``stats``: its ObjectStats; ``components``/``largest``:
    connected components of its mask and the area of the largest; ``ref_agreement``: IoU of its mask with
    the one decoded from its reference memory (None when that read is off)."""
    ref, prev = track.reference, track.previous
    area = shape.area
    w, h = (shape.bbox[2], shape.bbox[3]) if shape.bbox else (0, 0)
    rw, rh = (ref.bbox[2], ref.bbox[3]) if ref.bbox else (0, 0)
    return {
        "u_mean": float(stats.u_mean) if stats.u_mean is not None else 0.0,
        "u_p95": float(stats.u_p95) if stats.u_p95 is not None else 0.0,
        "mean_prob": float(stats.mean_prob) if stats.mean_prob is not None else 0.0,
        "band_ratio": stats.band_area / max(area, 1),
        "empty": float(area == 0),
        "log_area_ref": _log_ratio(area, ref.area),
        "log_bbox_ref": _log_ratio(w * h, rw * rh),
        "log_width_ref": _log_ratio(w, rw),
        "log_height_ref": _log_ratio(h, rh),
        "shift_ref": _shift(shape.centroid, ref),
        "log_area_prev": _log_ratio(area, prev.area),
        "shift_prev": _shift(shape.centroid, prev),
        "components": float(components),
        "largest_frac": largest / area if area else 0.0,
        "log_frames_since_ref": math.log1p(max(0, frame_index - track.reference_frame)),
        "ref_agreement": None if ref_agreement is None else float(ref_agreement),
    }


def estimate_quality(estimator, s: dict) -> float | None:
    """``estimator(s)``; 0 for an empty mask (a tracked object that vanished is for a person to confirm: it
    may have left the scene, or been lost, and no signal tells which); None when a signal the estimator
    reads is missing (``ref_agreement`` with the reference read turned off): an estimate without its inputs
    would be a number that means nothing."""
    needed = getattr(estimator, "signals", ())
    if any(s.get(k) is None for k in needed):
        return None
    if s.get("empty"):
        return 0.0
    return float(estimator(s))


def fallback_quality(s: dict[str, float]) -> float:
    """The uncalibrated rule for checkpoints without a fitted estimator: confidence (mean probability
    times 1 - U, times the agreement with the reference read when there is one) discounted by how far the
    mask's area and box have moved from the last given mask.
    A heuristic, not a fitted J: use ``vos calibrate`` for numbers that mean something."""
    if s["empty"]:
        return 0.0
    confidence = s["mean_prob"] * (1.0 - s["u_mean"])
    if s.get("ref_agreement") is not None:  # the reference memory's opinion, when it was read
        confidence *= s["ref_agreement"]
    drift = abs(s["log_area_ref"]) + abs(s["log_bbox_ref"]) + 0.5 * s["shift_ref"]
    return float(max(0.0, min(1.0, confidence * math.exp(-0.5 * drift) * (s["largest_frac"] ** 0.5))))


def _state_arrays(d: dict, names) -> dict[str, np.ndarray]:
    """The named entries of a checkpoint's quality state as numpy arrays (tensors, or lists from elsewhere)."""
    return {k: (d[k].numpy() if isinstance(d[k], torch.Tensor) else np.asarray(d[k])) for k in names}


class QualityModel:
    """A gradient-boosted regression tree ensemble over :data:`SIGNALS`, held as arrays (no pickles:
    it travels in a ``weights_only`` checkpoint). prediction = clip(base + rate * sum of tree values)."""

    def __init__(self, signals, base: float, rate: float, feature, threshold, left, right, value, meta=None):
        self.signals = tuple(signals)
        self.base, self.rate = float(base), float(rate)
        # trees × nodes, padded; a leaf has left == right == -1
        self.feature = np.maximum(np.asarray(feature, np.int64), 0)  # leaves' -2 -> 0: read, never used
        self.threshold = np.asarray(threshold, np.float64)
        self.left, self.right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        self.value = np.asarray(value, np.float64)
        self.meta = dict(meta or {})
        unknown = set(self.signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"quality model uses unknown signals {sorted(unknown)}")

    @classmethod
    def from_sklearn(cls, gbr, signals, meta=None) -> "QualityModel":
        """From a fitted ``sklearn.ensemble.GradientBoostingRegressor`` (squared-error loss)."""
        trees = [est[0].tree_ for est in gbr.estimators_]
        n = max(t.node_count for t in trees)

        def pad(get, fill, dtype):
            out = np.full((len(trees), n), fill, dtype)
            for i, t in enumerate(trees):
                out[i, : t.node_count] = get(t)
            return out

        base = float(np.ravel(gbr.init_.predict(np.zeros((1, len(signals)))))[0])
        return cls(signals, base, gbr.learning_rate, pad(lambda t: t.feature, 0, np.int64),
                   pad(lambda t: t.threshold, 0.0, np.float64), pad(lambda t: t.children_left, -1, np.int64),
                   pad(lambda t: t.children_right, -1, np.int64), pad(lambda t: t.value[:, 0, 0], 0.0, np.float64),
                   meta)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: N×len(signals) -> N estimates of J in [0, 1]."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        trees = np.arange(self.feature.shape[0])
        out = np.empty(x.shape[0])
        for r, row in enumerate(x):
            node = np.zeros(len(trees), np.int64)
            for _ in range(self.feature.shape[1]):  # a tree is at most as deep as it has nodes
                leaf = self.left[trees, node] < 0
                if leaf.all():
                    break
                go_left = row[self.feature[trees, node]] <= self.threshold[trees, node]
                nxt = np.where(go_left, self.left[trees, node], self.right[trees, node])
                node = np.where(leaf, node, nxt)
            out[r] = self.base + self.rate * self.value[trees, node].sum()
        return np.clip(out, 0.0, 1.0)

    def __call__(self, s: dict[str, float]) -> float:
        return float(self.predict(np.array([[s[k] for k in self.signals]]))[0])

    # -- checkpoint form: tensors and plain values only ---------------------------------
    def to_state(self) -> dict:
        return {"format": QUALITY_FORMAT, "signals": list(self.signals), "base": self.base, "rate": self.rate,
                "feature": torch.from_numpy(self.feature), "threshold": torch.from_numpy(self.threshold),
                "left": torch.from_numpy(self.left), "right": torch.from_numpy(self.right),
                "value": torch.from_numpy(self.value), "meta": {k: v for k, v in self.meta.items()}}

    @classmethod
    def from_state(cls, d: dict) -> "QualityModel":
        if not isinstance(d, dict) or d.get("format") != QUALITY_FORMAT:
            raise ValueError(f"not a quality model of format {QUALITY_FORMAT}")
        arrays = _state_arrays(d, ("feature", "threshold", "left", "right", "value"))
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError("quality model arrays must all be trees × nodes")
        n_nodes = next(iter(shapes))[1]
        for k in ("left", "right"):
            if arrays[k].size and (arrays[k].max() >= n_nodes or arrays[k].min() < -1):
                raise ValueError(f"quality model: {k} children out of range")
        split = arrays["feature"][arrays["left"] >= 0]  # leaves carry no feature (scikit-learn writes -2)
        if split.size and (split.min() < 0 or split.max() >= len(d["signals"])):
            raise ValueError("quality model: feature index out of range")
        return cls(d["signals"], d["base"], d["rate"], **arrays, meta=d.get("meta"))


class LinearIsotonicModel:
    """A linear score of standardised signals, mapped to J by a monotone piecewise-linear curve:
    prediction = clip(interp(((x - mean) / scale) @ coef + intercept, curve_x, curve_y), 0, 1). Fitted by
    ``vos calibrate`` (scikit-learn's Ridge, then IsotonicRegression); held as arrays, like QualityModel.
    Few parameters: with ``ref_agreement`` among its signals it generalises to a held-out calibration
    sequence better than the tree ensemble (benchmarks/bench_quality_estimators.py, BENCHMARKS.md)."""

    def __init__(self, signals, mean, scale, coef, intercept: float, curve_x, curve_y, meta=None):
        self.signals = tuple(signals)
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef = np.asarray(coef, np.float64)
        self.intercept = float(intercept)
        self.curve_x, self.curve_y = np.asarray(curve_x, np.float64), np.asarray(curve_y, np.float64)
        self.meta = dict(meta or {})
        unknown = set(self.signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"quality model uses unknown signals {sorted(unknown)}")
        n = len(self.signals)
        if not (self.mean.shape == self.scale.shape == self.coef.shape == (n,)):
            raise ValueError(f"quality model: mean, scale and coef must each hold {n} values (one per signal)")
        if self.curve_x.ndim != 1 or self.curve_x.shape != self.curve_y.shape or self.curve_x.size < 1:
            raise ValueError("quality model: the curve needs as many x as y values, at least one")
        if np.any(np.diff(self.curve_x) < 0) or np.any(np.diff(self.curve_y) < 0):
            raise ValueError("quality model: the curve must be non-decreasing in x and y")
        if not np.all(self.scale > 0):
            raise ValueError("quality model: scale must be positive")

    @classmethod
    def from_sklearn(cls, scaler, ridge, isotonic, signals, meta=None) -> "LinearIsotonicModel":
        """From a fitted StandardScaler, Ridge and IsotonicRegression (out_of_bounds='clip')."""
        return cls(signals, scaler.mean_, scaler.scale_, ridge.coef_, float(ridge.intercept_),
                   isotonic.X_thresholds_, isotonic.y_thresholds_, meta)

    def score(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float64))
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: N×len(signals) -> N estimates of J in [0, 1]."""
        return np.clip(np.interp(self.score(x), self.curve_x, self.curve_y), 0.0, 1.0)

    def __call__(self, s: dict[str, float]) -> float:
        return float(self.predict(np.array([[s[k] for k in self.signals]]))[0])

    def to_state(self) -> dict:
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return {"format": LINEAR_ISOTONIC_FORMAT, "signals": list(self.signals), "mean": t(self.mean),
                "scale": t(self.scale), "coef": t(self.coef), "intercept": self.intercept,
                "curve_x": t(self.curve_x), "curve_y": t(self.curve_y), "meta": dict(self.meta)}

    @classmethod
    def from_state(cls, d: dict) -> "LinearIsotonicModel":
        if not isinstance(d, dict) or d.get("format") != LINEAR_ISOTONIC_FORMAT:
            raise ValueError(f"not a quality model of format {LINEAR_ISOTONIC_FORMAT}")
        arrays = _state_arrays(d, ("mean", "scale", "coef", "curve_x", "curve_y"))
        return cls(d["signals"], intercept=d["intercept"], meta=d.get("meta"), **arrays)


def quality_model_from_state(d: dict):
    """The estimator a checkpoint's ``quality`` entry holds, whichever format it is."""
    formats = {QUALITY_FORMAT: QualityModel, LINEAR_ISOTONIC_FORMAT: LinearIsotonicModel}
    kind = formats.get(d.get("format")) if isinstance(d, dict) else None
    if kind is None:
        raise ValueError(f"unknown quality model format {d.get('format') if isinstance(d, dict) else type(d)!r} "
                         f"(known: {sorted(formats)})")
    return kind.from_state(d)
