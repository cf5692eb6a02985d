"""``vos calibrate``: fit the per-frame quality estimate of a checkpoint on sequences with ground truth.

    vos calibrate --checkpoint CKPT --data DAVIS_ROOT [--sequences a,b] [--sizes 240,180]
        [--directions forward,backward] --out CKPT_OUT

Runs the Segmenter over each sequence from its first-frame mask only (the semi-supervised protocol),
records every later frame's per-object quality signals (``vos_core.inference.quality.SIGNALS``) and the
true region J of that object's mask, fits an estimator (scikit-learn: by default a linear score of three
signals mapped to J by isotonic regression; ``--estimator gbr``: a gradient-boosted tree ensemble) mapping
signals to J, reports how well it does on sequences it was not fitted on (grouped cross-validation),
and writes a copy of the checkpoint carrying the fitted estimator (``quality``), which ``load_model``
gives the Segmenter. Running at several working sizes, and backward in time as well (from the last
frame's mask, which is again the semi-supervised protocol: one given mask), gives more, and more varied,
failures to learn from. Use sequences the model was not trained on.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from vos_core.inference import Segmenter, SegmenterConfig
from vos_core.inference.quality import SIGNALS, LinearIsotonicModel, QualityModel
from vos_core.metrics import db_eval_iou

from .data import DavisIndex

#: The estimator: small and regularised (a few hundred frames of data)
GBR_PARAMS = dict(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, min_samples_leaf=8,
                  random_state=0)


@dataclass
class Sample:
    sequence: str
    size: int | None
    frame: int
    object_id: int
    j: float  # true region J of the object's mask
    signals: dict
    quality: float | None  # the model's current estimate (fitted or fallback)
    direction: str = "forward"  # forward: from the first frame's mask; backward: from the last frame's


DIRECTIONS = ("forward", "backward")


def collect(model, root: str, sequences=None, sizes=(240,), max_frames: int | None = None,
            config: SegmenterConfig | None = None, progress=None, directions=("forward",)) -> list[Sample]:
    """Per-frame, per-object signals and true J over DAVIS-layout sequences, from one given mask per run:
    the first frame's (forward), or the last frame's with the frames in reverse order (backward)."""
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown directions {sorted(unknown)} (choose from {list(DIRECTIONS)})")
    index = DavisIndex(root, sequences=list(sequences) if sequences else None)
    # one Segmenter per size (each prepares its own copy of the model), reused for every sequence and direction
    segmenters = [(size, Segmenter(model, (config or SegmenterConfig()).replace(size=size, keep_probs=False,
                                                                                keep_uncertainty=False)))
                  for size in sizes]
    out = []
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        data = [index.load(seq, st, cache=False) for st in stems]
        for direction in directions:
            order = list(range(len(data))) if direction == "forward" else list(range(len(data)))[::-1]
            for size, seg in segmenters:
                for r in seg.run((data[t][0] for t in order), {0: data[order[0]][1]}):
                    if r.index == 0:
                        continue
                    t = order[r.index]
                    gt = data[t][1]
                    for o in r.stats.objects[1:]:
                        out.append(Sample(seq, size, t, o.object_id, db_eval_iou(gt == o.object_id, r.mask == o.object_id),
                                          o.signals, o.quality, direction))
                if progress:
                    progress(seq, size, direction)
    return out


def matrix(samples: list[Sample], signals=SIGNALS) -> np.ndarray:
    return np.array([[s.signals[k] for k in signals] for s in samples], np.float64)


def scores(j: np.ndarray, pred: np.ndarray, bad_below: float = 0.5) -> dict:
    """Spearman(pred, J), AUROC of -pred for J < bad_below, mean absolute error."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    bad = j < bad_below
    auroc = float(roc_auc_score(bad, -pred)) if 0 < bad.sum() < len(bad) else None
    rho = spearmanr(pred, j).statistic if np.ptp(pred) > 0 else float("nan")
    return {"spearman": float(rho), "auroc_bad": auroc, "mae": float(np.abs(pred - j).mean()), "n": int(len(j)),
            "bad_fraction": float(bad.mean())}


#: The estimators ``vos calibrate`` can fit; the first is the default (the shipped weights carry one).
#: linear-isotonic cross-validates best by sequence on the calibration sequences (leave-one-sequence-out,
#: benchmarks/bench_quality_estimators.py, BENCHMARKS.md "Estimators"); gbr is a tree ensemble over every signal.
ESTIMATORS = ("linear-isotonic", "gbr")
#: The signals of the linear-isotonic estimator: the agreement with the reference read (how far the
#: mask is what the given mask and the frames that agreed with it give), and confidence (mean probability over the mask, U over its band).
#: Chosen by leave-one-sequence-out cross-validation on the calibration sequences.
LINEAR_SIGNALS = ("ref_agreement", "mean_prob", "u_mean")


