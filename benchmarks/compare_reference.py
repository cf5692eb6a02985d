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

``--frame-check`` looks at agreement frame by frame instead, on a random checkpoint
with realistic batch-norm statistics (:func:`calibrate_batchnorm`): per frame, each
fp32 variant of ours against their loop next to their own difference between 2 and
1 threads (the noise floor) and against their loop run with the variant's
arithmetic (:func:`reference_arithmetic`); both loops again in float64 (rounding
gone, any difference of algorithm left); and one step teacher-forced
(:func:`teacher_forced_step`: their bank and soft mask into both codes, part by
part: memorised keys/values, bank update, read, decode, and what the previous
frame's soft mask carries in).
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import copy
import importlib
import json
import math
import os
import sys
import tempfile
import time
import types
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


def calibrate_batchnorm(model: AFBURR, frames: list[np.ndarray], first_mask: np.ndarray, n: int = 4) -> AFBURR:
    """Realistic batch-norm statistics for a random model: every BatchNorm2d's running mean and
    variance become the cumulative average of its batch statistics over the first ``n`` frames (the
    query encoder on each frame, the memory encoder on each frame with the first mask's one-hot
    planes, background first), as a trained model's are. With the 0/1 defaults a random trunk's
    activations grow layer after layer and its output saturates; calibrated, the memorised soft masks
    are soft (most pixels strictly between 0 and 1) and consecutive frames' keys are far from
    identical, so merging and appending both happen. Deterministic for given frames and thread count.
    Returns the model in eval mode."""
    from vos_core.inference.preprocess import pad_to_multiple

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    k = int(first_mask.max()) + 1
    onehot = torch.stack([torch.from_numpy(first_mask == i) for i in range(k)]).float()[None]
    model.train()
    try:
        with torch.no_grad():
            for f in frames[:n]:
                x, _ = pad_to_multiple(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255)
                model.encode_query(x)
                model.encode_memory(x, pad_to_multiple(onehot)[0])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return model


def save_realistic_official(path: Path, frames: list[np.ndarray], first_mask: np.ndarray, seed: int = 0,
                            n: int = 4) -> dict:
    """:func:`save_random_official` with the batch-norm statistics of :func:`calibrate_batchnorm`."""
    torch.manual_seed(seed)
    model = calibrate_batchnorm(AFBURR(OFFICIAL), frames, first_mask, n)
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


@contextlib.contextmanager
def reference_dtype(ref, dtype=torch.float32):
    """Lets the authors' code run as-is in ``dtype`` (float64: the exact-arithmetic check). Their code
    casts to float32 in three places (``memorize``: ``mask.float()``; ``FeatureBank.update``: two
    ``torch.zeros(..., dtype=torch.float)`` buffers for the merge means); inside this block those follow
    a float64 run instead (``Tensor.float`` keeps a float64 tensor as it is, and their FeatureBank module
    sees ``torch.float`` as float64). Nothing else of theirs changes. A no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    if dtype != torch.float64:
        raise ValueError(f"the reference runs in float32 or float64, not {dtype}")
    fb_mod = sys.modules[ref.FeatureBank.__module__]

    class _Torch64(types.ModuleType):
        float = torch.float64

        def __getattr__(self, name):
            return getattr(torch, name)

    saved_torch, saved_float = fb_mod.torch, torch.Tensor.float

    def keep_float64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else saved_float(self, *args, **kwargs)

    fb_mod.torch, torch.Tensor.float = _Torch64("torch"), keep_float64
    try:
        yield
    finally:
        fb_mod.torch, torch.Tensor.float = saved_torch, saved_float


def run_reference(ref, model, layout: Path, budget: int, merge_thres: float, update_rate: float,
                  device="cpu", prefill: tuple[list, list] | None = None, dtype=torch.float32) -> RunResult:
    """Their eval_DAVIS loop (eval.py), minus writing PNGs. ``prefill`` (keys, values per
    row): appended to every row's bank right after frame 0 (see :func:`prefill_features`).
    ``dtype``: float64 runs their code in float64 (``model`` must have been converted by the caller;
    see :func:`reference_dtype`); the frames are their float32 pixels, converted."""
    if next(model.parameters()).dtype != dtype:
        raise ValueError(f"the reference model is {next(model.parameters()).dtype}, the run {dtype}")
    ds = ref.DAVIS_Test_DS(str(layout), "2017/val.txt")
    frames, masks, obj_n, info = ds[0]
    frames, masks = frames.to(device, dtype), masks.to(device, dtype)
    obj_n, frame_n = int(obj_n), int(info["num_frames"])
    probs, sizes = [masks[0].cpu().numpy()], []
    merged = 0
    with torch.no_grad(), reference_dtype(ref, dtype):  # eval.py: torch.set_grad_enabled(False)
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
    # The authors' loop estimates no quality, so ours runs without the quality estimate's second read
    # (reference_read, 1.17x a step at 480p: benchmarks/bench_reference_read.py) unless asked: like against like.
    segmenter_kwargs = {"reference_read": False, **segmenter_kwargs}
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


def run_ours_exact(model, frames: list[np.ndarray], first_mask: np.ndarray, budget: int, merge_thres: float,
                   update_rate: float, dtype=torch.float64, channels_last: bool = False) -> RunResult:
    """Our side in ``dtype`` throughout: ``VideoSession.step``'s order (memorise frame t-1 with its soft
    mask, query-encode frame t, read the bank, decode, soft-aggregate) with our network ``model`` (as a
    Segmenter prepares it: ``Segmenter(...).model``) and our ``FeatureBank``. The Segmenter keeps its bank,
    readouts and probabilities in float32 whatever the network's dtype, so the float64 check of our
    side needs this loop; in float32 it reproduces the Segmenter (the reference test checks that).
    Pixels: uint8 / 255 in float32, as the Segmenter and the authors' ``to_tensor`` compute them, then
    ``dtype``."""
    from vos_core.inference.preprocess import frame_tensor, pad_to_multiple, unpad
    from vos_core.model.network import soft_aggregate

    cfg = model.config
    k = int(first_mask.max()) + 1
    probs = torch.stack([torch.from_numpy(first_mask == i) for i in range(k)]).to(dtype)
    out, sizes, bank, x_prev = [probs.cpu().numpy()], [], None, None
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t, frame in enumerate(frames):
            x = frame_tensor(frame, frame.shape[:2], "cpu", torch.float32, channels_last).to(dtype)
            x, pad = pad_to_multiple(x)
            if t > 0:
                keys, values = model.encode_memory(x_prev, pad_to_multiple(probs)[0].unsqueeze(0))
                if bank is None:
                    bank = _InstrumentedBank(cfg.keydim, cfg.valdim, budget, merge_thres, update_rate, dtype=dtype)
                    bank.add_objects(keys[0], values[0], t - 1)
                else:
                    bank.update(keys[0], values[0], t - 1)
                sizes.append(bank.sizes())
                q = model.encode_query(x)
                fg = unpad(model.decode(bank.read(q.key[0]).unsqueeze(0), q)[0], pad)
                probs = soft_aggregate(fg)
                out.append(probs.cpu().numpy())
            x_prev = x
    seconds = time.perf_counter() - t0
    objs = bank.objects if bank is not None else []
    return RunResult(out, sizes, bank.merged if bank is not None else 0, sum(o.evicted_total for o in objs), seconds,
                     [o.keys.cpu().clone() for o in objs], [o.values.cpu().clone() for o in objs],
                     [o.usage.cpu().clone() for o in objs])


def _our_model(source) -> AFBURR:
    """A fresh model of ours: loaded from a checkpoint path, or a copy of a loaded model (cheaper)."""
    return load_model(source) if isinstance(source, (str, os.PathLike)) else copy.deepcopy(source)


def prepared_model(source, variant: str, dtype=torch.float32):
    """Our network for ``variant`` as the Segmenter runs it (batch norm folded, channels_last, ...), from
    a checkpoint path or a loaded model (copied). Returns (network, channels_last)."""
    model = _our_model(source).to(dtype)
    config = SegmenterConfig(**{k: v for k, v in ALL_VARIANTS[variant].items() if k != "precision"})
    return Segmenter(model, config).model, config.channels_last


# -- frame by frame, and one step teacher-forced --------------------------------
def _dp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.mean()), float(d.max())


def _with_threads(n: int, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def frame_by_frame(ref, ref_model, ckpt, layout: Path, seq: str, merge_thres: float, variants: list[str],
                   threads: int, update_rate: float = 0.1, budget: int = 300_000, float64: bool = True,
                   floor_threads: int = 1, ours_floor: bool = True, float64_variants: list[str] | None = None,
                   ref64=None) -> dict:
    """Whole loops, per frame: each variant of ours against the authors' eval loop (both at ``threads``
    threads), next to the authors' own difference between ``threads`` and ``floor_threads`` threads on
    the same frames (the noise floor: the same arithmetic, only the summation order changed) and, with
    ``ours_floor``, ours' own; and against the authors' loop run with the variant's arithmetic
    (:func:`reference_arithmetic`). With ``float64``: both loops again in float64 (theirs via
    :func:`reference_dtype`, ours via :func:`run_ours_exact` for ``float64_variants``, default all, each
    network as the Segmenter prepares it), which separates rounding from any difference of algorithm:
    only the latter survives float64. ``ckpt``: our checkpoint, or a loaded model of ours (copied for
    each run); ``ref64``: the authors' model already in float64 (else made here). Returns {"runs", "rows"}."""
    frames, mask = load_frames_like_reference(layout, seq)
    runs = {}
    if float64_variants is None:
        float64_variants = [v for v in variants if v not in APPROX_VARIANTS]
    for v in variants:  # the authors' loop with this variant's arithmetic (its network as we prepare ours)
        model = reference_arithmetic(ref_model, v)
        if model is not ref_model:
            runs[f"theirs as {v}"] = _with_threads(threads, lambda: run_reference(
                ref, model, layout, budget, merge_thres, update_rate))
    for n, tag in ((threads, ""), (floor_threads, f" {floor_threads}t")):
        runs["theirs" + tag] = _with_threads(n, lambda: run_reference(ref, ref_model, layout, budget, merge_thres,
                                                                      update_rate))
        for v in variants if (ours_floor or not tag) else []:
            runs[f"ours {v}{tag}"] = _with_threads(n, lambda: run_ours(_our_model(ckpt), frames, mask, budget,
                                                                       merge_thres, update_rate, **ALL_VARIANTS[v]))
    if float64:
        if ref64 is None:
            ref64 = copy.deepcopy(ref_model).double()
        runs["theirs float64"] = _with_threads(threads, lambda: run_reference(
            ref, ref64, layout, budget, merge_thres, update_rate, dtype=torch.float64))
        for v in float64_variants:
            model, cl = prepared_model(ckpt, v, torch.float64)
            runs[f"ours {v} float64"] = _with_threads(threads, lambda: run_ours_exact(
                model, frames, mask, budget, merge_thres, update_rate, torch.float64, cl))
    rows = []
    floor_tag = f" {floor_threads}t"
    for t in range(1, len(frames)):
        row = {"frame": t, "bank theirs": runs["theirs"].sizes[t - 1],
               "theirs floor": _dp(runs["theirs"].probs[t], runs["theirs" + floor_tag].probs[t])}
        if float64:
            row["theirs vs float64"] = _dp(runs["theirs"].probs[t], runs["theirs float64"].probs[t])
            row["bank theirs float64"] = runs["theirs float64"].sizes[t - 1]
        for v in variants:
            ours = runs[f"ours {v}"]
            row[f"bank {v}"] = ours.sizes[t - 1]
            row[f"{v} vs theirs"] = _dp(ours.probs[t], runs["theirs"].probs[t])
            if f"ours {v}{floor_tag}" in runs:
                row[f"{v} floor"] = _dp(ours.probs[t], runs[f"ours {v}{floor_tag}"].probs[t])
            if f"theirs as {v}" in runs:  # theirs given our arithmetic: against theirs, and against ours
                row[f"theirs as {v} vs theirs"] = _dp(runs[f"theirs as {v}"].probs[t], runs["theirs"].probs[t])
                row[f"{v} vs theirs as {v}"] = _dp(ours.probs[t], runs[f"theirs as {v}"].probs[t])
                row[f"bank theirs as {v}"] = runs[f"theirs as {v}"].sizes[t - 1]
            if float64 and f"ours {v} float64" in runs:
                row[f"{v} vs float64"] = _dp(ours.probs[t], runs["theirs float64"].probs[t])
                row[f"{v} float64 vs theirs float64"] = _dp(runs[f"ours {v} float64"].probs[t],
                                                            runs["theirs float64"].probs[t])
                row[f"bank {v} float64"] = runs[f"ours {v} float64"].sizes[t - 1]
        rows.append(row)
    return {"runs": runs, "rows": rows}


