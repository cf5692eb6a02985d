"""Which estimator maps the quality signals to J best, cross-validated by sequence: one table.

    vos calibrate --checkpoint CKPT --data DAVIS_ROOT --sequences a,b,... --sizes 240,180 --out /tmp/c.pth \\
        --samples /tmp/samples.jsonl
    python benchmarks/bench_quality_estimators.py --samples /tmp/samples.jsonl

Reads the per-frame samples ``vos calibrate --samples`` writes (signals and true J of every object-frame),
and for each candidate estimator fits it on all sequences but one and predicts the held-out one
(leave-one-sequence-out, scikit-learn's GroupKFold), then scores the pooled out-of-sequence predictions
as ``vos calibrate`` does: Spearman with J, AUROC for J < 0.5, mean absolute error. Single signals are
scored as they are (nothing is fitted). ``vos calibrate``'s two estimators are the rows marked with their
``--estimator``. Fitting only: no segmentation, seconds to run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def candidates():
    """name -> fit(x, y) returning predict(x); x in SIGNALS order."""
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    from vos_core.inference.quality import SIGNALS
    from vos_train.calibrate import LINEAR_SIGNALS, fit_estimator, predict

    def ours(kind, signals=LINEAR_SIGNALS):
        return lambda x, y: (lambda m: lambda xt: predict(m, xt))(fit_estimator(kind, x, y, signals))

    def sklearn(make):
        return lambda x, y: make().fit(x, y).predict

    return {
        "gradient boosting (`--estimator gbr`)": ours("gbr"),
        "gradient boosting, depth 2, leaves >= 20": sklearn(lambda: GradientBoostingRegressor(
            n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8, min_samples_leaf=20, random_state=0)),
        "gradient boosting, Huber loss, depth 2": sklearn(lambda: GradientBoostingRegressor(
            loss="huber", n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8, min_samples_leaf=20,
            random_state=0)),
        "random forest, leaves >= 10": sklearn(lambda: RandomForestRegressor(300, min_samples_leaf=10,
                                                                             max_features=0.5, random_state=0)),
        "isotonic on mean_prob": ours("linear-isotonic", ("mean_prob",)),
        "isotonic on ref_agreement": ours("linear-isotonic", ("ref_agreement",)),
        "ridge + isotonic: ref_agreement, mean_prob": ours("linear-isotonic", ("ref_agreement", "mean_prob")),
        "ridge + isotonic: ref_agreement, mean_prob, largest_frac, components": ours(
            "linear-isotonic", ("ref_agreement", "mean_prob", "largest_frac", "components")),
        "ridge + isotonic: mean_prob, u_mean, largest_frac, components, log_area_ref": ours(
            "linear-isotonic", ("mean_prob", "u_mean", "largest_frac", "components", "log_area_ref")),
        "ridge + isotonic: those five and ref_agreement": ours(
            "linear-isotonic", ("mean_prob", "u_mean", "largest_frac", "components", "log_area_ref", "ref_agreement")),
        f"ridge + isotonic: {', '.join(LINEAR_SIGNALS)} (`--estimator linear-isotonic`, the default)":
            ours("linear-isotonic"),
        "ridge + isotonic: every signal": ours("linear-isotonic", SIGNALS),
    }


def main(argv=None) -> int:
    from scipy.stats import spearmanr
    from sklearn.model_selection import GroupKFold

    from vos_core.inference.quality import SIGNALS
    from vos_train.calibrate import matrix, read_samples, scores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, type=Path, help="JSON Lines from `vos calibrate --samples`")
    a = ap.parse_args(argv)
    samples = read_samples(a.samples)
    x, y = matrix(samples), np.array([s.j for s in samples])
    groups = np.array([s.sequence for s in samples])
    n_seq = len(set(groups))
    if n_seq < 2:
        ap.error("--samples: need at least two sequences to hold one out")
    print(f"{len(y)} object-frames of {n_seq} sequences ({', '.join(sorted(set(groups)))}), "
          f"{(y < 0.5).mean():.0%} with J < 0.5; leave-one-sequence-out\n")
    print("| estimator | Spearman with J | AUROC, J < 0.5 | MAE |")
    print("|---|---|---|---|")
    for name, fit in candidates().items():
        pred = np.zeros_like(y)
        for train, test in GroupKFold(n_splits=n_seq).split(x, y, groups):
            pred[test] = np.clip(fit(x[train], y[train])(x[test]), 0, 1)
        s = scores(y, pred)
        auroc = f"{s['auroc_bad']:.3f}" if s["auroc_bad"] is not None else "n/a"
        print(f"| {name} | {s['spearman']:.3f} | {auroc} | {s['mae']:.3f} |")
    for signal, sign in (("ref_agreement", 1), ("mean_prob", 1), ("u_mean", -1), ("u_p95", -1), ("shift_ref", -1)):
        v = sign * x[:, SIGNALS.index(signal)]
        auroc = scores(y, v)["auroc_bad"]
        print(f"| signal {'' if sign > 0 else '-'}{signal} alone (not fitted) | {spearmanr(v, y).statistic:.3f} | "
              f"{auroc:.3f} | - |" if auroc is not None else f"| signal {signal} | n/a | n/a | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
