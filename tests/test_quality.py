"""vos_core.inference.quality: signals on constructed cases, the tree ensemble against scikit-learn, and
its round trip through a weights-only checkpoint."""
import json
import math

import numpy as np
import pytest
import torch

from vos_core.inference.quality import (SIGNALS, MaskShape, ObjectTrack, QualityModel, fallback_quality,
                                        object_signals)
from vos_core.inference.stats import ObjectStats


def _stats(area, bbox, u=0.05, p=0.95):
    return ObjectStats(object_id=1, area=area, bbox=bbox, mean_prob=p if area else None, u_mean=u, u_p95=u * 2,
                       band_area=int(area * 1.1), bank_size=0, bank_evicted=0)


REF = MaskShape(400, [10, 10, 20, 20], (20.0, 20.0))


def _signals(area, bbox, centroid, components=1, largest=None, u=0.05, p=0.95, t=10, agree=1.0):
    track = ObjectTrack(REF, 0)
    return object_signals(_stats(area, bbox, u, p), MaskShape(area, bbox, centroid), track, components,
                          area if largest is None else largest, t, agree)


def test_signals_of_constructed_cases():
    perfect = _signals(400, [10, 10, 20, 20], (20.0, 20.0))
    assert set(perfect) == set(SIGNALS)
    assert perfect["log_area_ref"] == 0 and perfect["log_bbox_ref"] == 0 and perfect["shift_ref"] == 0
    assert perfect["largest_frac"] == 1 and perfect["empty"] == 0
    assert perfect["log_frames_since_ref"] == pytest.approx(math.log(11))
    # the mask leaks onto the background: 4x the area, a box 4x as wide, centre pulled away, in pieces
    drift = _signals(1600, [0, 10, 80, 25], (45.0, 22.0), components=3, largest=900, agree=0.3)
    assert drift["ref_agreement"] == 0.3 and perfect["ref_agreement"] == 1.0
    assert drift["log_area_ref"] > 1 and drift["log_width_ref"] > 1 and drift["shift_ref"] > 1
    assert drift["largest_frac"] == pytest.approx(900 / 1600)
    lost = _signals(0, None, None, components=0, largest=0, u=0.0, agree=0.0)
    assert lost["empty"] == 1 and lost["log_area_ref"] < -5
    q = [fallback_quality(s) for s in (perfect, drift, lost)]
    assert q[0] > 0.8 and q[0] > q[1] and q[2] == 0.0 and all(0 <= x <= 1 for x in q)


def _fitted(seed=0):
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(SIGNALS)))
    y = np.clip(1 / (1 + np.exp(-(x[:, 0] - 0.5 * np.abs(x[:, 5]) + 0.3 * x[:, 2]))), 0, 1)
    gbr = GradientBoostingRegressor(n_estimators=40, max_depth=3, learning_rate=0.1, random_state=0).fit(x, y)
    return gbr, x


def test_tree_ensemble_predicts_what_scikit_learn_predicts():
    gbr, x = _fitted()
    qm = QualityModel.from_sklearn(gbr, SIGNALS)
    assert np.allclose(qm.predict(x), np.clip(gbr.predict(x), 0, 1), atol=1e-12)
    s = dict(zip(SIGNALS, x[7]))
    assert qm(s) == pytest.approx(float(np.clip(gbr.predict(x[7:8]), 0, 1)[0]))


def test_quality_model_travels_in_a_weights_only_checkpoint(tmp_path):
    from vos_core import CheckpointError, load_model
    from vos_core.model import AFBURR
    from vos_core.model.checkpoint import write_checkpoint
    from vos_core.model.config import COMPACT_RESNET18

    gbr, x = _fitted(1)
    qm = QualityModel.from_sklearn(gbr, SIGNALS, meta={"sequences": ["a", "b"]})
    model = AFBURR(COMPACT_RESNET18)
    path = tmp_path / "calibrated.pth"
    write_checkpoint(path, model.state_dict(), model.config, {"quality": qm.to_state(), "working_size": 240})
    loaded = load_model(path)  # torch.load(weights_only=True) inside
    assert loaded.working_size == 240
    assert np.array_equal(loaded.quality_model.predict(x), qm.predict(x))
    assert loaded.quality_model.meta["sequences"] == ["a", "b"]
    from vos_core import Segmenter
    assert Segmenter(loaded).quality_calibrated and not Segmenter(model).quality_calibrated

    bad = qm.to_state()
    bad["left"] = torch.full_like(bad["left"], 10**6)  # children out of range
    write_checkpoint(path, model.state_dict(), model.config, {"quality": bad})
    with pytest.raises(CheckpointError, match="quality calibration cannot be used"):
        load_model(path)