def reference_arithmetic(ref_model, variant: str):
    """The authors' network run with ``variant``'s arithmetic: batch norm folded into their trunk's
    convolutions by our ``fold_batchnorm`` (their trunk is the shim's ResNet, built from our blocks) and
    channels_last convolutions, as the Segmenter prepares ours. ``ref_model`` itself where the variant
    is the authors' arithmetic (nchw)."""
    from vos_core.model.fuse import fold_batchnorm

    cfg = ALL_VARIANTS[variant]
    fold, cl = cfg.get("fold_bn", True), cfg.get("channels_last", True)
    if not (fold or cl):
        return ref_model
    model = fold_batchnorm(ref_model) if fold else copy.deepcopy(ref_model)
    return model.to(memory_format=torch.channels_last) if cl else model


def frame_table(result: dict, variant: str, threads: int, floor_threads: int = 1) -> str:
    rows = result["rows"]
    f64 = f"{variant} float64 vs theirs float64" in rows[0]
    same_arith = f"theirs as {variant} vs theirs" in rows[0]
    head = ["frame", "bank theirs / ours", f"ours {variant} vs theirs: mean / max abs dp",
            f"theirs {threads} vs {floor_threads} threads (floor)", f"ours {variant} {threads} vs {floor_threads} "
            f"threads", "ours vs theirs / floor (means)"]
    if same_arith:
        head += [f"theirs with {variant}'s arithmetic vs theirs", f"ours {variant} vs theirs with its arithmetic"]
    if f64:
        head += ["float64: ours vs theirs (mean / max)", "float64 banks equal", "theirs vs float64 (mean)",
                 f"ours {variant} vs float64 (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, fl = r[f"{variant} vs theirs"], r["theirs floor"]
        cells = [str(r["frame"]), f"{r['bank theirs']} / {r[f'bank {variant}']}", f"{_fmt(m[0])} / {_fmt(m[1])}",
                 f"{_fmt(fl[0])} / {_fmt(fl[1])}", " / ".join(_fmt(x) for x in r.get(f"{variant} floor", ("-", "-"))),
                 "-" if fl[0] == 0 else f"{m[0] / fl[0]:.1f}"]
        if same_arith:
            a, b = r[f"theirs as {variant} vs theirs"], r[f"{variant} vs theirs as {variant}"]
            cells += [f"{_fmt(a[0])} / {_fmt(a[1])}", f"{_fmt(b[0])} / {_fmt(b[1])}"]
        if f64:
            e = r[f"{variant} float64 vs theirs float64"]
            cells += [f"{e[0]:.1e} / {e[1]:.1e}", "yes" if r[f"bank {variant} float64"] == r["bank theirs float64"]
                      else "no", _fmt(r["theirs vs float64"][0]), _fmt(r[f"{variant} vs float64"][0])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clone_reference_bank(fb):
    c = copy.copy(fb)
    c.keys, c.values, c.info = [k.clone() for k in fb.keys], [v.clone() for v in fb.values], [i.clone() for i in fb.info]
    c.peak_n, c.replace_n = fb.peak_n.copy(), fb.replace_n.copy()
    return c


def _our_bank_from(fb, merge_thres: float, update_rate: float, budget: int) -> FeatureBank:
    """Our FeatureBank holding exactly the authors' bank ``fb``: keys, values, frame added, usage."""
    from vos_core.inference.feature_bank import ObjectMemory

    bank = FeatureBank(fb.keys[0].shape[0], fb.values[0].shape[0], budget, merge_thres, update_rate)
    for k, v, info in zip(fb.keys, fb.values, fb.info):
        mem = ObjectMemory(k.shape[0], v.shape[0], "cpu")
        mem.append(k, v, 0, limit=budget)
        mem.added_buf[: mem.n] = info[:, 0]
        mem.usage_buf[: mem.n] = info[:, 1]
        bank.objects.append(mem)
    return bank


def _kv_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.double() - b.double()).abs()
    return float(d.mean()), float(d.max())


def teacher_forced_step(ref, ref_model, ours: dict, layout: Path, step: int = 2, merge_thres: float = 0.95,
                        update_rate: float = 0.1, budget: int = 300_000, threads: int = 2, floor_threads: int = 1,
                        carried_masks: dict | None = None, ref_model64=None) -> list[dict]:
    """One step of the loop (memorise frame ``step`` - 1 with its soft mask, update the bank, read and
    decode frame ``step``), each part fed the same inputs on both sides: the authors' bank and soft mask
    (their loop up to frame ``step`` - 1), then at each part their output as the next part's input.
    ``ours``: {name: (network as the Segmenter prepares it, channels_last)}. Every quantity comes with the
    authors' own difference between ``threads`` and ``floor_threads`` threads on the same inputs.
    ``carried_masks`` ({name: K×H×W soft mask of frame ``step`` - 1 from that variant's whole loop}): also
    runs the authors' step from that mask, i.e. how much of the whole-loop difference at frame ``step``
    the mask carries in. ``ref_model64`` (the authors' model in float64): also each side's memorised
    keys and values against their memory encoder in float64 on the same inputs. Returns rows {part, quantity, floor, scale (of the compared quantity),
    <name>: (mean, max) ...}."""
    matcher_cls = type(ref_model.global_matcher)
    ds = ref.DAVIS_Test_DS(str(layout), "2017/val.txt")
    frames, masks, obj_n, _ = ds[0]
    obj_n = int(obj_n)
    if not 1 <= step - 1 < len(frames) - 1:
        raise ValueError(f"step {step}: needs frames 0..{step} (have {len(frames)})")
    rows = []

    def add(part, quantity, floor, scale=float("nan"), **values):
        rows.append({"part": part, "quantity": quantity, "floor": floor, "scale": scale, **values})

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _teacher_forced_parts(ref, ref_model, ours, frames, masks, obj_n, step, merge_thres, update_rate, budget,
                              threads, floor_threads, carried_masks, add, matcher_cls, ref_model64)
    finally:
        torch.set_num_threads(saved_threads)
    return rows


def _teacher_forced_parts(ref, ref_model, ours, frames, masks, obj_n, step, merge_thres, update_rate, budget, threads,
                          floor_threads, carried_masks, add, matcher_cls, ref_model64):
    from vos_core.inference.preprocess import pad_to_multiple, unpad
    from vos_core.model.network import QueryFeatures, soft_aggregate

    with torch.no_grad():
        fb = ref.FeatureBank(obj_n, budget, "cpu", update_rate=update_rate, thres_close=merge_thres)
        fb.init_bank(*ref_model.memorize(frames[0:1], masks[0:1]))
        for t in range(1, step):
            pm = F.softmax(ref_model.segment(frames[t:t + 1], fb)[0], dim=1)
            if t < step - 1:
                fb.update(*ref_model.memorize(frames[t:t + 1], pm), t)
        before = _clone_reference_bank(fb)  # the bank frame ``step`` - 1 is memorised into
        f_prev, f_q = frames[step - 1:step], frames[step:step + 1]

        def their_step(n, mask, model=ref_model):
            def go():
                b = _clone_reference_bank(before)
                kv = model.memorize(f_prev, mask)
                b.update([k.clone() for k in kv[0]], [v.clone() for v in kv[1]], step - 1)
                return F.softmax(model.segment(f_q, b)[0], dim=1)[0]
            return _with_threads(n, go)

        # 1. the memory encoder on the soft mask
        kv = {n: _with_threads(n, lambda: ref_model.memorize(f_prev, pm)) for n in (threads, floor_threads)}
        k_t, v_t = torch.stack(kv[threads][0]), torch.stack(kv[threads][1])
        k_f, v_f = torch.stack(kv[floor_threads][0]), torch.stack(kv[floor_threads][1])
        x_prev, _ = pad_to_multiple(f_prev)
        m_prev, _ = pad_to_multiple(pm)
        enc = {}
        for name, (model, cl) in ours.items():
            x = x_prev.contiguous(memory_format=torch.channels_last) if cl else x_prev
            enc[name] = [t[0] for t in model.encode_memory(x, m_prev)]
        mag = float(k_t.abs().max()), float(v_t.abs().max())
        add("memorise frame %d (soft mask)" % (step - 1), f"keys (max |key| {mag[0]:.3g})", _kv_diff(k_f, k_t),
            mag[0], **{n: _kv_diff(e[0], k_t) for n, e in enc.items()})
        add("memorise frame %d (soft mask)" % (step - 1), f"values (max |value| {mag[1]:.3g})", _kv_diff(v_f, v_t),
            mag[1], **{n: _kv_diff(e[1], v_t) for n, e in enc.items()})
        if ref_model64 is not None:  # the same inputs through their memory encoder in float64
            with reference_dtype(ref, torch.float64):
                k64, v64 = (torch.stack(x) for x in ref_model64.memorize(f_prev.double(), pm.double()))
            for q, ours_i, theirs_x, exact in (("keys", 0, k_t, k64), ("values", 1, v_t, v64)):
                add("memorise frame %d (soft mask)" % (step - 1), f"{q} against a float64 memory encoder (floor "
                    f"column: theirs)", _kv_diff(theirs_x, exact), mag[ours_i],
                    **{n: _kv_diff(e[ours_i], exact) for n, e in enc.items()})

        # 2. the bank update, from the same bank with the same new features (theirs)
        def their_update(n):
            def go():
                b = _clone_reference_bank(before)
                b.update([k.clone() for k in kv[threads][0]], [v.clone() for v in kv[threads][1]], step - 1)
                return b
            return _with_threads(n, go)
        after, after_f = their_update(threads), their_update(floor_threads)
        mine = {}
        for name in ours:
            bank = _our_bank_from(before, merge_thres, update_rate, budget)
            bank.update(k_t.clone(), v_t.clone(), step - 1)
            mine[name] = bank

        def bank_cmp(keys, values, usage, sizes):
            if sizes != [int(k.shape[1]) for k in after.keys]:
                return {"sizes": sizes}
            return {"sizes": sizes, "keys": max(_kv_diff(a, b)[1] for a, b in zip(keys, after.keys)),
                    "values": max(_kv_diff(a, b)[1] for a, b in zip(values, after.values)),
                    "usage": max(_kv_diff(a, b)[1] for a, b in zip(usage, [i[:, 1] for i in after.info]))}
        sizes_after = [int(k.shape[1]) for k in after.keys]
        merged = sum(int(k.shape[1]) for k in kv[threads][0]) - sum(sizes_after) + \
            sum(int(k.shape[1]) for k in before.keys)
        fl = bank_cmp(after_f.keys, after_f.values, [i[:, 1] for i in after_f.info],
                      [int(k.shape[1]) for k in after_f.keys])
        ou = {n: bank_cmp([o.keys for o in b.objects], [o.values for o in b.objects], [o.usage for o in b.objects],
                          b.sizes()) for n, b in mine.items()}
        part = f"bank update (theirs: {[int(k.shape[1]) for k in before.keys]} -> {sizes_after}, {merged} merged)"
        add(part, "bank sizes after the update", {"sizes": fl["sizes"]}, **{n: {"sizes": o["sizes"]} for n, o in ou.items()})
        scales = {"keys": max(float(k.abs().max()) for k in after.keys),
                  "values": max(float(v.abs().max()) for v in after.values),
                  "usage": max(float(i[:, 1].abs().max()) for i in after.info)}
        for q in ("keys", "values", "usage"):
            add(part, f"bank {q}: max abs diff (sizes equal)", (0.0, fl.get(q, float("nan"))), scales[q],
                **{n: (0.0, o.get(q, float("nan"))) for n, o in ou.items()})

        # 3. the read of frame ``step``: the same bank (theirs, updated), the same query key (theirs)
        [fq], pad = ref.myutils.pad_divide_by([f_q], 16, f_q.shape[-2:])

        def their_query(n):
            def go():
                r4, r3, r2, r1 = ref_model.encoder_q(fq)
                k4, v4 = ref_model.keyval_r4(r4)
                return r4, r3, r2, r1, k4, v4
            return _with_threads(n, go)
        r4, r3, r2, r1, k4, v4 = their_query(threads)

        def their_read(n):
            def go():
                b = _clone_reference_bank(after)
                out = matcher_cls(update_bank=True)(b, k4, v4)[0]  # K × 2·valdim × HW
                return out, torch.cat([i[:, 1] - j[:, 1] for i, j in zip(b.info, after.info)])  # rows end to end
            return _with_threads(n, go)
        (read_t, used_t), (read_f, used_f) = their_read(threads), their_read(floor_threads)
        valdim = v4.shape[1]
        reads = {}
        for name in ours:
            bank = _our_bank_from(after, merge_thres, update_rate, budget)
            u0 = torch.cat([o.usage for o in bank.objects])
            out = bank.read(k4[0])
            reads[name] = (out, torch.cat([o.usage for o in bank.objects]) - u0)
        scale = float(read_t[:, :valdim].abs().max())
        add(f"read frame {step}", f"readout (max |readout| {scale:.3g})",
            _kv_diff(read_f[:, :valdim], read_t[:, :valdim]), scale,
            **{n: _kv_diff(r[0], read_t[:, :valdim]) for n, r in reads.items()})
        exact = torch.stack([v.double() @ torch.softmax(kk.double().t() @ k4[0].double() / math.sqrt(kk.shape[0]), dim=0)
                             for kk, v in zip(after.keys, after.values)])
        add(f"read frame {step}", "readout against a float64 read (floor column: theirs)",
            _kv_diff(read_t[:, :valdim], exact), scale, **{n: _kv_diff(r[0], exact) for n, r in reads.items()})
        add(f"read frame {step}", "read count added to usage", _kv_diff(used_f, used_t), float(used_t.max()),
            **{n: _kv_diff(r[1], used_t) for n, r in reads.items()})

        # 4. the decoder: the same readout and query features (theirs)
        k = obj_n
        h1, w1 = r1.shape[-2:]

        def their_decode(n):
            res = read_t.reshape(k, 2 * valdim, *r4.shape[-2:])
            return _with_threads(n, lambda: ref_model.decoder(res, r3.expand(k, -1, -1, -1), r2.expand(k, -1, -1, -1),
                                                              r1.expand(k, -1, -1, -1), (1, k, h1, w1)))
        fg_t, fg_f = their_decode(threads), their_decode(floor_threads)
        qf = QueryFeatures(k4, v4, r3, r2, r1, tuple(r4.shape[-2:]))
        add(f"decode frame {step}", "foreground probabilities (per object)", _kv_diff(fg_f, fg_t), 1.0,
            **{n: _kv_diff(m.decode(read_t[:, :valdim].unsqueeze(0), qf)[0], fg_t) for n, (m, _) in ours.items()})

        # 5. the whole step from the same bank and soft mask
        p_t, p_f = their_step(threads, pm), their_step(floor_threads, pm)
        whole, same_arith = {}, {}
        xq, qpad = pad_to_multiple(f_q)
        for name, (model, cl) in ours.items():
            bank = _our_bank_from(before, merge_thres, update_rate, budget)
            x = x_prev.contiguous(memory_format=torch.channels_last) if cl else x_prev
            keys, values = model.encode_memory(x, m_prev)
            bank.update(keys[0], values[0], step - 1)
            q = model.encode_query(xq.contiguous(memory_format=torch.channels_last) if cl else xq)
            fg = unpad(model.decode(bank.read(q.key[0]).unsqueeze(0), q)[0], qpad)
            p = soft_aggregate(fg)
            whole[name] = _kv_diff(p, p_t)
            if name in ALL_VARIANTS:  # against the authors' step run with this variant's arithmetic
                theirs_as = reference_arithmetic(ref_model, name)
                same_arith[name] = whole[name] if theirs_as is ref_model else \
                    _kv_diff(p, their_step(threads, pm, theirs_as))
        add(f"whole step: frame {step} probabilities", "from the same bank and soft mask", _kv_diff(p_f, p_t), 1.0,
            **whole)
        if same_arith:
            add(f"whole step: frame {step} probabilities", "against the authors' step with the variant's arithmetic "
                "(reference_arithmetic)", _kv_diff(p_f, p_t), 1.0, **same_arith)

        # 6. what the soft mask of frame ``step`` - 1 carries in
        if carried_masks:
            carried, given = {}, {}
            for name, m in carried_masks.items():
                mt = torch.from_numpy(np.asarray(m, np.float32))[None]
                given[name] = _kv_diff(mt[0], pm[0])
                carried[name] = _kv_diff(their_step(threads, mt), p_t)
            add(f"soft mask of frame {step - 1} (whole loops)", "ours vs theirs", (float("nan"), float("nan")),
                **given)
            add(f"frame {step} of the authors' step from our mask", "vs from theirs", (float("nan"), float("nan")),
                **carried)


def step_table(rows: list[dict], names: list[str], threads: int, floor_threads: int = 1) -> str:
    head = ["part", "quantity", f"theirs {threads} vs {floor_threads} threads (floor): mean / max"] + \
        [f"ours {n} vs theirs: mean / max" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v):
        if isinstance(v, dict):
            return f"bank sizes {v['sizes']}"
        mean, mx = v
        return (_fmt(mx) if mean == 0 or mean != mean else f"{_fmt(mean)} / {_fmt(mx)}") if mx == mx else "-"
    for r in rows:
        lines.append("| " + " | ".join([r["part"], r["quantity"], cell(r["floor"])] + [cell(r[n]) for n in names]) + " |")
    return "\n".join(lines)


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
                           keydim: int = 128, valdim: int = 512, seed: int = 0, query_scale: float = 2.0) -> list[dict]:
    """The memory read alone over a bank of ``bank_per_row`` features in each of ``rows`` rows
    (the state of a long video once the bank is full): their ``Matcher`` (with ``update_bank``,
    as eval.py builds it, so it also counts reads) against our ``FeatureBank.read`` on the same
    random keys, values and query. Returns
    one dict per implementation: best seconds of ``repeats`` and the max output/usage difference
    to theirs. ``query_scale`` sets how peaked the attention is (a trained model's is peaked: about a tenth
    of its float32 weights are subnormal); each dict's ``subnormal_fraction`` is the measured share."""
    from vos_core.inference.feature_bank import FeatureBank, ObjectMemory

    g = torch.Generator().manual_seed(seed)
    hw = query_hw[0] * query_hw[1]
    keys, values = prefill_features(rows, bank_per_row, keydim, valdim, generator=g)
    q_key = torch.randn(1, keydim, hw, generator=g) * query_scale
    # row 0, the first 64 query pixels, float32, as both compute it
    attn = torch.softmax((q_key[0, :, :64].t() / math.sqrt(keydim)) @ keys[0], dim=-1)
    subnormal = float(((attn > 0) & (attn < torch.finfo(attn.dtype).tiny)).float().mean())
    del attn
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
             "entries_read": int((ref_usage > 0).sum()), "subnormal_fraction": subnormal}
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


