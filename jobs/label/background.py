"""Run a per-frame step on a background thread, in order, with a bounded backlog.

The actor's main thread runs the model; encoding each frame's results (COCO RLE,
the U-map PNG, Parquet row buffers) runs here, overlapped with the next frame's
model work. Torch, OpenCV, pycocotools' C loop and pyarrow spend most of their time
outside the GIL, so the two threads really do run side by side. The backlog is
bounded (``depth`` frames), so results cannot pile up in memory when encoding is the
slower side: ``submit`` then waits.
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class InOrderWorker:
    """``submit(*args)`` calls ``fn(*args)`` on one background thread, in submission order.

    The first exception ``fn`` raises comes back from a later ``submit`` or from
    ``close`` (the ``with`` block's end); after it, nothing more is run. On leaving the
    ``with`` block with an exception, queued calls are dropped and the thread is joined,
    so the caller can clean up knowing that ``fn`` is no longer running.
    ``depth=0`` runs each call inline in ``submit`` (no thread): the A/B baseline.
    """

    def __init__(self, fn: Callable, depth: int = 4, name: str = "in-order-worker"):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._fn = fn
        self._inline = depth == 0
        self._slots = threading.BoundedSemaphore(max(depth, 1))
        self._pool = None if self._inline else ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: collections.deque[Future] = collections.deque()
        self._failed = threading.Event()

    def _run(self, args: tuple):
        try:
            if self._failed.is_set():  # an earlier call failed: do not go on past it
                return None
            return self._fn(*args)
        except BaseException:
            self._failed.set()
            raise
        finally:
            self._slots.release()

    def _collect(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0].done()):
            self._pending.popleft().result()  # re-raises the call's exception here

    def submit(self, *args) -> None:
        if self._inline:
            self._fn(*args)
            return
        self._collect(wait=False)
        self._slots.acquire()
        self._pending.append(self._pool.submit(self._run, args))

    def close(self) -> None:
        """Waits for every submitted call; raises the first error."""
        if self._inline:
            return
        try:
            self._collect(wait=True)
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Drops queued calls and waits for the running one to end; raises nothing."""
        self._failed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def __enter__(self) -> "InOrderWorker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
