"""Training job smoke test and a regression guard on the shipped weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.conftest import ROOT, require_shared

SHIPPED = ROOT / "vos_core" / "weights" / "compact.pth"


def _tiny_davis(src: Path, dst: Path, seq: str, n: int) -> None:
    """A DAVIS-layout copy of the first ``n`` frames of one sequence."""
    for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        (dst / sub / seq).mkdir(parents=True)
        for p in sorted((src / sub / seq).glob("*" + ext))[:n]:
            (dst / sub / seq / p.name).write_bytes(p.read_bytes())


def test_training_smoke_loss_falls_and_resumes(tmp_path):
    from jobs.train import main
    from vos_core.model import load_model

    src = require_shared("davis16-train-240p")
    data = tmp_path / "davis"
    _tiny_davis(src, data, "bear", 3)
    out = tmp_path / "run"
    common = ["--stage", "2", "--data-root", str(data), "--config", "compact", "--crop", "96", "--frames", "3",
              "--batch", "2", "--max-skip", "1", "--lr", "1e-3", "--warmup", "0", "--lr-steps", "",
              "--val-seqs", "", "--log-every", "1", "--save-every", "100", "--seed", "0", "--threads", "2",
              "--overfit-one-batch", "--out", str(out)]
    torch.manual_seed(0)
    assert main(common + ["--iters", "14"]) == 0
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 14
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    model = load_model(out / "last.pth")  # strict key and shape check
    assert model.config.trunk == "resnet18"
    assert (out / "best.pth").exists()
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 14 and "optimizer" in ck and ck["config"]["keydim"] == 64

    # Resuming continues the iteration count with the saved optimizer.
    assert main(common + ["--iters", "16", "--resume", str(out / "last.pth")]) == 0
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 16
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs if "loss" in r][-2:] == [15, 16]
    assert recs[-1]["loss"] < np.mean(losses[:3])


def test_clip_forward_masks_absent_objects():
    """Padded (absent) objects get zero probability after soft aggregation."""
    from jobs.train import clip_forward
    from vos_core.model import AFBURR, COMPACT

    torch.manual_seed(0)
    model = AFBURR(COMPACT).train()
    frames = torch.rand(2, 3, 3, 64, 64)
    labels = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    labels[:, :, 10:30, 10:30] = 1
    labels[0, :, 40:60, 40:60] = 2  # only sample 0 has a second object
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss, ce, u, probs = clip_forward(model, frames, labels, valid)
    assert torch.isfinite(loss) and len(probs) == 2
    for p in probs:
        assert torch.allclose(p.sum(1), torch.ones(2, 64, 64), atol=1e-5)
        assert float(p[1, 2].max()) < 1e-6
    loss.backward()


def test_bootstrapped_ce_takes_the_hardest_pixels():
    from jobs.train import pixel_ce

    logp = torch.log(torch.tensor([[0.9, 0.6, 0.2, 0.5], [0.1, 0.4, 0.8, 0.5]])).view(1, 2, 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)  # per-pixel CE = -log p(class 0)
    ce = -torch.log(torch.tensor([0.9, 0.6, 0.2, 0.5]))
    assert torch.isclose(pixel_ce(logp, labels), ce.mean())
    assert torch.isclose(pixel_ce(logp, labels, top=0.5), ce.sort(descending=True).values[:2].mean())


def test_shipped_weights_segment_val_sequence():
    from vos_core.metrics import db_eval_iou
    from vos_core.model import load_model
    from vos_core.segmenter import Segmenter
    from jobs.train_data import read_ids, read_rgb

    root = require_shared("davis16-val-public")
    assert SHIPPED.exists(), "vos_core/weights/compact.pth is missing"
    assert SHIPPED.stat().st_size < 25 * 2**20
    ck = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in ck["model"].values() if v.is_floating_point())
    model = load_model(SHIPPED)  # strict
    assert model.config.trunk == "resnet18"

    torch.set_num_threads(2)
    seq = "car-shadow"
    jpgs = sorted((root / "JPEGImages" / seq).glob("*.jpg"))[:15]
    frames = [read_rgb(str(p)) for p in jpgs]
    gts = [read_ids(str(root / "Annotations" / seq / (p.stem + ".png"))) for p in jpgs]
    seg = Segmenter(model, size=240, keep_probs=False)
    js = [db_eval_iou(gts[r.index] > 0, r.mask > 0) for r in seg.run(frames, {0: gts[0]}) if r.index > 0]
    assert len(js) == 14
    # Measured 0.725 (frames 1-14 of car-shadow at shorter side 240, 2026-11-24); a model that has not
    # learnt to track scores near 0 (the stage-1 checkpoint did on held-out sequences). The floor guards against regressions (weights, loading, segmenter), not a tuned number.
    assert np.mean(js) > J_FLOOR, js


J_FLOOR = 0.6
