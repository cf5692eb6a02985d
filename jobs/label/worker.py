"""What runs in a Ray actor: the model, loaded once, and videos in (a few per call), each one's rows
committed on its own, a one-line summary per video out (``VideoLabeler`` is the Ray Data UDF;
``process_video`` does one video).

The actor's constructor gets a ``WorkerConfig`` of plain values only (strings, numbers, the
segmenter settings as a dict): Ray re-runs the constructor with the same arguments when it
restarts a dead actor, so nothing in them may be an object reference or an actor handle (the
live-progress actor is looked up by name instead).
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..layout import Layout
from ..storage import Storage
from . import streams
from .background import InOrderWorker
from .commit import VideoCommit, committed_record
from .manifest import VideoTask
from .rows import VideoSummary

#: Seconds between live frame-count reports from a worker.
REPORT_EVERY_S = 2.0
#: The fields of a video's record that travel back to the driver.
SUMMARY_KEYS = ("video_id", "status", "error", "error_type", "frames", "seconds", "fps", "attempts", "masks_rows",
                "committed")


@dataclass(frozen=True)
class WorkerConfig:
    checkpoint: str
    model_checksum: str
    output: str  # the run's dataset root (Layout.uri)
    shards: int
    run_id: str
    settings: dict  # SegmenterConfig.to_dict(), size resolved: recorded with every video
    endpoint_url: str | None = None
    storage_options: dict = field(default_factory=dict)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    streams_per_actor: int = 1  # videos stepped together through one model (jobs/label/streams.py)
    prefetch: int = 4
    encode_thread: bool = True  # encode results on a thread of their own (False: on the model's thread)
    live_actor: str | None = None  # name of the LiveFrames actor (None: no live progress)
    review_quality: float = 0.5  # frames below this quality are counted for review (videos.frames_below_quality)
    skip_committed: bool = False  # hand back the record of a video this run committed ok instead of redoing it

    def storage(self) -> Storage:
        return Storage(endpoint_url=self.endpoint_url, options=dict(self.storage_options))

    def layout(self) -> Layout:
        return Layout(self.output, self.storage(), shards=self.shards)


class LiveReport:
    """Fire-and-forget frame counts to the driver's LiveFrames actor, at most every REPORT_EVERY_S."""

    def __init__(self, actor_name: str | None):
        self._actor = None
        if actor_name:
            with contextlib.suppress(Exception):  # progress lines are a nicety, never a reason to fail
                import ray
                self._actor = ray.get_actor(actor_name)
        self._last = 0.0
        self._reported = None  # the video last reported: only it has an entry to remove

    def frames(self, video_id: str, frames: int) -> None:
        if self._actor is not None and time.monotonic() - self._last > REPORT_EVERY_S:
            self._last = time.monotonic()
            self._reported = video_id
            self._actor.report.remote(video_id, frames)

    def done(self, video_id: str) -> None:
        # one actor call per reported video, not per video: short clips are mostly never reported
        if self._actor is not None and self._reported == video_id:
            self._reported = None
            with contextlib.suppress(Exception):
                self._actor.done.remote(video_id)


def _segment(task: VideoTask, segmenter, vc: VideoCommit, config: WorkerConfig, live: LiveReport) -> tuple[int, dict]:
    """Segments the video into ``vc``; returns its start frame and the record's quality and protocol
    fields. Raises for a bad video. The annotations (and corrections) go to the segmenter as they are:
    its session applies the semi-supervised protocol; nothing here pastes masks."""
    from vos_core.errors import AnnotationError, VideoReadError
    from vos_core.io import load_annotations, open_frames, prefetch, select_annotations

    if not task.video_uri:
        raise VideoReadError("the manifest row has no video_uri")
    if not task.annotations_uri:
        raise AnnotationError("the manifest row has no annotations_uri")
    storage = config.storage()
    with open_frames(task.video_uri, storage_options=storage.options_for(task.video_uri)) as frames:
        ann = load_annotations(task.annotations_uri, frame_names=frames.names,
                               storage_options=storage.options_for(task.annotations_uri))
        ann, start = select_annotations(ann, task.annotations_uri, task.start_frame)
        fixes = None
        if task.corrections_uri:  # a corrections run: id maps of corrected objects, named like the frames
            fixes = load_annotations(task.corrections_uri, frame_names=frames.names,
                                     storage_options=storage.options_for(task.corrections_uri))
        summary = VideoSummary(config.review_quality, getattr(segmenter, "quality_calibrated", False))
        session = segmenter.start()

        def add(r, name):
            vc.add(r, name)
            summary.add(r)

        # Frames are decoded ahead on one thread and each result is encoded (RLE, PNG, row buffers)
        # on another, so the model's thread only runs the model.
        with InOrderWorker(add, depth=config.prefetch if config.encode_thread else 0, name="vos-encode") as enc:
            for r in segmenter.run(prefetch(frames, depth=config.prefetch), ann, corrections=fixes, session=session):
                enc.submit(r, frames.name(r.index))
                live.frames(task.video_id, vc.frames)
    if not vc.frames:
        raise VideoReadError(f"{task.video_uri}: the video ends before its start frame {start}")
    return start, summary.fields(session)


