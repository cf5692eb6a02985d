"""How well the per-frame quality estimate, and each signal it is made of, predicts the true region J.

    python benchmarks/bench_quality.py --data ../shared/data/davis16-val-public [--checkpoint CKPT] [--sizes 240]

Runs the Segmenter over DAVIS-layout sequences with every frame's ground truth (first-frame mask only),
and prints, per signal and for ``quality``, over every scored frame and object: Spearman's rank
correlation with the true J (each signal oriented so that higher should mean better: e.g. -u_mean,
-|log area ratio|), the AUROC of detecting J < 0.5, and for ``quality`` the mean absolute error against J.
Use sequences the quality estimate was not fitted on (the shipped one is fitted on held-out DAVIS-2016
train sequences; ``../shared/data/davis16-val-public`` is val).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vos_train.calibrate import collect, scores  # noqa: E402

#: signal -> how to orient it so that higher means "more likely correct"
ORIENTED = {
    "quality": ("quality", lambda s, q: q),
    "-u_mean (object band)": ("u_mean", lambda s, q: -s["u_mean"]),
    "-u_p95 (object band)": ("u_p95", lambda s, q: -s["u_p95"]),
    "mean_prob": ("mean_prob", lambda s, q: s["mean_prob"]),
    "agreement with the reference read": ("ref_agreement", lambda s, q: s["ref_agreement"]),
    "-band_ratio": ("band_ratio", lambda s, q: -s["band_ratio"]),
    "-|log area / area at annotation|": ("log_area_ref", lambda s, q: -abs(s["log_area_ref"])),
    "-|log box area / box at annotation|": ("log_bbox_ref", lambda s, q: -abs(s["log_bbox_ref"])),
    "-|log width / width at annotation|": ("log_width_ref", lambda s, q: -abs(s["log_width_ref"])),
    "-centroid shift from annotation": ("shift_ref", lambda s, q: -s["shift_ref"]),
    "-|log area / previous area|": ("log_area_prev", lambda s, q: -abs(s["log_area_prev"])),
    "-centroid shift from previous": ("shift_prev", lambda s, q: -s["shift_prev"]),
    "largest component fraction": ("largest_frac", lambda s, q: s["largest_frac"]),
    "-components": ("components", lambda s, q: -s["components"]),
    "-frames since annotation": ("log_frames_since_ref", lambda s, q: -s["log_frames_since_ref"]),
}


def table(samples) -> str:
    j = np.array([s.j for s in samples])
    rows = ["| signal (oriented: higher = better) | Spearman with J | AUROC, J < 0.5 | MAE vs J |", "|---|---|---|---|"]
    for name, (_, fn) in ORIENTED.items():
        x = np.array([fn(s.signals, s.quality) for s in samples])
        sc = scores(j, x)
        mae = f"{np.abs(np.clip(x, 0, 1) - j).mean():.3f}" if name == "quality" else ""
        auroc = f"{sc['auroc_bad']:.3f}" if sc["auroc_bad"] is not None else "n/a"
        rows.append(f"| {name} | {sc['spearman']:.3f} | {auroc} | {mae} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    import torch

    from vos_core.model import SHIPPED_CHECKPOINT, load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "davis16-val-public"))
    ap.add_argument("--sequences", default="")
    ap.add_argument("--sizes", default="0", help="working sizes (0: the checkpoint's)")
    ap.add_argument("--max-frames", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the per-frame samples here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint)
    sizes = [int(s) or model.working_size for s in a.sizes.split(",")]
    t0 = time.time()
    samples = collect(model, a.data, [s for s in a.sequences.split(",") if s] or None, sizes, a.max_frames or None)
    j = np.array([s.j for s in samples])
    seqs = sorted({s.sequence for s in samples})
    calibrated = model.quality_model is not None
    print(f"{len(samples)} scored object-frames from {len(seqs)} sequences ({', '.join(seqs)}) at working size "
          f"{sizes}; {100 * (j < 0.5).mean():.0f}% with J < 0.5, mean J {j.mean():.3f}; checkpoint {a.checkpoint} "
          f"({'calibrated quality: ' + model.quality_model.meta.get('sequences', '?').__str__() if calibrated else 'uncalibrated fallback rule'}); "
          f"{time.time() - t0:.0f} s")
    print(table(samples))
    per_seq = {q: scores(np.array([s.j for s in samples if s.sequence == q]),
                         np.array([s.quality for s in samples if s.sequence == q])) for q in seqs}
    print("\nper sequence (quality):")
    for q, sc in per_seq.items():
        js = np.array([s.j for s in samples if s.sequence == q])
        print(f"  {q}: mean J {js.mean():.3f}, MAE {sc['mae']:.3f}, Spearman {sc['spearman']:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            for s in samples:
                f.write(json.dumps(s.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
