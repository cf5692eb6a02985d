"""Decode ahead in a background thread so that reading frames overlaps with the model.

    for frame in prefetch(open_frames(uri), depth=4):
        ...

JPEG/H.264 decoding and file reads release the GIL, so one thread is enough
to hide most of the input time behind the network's forward pass.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Done:
    """Queue marker: the iterable is exhausted (error=None) or raised ``error``."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def _produce(iterable: Iterable, out: queue.Queue, stop: threading.Event) -> None:
    it = None
    try:
        it = iter(iterable)
        for item in it:
            while not stop.is_set():
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_Done())
    except BaseException as e:  # handed to the consumer, raised there after the items before it
        out.put(_Done(e))
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # a generator's cleanup (file handles, captures) runs in its own thread
            close()


def prefetch(iterable: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Yields the items of ``iterable`` in order while a background thread
    produces up to ``depth`` items ahead (so at most depth + 2 items are alive).

    An exception raised by the iterable is re-raised here after the items that
    came before it. When the consumer stops early (break, close, garbage
    collection) the thread is told to stop and joined before this returns."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(iterable, out, stop), name="vos-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue; the items are dropped.
        while worker.is_alive():
            try:
                out.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        worker.join()
