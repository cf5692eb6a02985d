"""Training job smoke test and a regression guard on the shipped weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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
    from vos_train.__main__ import main
    from vos_core.model import load_model

    src = require_shared("davis16-train-240p")
    data = tmp_path / "davis"
    _tiny_davis(src, data, "bear", 3)

    def args(out, *more):
        return ["--stage", "2", "--data-root", str(data), "--config", "compact", "--crop", "96", "--frames", "3",
                "--batch", "2", "--max-skip", "1", "--lr", "3e-4", "--warmup", "4", "--iters", "16",
                "--val-seqs", "", "--log-every", "1", "--save-every", "100", "--seed", "0", "--threads", "2",
                "--overfit-one-batch", "--no-progress", "--out", str(out), *more]

    def log(out):
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    straight, parts = tmp_path / "straight", tmp_path / "parts"
    torch.manual_seed(0)
    assert main(args(straight)) == 0
    losses = [r["loss"] for r in log(straight) if "loss" in r]
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    model = load_model(straight / "last.pth")  # strict key and shape check
    assert model.config.trunk == "efficientnet_lite0" and model.working_size == 240
    assert (straight / "best.pth").exists()
    ck = torch.load(straight / "last.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 16 and "optimizer" in ck and "scheduler" in ck and ck["config"]["keydim"] == 64
    assert ck["freeze_trunk_bn"] is True  # an ImageNet-initialised trunk keeps its batch-norm statistics

    # Interrupted after 10 iterations and resumed: the iteration count and the learning-rate schedule
    # continue where they stopped, as in the straight run.
    assert main(args(parts, "--stop-after", "10")) == 0
    assert torch.load(parts / "last.pth", map_location="cpu", weights_only=True)["iteration"] == 10
    assert not (parts / "best.pth").exists()  # not finished
    assert main(args(parts, "--resume", str(parts / "last.pth"))) == 0
    ck = torch.load(parts / "last.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 16
    steps = [r for r in log(parts) if "loss" in r]
    assert [r["iter"] for r in steps] == list(range(1, 17))
    lrs = {r["iter"]: r["lr"] for r in log(straight) if "loss" in r}
    assert all(r["lr"] == pytest.approx(lrs[r["iter"]]) for r in steps)
    assert steps[-1]["loss"] < np.mean(losses[:3])


def test_clip_forward_masks_absent_objects():
    """Padded (absent) objects get zero probability after soft aggregation."""
    from vos_train.clip import clip_forward
    from vos_core.model import AFBURR, COMPACT

    torch.manual_seed(0)
    model = AFBURR(COMPACT).train()
    frames = torch.rand(2, 3, 3, 64, 64)
    labels = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    labels[:, :, 10:30, 10:30] = 1
    labels[0, :, 40:60, 40:60] = 2  # only sample 0 has a second object
    valid = torch.tensor([[True, True, True], [True, True, False]])
    out = clip_forward(model, frames, labels, valid)
    assert torch.isfinite(out.total) and len(out.probs) == 2
    for p in out.probs:
        assert torch.allclose(p.sum(1), torch.ones(2, 64, 64), atol=1e-5)
        assert float(p[1, 2].max()) < 1e-6
    out.total.backward()


def test_bootstrapped_ce_takes_the_hardest_pixels():
    from vos_train.loss import pixel_ce

    logp = torch.log(torch.tensor([[0.9, 0.6, 0.2, 0.5], [0.1, 0.4, 0.8, 0.5]])).view(1, 2, 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)  # per-pixel CE = -log p(class 0)
    ce = -torch.log(torch.tensor([0.9, 0.6, 0.2, 0.5]))
    assert torch.isclose(pixel_ce(logp, labels), ce.mean())
    assert torch.isclose(pixel_ce(logp, labels, top=0.5), ce.sort(descending=True).values[:2].mean())


def test_shipped_weights_segment_val_sequence():
    from vos_core.metrics import db_eval_iou
    from vos_core.model import load_model
    from vos_core.inference.segmenter import Segmenter
    from vos_train.data import read_ids, read_rgb

    root = require_shared("davis16-val-public")
    assert SHIPPED.exists(), "vos_core/weights/compact.pth is missing"
    assert SHIPPED.stat().st_size < 25 * 2**20
    ck = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in ck["model"].values() if v.is_floating_point())
    model = load_model(SHIPPED)  # strict
    assert model.config.trunk == "efficientnet_lite0" and model.working_size == 480
    assert model.quality_model is not None  # calibrated (vos calibrate on held-out train sequences)

    torch.set_num_threads(2)
    seq = "car-shadow"
    jpgs = sorted((root / "JPEGImages" / seq).glob("*.jpg"))[:15]
    frames = [read_rgb(str(p)) for p in jpgs]
    gts = [read_ids(str(root / "Annotations" / seq / (p.stem + ".png"))) for p in jpgs]
    seg = Segmenter(model, keep_probs=False)  # the checkpoint's working size (480: these frames' own)
    js = [db_eval_iou(gts[r.index] > 0, r.mask > 0) for r in seg.run(frames, {0: gts[0]}) if r.index > 0]
    assert len(js) == 14
    # Measured 0.902 (min 0.870) with the EfficientNet-Lite0 weights of the second round at their working size
    # 480, 2026-12-02 (0.837 with the first round's at 240; the ResNet-18 weights from scratch: 0.725); a model
    # that has not learnt to track scores near 0. The floor guards against regressions (weights, loading,
    # segmenter), not a tuned number.
    assert np.mean(js) > J_FLOOR, js


J_FLOOR = 0.85
