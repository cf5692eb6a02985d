"""Acceptance check: our AFB-URR inference against the authors' released code.

    python benchmarks/compare_reference.py --reference-dir third_party/afb_urr

The authors' code (github.com/xmlyqing00/AFB-URR, not part of this repository)
is run as-is from ``--reference-dir``; only ``torchvision`` and
``torch_scatter``, which cannot be installed here, are replaced by our shims in
``benchmarks/reference_shims`` (on ``sys.path`` only while the reference is in
use). Get the code with

    git clone https://github.com/xmlyqing00/AFB-URR third_party/afb_urr

What it does: builds a random official-architecture model (seeded), saves it in
the official checkpoint format, loads it strictly into their ``AFB_URR`` and
into ours (``vos_core.load_model``), lays out real DAVIS frames as their
``DAVIS_Test_DS`` expects and runs their ``eval_DAVIS`` loop (memorize frame 0
with its one-hot mask, ``FeatureBank.init_bank``, then per frame ``segment`` ->
softmax -> ``memorize`` -> ``FeatureBank.update``) next to our
``Segmenter.run`` on the same decoded frames, for several memory settings. It
compares per-frame probabilities, bank sizes and final bank contents, and times
both (CPU by default).
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHIMS = ROOT / "benchmarks" / "reference_shims"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "davis16-train-240p"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vos_core import FeatureBank, Segmenter, SegmenterConfig, load_model  # noqa: E402
from vos_core.model import AFBURR, OFFICIAL  # noqa: E402

# Top-level names the reference code (or our shims for it) occupy while loaded.
_REF_MODULES = ("model", "myutils", "dataset", "torchvision", "torch_scatter")


def default_reference_dir() -> Path:
    return Path(os.environ.get("VOS_REFERENCE_DIR") or ROOT / "third_party" / "afb_urr")


def reference_present(ref_dir: str | os.PathLike) -> bool:
    ref_dir = Path(ref_dir)
    return (ref_dir / "model" / "AFB_URR.py").is_file() and (ref_dir / "model" / "FeatureBank.py").is_file()


def _is_ref_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _REF_MODULES)


@contextlib.contextmanager
def reference_modules(ref_dir: str | os.PathLike):
    """Imports the authors' ``model``, ``myutils`` and ``dataset`` packages with
    our shims on the path; on exit removes them (and the shims) from
    ``sys.modules`` and restores ``sys.path``, so nothing leaks into the caller."""
    ref_dir = Path(ref_dir).resolve()
    if not reference_present(ref_dir):
        raise FileNotFoundError(f"authors' code not found in {ref_dir} (expected model/AFB_URR.py there)")
    saved_path = list(sys.path)
    stashed = {n: m for n, m in sys.modules.items() if _is_ref_module(n)}
    for n in stashed:
        del sys.modules[n]
    sys.path[:0] = [str(SHIMS), str(ref_dir)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:  # myutils/data.py: ``from scipy.ndimage.morphology import binary_dilation`` (gone in SciPy 2)
                importlib.import_module("scipy.ndimage.morphology")
            except ModuleNotFoundError:
                import scipy.ndimage
                sys.modules["scipy.ndimage.morphology"] = scipy.ndimage
            tv = importlib.import_module("torchvision")
            if not str(getattr(tv, "__file__", "")).startswith(str(SHIMS)):
                raise RuntimeError(f"a real torchvision was imported from {tv.__file__}; expected the shim")
            ref_model = importlib.import_module("model")
            myutils = importlib.import_module("myutils")
            dataset = importlib.import_module("dataset")
        yield SimpleNamespace(AFB_URR=ref_model.AFB_URR, FeatureBank=ref_model.FeatureBank,
                              DAVIS_Test_DS=dataset.DAVIS_Test_DS, myutils=myutils, dir=ref_dir)
    finally:
        for n in [n for n in sys.modules if _is_ref_module(n)]:
            del sys.modules[n]
        sys.modules.update(stashed)
        sys.path[:] = saved_path


# -- data -------------------------------------------------------------------------
def make_davis_layout(dest: Path, data_root: Path, seq: str, n_frames: int, size: tuple[int, int] | None = None,
                      second_object: bool = False) -> Path:
    """Writes ``dest`` in the layout the authors' ``DAVIS_Test_DS`` reads
    (ImageSets/2017/val.txt, JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/00000.png).
    ``size`` (w, h): frames are resized (INTER_AREA) and re-encoded; otherwise linked.
    ``second_object``: the object is split at its median column, the right part becoming id 2."""
    import cv2

    src_img = data_root / "JPEGImages" / seq
    src_ann = data_root / "Annotations" / seq
    names = sorted(p.name for p in src_img.glob("*.jpg"))[:n_frames]
    if len(names) < n_frames:
        raise ValueError(f"{src_img}: {len(names)} frames, {n_frames} wanted")
    img_dir = dest / "JPEGImages" / "480p" / seq
    ann_dir = dest / "Annotations" / "480p" / seq
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    (dest / "ImageSets" / "2017").mkdir(parents=True)
    (dest / "ImageSets" / "2017" / "val.txt").write_text(seq + "\n")
    for name in names:
        if size is None:
            (img_dir / name).symlink_to((src_img / name).resolve())
        else:
            rgb = np.array(Image.open(src_img / name).convert("RGB"))
            Image.fromarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)).save(img_dir / name, quality=95)
    ann = np.array(Image.open(src_ann / (Path(names[0]).stem + ".png")))
    if ann.ndim == 3:
        ann = ann[..., 0]
    ann = (ann > 0).astype(np.uint8)  # DAVIS-2016: one object
    if size is not None:
        ann = cv2.resize(ann, size, interpolation=cv2.INTER_NEAREST)
    if second_object:
        ys, xs = np.nonzero(ann)
        if xs.size < 2:
            raise ValueError(f"{seq}: object too small to split into two")
        ann[(ann == 1) & (np.arange(ann.shape[1])[None, :] >= np.median(xs))] = 2
    Image.fromarray(ann).save(ann_dir / "00000.png")
    return dest


def load_frames_like_reference(layout: Path, seq: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The same files, decoded as their ``load_image_in_PIL`` does, as uint8 arrays for our API."""
    img_dir = layout / "JPEGImages" / "480p" / seq
    frames = [np.array(Image.open(p).convert("RGB")) for p in sorted(img_dir.glob("*.jpg"))]
    mask = np.array(Image.open(layout / "Annotations" / "480p" / seq / "00000.png").convert("P"))
    return frames, mask


