"""Several videos, each driven by its own thread, stepped together on one model: dynamic batching.

    batcher = StreamBatcher(segmenter)              # one per process (per GPU actor)
    # in each of several threads, one video each:
    for result in batcher.run(frames, annotations):
        ...

Each thread's ``run`` behaves like ``Segmenter.run`` (same results up to the rounding of batched kernels),
but the network runs once per round on the frames of every stream that has one ready (``step_many``): with
B streams a GPU sees batches of B frames instead of B separate small launches. A stream that ends simply
leaves; one that starts joins the next round, so a long video never holds up the others and a new video
does not wait for the rest to finish. The rounds run on the calling threads themselves (whichever thread
finds the round closed runs it), so there is no extra thread to manage or leak.
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator, Mapping

from ..errors import AnnotationError
from .session import StepRequest, step_many


class StreamBatcher:
    def __init__(self, segmenter, max_wait_s: float = 0.005):
        """``max_wait_s``: how long a round waits for the streams that have not handed in a frame yet
        (one still reading or encoding) before it runs without them."""
        self.segmenter = segmenter
        self.max_wait_s = max_wait_s
        self._cv = threading.Condition()
        self._active = 0  # streams inside run()
        self._waiting: list[tuple[StepRequest, dict]] = []  # requests of the round being gathered
        self._running = False
        self.rounds = 0
        self.batched_frames = 0

    @property
    def quality_calibrated(self) -> bool:
        return self.segmenter.quality_calibrated

    def start(self):
        """A new video's session (as ``Segmenter.start``), to pass to :meth:`run`."""
        return self.segmenter.start()

    def run(self, frames: Iterable, annotations: Mapping, corrections: Mapping | None = None,
            session=None) -> Iterator:
        """One video, as ``Segmenter.run`` (the semi-supervised protocol, corrections; ``session``: a fresh
        one from :meth:`start` to run in), through the batcher."""
        if not annotations:
            raise AnnotationError("no annotation given: at least the first frame's mask is needed")
        corrections = corrections or {}
        first = min(annotations.keys())
        describe = getattr(annotations, "source", None)
        describe_c = getattr(corrections, "source", None)
        session = session or self.segmenter.start()
        with self._cv:
            self._active += 1
        try:
            for t, frame in enumerate(frames):
                if t < first:
                    continue
                ann = annotations[t] if t in annotations else None
                fix = corrections[t] if t in corrections else None
                req = StepRequest(session, frame, ann, t, fix,
                                  describe(t) if (describe and ann is not None) else None,
                                  describe_c(t) if (describe_c and fix is not None) else None)
                result = self._step(req)
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            with self._cv:
                self._active -= 1
                self._cv.notify_all()

    def _step(self, req: StepRequest):
        slot: dict = {}
        with self._cv:
            self._waiting.append((req, slot))
            self._cv.notify_all()
            deadline = None
            while "result" not in slot:
                if self._running or not self._waiting:  # a round is on (maybe with our frame): wait for it
                    self._cv.wait(self.max_wait_s)
                    continue
                now = time.monotonic()
                if len(self._waiting) >= self._active or (deadline is not None and now >= deadline):
                    self._run_round()  # every stream has a frame in, or the stragglers took too long
                    continue
                if deadline is None:
                    deadline = now + self.max_wait_s
                self._cv.wait(deadline - now)
            return slot["result"]

    def _run_round(self) -> None:
        """Called with the lock held; runs the gathered requests without it."""
        batch, self._waiting = self._waiting, []
        self._running = True
        self._cv.release()
        try:
            try:
                results = step_many([r for r, _ in batch])
            except BaseException as e:  # the whole round failed (e.g. out of memory): every stream in it fails
                results = [e] * len(batch)
        finally:
            self._cv.acquire()
            self._running = False
        for (_, slot), r in zip(batch, results):
            slot["result"] = r
        self.rounds += 1
        self.batched_frames += len(batch)
        self._cv.notify_all()
