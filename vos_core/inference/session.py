"""One video's state and its step: the per-frame loop of AFB-URR.

A step (frame t): memorise frame t-1 with its soft mask into the feature bank (now that t-1 is known
not to be the last frame), query-encode frame t, read the bank, decode, soft-aggregate over objects,
apply frame t's annotation if it brings new objects (or corrections), and return the result. With
``reference_read`` (the default), frame t is also decoded from each object's reference memory (its given
frame, and recent frames that agreed with it: reference.py); how far that mask agrees with the result is a
quality signal (``ref_agreement``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AnnotationError, VOSInputError
from ..model.decoder import full_precision, uncertainty_map
from ..model.network import soft_aggregate
from .preprocess import annotation_at, check_frame, frame_tensor, pad_to_multiple, unpad, working_size
from .reference import ReferenceMemory
from .quality import MaskShape, ObjectTrack, estimate_quality, object_signals
from .stats import FrameStats, compute_stats

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FrameResult:
    index: int  # position of the frame in the video
    object_ids: list[int]  # ids of the probability planes, background (0) first
    mask: np.ndarray  # H×W id map (uint8, or uint16 when an id exceeds 255)
    probs: np.ndarray | None  # K×H×W float32 probabilities, rows follow object_ids
    uncertainty: np.ndarray | None  # H×W float32 U = exp(1 - top1/top2)
    stats: FrameStats
    annotated: bool  # the mask came (at least partly) from a given annotation or correction
    new_objects: list[int] = field(default_factory=list)  # objects this frame's annotation started
    corrected_objects: list[int] = field(default_factory=list)  # objects a correction replaced here


@dataclass
class StepRequest:
    """One stream's next frame, for :func:`step_many`; the fields after ``correction_source`` are filled in."""

    session: "VideoSession"
    frame: object
    annotation: object = None
    index: int | None = None
    correction: object = None
    source: str | None = None
    correction_source: str | None = None
    first: bool = False
    in_hw: tuple | None = None
    work_hw: tuple | None = None
    new_ids: list = field(default_factory=list)
    ann: object = None
    fix: object = None
    fixed_ids: list = field(default_factory=list)
    x: torch.Tensor | None = None
    pad: tuple | None = None


@dataclass
class _Pending:
    """A frame waiting to be memorised (done at the next step: the last frame never is)."""

    x: torch.Tensor  # the padded frame
    probs: torch.Tensor  # K×h×w at working size
    n_banked: int  # objects that already have a memory
    index: int
    reset: list[int]  # rows whose memory restarts from this frame (corrections)
    agreement: dict = field(default_factory=dict)  # row -> agreement with the reference read (predicted rows)