# -- models -----------------------------------------------------------------------
def save_random_official(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = AFBURR(OFFICIAL)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 0, "loss": 0.0, "seed": seed}, path)
    return state


def load_reference_model(ref, ckpt: Path, device) -> tuple[torch.nn.Module, dict]:
    """Their model, built as eval.py builds it, loaded with strict=True. Returns (model, key report)."""
    model = ref.AFB_URR(device, update_bank=True, load_imagenet_params=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    theirs = model.state_dict()
    report = {
        "missing_in_checkpoint": sorted(set(theirs) - set(state)),
        "unexpected_in_checkpoint": sorted(set(state) - set(theirs)),
        "shape_mismatch": sorted(k for k in set(theirs) & set(state) if theirs[k].shape != state[k].shape),
        "n_keys": len(theirs),
    }
    model.load_state_dict(state, strict=True)  # raises on any key mismatch
    report["strict_load_ok"] = True
    return model.to(device).eval(), report


# -- the two loops ----------------------------------------------------------------
@dataclass
class RunResult:
    probs: list[np.ndarray]  # per frame K×H×W (frame 0: the one-hot annotation)
    sizes: list[list[int]]  # per segmented frame t>=1: bank size per object when frame t was read
    merged: int  # features merged into the bank over the video (all objects)
    evicted: int  # features removed from the bank over the video
    seconds: float
    bank_keys: list[torch.Tensor] = field(default_factory=list)
    bank_values: list[torch.Tensor] = field(default_factory=list)
    bank_usage: list[torch.Tensor] = field(default_factory=list)
    frame_seconds: list[float] = field(default_factory=list)  # per segmented frame (t >= 1): one loop step


def run_reference(ref, model, layout: Path, budget: int, merge_thres: float, update_rate: float,
                  device="cpu", prefill: tuple[list, list] | None = None) -> RunResult:
    """Their eval_DAVIS loop (eval.py), minus writing PNGs. ``prefill`` (keys, values per
    row): appended to every row's bank right after frame 0 (see :func:`prefill_features`)."""
    ds = ref.DAVIS_Test_DS(str(layout), "2017/val.txt")
    frames, masks, obj_n, info = ds[0]
    frames, masks = frames.to(device), masks.to(device)
    obj_n, frame_n = int(obj_n), int(info["num_frames"])
    probs, sizes = [masks[0].cpu().numpy()], []
    merged = 0
    with torch.no_grad():  # eval.py: torch.set_grad_enabled(False)
        t0 = time.perf_counter()
        pred_mask = masks[0:1]
        fb = ref.FeatureBank(obj_n, budget, device, update_rate=update_rate, thres_close=merge_thres)
        k4_list, v4_list = model.memorize(frames[0:1], pred_mask)
        fb.init_bank(k4_list, v4_list)
        if prefill is not None:
            for i, (k, v) in enumerate(zip(*prefill)):
                fb.keys[i] = torch.cat([fb.keys[i], k.to(device)], dim=1)
                fb.values[i] = torch.cat([fb.values[i], v.to(device)], dim=1)
                fb.info[i] = torch.cat([fb.info[i], torch.zeros(k.shape[1], 2, device=device)])  # frame 0, unused
        frame_seconds, tp = [], time.perf_counter()
        for t in range(1, frame_n):
            sizes.append([int(fb.keys[i].shape[1]) for i in range(obj_n)])
            score, _ = model.segment(frames[t:t + 1], fb)
            pred_mask = F.softmax(score, dim=1)
            probs.append(pred_mask[0].cpu().numpy())
            if t < frame_n - 1:
                k4_list, v4_list = model.memorize(frames[t:t + 1], pred_mask)
                n0 = [int(fb.keys[i].shape[1]) for i in range(obj_n)]
                r0 = fb.replace_n.copy()
                fb.update(k4_list, v4_list, t)
                for i in range(obj_n):
                    appended = int(fb.keys[i].shape[1]) - n0[i] + int(fb.replace_n[i] - r0[i])
                    merged += int(k4_list[i].shape[1]) - appended
            now = time.perf_counter()
            frame_seconds.append(now - tp)
            tp = now
        seconds = time.perf_counter() - t0
    return RunResult(probs, sizes, merged, int(fb.replace_n.sum()), seconds,
                     [k.cpu() for k in fb.keys], [v.cpu() for v in fb.values], [i[:, 1].cpu() for i in fb.info],
                     frame_seconds)


def reference_self_check(ref, model, layout: Path, threads: int) -> list[str]:
    """The authors' code against itself on the same checkpoint and frames: its default run against
    one with 1 thread and one with channels_last convolutions. Where their probabilities move by
    more than the tolerance between runs of their own code, no re-implementation can be held to it
    there (the clamped log(p / (1 - p)) of a float32 p near 1 turns one ulp into a large step)."""
    torch.set_num_threads(threads)
    base = run_reference(ref, model, layout, 300_000, 0.95, 0.1)
    lines = []
    for name, prep in (("1 thread", lambda: torch.set_num_threads(1)),
                       ("channels_last", lambda: model.to(memory_format=torch.channels_last))):
        prep()
        other = run_reference(ref, model, layout, 300_000, 0.95, 0.1)
        torch.set_num_threads(threads)
        model.to(memory_format=torch.contiguous_format)
        d = np.abs(np.stack(base.probs[1:]) - np.stack(other.probs[1:]))
        n_pix = d.shape[0] * d.shape[2] * d.shape[3]
        lines.append(f"theirs ({threads} threads, NCHW) vs theirs ({name}): max abs dp {d.max():.3g}, mean abs dp "
                     f"{d.mean():.2g}, pixel-frames differing by > 1e-3: {int((d.max(1) > 1e-3).sum())} of {n_pix}")
    return lines


def segmenter_accepts(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(SegmenterConfig)}


#: Variants of our side: Segmenter keyword arguments on top of the defaults.
VARIANTS = {
    "default": {},
    # The authors' arithmetic op for op: NCHW convolutions (their memory format) and batch norm
    # left unfolded (the Segmenter's defaults are channels_last and folded batch norm).
    "nchw": {"channels_last": False, "fold_bn": False},
}
#: Variants not expected to match within ``--tol``: reported with the agreement they get.
APPROX_VARIANTS = {
    "bf16": {"precision": "bf16"},  # bfloat16 autocast of the network (the bank stays fp32)
}
ALL_VARIANTS = VARIANTS | APPROX_VARIANTS


class _InstrumentedBank(FeatureBank):
    """The feature bank, counting the features each update merges (offered - appended), and with
    ``prefill`` appended to every row right after frame 0 is memorised, as :func:`run_reference` does
    to theirs: the bank of a long video, without running one."""

    prefill: tuple[list, list] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.merged = 0

    def add_objects(self, keys, values, frame_idx):
        first = not self.objects
        super().add_objects(keys, values, frame_idx)
        if first and self.prefill is not None:
            for mem, k, v in zip(self.objects, *self.prefill):
                mem.append(k.float(), v.float(), frame_idx, limit=self.object_budget)

    def update(self, keys, values, frame_idx, objects=None):
        rows = list(range(self.num_objects)) if objects is None else list(objects)
        before = [(self.objects[i].n, self.objects[i].evicted_total) for i in rows]
        super().update(keys, values, frame_idx, objects)
        for (n0, e0), i in zip(before, rows):
            appended = (self.objects[i].n - n0) + (self.objects[i].evicted_total - e0)
            self.merged += keys.shape[2] - appended


def _instrumented_memory(prefill):
    def factory(keydim, valdim, config, device):
        bank = _InstrumentedBank(keydim, valdim, config.budget, config.merge_thres, config.update_rate, device=device)
        bank.prefill = prefill
        return bank
    return factory


def prefill_features(rows: int, n: int, keydim: int = 128, valdim: int = 512, seed: int = 0,
                     generator: torch.Generator | None = None) -> tuple[list, list]:
    """Random keys and values (n per row) to pre-fill both banks with: a full bank's read and
    merge-search cost without the hour of frames it takes to fill one on a CPU. Random 128-d keys are
    nowhere near 0.95 cosine-similar to real ones, so they change no merge decision. ``generator``
    (instead of ``seed``): draw from it, so the caller can go on drawing from the same stream."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return ([torch.randn(keydim, n, generator=g) * 2 for _ in range(rows)],
            [torch.randn(valdim, n, generator=g) for _ in range(rows)])


def run_ours(model, frames: list[np.ndarray], first_mask: np.ndarray, budget: int, merge_thres: float,
             update_rate: float, prefill: tuple[list, list] | None = None, **segmenter_kwargs) -> RunResult:
    config = SegmenterConfig(budget=budget, merge_thres=merge_thres, update_rate=update_rate, **segmenter_kwargs)
    seg = Segmenter(model, config, memory=_instrumented_memory(prefill))
    session = seg.start()
    probs, sizes = [], []
    frame_seconds = []
    t0 = tp = time.perf_counter()
    for r in seg.run(frames, {0: first_mask}, session=session):
        now = time.perf_counter()
        if r.index > 0:  # memorise(t-1) + segment(t): the work of one step of their loop
            frame_seconds.append(now - tp)
        tp = now
        probs.append(r.probs)
        if r.index > 0:
            sizes.append(session.memory.sizes())
    seconds = time.perf_counter() - t0
    bank = session.memory
    return RunResult(probs, sizes, bank.merged, sum(o.evicted_total for o in bank.objects), seconds,
                     [o.keys.cpu().clone() for o in bank.objects], [o.values.cpu().clone() for o in bank.objects],
                     [o.usage.cpu().clone() for o in bank.objects], frame_seconds)


# -- comparison -------------------------------------------------------------------
@dataclass
class Setting:
    name: str
    merge_thres: float = 0.95
    budget_ours: int = 300_000
    budget_theirs: int = 300_000
    objects: int = 1
    update_rate: float = 0.1
    expect_equal: bool = True  # False where our behaviour differs on purpose (eviction)


@dataclass
class Comparison:
    setting: str
    variant: str
    objects: int
    merge_thres: float
    budget_ours: int
    budget_theirs: int
    frames: int
    size: str
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    argmax_agree: float  # fraction of pixels (frames 1..) with the same label
    sizes_equal: bool
    final_sizes_ours: list
    final_sizes_theirs: list
    merged_ours: int
    merged_theirs: int
    evicted_ours: int
    evicted_theirs: int
    bank_key_diff: float | None  # max abs over final bank keys/values (None when sizes differ)
    bank_usage_diff: float | None
    fps_ours: float
    fps_theirs: float
    expect_equal: bool
    tol: float

    @property
    def speed_ratio(self) -> float:
        return self.fps_ours / self.fps_theirs

    @property
    def passed(self) -> bool:
        return self.max_abs_prob_diff < self.tol


def compare(ref, ref_model, our_model, layout: Path, seq: str, setting: Setting, tol: float = 1e-3,
            device="cpu", variant: str = "default", theirs: RunResult | None = None,
            prefill: tuple[list, list] | None = None) -> Comparison:
    """One setting, one variant of ours. ``theirs``: a reference run of the same
    setting to reuse (the reference is deterministic)."""
    frames, mask = load_frames_like_reference(layout, seq)
    if theirs is None:
        theirs = run_reference(ref, ref_model, layout, setting.budget_theirs, setting.merge_thres,
                               setting.update_rate, device, prefill)
    ours = run_ours(our_model, frames, mask, setting.budget_ours, setting.merge_thres, setting.update_rate,
                    prefill, **ALL_VARIANTS[variant])
    assert len(theirs.probs) == len(ours.probs) == len(frames)
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)) for a, b in zip(ours.probs, theirs.probs)]
    agree = np.mean([(a.argmax(0) == b.argmax(0)).mean() for a, b in zip(ours.probs[1:], theirs.probs[1:])])
    same_final = [k.shape for k in ours.bank_keys] == [k.shape for k in theirs.bank_keys]
    key_diff = usage_diff = None
    if same_final:
        key_diff = max(float((a - b).abs().max()) for pair in ((ours.bank_keys, theirs.bank_keys),
                                                                (ours.bank_values, theirs.bank_values))
                       for a, b in zip(*pair) if a.numel())
        usage_diff = max(float((a - b).abs().max()) for a, b in zip(ours.bank_usage, theirs.bank_usage) if a.numel())
    h, w = frames[0].shape[:2]
    return Comparison(
        setting=setting.name, variant=variant, objects=int(mask.max()), merge_thres=setting.merge_thres,
        budget_ours=setting.budget_ours, budget_theirs=setting.budget_theirs, frames=len(frames), size=f"{w}x{h}",
        max_abs_prob_diff=float(max(d.max() for d in diffs)), mean_abs_prob_diff=float(np.mean([d.mean() for d in diffs])),
        argmax_agree=float(agree), sizes_equal=ours.sizes == theirs.sizes,
        final_sizes_ours=[int(k.shape[1]) for k in ours.bank_keys],
        final_sizes_theirs=[int(k.shape[1]) for k in theirs.bank_keys],
        merged_ours=ours.merged, merged_theirs=theirs.merged, evicted_ours=ours.evicted, evicted_theirs=theirs.evicted,
        bank_key_diff=key_diff, bank_usage_diff=usage_diff,
        fps_ours=len(frames) / ours.seconds, fps_theirs=len(frames) / theirs.seconds,
        expect_equal=setting.expect_equal and variant not in APPROX_VARIANTS, tol=tol,
    )


def compare_full_bank_read(ref, bank_per_row: int, rows: int, query_hw: tuple[int, int], repeats: int = 3,
                           keydim: int = 128, valdim: int = 512, seed: int = 0) -> list[dict]:
    """The memory read alone over a bank of ``bank_per_row`` features in each of ``rows`` rows
    (the state of a long video once the bank is full): their ``Matcher`` (with ``update_bank``,
    as eval.py builds it, so it also counts reads) against our ``FeatureBank.read`` on the same
    random keys, values and query. Returns
    one dict per implementation: best seconds of ``repeats`` and the max output/usage difference
    to theirs."""
    from vos_core.inference.feature_bank import FeatureBank, ObjectMemory

    g = torch.Generator().manual_seed(seed)
    hw = query_hw[0] * query_hw[1]
    keys, values = prefill_features(rows, bank_per_row, keydim, valdim, generator=g)
    q_key = torch.randn(1, keydim, hw, generator=g) * 2
    q_val = torch.randn(1, valdim, hw, generator=g)

    def theirs():
        fb = ref.FeatureBank(rows, 10 * rows * bank_per_row, "cpu")
        fb.init_bank([k.clone() for k in keys], [v.clone() for v in values])
        matcher = importlib.import_module("model.AFB_URR").Matcher(update_bank=True)
        t0 = time.perf_counter()
        out = matcher(fb, q_key, q_val)  # 1×rows×(2·valdim)×HW: [readout, query value]
        return time.perf_counter() - t0, out[0, :, :valdim], torch.stack([i[:, 1] for i in fb.info])

    def ours():
        bank = FeatureBank(keydim, valdim, budget=10 * rows * bank_per_row)
        for k, v in zip(keys, values):
            mem = ObjectMemory(keydim, valdim, "cpu")
            mem.append(k, v, 0, limit=bank_per_row)
            bank.objects.append(mem)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = bank.read(q_key[0])
            return time.perf_counter() - t0, out, torch.stack([o.usage for o in bank.objects])

    runs = {"theirs (Matcher)": theirs, "ours (FeatureBank.read)": ours}
    best, outputs = {}, {}
    with torch.no_grad():
        for name, fn in runs.items():  # warm-up
            fn()
        for _ in range(repeats):  # alternate, so a busy machine slows all alike
            for name, fn in runs.items():
                sec, out, usage = fn()
                best[name] = min(best.get(name, float("inf")), sec)
                outputs[name] = (out, usage)
    ref_out, ref_usage = outputs["theirs (Matcher)"]
    exact = torch.stack([(v.double() @ torch.softmax(k.double().t() @ q_key[0].double() / math.sqrt(keydim), dim=0))
                         .float() for k, v in zip(keys, values)])  # float64 read: which side is closer to it
    flops = 2 * rows * bank_per_row * hw * (keydim + valdim)
    return [{"implementation": name, "seconds": best[name], "gflop_per_s": flops / best[name] / 1e9,
             "speedup_vs_theirs": best["theirs (Matcher)"] / best[name],
             "max_abs_out_diff": float((out - ref_out).abs().max()), "max_abs_out": float(ref_out.abs().max()),
             "max_abs_usage_diff": float((usage - ref_usage).abs().max()),
             "max_abs_out_diff_float64": float((out - exact).abs().max()),
             "entries_read": int((ref_usage > 0).sum())}
            for name, (out, usage) in outputs.items()]


def default_settings(features_per_frame: int, mixed_thres: float = 0.995) -> list[Setting]:
    """The default merge setting (everything merges with a random model: its keys of
    consecutive frames are > 0.98 cosine-similar); a threshold near the median
    similarity (some merge, some append); append only; eviction with equal
    per-object budgets (theirs: 0.8 * budget // 2 for one object, ours: budget // 2);
    two objects."""
    per_object = int(2.5 * features_per_frame)  # eviction from the 3rd memorised frame on
    return [
        Setting("merge (default 0.95)", merge_thres=0.95),
        Setting(f"mixed ({mixed_thres:g})", merge_thres=mixed_thres),
        Setting("append (1.01)", merge_thres=1.01),
        Setting("evict (append, small budget)", merge_thres=1.01, budget_ours=2 * per_object,
                budget_theirs=int(np.ceil(2 * per_object / 0.8)), expect_equal=False),
        Setting("2 objects, merge (0.95)", merge_thres=0.95, objects=2),
        Setting(f"2 objects, mixed ({mixed_thres:g})", merge_thres=mixed_thres, objects=2),
        Setting("2 objects, append (1.01)", merge_thres=1.01, objects=2),
    ]


def _fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return "0" if x == 0 else (f"{x:.1e}" if x < 1e-2 else f"{x:.3f}")
    return str(x)


def table(rows: list[Comparison]) -> str:
    head = ["setting", "ours", "K", "budget ours/theirs", "bank end ours/theirs", "sizes equal every frame",
            "merged ours/theirs", "evicted ours/theirs", "max abs dp", "mean abs dp", "argmax agree",
            "bank k/v max diff", "usage max diff", "fps ours", "fps theirs", "ratio ours/theirs", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        if c.expect_equal:
            verdict = "PASS" if c.passed else "FAIL"
        elif c.variant in APPROX_VARIANTS:
            verdict = f"{c.variant}: not held to tol ({'within' if c.passed else 'outside'})"
        else:
            verdict = "differs (expected: eviction policy)" if not c.passed else "equal"
        lines.append("| " + " | ".join([
            c.setting, c.variant, str(c.objects + 1), f"{c.budget_ours}/{c.budget_theirs}",
            f"{c.final_sizes_ours}/{c.final_sizes_theirs}", "yes" if c.sizes_equal else "no",
            f"{c.merged_ours}/{c.merged_theirs}", f"{c.evicted_ours}/{c.evicted_theirs}",
            _fmt(c.max_abs_prob_diff), _fmt(c.mean_abs_prob_diff), f"{c.argmax_agree:.5f}", _fmt(c.bank_key_diff),
            _fmt(c.bank_usage_diff), f"{c.fps_ours:.2f}", f"{c.fps_theirs:.2f}", f"{c.speed_ratio:.2f}", verdict,
        ]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", type=Path, default=default_reference_dir(),
                    help="checkout of xmlyqing00/AFB-URR (default: $VOS_REFERENCE_DIR or third_party/afb_urr)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DAVIS-layout root (JPEGImages/<seq>, Annotations/<seq>)")
    ap.add_argument("--seq", default="horsejump-low")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--size", default=None, help="WxH to resize to (default: as stored, 427x240)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--mixed-thres", type=float, default=0.995,
                    help="merge threshold of the 'mixed' settings (near the median key similarity of a random model)")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS),
                    help=f"our Segmenter variants to run, of {sorted(ALL_VARIANTS)} (nchw: channels_last=False, "
                         f"fold_bn=False; "
                         f"bf16: precision='bf16', reported with its agreement, not held to --tol)")
    ap.add_argument("--only", default=None, help="comma-separated substrings: run only matching settings")
    ap.add_argument("--timing-repeats", type=int, default=3,
                    help="timed runs (alternating) of the default setting for the speed summary; best of these")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--self-check", action="store_true",
                    help="only run the authors' code against itself (1 thread, channels_last) and print how far "
                         "its own probabilities move")
    ap.add_argument("--prefill", type=int, default=0, metavar="N",
                    help="append N random features to every bank row of both implementations right after frame 0 "
                         "(the bank of a long video, where the memory read and merge search cost most)")
    ap.add_argument("--flops", action="store_true",
                    help="only count the FLOPs (torch's FlopCounterMode: convolutions and matrix products) of both "
                         "loops over the same frames, 1 and 2 objects, and print their ratio")
    ap.add_argument("--read-bank", default=None, metavar="N[,N...]",
                    help="only time the memory read over a full bank of N features per row (their Matcher vs our "
                         "FeatureBank.read), at --read-size query features; e.g. 150000 (300,000 over 2 rows)")
    ap.add_argument("--read-size", default="30x54", help="HxW of the query features for --read-bank "
                    "(30x54: a 480x864 frame at 1/16)")
    ap.add_argument("--read-rows", type=int, default=2, help="bank rows (objects + background) for --read-bank")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = "cpu"
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}")
    variants = [v for v in variants if all(segmenter_accepts(k) for k in ALL_VARIANTS[v])]
    from benchmarks.machine import command_line, describe_machine

    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(args.threads, device)}; os.nice {os.nice(0)}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average at start "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with reference_modules(args.reference_dir) as ref, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "official_random.pth"
        save_random_official(ckpt, args.seed)
        ref_model, keys = load_reference_model(ref, ckpt, device)
        # One model per variant: Segmenter(channels_last=True) converts the model it is given in place.
        ours = {v: load_model(ckpt, device) for v in variants}
        ours_keys = set(next(iter(ours.values())).state_dict())
        theirs_keys = set(ref_model.state_dict())
        keys_identical = ours_keys == theirs_keys
        print(f"reference: {ref.dir}")
        print(f"state_dict keys: theirs {keys['n_keys']}, ours {len(ours_keys)}; identical key sets: "
              f"{keys_identical}; strict load of the official-format checkpoint into AFB_URR: "
              f"{keys['strict_load_ok']} (missing {keys['missing_in_checkpoint']}, unexpected "
              f"{keys['unexpected_in_checkpoint']}, shape mismatches {keys['shape_mismatch']})")

        if args.flops:
            from torch.utils.flop_counter import FlopCounterMode

            print(f"FLOPs of each whole loop over {args.frames} frames (memorise frames 0..n-2, segment 1..n-1), "
                  f"default merge setting, counted by FlopCounterMode (convolutions and matrix products, "
                  f"2 per multiply-add)\n")
            print("| objects | size | theirs GFLOP | ours GFLOP | theirs / ours |")
            print("|---|---|---|---|---|")
            for objects in (1, 2):
                layout = make_davis_layout(tmp / f"flops_{objects}", args.data, args.seq, args.frames, size,
                                           objects == 2)
                frames, mask = load_frames_like_reference(layout, args.seq)
                counted = {}
                for name, fn in (("theirs", lambda: run_reference(ref, ref_model, layout, 300_000, 0.95, 0.1)),
                                 ("ours", lambda: run_ours(next(iter(ours.values())), frames, mask, 300_000, 0.95,
                                                           0.1))):
                    with FlopCounterMode(display=False) as fc:
                        fn()
                    counted[name] = fc.get_total_flops() / 1e9
                h, w = frames[0].shape[:2]
                print(f"| {objects} | {w}x{h} | {counted['theirs']:.1f} | {counted['ours']:.1f} | "
                      f"{counted['theirs'] / counted['ours']:.3f} |", flush=True)
            return 0
        if args.read_bank:
            qh, qw = (int(v) for v in args.read_size.lower().split("x"))
            print(f"memory read only: {args.read_rows} rows, query {qh}x{qw} features, keydim 128, valdim 512; "
                  f"best of {args.timing_repeats} alternating runs; differences against theirs\n")
            print("| bank per row | implementation | seconds | GFLOP/s | speed-up vs theirs | max abs readout diff "
                  "(max abs readout) | max abs readout diff to a float64 read | max abs usage diff | entries read |")
            print("|---|---|---|---|---|---|---|---|---|")
            for n in (int(x) for x in args.read_bank.split(",")):
                for r in compare_full_bank_read(ref, n, args.read_rows, (qh, qw), max(1, args.timing_repeats)):
                    print(f"| {n} | {r['implementation']} | {r['seconds']:.3f} | {r['gflop_per_s']:.0f} | "
                          f"{r['speedup_vs_theirs']:.2f} | {_fmt(r['max_abs_out_diff'])} ({r['max_abs_out']:.3g}) | "
                          f"{_fmt(r['max_abs_out_diff_float64'])} | "
                          f"{_fmt(r['max_abs_usage_diff'])} | {r['entries_read']} |", flush=True)
            return 0
        if args.self_check:
            layout = make_davis_layout(tmp / "davis_self", args.data, args.seq, args.frames, size)
            print("\n".join(reference_self_check(ref, ref_model, layout, args.threads)))
            return 0
        layouts = {k: make_davis_layout(tmp / f"davis_{k}obj", args.data, args.seq, args.frames, size, k == 2)
                   for k in (1, 2)}
        f0, _ = load_frames_like_reference(layouts[1], args.seq)
        h, w = f0[0].shape[:2]
        per_frame = -(-h // 16) * -(-w // 16)
        described = ", ".join(f"{v} {ALL_VARIANTS[v] or '(Segmenter defaults)'}" for v in variants)
        print(f"sequence {args.seq}: {args.frames} frames {w}x{h} (padded {-(-w // 16) * 16}x{-(-h // 16) * 16}, "
              f"{per_frame} features per frame and object); bank pre-filled with "
              f"{args.prefill} random features per row; CPU threads {torch.get_num_threads()}; "
              f"torch {torch.__version__}; ours: {described}",
              flush=True)

        # Warm-up (allocator, oneDNN kernels) so the first timed run is not penalised.
        warm = make_davis_layout(tmp / "warm", args.data, args.seq, 2, size)
        for v in variants:
            compare(ref, ref_model, ours[v], warm, args.seq, Setting("warm-up"), args.tol, device, v)

        rows = []
        for s in default_settings(per_frame, args.mixed_thres):
            if args.only and not any(p in s.name for p in args.only.split(",")):
                continue
            pf = prefill_features(s.objects + 1, args.prefill) if args.prefill else None
            theirs = run_reference(ref, ref_model, layouts[s.objects], s.budget_theirs, s.merge_thres,
                                   s.update_rate, device, pf)
            for v in variants:
                c = compare(ref, ref_model, ours[v], layouts[s.objects], args.seq, s, args.tol, device, v, theirs,
                            pf)
                rows.append(c)
                print(f"  {s.name} [{v}]: max abs dp {c.max_abs_prob_diff:.3g}, bank ours {c.final_sizes_ours} "
                      f"theirs {c.final_sizes_theirs}, {c.fps_ours:.3f} vs {c.fps_theirs:.3f} fps", flush=True)

        timing, timing_median = {}, {}
        if args.timing_repeats > 0:
            frames, mask = load_frames_like_reference(layouts[1], args.seq)
            s = Setting("timing")
            times = {"theirs": []} | {v: [] for v in variants}
            steps = {k: [] for k in times}
            pf = prefill_features(2, args.prefill) if args.prefill else None
            for _ in range(args.timing_repeats):
                r = run_reference(ref, ref_model, layouts[1], s.budget_theirs, s.merge_thres, s.update_rate, device,
                                  pf)
                times["theirs"].append(r.seconds)
                steps["theirs"] += r.frame_seconds
                for v in variants:
                    r = run_ours(ours[v], frames, mask, s.budget_ours, s.merge_thres, s.update_rate, pf,
                                 **ALL_VARIANTS[v])
                    times[v].append(r.seconds)
                    steps[v] += r.frame_seconds
            timing = {k: len(frames) / min(t) for k, t in times.items()}
            timing_median = {k: 1.0 / float(np.median(st)) for k, st in steps.items()}

    print()
    print(table(rows))
    if timing:
        print(f"\nspeed, default setting (1 object, merge 0.95), {args.timing_repeats} alternating runs of "
              f"{args.frames} frames each ({w}x{h}, CPU, {args.threads} threads): frames/s of the best whole run, "
              f"and 1 / median time of one frame step over all runs (robust to a busy machine):")
        # Agreement of each variant on the default setting (1 object, merge 0.95), from the table above.
        agree = {r.variant: r for r in rows if r.setting.startswith("merge (default")}
        print("| implementation | frames/s (best run) | ratio ours/theirs | frames/s (median step) | "
              "ratio ours/theirs | max abs dp (default setting) | argmax agree |")
        print("|---|---|---|---|---|---|---|")
        for k, fps in timing.items():
            name = "authors' eval loop (fp32, NCHW)" if k == "theirs" else \
                f"ours: {k} ({', '.join(f'{a}={b}' for a, b in ALL_VARIANTS[k].items()) or 'fp32, channels_last, folded BN'})"
            a = agree.get(k)
            med = timing_median[k]
            print(f"| {name} | {fps:.3f} | {fps / timing['theirs']:.2f} | {med:.3f} | "
                  f"{med / timing_median['theirs']:.2f} | "
                  f"{'-' if k == 'theirs' else (_fmt(a.max_abs_prob_diff) if a else 'not run')} | "
                  f"{'-' if k == 'theirs' else (f'{a.argmax_agree:.5f}' if a else 'not run')} |")
    if args.json:
        args.json.write_text(json.dumps({
            "keys_identical": keys_identical, "strict_load": keys["strict_load_ok"], "timing_fps": timing,
            "timing_fps_median_step": timing_median if timing else {},
            "rows": [asdict(r) | {"speed_ratio": r.speed_ratio, "passed": r.passed} for r in rows]}, indent=1))
    bad = [f"{r.setting} [{r.variant}]" for r in rows if r.expect_equal and not r.passed]
    if bad:
        print(f"\nFAIL: max abs probability difference >= {args.tol} in: {'; '.join(bad)}")
        return 1
    print(f"\nOK: every setting expected to match does (max abs probability difference < {args.tol}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
