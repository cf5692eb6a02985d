"""Drops one known-harmless Ray line from this process's stderr while the actor pool runs.

Ray Data passes its own ``DataContext`` and ``MapTransformer`` to every pool actor as object
references (``ray.put``), and Ray core logs, once per process and at error level, that an
actor with ``max_restarts > 0`` has "constructor arguments in the object store" which, if lost,
would make a restart fail (ray-project/ray#53727; that Ray Data trips it with any UDF is
ray-project/ray#57733). Both references are owned by this driver and held by the running
dataset until it finishes, so they cannot go out of scope while an actor may restart, and the
killed-actor test (tests/test_failures.py) shows the restart working. The line is C++ output on
file descriptor 2, hence a filter on the descriptor: every other byte is passed through.
"""
from __future__ import annotations

import contextlib
import os
import select
import sys
import threading

#: Part of the line Ray core logs (core_worker.cc) for Ray Data's pool actors.
HARMLESS = (b"has constructor arguments in the object store and max_restarts > 0",)
_FLUSH_PARTIAL_S = 0.05  # a line without its newline yet is passed on after this long


def _pump(read_fd: int, write_fd: int, drop: tuple[bytes, ...]) -> None:
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], _FLUSH_PARTIAL_S)
        if not ready:  # idle: pass on a partial line (a prompt, a progress bar) as it is
            if pending:
                os.write(write_fd, pending)
                pending = b""
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        kept = [line + b"\n" for line in lines if not any(d in line for d in drop)]
        if kept:
            os.write(write_fd, b"".join(kept))
    if pending and not any(d in pending for d in drop):
        os.write(write_fd, pending)


@contextlib.contextmanager
def without_lines(drop: tuple[bytes, ...] = HARMLESS, fd: int = 2):
    """Within the block, lines written to ``fd`` that contain one of ``drop`` are dropped."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    original = os.dup(fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, fd)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, original, drop), name="vos-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(original, fd)  # closes the pipe's last write end: the pump drains it and ends
        pump.join(timeout=5)
        os.close(read_fd)
        os.close(original)