def process_video(task: VideoTask, segmenter, config: WorkerConfig, layout: Layout | None = None,
                  device: str = "cpu", live: LiveReport | None = None) -> dict:
    """Segments one video and commits its rows. Never raises for a bad video: it gets a ``failed``
    record. Returns the video's record, plus ``committed`` (False: not even the failure record could
    be written)."""
    live = live or LiveReport(None)
    common = {"video_uri": task.video_uri, "annotations_uri": task.annotations_uri, "device": device,
              "model_checksum": config.model_checksum, "checkpoint_uri": config.checkpoint,
              "settings": config.settings}
    vc = VideoCommit(layout or config.layout(), task.video_id, config.run_id)
    start = None
    try:
        vc.begin(video_uri=task.video_uri)
        start, fields = _segment(task, segmenter, vc, config, live)
        return {**vc.commit(start_frame=start, **fields, **common), "committed": True}
    except Exception as e:  # a bad video (or a storage error): record it and go on
        try:
            return {**vc.fail(str(e) or repr(e), type(e).__name__, start_frame=start, **common), "committed": True}
        except Exception as e2:  # the record itself cannot be written: the driver reports it
            return {"video_id": task.video_id, "status": "failed", "committed": False, "frames": 0,
                    "error": f"{type(e).__name__}: {e}; and its failure record could not be written: "
                             f"{type(e2).__name__}: {e2}", "error_type": type(e).__name__}
    finally:
        live.done(task.video_id)


class VideoLabeler:
    """The Ray Data UDF: one instance per actor, holding the model; one call per video."""

    def __init__(self, config: WorkerConfig):
        import torch
        from vos_core import Segmenter, SegmenterConfig, load_model

        self.config = config
        if config.gpus_per_actor > 0:
            if not torch.cuda.is_available():
                raise RuntimeError("--gpus-per-actor > 0 but this worker sees no CUDA device")
            self.device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it gave this actor
        else:
            self.device = "cpu"
            torch.set_num_threads(max(1, int(config.cpus_per_actor)))
        self.layout = config.layout()
        model = load_model(config.checkpoint, device=self.device,
                           storage_options=config.storage().options_for(config.checkpoint))
        self.segmenter = streams.segmenter_for(Segmenter(model, SegmenterConfig.from_dict(config.settings)),
                                               config.streams_per_actor)
        self.live = LiveReport(config.live_actor)

    def _redo_check(self) -> bool:
        """Whether to look for a video's ``ok`` record first: on a second pass, and in an actor Ray restarted
        (its task, retried, may hold videos an earlier try committed before the actor died)."""
        if self.config.skip_committed:
            return True
        with contextlib.suppress(Exception), warnings.catch_warnings():
            import ray
            # Ray 2.60's property reads its own deprecated ``actor_id`` and warns on every call: not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.get_runtime_context().was_current_actor_reconstructed
        return False

    def __call__(self, batch) -> dict:
        """``batch``: a pyarrow table of manifest.TASK_SCHEMA rows (a few videos), done one after another."""
        check = self._redo_check()
        out = []
        for d in batch.to_pylist():
            task = VideoTask.from_dict(d)
            row = committed_record(self.layout, task.video_id, self.config.run_id) if check else None
            if row is not None:
                row = {**row, "committed": True}
            else:
                row = process_video(task, self.segmenter, self.config, self.layout, self.device, self.live)
            out.append(json.dumps({k: row.get(k) for k in SUMMARY_KEYS}, default=str))
        return {"result": np.array(out, dtype=object)}
