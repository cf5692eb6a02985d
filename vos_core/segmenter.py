"""Streaming semi-supervised VOS with AFB-URR: frames in, one result per frame out.

    seg = Segmenter(model, budget=300_000)
    for r in seg.run(frames, {0: first_mask}):
        r.mask, r.probs, r.uncertainty, r.stats

Frames are pulled one at a time from any iterable and each result is yielded
before the next frame is read, so neither host nor device memory grows with
video length (the feature bank is bounded by ``budget``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import AnnotationError, VOSInputError
from .feature_bank import FeatureBank
from .model.decoder import uncertainty_map
from .model.fuse import fold_batchnorm
from .model.network import AFBURR, soft_aggregate
from .stats import UNCERTAIN_U, FrameStats, compute_stats


_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FrameResult:
    index: int  # position of the frame in the input iterable
    object_ids: list[int]  # ids of the probability planes, background (0) first
    mask: np.ndarray  # H×W id map (uint8, or uint16 when an id exceeds 255)
    probs: np.ndarray | None  # K×H×W float32 probabilities, rows follow object_ids
    uncertainty: np.ndarray | None  # H×W float32 U = exp(1 - top1/top2)
    stats: FrameStats
    annotated: bool  # the mask came (at least partly) from a given annotation


def pad_to_multiple(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pads the last two dims up to a multiple of ``d``; the smaller half
    goes on top/left, as the authors do. Returns (padded, (left, right, top, bottom))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % d, (-w) % d
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad) if any(pad) else x), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top: h - bottom, left: w - right]


def working_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) scaled so the shorter side is ``short_side`` (None: unchanged)."""
    if not short_side or min(h, w) == short_side:
        return h, w
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