def fit_estimator(kind: str, x: np.ndarray, y: np.ndarray, signals=LINEAR_SIGNALS):
    """One estimator fitted on x (N×len(SIGNALS), in SIGNALS order) and true J y; ``signals``: the ones the
    linear-isotonic estimator reads (the tree ensemble reads them all)."""
    if kind == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        return QualityModel.from_sklearn(GradientBoostingRegressor(**GBR_PARAMS).fit(x, y), SIGNALS)
    if kind == "linear-isotonic":
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import StandardScaler

        xs = x[:, [SIGNALS.index(k) for k in signals]]
        scaler = StandardScaler().fit(xs)
        z = scaler.transform(xs)
        ridge = Ridge(alpha=1.0).fit(z, y)
        curve = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(ridge.predict(z), y)
        return LinearIsotonicModel(signals, scaler.mean_, scaler.scale_, ridge.coef_, float(ridge.intercept_),
                                   *block_centres(curve.X_thresholds_, curve.y_thresholds_))
    raise ValueError(f"unknown estimator {kind!r} (choose from {list(ESTIMATORS)})")


def block_centres(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An isotonic fit's curve through the centre of each of its constant blocks instead of along them:
    still monotone and through the same levels, but strictly increasing between the first and the last
    centre, so that scores inside a block keep their order (a step curve ties them, and ties throw away
    the ranking the linear score had)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    starts = np.flatnonzero(np.r_[True, np.diff(y) != 0])
    ends = np.r_[starts[1:], len(y)]
    return (np.array([x[a:b].mean() for a, b in zip(starts, ends)]), y[starts].copy())


def predict(model, x: np.ndarray) -> np.ndarray:
    """A fitted estimator's predictions for x in SIGNALS order (each estimator reads its own signals)."""
    return model.predict(x[:, [SIGNALS.index(k) for k in model.signals]])


def fit(samples: list[Sample], kind: str = ESTIMATORS[0]):
    """Fits the estimator on all samples; returns (the estimator, out-of-sequence cross-validation scores)."""
    from sklearn.model_selection import GroupKFold

    x, y = matrix(samples), np.array([s.j for s in samples])
    groups = np.array([s.sequence for s in samples])
    n_groups = len(set(groups))
    cv = None
    if n_groups >= 2:
        pred = np.zeros_like(y)
        for tr, te in GroupKFold(n_splits=min(5, n_groups)).split(x, y, groups):
            pred[te] = np.clip(predict(fit_estimator(kind, x[tr], y[tr]), x[te]), 0, 1)
        cv = scores(y, pred)
    model = fit_estimator(kind, x, y)
    model.meta = {"sequences": sorted({str(g) for g in groups}), "samples": int(len(y)), "cv": json.dumps(cv),
                  "estimator": kind}
    return model, cv


def read_samples(path: str) -> list[Sample]:
    """The samples ``--samples`` wrote (JSON Lines)."""
    with open(path) as f:
        return [Sample(**json.loads(line)) for line in f if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    from vos_core.model import SHIPPED_CHECKPOINT

    ap = argparse.ArgumentParser(prog="vos calibrate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Fit a checkpoint's per-frame quality estimate (predicted J) on "
                                             "DAVIS-layout sequences with ground truth; writes a checkpoint "
                                             "carrying it.")
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", help="DAVIS-layout root with every frame's ground truth (not with --from-samples)")
    ap.add_argument("--sequences", default="", help="comma-separated (default: all); never the ones you report on")
    ap.add_argument("--sizes", default="240", help="working sizes to run at (comma-separated; 0: input size)")
    ap.add_argument("--directions", default="forward,backward",
                    help="run each sequence forward from its first frame's mask and/or backward from its last's")
    ap.add_argument("--max-frames", type=int, default=0, help="frames per sequence (0: all)")
    ap.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    ap.add_argument("--samples", help="also write the collected samples here (JSON Lines)")
    ap.add_argument("--from-samples", help="fit on samples an earlier --samples wrote instead of segmenting --data")
    ap.add_argument("--estimator", choices=ESTIMATORS, default=ESTIMATORS[0],
                    help=f"linear-isotonic: a linear score of {', '.join(LINEAR_SIGNALS)} and a monotone curve "
                         "to J; gbr: a gradient-boosted tree ensemble over every signal")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def main(argv=None) -> int:
    import torch

    from vos_core.model import load_model
    from vos_core.model.checkpoint import read_checkpoint, write_checkpoint

    ap = build_parser()
    a = ap.parse_args(argv)
    if (a.data is None) == (a.from_samples is None):
        ap.error("give --data (segment it) or --from-samples (fit on saved samples), one of them")
    torch.set_num_threads(a.threads)
    if a.from_samples:
        samples = read_samples(a.from_samples)
    else:
        model = load_model(a.checkpoint)
        sizes = [int(s) or None for s in a.sizes.split(",") if s.strip()]
        samples = collect(model, a.data, [s for s in a.sequences.split(",") if s] or None, sizes, a.max_frames or None,
                          progress=lambda q, z, d: print(f"  {q} at size {z or 'input'}, {d}", file=sys.stderr),
                          directions=[d for d in a.directions.split(",") if d])
    if len(samples) < 20:
        print(f"vos calibrate: error: only {len(samples)} frames with ground truth: too few to fit", file=sys.stderr)
        return 2
    quality, cv = fit(samples, a.estimator)
    state, config, meta = read_checkpoint(a.checkpoint)
    meta["quality"] = quality.to_state()
    write_checkpoint(a.out, state, config, meta)
    if a.samples:
        with open(a.samples, "w") as f:
            for s in samples:
                f.write(json.dumps(s.__dict__) + "\n")
    print(json.dumps({"samples": len(samples), "sequences": quality.meta["sequences"],
                      "estimator": a.estimator, "cross_validated_by_sequence": cv, "out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
