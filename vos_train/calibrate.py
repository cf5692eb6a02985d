"""``vos calibrate``: fit the per-frame quality estimate of a checkpoint on sequences with ground truth.

    vos calibrate --checkpoint CKPT --data DAVIS_ROOT [--sequences a,b] [--sizes 240,180] --out CKPT_OUT

Runs the Segmenter over each sequence from its first-frame mask only (the semi-supervised protocol),
records every later frame's per-object quality signals (``vos_core.inference.quality.SIGNALS``) and the
true region J of that object's mask, fits a gradient-boosted tree ensemble (scikit-learn) mapping
signals to J, reports how well it does on sequences it was not fitted on (grouped cross-validation),
and writes a copy of the checkpoint carrying the fitted estimator (``quality``), which ``load_model``
gives the Segmenter. Running at several working sizes gives more, and more varied, failures to learn
from. Use sequences the model was not trained on.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from vos_core.inference import Segmenter, SegmenterConfig
from vos_core.inference.quality import SIGNALS, QualityModel
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
    quality: float  # the model's current estimate (fitted or fallback)


def collect(model, root: str, sequences=None, sizes=(240,), max_frames: int | None = None,
            config: SegmenterConfig | None = None, progress=None) -> list[Sample]:
    """Per-frame, per-object signals and true J over DAVIS-layout sequences (first-frame mask only)."""
    index = DavisIndex(root, sequences=list(sequences) if sequences else None)
    out = []
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        data = [index.load(seq, st, cache=False) for st in stems]
        first = data[0][1]
        for size in sizes:
            seg = Segmenter(model, (config or SegmenterConfig()).replace(size=size, keep_probs=False,
                                                                          keep_uncertainty=False))
            for r in seg.run((d[0] for d in data), {0: first}):
                if r.index == 0:
                    continue
                gt = data[r.index][1]
                for o in r.stats.objects[1:]:
                    out.append(Sample(seq, size, r.index, o.object_id,
                                      db_eval_iou(gt == o.object_id, r.mask == o.object_id), o.signals, o.quality))
            if progress:
                progress(seq, size)
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


def fit(samples: list[Sample]):
    """Fits the estimator on all samples; returns (QualityModel, out-of-sequence cross-validation scores)."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GroupKFold

    x, y = matrix(samples), np.array([s.j for s in samples])
    groups = np.array([s.sequence for s in samples])
    n_groups = len(set(groups))
    cv = None
    if n_groups >= 2:
        pred = np.zeros_like(y)
        for tr, te in GroupKFold(n_splits=min(5, n_groups)).split(x, y, groups):
            pred[te] = np.clip(GradientBoostingRegressor(**GBR_PARAMS).fit(x[tr], y[tr]).predict(x[te]), 0, 1)
        cv = scores(y, pred)
    gbr = GradientBoostingRegressor(**GBR_PARAMS).fit(x, y)
    meta = {"sequences": sorted({str(g) for g in groups}), "samples": int(len(y)), "cv": json.dumps(cv)}
    return QualityModel.from_sklearn(gbr, SIGNALS, meta), cv


def build_parser() -> argparse.ArgumentParser:
    from vos_core.model import SHIPPED_CHECKPOINT

    ap = argparse.ArgumentParser(prog="vos calibrate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Fit a checkpoint's per-frame quality estimate (predicted J) on "
                                             "DAVIS-layout sequences with ground truth; writes a checkpoint "
                                             "carrying it.")
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", required=True, help="DAVIS-layout root with every frame's ground truth")
    ap.add_argument("--sequences", default="", help="comma-separated (default: all); never the ones you report on")
    ap.add_argument("--sizes", default="240", help="working sizes to run at (comma-separated; 0: input size)")
    ap.add_argument("--max-frames", type=int, default=0, help="frames per sequence (0: all)")
    ap.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    ap.add_argument("--samples", help="also write the collected samples here (JSON Lines)")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def main(argv=None) -> int:
    import torch

    from vos_core.model import load_model
    from vos_core.model.checkpoint import read_checkpoint, write_checkpoint

    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint)
    sizes = [int(s) or None for s in a.sizes.split(",") if s.strip()]
    samples = collect(model, a.data, [s for s in a.sequences.split(",") if s] or None, sizes,
                      a.max_frames or None, progress=lambda q, z: print(f"  {q} at size {z or 'input'}", file=sys.stderr))
    if len(samples) < 20:
        print(f"vos calibrate: error: only {len(samples)} frames with ground truth: too few to fit", file=sys.stderr)
        return 2
    quality, cv = fit(samples)
    state, config, meta = read_checkpoint(a.checkpoint)
    meta["quality"] = quality.to_state()
    write_checkpoint(a.out, state, config, meta)
    if a.samples:
        with open(a.samples, "w") as f:
            for s in samples:
                f.write(json.dumps(s.__dict__) + "\n")
    print(json.dumps({"samples": len(samples), "sequences": quality.meta["sequences"],
                      "cross_validated_by_sequence": cv, "out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