def test_vos_calibrate_fits_and_stores_an_estimate(tmp_path):
    """End to end on a tiny DAVIS copy: signals and true J collected, an estimator fitted and written
    with the weights; the Segmenter then uses it."""
    from tests.conftest import require_shared
    from tests.test_training import _tiny_davis
    from vos_core import Segmenter, load_model
    from vos_core.model import AFBURR, save_checkpoint
    from vos_core.model.config import COMPACT_RESNET18
    from jobs.cli import main as vos

    src = require_shared("davis16-train-240p")
    data = tmp_path / "davis"
    for seq in ("bear", "hockey"):
        _tiny_davis(src, data, seq, 12)
    torch.manual_seed(0)
    ckpt, out = tmp_path / "model.pth", tmp_path / "calibrated.pth"
    save_checkpoint(AFBURR(COMPACT_RESNET18).eval(), ckpt, extra={"working_size": 64})
    assert vos(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--sizes", "64,48", "--out", str(out),
                 "--samples", str(tmp_path / "samples.jsonl")]) == 0
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2 * 11  # sequences x sizes x directions x frames after the given one
    rows = [json.loads(line) for line in lines]
    assert {r["direction"] for r in rows} == {"forward", "backward"}
    # backward runs start from the last frame's mask: it is never scored, the first frame is
    assert {r["frame"] for r in rows if r["direction"] == "backward"} == set(range(11))
    assert {r["frame"] for r in rows if r["direction"] == "forward"} == set(range(1, 12))
    assert all(0.0 <= r["signals"]["ref_agreement"] <= 1.0 for r in rows)
    model = load_model(out)
    assert model.quality_model is not None and model.quality_model.meta["sequences"] == ["bear", "hockey"]
    assert model.working_size == 64
    seg = Segmenter(model)
    assert seg.quality_calibrated
    assert model.quality_model.meta["estimator"] == "linear-isotonic"
    assert type(model.quality_model).__name__ == "LinearIsotonicModel"
    assert "ref_agreement" in model.quality_model.signals
    # refit on the saved samples without segmenting again, with the other estimator
    refit = tmp_path / "refit.pth"
    assert vos(["calibrate", "--checkpoint", str(ckpt), "--from-samples", str(tmp_path / "samples.jsonl"),
                "--estimator", "gbr", "--out", str(refit)]) == 0
    again = load_model(refit)
    assert type(again.quality_model).__name__ == "QualityModel" and again.quality_model.meta["samples"] == 88
    with pytest.raises(SystemExit):  # one source of samples, not both
        vos(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--from-samples", "x", "--out", str(refit)])


def _linear_isotonic(seed=0):
    from vos_train.calibrate import LINEAR_SIGNALS, fit_estimator

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(SIGNALS)))
    col = {s: i for i, s in enumerate(SIGNALS)}
    y = np.clip(1 / (1 + np.exp(-(2 * x[:, col["mean_prob"]] - x[:, col["u_mean"]]))) + rng.normal(0, 0.05, 400), 0, 1)
    return fit_estimator("linear-isotonic", x, y), x, y, LINEAR_SIGNALS


def test_linear_isotonic_estimate_is_monotone_in_its_score_and_predicts_what_scikit_learn_predicts():
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from vos_train.calibrate import predict

    model, x, y, signals = _linear_isotonic()
    assert model.signals == signals
    xs = x[:, [SIGNALS.index(k) for k in signals]]
    scaler = StandardScaler().fit(xs)
    ridge = Ridge(alpha=1.0).fit(scaler.transform(xs), y)
    score = ridge.predict(scaler.transform(xs))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(score, y)
    got = predict(model, x)
    assert np.allclose(model.score(xs), score, atol=1e-9)
    # the curve passes through the centre of each of scikit-learn's constant blocks, at that block's level
    levels = np.unique(iso.y_thresholds_)
    assert np.allclose(model.curve_y, levels) and len(model.curve_x) == len(levels)
    for cx, cy in zip(model.curve_x, model.curve_y):
        xb = iso.X_thresholds_[iso.y_thresholds_ == cy]
        assert cx == pytest.approx(xb.mean()) and iso.predict([cx])[0] == pytest.approx(cy)
    # and it is strictly increasing between its ends: scores there keep their order (no ties)
    inside = (score > model.curve_x[0]) & (score < model.curve_x[-1])
    assert inside.sum() > 300 and len(np.unique(got[inside])) == len(np.unique(score[inside]))
    assert np.abs(got - iso.predict(score)).mean() < 0.03  # and close to the step curve it smooths
    # higher mean_prob, lower U: never a lower estimate (a monotone curve over a score with these signs)
    assert model.coef[signals.index("mean_prob")] > 0 > model.coef[signals.index("u_mean")]
    order = np.argsort(model.score(xs))
    assert np.all(np.diff(got[order]) >= -1e-12)
    s = dict(zip(SIGNALS, x[3]))
    assert model(s) == pytest.approx(got[3])
    # the constructed cases: a confident, unchanged mask scores above a drifting, doubtful one
    perfect = _signals(400, [10, 10, 20, 20], (20.0, 20.0), u=0.02, p=0.98)
    drift = _signals(1600, [0, 10, 80, 25], (45.0, 22.0), components=3, largest=900, u=0.4, p=0.6, agree=0.3)
    assert model(perfect) > model(drift)