class Segmenter:
    """Runs AFB-URR over one video at a time. Holds no per-video state between runs."""

    def __init__(self, model: AFBURR, budget: int = 300_000, merge_thres: float = 0.95, update_rate: float = 0.1,
                 size: int | None = None, u_threshold: float = UNCERTAIN_U, keep_probs: bool = True,
                 keep_uncertainty: bool | None = None,
                 resize_annotations: bool = False, precision: str = "fp32", channels_last: bool = True,
                 fold_bn: bool = True):
        """size: process at this shorter side (None: input size); results come back at the input size.
        resize_annotations: resize an annotation whose size differs from its frame (nearest) instead of
        refusing it. precision: "fp32" (exact), or "bf16"/"fp16" autocast (the feature bank is stored
        in fp32, but its products, the read and the merge search, run in the low precision too, which is
        most of the speed-up with a large bank); see BENCHMARKS.md for speed and agreement.
        channels_last: NHWC convolutions (faster with oneDNN and cuDNN, same results). fold_bn: run a copy of the model with batch norm
        folded into the convolutions (same function, float rounding aside; the model passed in is left as
        it is; skipped for a model in training mode)."""
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {sorted(_AUTOCAST)}, got {precision!r}")
        if fold_bn and not model.training:
            model = fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.precision = precision
        self.channels_last = channels_last
        self.budget = budget
        self.merge_thres = merge_thres
        self.update_rate = update_rate
        self.size = size
        self.u_threshold = u_threshold
        self.keep_probs = keep_probs
        # the U map alone (H×W) is cheap to keep where the K×H×W probabilities are not
        self.keep_uncertainty = keep_probs if keep_uncertainty is None else keep_uncertainty
        self.resize_annotations = resize_annotations
        self.bank: FeatureBank | None = None  # the bank of the video being run (for inspection)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- input preparation ---------------------------------------------------
    def _frame_tensor(self, frame, index: int, work_hw: tuple[int, int]) -> torch.Tensor:
        if isinstance(frame, torch.Tensor):
            frame = frame.cpu().numpy()
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise VOSInputError(f"frame {index}: expected H×W×3 uint8 RGB, got shape {frame.shape} {frame.dtype}")
        if frame.shape[:2] != work_hw:
            frame = cv2.resize(frame, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, non_blocking=True)
        t = t.permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _annotation(self, ann, index: int, in_hw: tuple[int, int], work_hw: tuple[int, int], source: str) -> np.ndarray:
        ann = np.asarray(ann)
        if ann.ndim == 3 and ann.shape[2] == 1:
            ann = ann[..., 0]
        if ann.ndim != 2:
            raise AnnotationError(f"{source}: expected an H×W id map, got shape {ann.shape}")
        if ann.shape != in_hw:
            if not self.resize_annotations:
                raise AnnotationError(
                    f"{source}: annotation is {ann.shape[1]}x{ann.shape[0]} but its frame is {in_hw[1]}x{in_hw[0]} "
                    f"(pass resize_annotations=True / --resize-annotations to resize it to the frame)")
            ann = cv2.resize(ann.astype(np.uint16), (in_hw[1], in_hw[0]), interpolation=cv2.INTER_NEAREST)
        if ann.shape != work_hw:
            ann = cv2.resize(ann.astype(np.uint16), (work_hw[1], work_hw[0]), interpolation=cv2.INTER_NEAREST)
        return ann.astype(np.int64)

    # -- the loop --------------------------------------------------------------
    def run(self, frames: Iterable, annotations: Mapping[int, np.ndarray]) -> Iterator[FrameResult]:
        """Segments a video. ``frames``: iterable of H×W×3 uint8 RGB; ``annotations``:
        {frame index: H×W id map}, 0 = background. The first annotated frame starts
        tracking (earlier frames are skipped); later annotations add new objects
        (or overwrite the objects they contain)."""
        if not annotations or len(annotations) == 0:
            raise AnnotationError("no annotation given: at least the first frame's mask is needed")
        describe = getattr(annotations, "source", None)
        first = min(annotations.keys())
        model = self.model
        object_ids: list[int] = [0]
        bank: FeatureBank | None = None
        pending = None  # (padded frame, probs at working size, number of objects already banked)
        in_hw = work_hw = pad = None

        amp = _AUTOCAST[self.precision]
        autocast = torch.autocast(self.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for t, frame in enumerate(frames):
                if t < first:
                    continue
                fh, fw = np.shape(frame)[:2]
                if in_hw is None:
                    in_hw = (fh, fw)
                    work_hw = working_size(fh, fw, self.size)
                elif (fh, fw) != in_hw:
                    raise VOSInputError(f"frame {t}: size {fw}x{fh} differs from the video's {in_hw[1]}x{in_hw[0]}")
                x, pad = pad_to_multiple(self._frame_tensor(frame, t, work_hw))

                if pending is not None:  # memorise the previous frame now that we know it was not the last
                    bank = self._memorise(bank, *pending)
                    pending = None

                ann = None
                if t in annotations:
                    source = describe(t) if describe else f"annotation of frame {t}"
                    ann = self._annotation(annotations[t], t, in_hw, work_hw, source)
                    new_ids = sorted(int(i) for i in np.unique(ann) if i != 0 and i not in object_ids)
                    if t == first and not new_ids:
                        raise AnnotationError(f"{source}: the first annotation is empty (no object ids, only background)")
                n_banked = len(object_ids)

                if t == first:
                    probs = torch.zeros(0, *work_hw, device=self.device, dtype=self.dtype)
                else:
                    q = model.encode_query(x)
                    readout = bank.read(q.key.float())
                    fg = unpad(model.decode(readout, q), pad).float()
                    probs = soft_aggregate(fg)
                if ann is not None:
                    object_ids = object_ids + new_ids
                    probs = self._apply_annotation(probs, ann, object_ids)

                pending = (x, probs, n_banked if t != first else 0, t)
                self.bank = bank
                yield self._result(t, probs, object_ids, in_hw, work_hw, bank, annotated=ann is not None)

    def _apply_annotation(self, probs: torch.Tensor, ann: np.ndarray, object_ids: list[int]) -> torch.Tensor:
        """Pixels labelled in ``ann`` become one-hot for their id; elsewhere the
        prediction of objects not in ``ann`` stands, and objects ``ann`` lists
        lose the pixels it does not give them. New objects get zero planes first."""
        k_old, k = probs.shape[0], len(object_ids)
        if k > k_old:
            probs = torch.cat([probs, probs.new_zeros(k - k_old, *probs.shape[1:])])
        if k_old == 0:
            probs[0] = 1.0
        a = torch.from_numpy(ann).to(probs.device)
        given = sorted(int(i) for i in np.unique(ann) if i != 0)
        idx = {oid: i for i, oid in enumerate(object_ids)}
        labelled = a != 0
        for oid in given:
            probs[idx[oid]] = 0.0  # a listed object lives exactly where the annotation puts it
        probs[:, labelled] = 0.0
        for oid in given:
            probs[idx[oid]][a == oid] = 1.0
        # Unlabelled pixels: renormalise what is left (background absorbs a vacated object).
        total = probs.sum(0, keepdim=True)
        probs[0] += (1 - total[0]).clamp(min=0)
        return probs / probs.sum(0, keepdim=True)

    def _memorise(self, bank: FeatureBank | None, x, probs, n_banked: int, t: int) -> FeatureBank:
        padded, _ = pad_to_multiple(probs)
        keys, values = self.model.encode_memory(x, padded)
        keys, values = keys.float(), values.float()  # the bank is kept in fp32 whatever the precision
        if bank is None:
            cfg = self.model.config
            bank = FeatureBank(cfg.keydim, cfg.valdim, self.budget, self.merge_thres, self.update_rate,
                               device=self.device, dtype=torch.float32)
        if n_banked:
            bank.update(keys[:n_banked], values[:n_banked], t, objects=list(range(n_banked)))
        if keys.shape[0] > n_banked:
            bank.add_objects(keys[n_banked:], values[n_banked:], t)
        return bank

    def _result(self, t, probs, object_ids, in_hw, work_hw, bank, annotated) -> FrameResult:
        if work_hw != in_hw:
            probs = F.interpolate(probs.unsqueeze(0).float(), size=in_hw, mode="bilinear", align_corners=False)[0]
        probs = probs.float()
        labels = probs.max(0).indices  # first maximum, as argmax; 20x faster over dim 0 on CPU
        u = uncertainty_map(probs, dim=0)[0]
        sizes = bank.sizes() if bank is not None else []
        evicted = [o.evicted_total for o in bank.objects] if bank is not None else []
        stats = compute_stats(probs, labels, u, object_ids, sizes, evicted, self.u_threshold)
        lut = np.asarray(object_ids, dtype=np.uint16 if max(object_ids) > 255 else np.uint8)
        mask = lut[labels.cpu().numpy()]
        return FrameResult(
            index=t, object_ids=list(object_ids), mask=mask,
            probs=probs.cpu().numpy() if self.keep_probs else None,
            uncertainty=u.cpu().numpy() if self.keep_uncertainty else None,
            stats=stats, annotated=annotated,
        )
