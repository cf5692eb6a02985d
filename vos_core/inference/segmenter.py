"""Streaming semi-supervised VOS with AFB-URR: frames in, one result per frame out.

    seg = Segmenter(model, SegmenterConfig(budget=300_000))
    for r in seg.run(frames, {0: first_mask}):            # the whole video
        r.mask, r.probs, r.uncertainty, r.stats

    session = seg.start()                                  # or one frame at a time
    r0 = session.step(frame0, annotation=first_mask)
    r1 = session.step(frame1)

Frames are pulled one at a time and each result is returned before the next frame is read, so neither
host nor device memory grows with video length (the feature bank is bounded by ``config.budget``).
The :class:`Segmenter` holds the model and the configuration; a :class:`VideoSession` holds one video's
state (its memory, its objects), so one Segmenter serves any number of videos, one after another or
side by side.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator, Mapping

import torch

from ..errors import AnnotationError
from ..model.fuse import fold_batchnorm
from ..model.network import AFBURR
from .config import SegmenterConfig
from .feature_bank import FeatureBank
from .quality import fallback_quality
from .session import FrameResult, VideoSession

#: (keydim, valdim, config, device) -> a memory with the FeatureBank interface
MemoryFactory = Callable[..., object]

__all__ = ["Segmenter", "VideoSession", "FrameResult", "MemoryFactory"]


class Segmenter:
    """Runs AFB-URR over videos. Holds the (prepared) model and the configuration, no per-video state."""

    def __init__(self, model: AFBURR, config: SegmenterConfig | None = None, *,
                 memory: MemoryFactory = FeatureBank.from_config, **settings):
        """``config``: the settings (default SegmenterConfig()); keyword ``settings`` override its fields
        (``Segmenter(model, size=240)``). ``memory``: builds each video's memory, by default the adaptive
        feature bank; anything with its interface (``add_objects``, ``update``, ``read``, ``reset``,
        ``sizes``, ``evicted``) will do, e.g. an STM-style every-k-frames memory in the benchmarks.

        With ``fold_bn`` the model runs as a copy with batch norm folded into the convolutions (same
        function, float rounding aside; the model passed in is left as it is; skipped for a model in
        training mode). Under bf16/fp16 autocast only the network's convolutions run in the low precision: the
        bank (stored in fp32), its products (the read and the merge search), the decoder's heads and the
        URR arithmetic stay fp32, where the low precision cost accuracy (BENCHMARKS.md, "bf16 on the CPU")."""
        config = (config or SegmenterConfig()).replace(**settings) if settings else (config or SegmenterConfig())
        self.config = config
        self.working_size = config.working_size_for(model)
        self.source_model = model
        if config.fold_bn and not model.training:
            model = fold_batchnorm(model)
        if config.compile != "off" and model is self.source_model:
            model = copy.deepcopy(model)  # compiling replaces submodules: never on the caller's model
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.compile != "off":
            for name in ("encoder_m", "encoder_q", "keyval_r4", "decoder"):
                setattr(model, name, torch.compile(getattr(model, name), mode=config.compile, dynamic=False))
        self.model = model
        self.memory_factory = memory
        #: signals -> predicted J: the checkpoint's fitted estimator, else the uncalibrated rule
        fitted = getattr(self.source_model, "quality_model", None)
        self.quality = fitted or fallback_quality
        self.quality_calibrated = fitted is not None

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def start(self) -> VideoSession:
        """A new video: an empty memory, no objects yet. Its first step needs an annotation."""
        return VideoSession(self)

    def run(self, frames: Iterable, annotations: Mapping, corrections: Mapping | None = None,
            session: VideoSession | None = None) -> Iterator[FrameResult]:
        """Segments a video. ``frames``: iterable of H×W×3 uint8 RGB; ``annotations``: {frame index: H×W id
        map}, 0 = background. The first annotated frame starts tracking (earlier frames are skipped).

        The semi-supervised protocol of DAVIS and YouTube-VOS: a later annotation contributes only the
        objects that first appear in it; its masks of objects already tracked are ignored (so a folder holding
        every frame's ground truth gives exactly what the first frame's mask alone gives). ``corrections``:
        {frame index: id map} of corrected masks, which do replace the objects they contain at that frame
        (their memory restarts from the correction). ``session``: a fresh session from :meth:`start` to
        run in (to inspect its memory afterwards); by default a new one."""
        if not annotations:
            raise AnnotationError("no annotation given: at least the first frame's mask is needed")
        corrections = corrections or {}
        first = min(annotations.keys())
        describe = getattr(annotations, "source", None)
        describe_c = getattr(corrections, "source", None)
        session = session or self.start()
        for t, frame in enumerate(frames):
            if t < first:
                continue
            ann = annotations[t] if t in annotations else None
            fix = corrections[t] if t in corrections else None
            yield session.step(frame, ann, index=t, correction=fix,
                               source=describe(t) if (describe and ann is not None) else None,
                               correction_source=describe_c(t) if (describe_c and fix is not None) else None)