def test_linear_isotonic_estimate_travels_in_a_weights_only_checkpoint_and_bad_ones_are_refused(tmp_path):
    from vos_core import CheckpointError, load_model
    from vos_core.model import AFBURR
    from vos_core.model.checkpoint import write_checkpoint
    from vos_core.model.config import COMPACT_RESNET18
    from vos_train.calibrate import predict

    qm, x, _, _ = _linear_isotonic(1)
    qm.meta = {"sequences": ["a"], "estimator": "linear-isotonic"}
    model = AFBURR(COMPACT_RESNET18)
    path = tmp_path / "calibrated.pth"
    write_checkpoint(path, model.state_dict(), model.config, {"quality": qm.to_state()})
    loaded = load_model(path)
    assert type(loaded.quality_model).__name__ == "LinearIsotonicModel"
    assert np.array_equal(predict(loaded.quality_model, x), predict(qm, x))
    assert loaded.quality_model.meta["estimator"] == "linear-isotonic"
    for change in ({"curve_y": torch.flip(qm.to_state()["curve_y"], [0])},  # not monotone
                   {"coef": torch.zeros(2, dtype=torch.float64)},  # wrong length
                   {"format": 99}):
        bad = qm.to_state() | change
        write_checkpoint(path, model.state_dict(), model.config, {"quality": bad})
        with pytest.raises(CheckpointError, match="quality calibration cannot be used"):
            load_model(path)


def test_a_missing_signal_gives_no_estimate_rather_than_a_made_up_one():
    """With the reference read off, ``ref_agreement`` is None: an estimator reading it gives None, one that
    does not still gives its estimate, and the fallback rule works without it."""
    from vos_core.inference.quality import estimate_quality
    from vos_train.calibrate import fit_estimator

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(200, len(SIGNALS)))
    col = {s: i for i, s in enumerate(SIGNALS)}
    y = x[:, col["ref_agreement"]]
    reads_it = fit_estimator("linear-isotonic", x, y, ("ref_agreement", "mean_prob"))
    ignores_it = fit_estimator("linear-isotonic", x, y, ("mean_prob",))
    s = dict(zip(SIGNALS, x[0]), empty=0.0)
    assert estimate_quality(reads_it, s) == pytest.approx(float(reads_it(s)))
    s["ref_agreement"] = None
    assert estimate_quality(reads_it, s) is None
    assert estimate_quality(ignores_it, s) == pytest.approx(float(ignores_it(s)))
    assert estimate_quality(fallback_quality, s) is not None


def test_the_fallback_rule_follows_the_reference_agreement():
    s = object_signals(_stats(400, [10, 10, 20, 20]), REF, ObjectTrack(REF, 0), 1, 400, 3, ref_agreement=1.0)
    lost = dict(s, ref_agreement=0.1)
    assert fallback_quality(lost) == pytest.approx(0.1 * fallback_quality(s))


def test_the_shipped_estimate_on_constructed_cases():
    """The shipped weights' fitted estimate: a perfect track, a mask that drifted onto the background (the
    annotated frame's read no longer agrees), and a lost object."""
    from vos_core.inference.quality import estimate_quality
    from vos_core.model import SHIPPED_CHECKPOINT, load_model

    q = load_model(SHIPPED_CHECKPOINT).quality_model
    assert q is not None and "ref_agreement" in q.signals
    perfect = _signals(400, [10, 10, 20, 20], (20.0, 20.0), u=0.03, p=0.97, agree=0.95)
    drift = _signals(1600, [0, 10, 80, 25], (45.0, 22.0), components=3, largest=900, u=0.15, p=0.9, agree=0.3)
    lost = _signals(0, None, None, components=0, largest=0, u=0.0, agree=1.0)  # both reads leave it out
    got = [estimate_quality(q, s) for s in (perfect, drift, lost)]
    assert got[0] > 0.8 and got[1] < 0.5 and got[2] == 0.0
    # lower agreement, all else equal: never a higher estimate
    agreements = np.linspace(0, 1, 11)
    curve = [estimate_quality(q, dict(perfect, ref_agreement=float(a))) for a in agreements]
    assert np.all(np.diff(curve) >= -1e-12) and curve[-1] - curve[0] > 0.5


def test_bench_reference_read_runs_and_finds_the_masks_unchanged():
    """benchmarks/bench_reference_read.py on three frames at a small size: the table, and on and off agree
    on every mask pixel (the second read changes no mask)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import require_shared

    data = require_shared("davis16-val-public")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_reference_read.py"), "--data", str(data),
                        "--frames", "3", "--repeats", "1", "--size", "96", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| on") or line.startswith("| off")]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("1.00000") for row in rows), p.stdout
