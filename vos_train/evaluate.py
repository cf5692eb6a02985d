"""Scoring a model during and after training, with the project's streaming Segmenter (first-frame mask
only, the semi-supervised protocol)."""
from __future__ import annotations

import time

import numpy as np

from vos_core.metrics import db_eval_iou, evaluate_sequence
from vos_core.model import AFBURR
from vos_core.inference.segmenter import Segmenter

from .data import DavisIndex


def held_out_j(model: AFBURR, davis: DavisIndex, seqs, max_frames: int = 40, size: int | None = None) -> dict:
    """Mean J (frames 1..) per held-out sequence: model selection during training."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for s in seqs:
            stems = davis.frames[s][:max_frames]
            data = [davis.load(s, st, cache=True) for st in stems]
            seg = Segmenter(model, size=size, keep_probs=False)
            js = [db_eval_iou(data[r.index][1] > 0, r.mask > 0)
                  for r in seg.run((d[0] for d in data), {0: data[0][1]}) if r.index > 0]
            out[s] = float(np.mean(js))
    finally:
        model.train(was_training)
    return out


def evaluate_davis(model: AFBURR, root: str, sequences=None, size: int | None = 240, max_frames: int | None = None,
                   budget: int = 300_000) -> dict:
    """Segments DAVIS-layout sequences from their first-frame mask (processing at shorter side ``size``,
    results at full size) and scores them with vos_core.metrics (DAVIS toolkit J and F; first and last
    frame unscored)."""
    index = DavisIndex(root, sequences=list(sequences) if sequences else None)
    model.eval()
    out = {}
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        data = [index.load(seq, st, cache=False) for st in stems]
        t0 = time.time()
        seg = Segmenter(model, budget=budget, size=size, keep_probs=False)
        preds = [r.mask for r in seg.run((d[0] for d in data), {0: data[0][1]})]
        dt = time.time() - t0
        sc = evaluate_sequence([d[1] for d in data], preds)
        j, f = sc["J_mean"], sc["F_mean"]
        out[seq] = {"J": j, "F": f, "JF": (j + f) / 2, "frames": len(stems), "seconds": round(dt, 1)}
    return out