def frame_check_main(args, size, variants: list[str]) -> int:
    """--frame-check: see :func:`frame_by_frame` and :func:`teacher_forced_step`."""
    with reference_modules(args.reference_dir) as ref, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layout = make_davis_layout(tmp / "davis", args.data, args.seq, args.frames, size, args.objects == 2)
        frames, mask = load_frames_like_reference(layout, args.seq)
        ckpt = tmp / "official.pth"
        if args.bn == "realistic":
            save_realistic_official(ckpt, frames, mask, args.seed, args.bn_frames)
        else:
            save_random_official(ckpt, args.seed)
        ref_model, _ = load_reference_model(ref, ckpt, "cpu")
        h, w = frames[0].shape[:2]
        described = ", ".join(f"{v} {ALL_VARIANTS[v] or '(Segmenter defaults)'}" for v in variants)
        print(f"sequence {args.seq}: {args.frames} frames {w}x{h}, {args.objects} object(s); random official checkpoint (seed "
              f"{args.seed}), batch-norm statistics: {args.bn}"
              f"{f' (calibrate_batchnorm on the first {min(args.bn_frames, len(frames))} frames)' if args.bn == 'realistic' else ' (0/1 defaults)'}; "
              f"ours: {described}; "
              f"mean / max abs probability difference per frame (all K planes); the floor: the authors' loop at "
              f"{args.threads} against {args.floor_threads} thread(s)", flush=True)
        base = load_model(ckpt)
        ref64 = None if args.no_float64 else copy.deepcopy(ref_model).double()
        for thres in (float(x) for x in args.merge_thres.split(",")):
            res = frame_by_frame(ref, ref_model, base, layout, args.seq, thres, variants, args.threads,
                                 float64=not args.no_float64, floor_threads=args.floor_threads, ref64=ref64)
            for v in variants:
                print(f"\nmerge_thres {thres:g}, ours {v}:")
                print(frame_table(res, v, args.threads, args.floor_threads))
            if args.step_frame < args.frames:
                ours = {v: prepared_model(base, v) for v in variants}
                carried = {v: res["runs"][f"ours {v}"].probs[args.step_frame - 1] for v in variants}
                with torch.inference_mode():
                    rows = teacher_forced_step(ref, ref_model, ours, layout, args.step_frame, thres, threads=args.threads,
                                               floor_threads=args.floor_threads, carried_masks=carried,
                                               ref_model64=None if args.no_float64 else ref64)
                print(f"\nmerge_thres {thres:g}, frame {args.step_frame} teacher-forced (the authors' bank and soft "
                      f"mask into both; each part fed the authors' output of the part before):")
                print(step_table(rows, variants, args.threads, args.floor_threads), flush=True)
    return 0


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
    ap.add_argument("--read-query-scale", type=float, default=2.0,
                    help="--read-bank: scale of the random query keys: how peaked the attention is (the shipped "
                         "model's has 10-11%% of its weights subnormal at 480p; the table reports the share)")
    ap.add_argument("--frame-check", action="store_true",
                    help="only the frame-by-frame agreement: per frame, each fp32 variant of ours against the authors' "
                         "loop next to the authors' own difference between --threads and --floor-threads threads, both "
                         "loops in float64 too, and one step teacher-forced (--step-frame); one object, "
                         "--merge-thres settings, a checkpoint with --bn statistics")
    ap.add_argument("--bn", choices=("realistic", "random"), default="realistic",
                    help="--frame-check: batch-norm statistics of the random checkpoint: calibrated on the first "
                         "frames (calibrate_batchnorm) or the 0/1 defaults")
    ap.add_argument("--bn-frames", type=int, default=4,
                    help="--frame-check with --bn realistic: frames the batch-norm statistics are calibrated on")
    ap.add_argument("--merge-thres", default="0.95,0.6", help="--frame-check: comma-separated merge thresholds")
    ap.add_argument("--step-frame", type=int, default=2,
                    help="--frame-check: the frame whose step is teacher-forced (2: the first read of a memory that "
                         "holds a memorised soft mask)")
    ap.add_argument("--floor-threads", type=int, default=1,
                    help="--frame-check: thread count of the noise-floor runs (against --threads)")
    ap.add_argument("--no-float64", action="store_true", help="--frame-check: skip the float64 loops")
    ap.add_argument("--objects", type=int, choices=(1, 2), default=1,
                    help="--frame-check: objects (2: the annotation split at its median column, as the 2-object "
                         "settings)")
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
    if args.frame_check:
        return frame_check_main(args, size, [v for v in variants if v not in APPROX_VARIANTS])
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
                  "(max abs readout) | max abs readout diff to a float64 read | max abs usage diff | entries read | "
                  "subnormal attention weights |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for n in (int(x) for x in args.read_bank.split(",")):
                for r in compare_full_bank_read(ref, n, args.read_rows, (qh, qw), max(1, args.timing_repeats),
                                                query_scale=args.read_query_scale):
                    print(f"| {n} | {r['implementation']} | {r['seconds']:.3f} | {r['gflop_per_s']:.0f} | "
                          f"{r['speedup_vs_theirs']:.2f} | {_fmt(r['max_abs_out_diff'])} ({r['max_abs_out']:.3g}) | "
                          f"{_fmt(r['max_abs_out_diff_float64'])} | "
                          f"{_fmt(r['max_abs_usage_diff'])} | {r['entries_read']} | {r['subnormal_fraction']:.1%} |",
                          flush=True)
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