class VideoSession:
    """The state of one video: its memory, its objects, its sizes. Made by ``Segmenter.start()``."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.config = segmenter.config
        self.memory = None  # built at the first memorisation by the segmenter's memory factory
        #: each object's given frame and recent frames that agreed with it (config.reference_read): the
        #: second opinion for quality
        self.reference: ReferenceMemory | None = None
        self.object_ids: list[int] = [0]
        self.in_hw: tuple[int, int] | None = None
        self.work_hw: tuple[int, int] | None = None
        self.last_index: int | None = None
        self.annotation_frames: list[int] = []  # frames whose annotation contributed (new objects)
        self.correction_frames: list[int] = []
        self.tracks: dict[int, ObjectTrack] = {}  # per object: what its quality signals compare against
        self._pending: _Pending | None = None

    @property
    def started(self) -> bool:
        return self.in_hw is not None

    @property
    def objects(self) -> list[int]:
        """Tracked object ids (background excluded)."""
        return self.object_ids[1:]

    # -- the step -------------------------------------------------------------
    def step(self, frame, annotation=None, *, index: int | None = None, correction=None,
             source: str | None = None, correction_source: str | None = None) -> FrameResult:
        """Segments the next frame. ``annotation``: an H×W id map for this frame, whose objects not yet
        tracked start here (objects it holds that are already tracked are ignored: the semi-supervised
        protocol). ``correction``: an H×W id map whose objects replace their prediction at this frame
        and restart their memory from it. ``index``: the frame's index in the video (default: the previous
        one + 1, or 0). ``source``/``correction_source``: names for error messages."""
        request = StepRequest(self, frame, annotation, index, correction, source, correction_source)
        (result,) = step_many([request])
        if isinstance(result, BaseException):
            raise result
        return result

    def _prepare(self, r: "StepRequest") -> None:
        """Checks the request and brings its frame and masks to the working size; changes no state."""
        index = (0 if self.last_index is None else self.last_index + 1) if r.index is None else int(r.index)
        if self.last_index is not None and index <= self.last_index:
            raise VOSInputError(f"frame {index}: frames must come in order (the last one was {self.last_index})")
        frame = check_frame(r.frame, index)
        in_hw, work_hw = self.in_hw, self.work_hw
        if in_hw is None:
            if r.annotation is None:
                raise AnnotationError(f"frame {index}: the first frame of a video needs an annotation")
            in_hw = frame.shape[:2]
            work_hw = working_size(*in_hw, self.segmenter.working_size)
        elif frame.shape[:2] != in_hw:
            raise VOSInputError(f"frame {index}: size {frame.shape[1]}x{frame.shape[0]} differs from the video's "
                                f"{in_hw[1]}x{in_hw[0]}")
        r.index, r.in_hw, r.work_hw, r.first = index, in_hw, work_hw, self.last_index is None
        r.new_ids, r.ann = self._new_objects(r.annotation, in_hw, work_hw, r.source or f"annotation of frame {index}",
                                             r.first)
        r.fix, r.fixed_ids = self._correction(r.correction, in_hw, work_hw,
                                              r.correction_source or f"correction of frame {index}")
        seg = self.segmenter
        r.x, r.pad = pad_to_multiple(frame_tensor(frame, work_hw, seg.device, seg.dtype, self.config.channels_last))

    def _finish(self, r: "StepRequest", fg: torch.Tensor | None, roughs: tuple | None = None) -> FrameResult:
        """From the decoded per-object probabilities (None for the first frame), and the rough masks of the
        bank's read and of the reference memory's read (None without the reference read), to the result."""
        seg = self.segmenter
        self.in_hw, self.work_hw = r.in_hw, r.work_hw
        n_banked = len(self.object_ids)
        agreement = {}
        if fg is None:
            probs = torch.zeros(0, *self.work_hw, device=seg.device, dtype=seg.dtype)
        else:
            probs = soft_aggregate(unpad(fg, r.pad).float())
            if roughs is not None:
                full = [unpad(F.interpolate(x[None].float(), scale_factor=2, mode="nearest")[0], r.pad) for x in roughs]
                agreement = dict(zip(self.object_ids[1:], mask_agreement(*full)))
        if r.new_ids:
            self.object_ids = self.object_ids + r.new_ids
            probs = apply_masks(probs, r.ann, self.object_ids, r.new_ids)
            self.annotation_frames.append(r.index)
        if r.fixed_ids:
            probs = apply_masks(probs, r.fix, self.object_ids, r.fixed_ids)
            self.correction_frames.append(r.index)
        reset = [self.object_ids.index(i) for i in r.fixed_ids if self.object_ids.index(i) < n_banked]
        agreed = {self.object_ids.index(o): a for o, a in agreement.items() if o not in r.fixed_ids}
        self._pending = _Pending(r.x, probs, n_banked if not r.first else 0, r.index, reset, agreed)
        self.last_index = r.index
        return self._result(r.index, probs, annotated=bool(r.new_ids or r.fixed_ids), new_objects=r.new_ids,
                            corrected=r.fixed_ids, agreement=agreement)

    # -- annotations ----------------------------------------------------------
    def _new_objects(self, annotation, in_hw, work_hw, source: str, first: bool):
        if annotation is None:
            return [], None
        ann = annotation_at(annotation, in_hw, work_hw, source, self.config.resize_annotations)
        given = [int(i) for i in np.unique(ann) if i != 0]
        new_ids = [i for i in given if i not in self.object_ids]
        if first and not new_ids:
            raise AnnotationError(f"{source}: the first annotation is empty (no object ids, only background)")
        if new_ids and len(new_ids) < len(given):  # tracked objects in this mask are ignored (the protocol)
            ann = np.where(np.isin(ann, new_ids), ann, 0)
        return new_ids, ann

    def _correction(self, correction, in_hw, work_hw, source: str):
        if correction is None:
            return None, []
        if not self.started:
            raise AnnotationError(f"{source}: a correction needs a tracked video (start it with an annotation)")
        fix = annotation_at(correction, in_hw, work_hw, source, self.config.resize_annotations)
        ids = [int(i) for i in np.unique(fix) if i != 0]
        unknown = [i for i in ids if i not in self.object_ids]
        if unknown:
            raise AnnotationError(f"{source}: corrects object(s) {unknown} that are not tracked "
                                  f"(tracked: {self.objects}); a new object needs an annotation")
        return fix, ids

    # -- memory ---------------------------------------------------------------
    def _absorb(self, p: _Pending, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Adds the memorised frame's keys/values (K×C×N) to the memory."""
        seg = self.segmenter
        keys, values = keys.float(), values.float()  # the memory is kept in fp32 whatever the precision
        if self.memory is None:
            cfg = seg.model.config
            self.memory = seg.memory_factory(cfg.keydim, cfg.valdim, self.config, seg.device)
        if p.reset:
            self.memory.reset(p.reset)
        if p.n_banked:
            self.memory.update(keys[: p.n_banked], values[: p.n_banked], p.index, objects=list(range(p.n_banked)))
        if keys.shape[0] > p.n_banked:
            self.memory.add_objects(keys[p.n_banked:], values[p.n_banked:], p.index)
        if self.config.reference_read:
            self._remember_reference(p, keys, values)

    def _remember_reference(self, p: _Pending, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The reference memory takes the frames where masks were given (new objects' first frames, and
        corrections, which replace what it held for those objects), and the frames whose masks agreed with
        its own read (ReferenceMemory.admit)."""
        if self.reference is None:
            mc, cfg = self.segmenter.model.config, self.config
            self.reference = ReferenceMemory(mc.keydim, mc.valdim, self.segmenter.device, cfg.reference_frames,
                                             cfg.reference_trust, cfg.reference_every)
        if p.reset:
            self.reference.give(p.reset, keys[p.reset], values[p.reset], p.index)
        if keys.shape[0] > p.n_banked:
            self.reference.add_objects(keys[p.n_banked:], values[p.n_banked:], p.index)
        self.reference.admit(p.agreement, keys, values, p.index)

    # -- output ---------------------------------------------------------------
    def _result(self, t: int, probs: torch.Tensor, annotated: bool, new_objects, corrected,
                agreement: dict | None = None) -> FrameResult:
        cfg = self.config
        if self.work_hw != self.in_hw:
            probs = F.interpolate(probs.unsqueeze(0).float(), size=self.in_hw, mode="bilinear", align_corners=False)[0]
        probs = probs.float()
        labels = probs.max(0).indices  # first maximum, as argmax; 20x faster over dim 0 on CPU
        u = uncertainty_map(probs, dim=0)[0]
        mem = self.memory
        stats = compute_stats(probs, labels, u, self.object_ids, mem.sizes() if mem is not None else [],
                              mem.evicted() if mem is not None else [], cfg.u_threshold)
        ids = self.object_ids
        lut = np.asarray(ids, dtype=np.uint16 if max(ids) > 255 else np.uint8)
        mask = lut[labels.cpu().numpy()]
        self._assess(t, mask, stats, given=set(new_objects) | set(corrected), agreement=agreement or {})
        return FrameResult(
            index=t, object_ids=list(ids), mask=mask,
            # a copy: at input size ``probs`` is the very tensor memorised at the next step
            probs=probs.cpu().numpy().copy() if cfg.keep_probs else None,
            uncertainty=u.cpu().numpy() if cfg.keep_uncertainty else None,
            stats=stats, annotated=annotated, new_objects=list(new_objects), corrected_objects=list(corrected),
        )


    def _assess(self, t: int, mask: np.ndarray, stats: FrameStats, given: set[int], agreement: dict) -> None:
        """Fills each object's components, quality signals and quality estimate; updates its track
        (an object whose mask was given at this frame takes it as its new reference). ``agreement``:
        object id -> IoU with the reference read's mask (empty without it)."""
        estimate = self.segmenter.quality
        for o in stats.objects[1:]:
            shape = MaskShape(o.area, o.bbox, tuple(o.centroid) if o.centroid else None)
            n, largest = _components(mask == o.object_id) if o.area else (0, 0)
            o.components = n
            track = self.tracks.get(o.object_id)
            if track is None or o.object_id in given:
                track = self.tracks[o.object_id] = ObjectTrack(shape, t)
            o.signals = object_signals(o, shape, track, n, largest, t, agreement.get(o.object_id))
            o.quality = 1.0 if o.object_id in given else estimate_quality(estimate, o.signals)
            track.previous = shape


def mask_agreement(probs: torch.Tensor, other: torch.Tensor) -> list[float]:
    """Per object (rows 1.., background excluded) the IoU of the label maps of two K×h×w probability maps;
    1 where both leave the object out. At working size: a ratio of areas, so the resolution hardly matters."""
    k = probs.shape[0]
    ids = torch.arange(k, device=probs.device).view(k, 1, 1)
    a, b = probs.max(0).indices == ids, other.max(0).indices == ids
    inter = (a & b).flatten(1).sum(1)
    union = (a | b).flatten(1).sum(1)
    iou = torch.where(union > 0, inter.double() / union.clamp(min=1), torch.ones_like(union, dtype=torch.double))
    return iou[1:].cpu().tolist()


def _components(binary: np.ndarray) -> tuple[int, int]:
    """(number of 8-connected components, area of the largest) of a non-empty boolean mask."""
    n, _, cc_stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    return n - 1, int(cc_stats[1:, cv2.CC_STAT_AREA].max())


def apply_masks(probs: torch.Tensor, ann: np.ndarray, object_ids: list[int], given: list[int]) -> torch.Tensor:
    """Pixels labelled in ``ann`` with an id in ``given`` become one-hot for that id; each listed object
    lives exactly where ``ann`` puts it (it loses the pixels ``ann`` does not give it); elsewhere the
    prediction of the other objects stands. Objects without a plane yet get zero planes first."""
    k_old, k = probs.shape[0], len(object_ids)
    if k > k_old:
        probs = torch.cat([probs, probs.new_zeros(k - k_old, *probs.shape[1:])])
    if k_old == 0:
        probs[0] = 1.0
    a = torch.from_numpy(ann).to(probs.device)
    idx = {oid: i for i, oid in enumerate(object_ids)}
    labelled = torch.zeros_like(a, dtype=torch.bool)
    for oid in given:
        labelled |= a == oid
    for oid in given:
        probs[idx[oid]] = 0.0
    probs[:, labelled] = 0.0
    for oid in given:
        probs[idx[oid]][a == oid] = 1.0
    # Unlabelled pixels: renormalise what is left (background absorbs a vacated object).
    total = probs.sum(0, keepdim=True)
    probs[0] += (1 - total[0]).clamp(min=0)
    return probs / probs.sum(0, keepdim=True)


def _groups(items, key):
    out: dict = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out.values()


def step_many(requests: list[StepRequest]) -> list:
    """Steps several streams (sessions of one Segmenter) by one frame each, with the network run on a batch
    of frames: the memory encoder over the previous frames of every stream, the query encoder over the new
    frames, the decoder over their reads. Each stream keeps its own memory and its own frame count. Frames of
    one shape (and, for the memory encoder and the decoder, with the same number of objects) go in one batch;
    each stream's result is what its own ``step`` gives, up to float rounding of batched kernels.

    Returns one entry per request: its FrameResult, or the exception that request raised (a bad frame or
    annotation fails its own stream only)."""
    if not requests:
        return []
    seg = requests[0].session.segmenter
    if any(r.session.segmenter is not seg for r in requests):
        raise ValueError("step_many: every session must come from the same Segmenter")
    if len({id(r.session) for r in requests}) != len(requests):
        raise ValueError("step_many: one request per session")
    out: list = [None] * len(requests)
    amp = _AUTOCAST[seg.config.precision]
    autocast = torch.autocast(seg.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    model = seg.model
    with torch.inference_mode(), autocast:
        live = []
        for i, r in enumerate(requests):
            try:
                r.session._prepare(r)
                live.append((i, r))
            except Exception as e:  # this stream's own bad input
                out[i] = e
        # 1. memorise each stream's previous frame (now that it was not the last)
        pending = [r for _, r in live if r.session._pending is not None]
        for group in _groups(pending, lambda r: (tuple(r.session._pending.x.shape), r.session._pending.probs.shape[0])):
            ps = [r.session._pending for r in group]
            masks = torch.stack([pad_to_multiple(p.probs)[0] for p in ps])
            keys, values = model.encode_memory(torch.cat([p.x for p in ps]), masks)
            with full_precision(keys):  # the merge search's similarities in float32 (see below)
                for j, r in enumerate(group):
                    r.session._absorb(ps[j], keys[j], values[j])
                    r.session._pending = None
        # 2. query-encode the new frames, read each stream's memory, decode
        fgs: dict[int, torch.Tensor] = {}
        roughs: dict[int, tuple] = {}  # the rough masks of the bank's read and of the reference read
        queried = [(i, r) for i, r in live if not r.first]
        for group in _groups(queried, lambda ir: tuple(ir[1].x.shape)):
            q = model.encode_query(torch.cat([r.x for _, r in group]))
            # The bank's products stay float32 under autocast: its similarities are logits of a softmax over
            # thousands of entries (bf16's 3 digits would move every weight by ~10%), and the merge search
            # compares cosines against 0.95.
            with full_precision(q.key):
                reads = [r.session.memory.read(q.key[j].float()) for j, (_, r) in enumerate(group)]
                # the second opinion: each object's reference memory (its given frame, recent agreeing ones)
                refs = [r.session.reference.read(q.key[j].float())
                        if r.session.reference is not None else None for j, (_, r) in enumerate(group)]
            rows = list(range(len(group)))
            for sub in _groups(rows, lambda j: (reads[j].shape[0], refs[j] is not None)):
                qs = q.take(sub)
                if refs[sub[0]] is None:
                    fg = model.decode(torch.stack([reads[j] for j in sub]), qs)
                else:  # the rough masks of both reads: like against like, and the refinement is 3/4 of the cost
                    fg, rough = model.decode(torch.stack([reads[j] for j in sub]), qs, with_rough=True)
                    rough_ref = model.decode_rough(torch.stack([refs[j] for j in sub]), qs)
                for n, j in enumerate(sub):
                    fgs[group[j][0]] = fg[n]
                    if refs[sub[0]] is not None:
                        roughs[group[j][0]] = (rough[n], rough_ref[n])
        # 3. annotations, the result, and this frame becomes the stream's pending memory
        for i, r in live:
            out[i] = r.session._finish(r, fgs.get(i), roughs.get(i))
    return out
