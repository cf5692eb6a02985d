"""One driver at a time per output: the run's lease, ``<output>/_lease.json``.

Two drivers on the same output (the same run, e.g. a job started twice, or a rerun while the
first still runs) would process the same videos side by side: the first to finish cleared the
temporary files the other was writing, whose failure handling then deleted the files the first
had committed. So a driver takes the lease before it writes anything of the run and holds it to
the end; another driver is refused (exit 2, naming the holder) while it is held.

* Local filesystems (also NFS): an exclusive ``flock`` on ``_lease.json``, whose content names the
  holder. The kernel drops the lock when the holder's process ends, however it ends, so the rerun
  of a killed driver takes it at once. The file stays; only the lock matters.
* S3: the lease is the object itself. It is created by a conditional PUT (``If-None-Match: *``:
  of two drivers starting at once exactly one succeeds) and rewritten every ``HEARTBEAT_S`` by
  the holder, each PUT conditional on the ETag of its own last write (``If-Match``), so a holder
  whose lease was taken over finds out (``lost``) and stops. A lease is stale when its heartbeat
  is older than ``STALE_S``, or at once when its holder ran on this machine (same boot) and its
  process is gone; it is then taken over by a PUT conditional on the stale lease's ETag, which
  again only one of several drivers wins. Released by deleting it.
* Other fsspec stores: the same, with the create-only PUT where the filesystem supports it
  (fsspec ``mode="create"``), and without ETag conditions: best effort.

``scope()`` / ``claim(layout)``: the driver runs inside a scope; ``claim`` takes the lease and the
scope releases it at its end. ``claim`` outside a scope (``driver.plan`` called alone) only checks
that no other driver holds the lease.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import os
import socket
import sys
import threading
import uuid

from .. import storage as st
from ..layout import LEASE_FILE, Layout
from .run_record import OutputError, check_output_location

#: Seconds between the holder's heartbeats (object stores).
HEARTBEAT_S = 10.0
#: A lease whose heartbeat is older than this is stale (object stores): several missed heartbeats.
STALE_S = 60.0


class LeaseHeld(OutputError):
    """Another driver is writing this run now."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (its heartbeats stopped for longer than STALE_S)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    return None


def _holder_info() -> dict:
    started = _now().isoformat()
    return {"lease_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:500], "started_at": started,
            "heartbeat_at": started}


def _pid_gone(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False
    return False


def stale_reason(holder: dict, stale_s: float | None = None) -> str | None:
    """Why ``holder``'s lease may be taken over, or None while it looks alive."""
    stale_s = STALE_S if stale_s is None else stale_s
    if holder.get("host") == socket.gethostname() and holder.get("boot_id") and holder.get("boot_id") == _boot_id() \
            and _pid_gone(holder.get("pid")):
        return f"its driver (pid {holder.get('pid')} on this machine) is gone"
    try:
        beat = dt.datetime.fromisoformat(str(holder.get("heartbeat_at")))
    except ValueError:
        return "it names no heartbeat time"
    age = (_now() - beat).total_seconds()
    if age > stale_s:
        return f"no heartbeat for {age:.0f} s (> {stale_s:.0f} s)"
    return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "another driver"
    return (f"another driver ({holder.get('host')}:{holder.get('pid')}, since {holder.get('started_at')}: "
            f"{holder.get('command') or '?'})")


def _held_message(layout: Layout, holder: dict | None, extra: str = "", name: str = LEASE_FILE) -> str:
    return (f"{layout.url()} is being written by {describe(holder)}; it holds the run's lease "
            f"{layout.url(name)}{extra}. Wait for it to finish or stop it, then rerun (committed videos are "
            f"kept); two drivers on one output would overwrite each other's results")


class Lease:
    """A held lease; ``release()`` gives it back, ``lost`` says why it was lost (None: still held)."""

    lost: str | None = None

    def release(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raises LeaseLost when another driver took the lease over."""
        if self.lost:
            raise LeaseLost(self.lost)


class LocalLease(Lease):
    def __init__(self, layout: Layout, name: str = LEASE_FILE):
        import fcntl

        self.layout, self.name = layout, name
        path = layout.path(name)
        st.makedirs(layout.fs, layout.root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = None
            with contextlib.suppress(Exception):
                holder = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
            os.close(fd)
            raise LeaseHeld(_held_message(layout, holder, name=name)) from None
        except OSError as e:
            os.close(fd)
            raise OutputError(f"{layout.url(name)}: cannot lock the run's lease ({e}); the output's file "
                              f"system must support flock") from None
        self._fd = fd
        data = json.dumps(_holder_info(), indent=1).encode()
        with contextlib.suppress(OSError):  # the content only names the holder: the lock is the lease
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def _conflict(e: BaseException) -> bool:
    """A failed condition (If-None-Match / If-Match): another driver wrote the lease first."""
    text = str(e).lower()
    return isinstance(e, FileExistsError) or "precondition" in text or "pre-condition" in text \
        or "conditionalrequestconflict" in text


class ObjectLease(Lease):
    def __init__(self, layout: Layout, name: str = LEASE_FILE):
        self.layout, self.name = layout, name
        self.fs, self.path = layout.fs, layout.path(name)
        self.s3 = _is_s3(self.fs)
        self.info = _holder_info()
        self.etag = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._acquire()
        self._thread = threading.Thread(target=self._beat, name="vos-lease", daemon=True)
        self._thread.start()

    # -- storage operations -------------------------------------------------------------------
    def _bucket_key(self):
        bucket, _, key = self.path.partition("/")
        return bucket, key

    def _etag(self) -> str | None:
        if self.s3:
            bucket, key = self._bucket_key()
            try:
                return self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            except FileNotFoundError:
                return None
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            return None
        return str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("size"))

    def _read(self) -> tuple[dict | None, str | None]:
        """(content, ETag) of the lease as one version (None, None when there is none)."""
        for _ in range(5):
            before = self._etag()
            if before is None:
                return None, None
            try:
                self.fs.invalidate_cache(self.path)
                content = json.loads(self.fs.cat_file(self.path))
            except FileNotFoundError:
                continue
            except ValueError:
                content = {}
            if self._etag() == before:  # not rewritten while it was read
                return content, before
        raise OutputError(f"{self.layout.url(self.name)}: the lease keeps changing while it is read")

    def _put(self, *, create: bool = False, if_match: str | None = None) -> None:
        data = json.dumps(self.info, indent=1).encode()
        kwargs = {}
        if create:
            kwargs["mode"] = "create"
        if if_match and self.s3:
            kwargs["IfMatch"] = if_match
        try:
            out = self.fs.pipe_file(self.path, data, **kwargs)
        except NotImplementedError:  # a store without create-only writes: best effort
            if not create:
                raise
            out = self.fs.pipe_file(self.path, data)
        etag = out.get("ETag") if isinstance(out, dict) else None
        self.etag = etag or self._etag()

    # -- the protocol ---------------------------------------------------------------------------
    def _acquire(self) -> None:
        for _ in range(3):
            try:
                self._put(create=True)
                return
            except Exception as e:
                if not _conflict(e):
                    raise OutputError(f"{self.layout.url(self.name)}: cannot write the run's lease "
                                      f"({type(e).__name__}: {e})") from None
            holder, etag = self._read()
            if holder is None:  # released in between: try to create it again
                continue
            why = stale_reason(holder)
            if why is None:
                raise LeaseHeld(_held_message(self.layout, holder, f" (last heartbeat {holder.get('heartbeat_at')})",
                                              self.name))
            try:
                self._put(if_match=etag)  # one taker wins: the others' condition fails
            except Exception as e:
                if _conflict(e):
                    continue
                raise OutputError(f"{self.layout.url(self.name)}: cannot take over the run's lease "
                                  f"({type(e).__name__}: {e})") from None
            print(f"took over the run's lease from {describe(holder)}: {why}", flush=True)
            return
        holder, _ = self._read()
        raise LeaseHeld(_held_message(self.layout, holder, name=self.name))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                if self._stop.is_set():
                    return
                self.info["heartbeat_at"] = _now().isoformat()
                try:
                    self._put(if_match=self.etag)
                except Exception as e:
                    if _conflict(e):
                        holder, _ = self._read()
                        self.lost = (f"{self.layout.url()}: this driver's lease was taken over by {describe(holder)} "
                                     f"(its heartbeats had stopped for more than {STALE_S:.0f} s); stopped so as not "
                                     f"to write the run side by side with it")
                        return
                    # a transient error: the next heartbeat tries again (the lease goes stale after STALE_S)

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self.lost:
                return
            with contextlib.suppress(Exception):
                if self._etag() == self.etag:  # still ours: nobody takes over a fresh lease
                    self.fs.rm_file(self.path)


def acquire(layout: Layout, name: str = LEASE_FILE) -> Lease:
    """Takes the lease of the run at ``layout`` (LeaseHeld while another driver holds it); checks
    first that the output can be used at all. ``name``: another lease file of the output (the one
    ``vos compact`` holds, jobs/label/compact.py)."""
    check_output_location(layout)
    return LocalLease(layout, name) if st.is_local(layout.fs) else ObjectLease(layout, name)


_held: contextvars.ContextVar[list | None] = contextvars.ContextVar("vos_leases", default=None)


@contextlib.contextmanager
def scope():
    """Leases claimed within the block are held until it ends (the driver's whole run)."""
    token = _held.set([])
    try:
        yield
    finally:
        leases = _held.get()
        _held.reset(token)
        for lease in reversed(leases):
            lease.release()


def claim(layout: Layout) -> Lease | None:
    """Takes the lease for the current scope; outside one, only checks that it is free."""
    lease = acquire(layout)
    held = _held.get()
    if held is None:
        lease.release()
        return None
    held.append(lease)
    return lease


def current() -> Lease | None:
    """The lease the current scope holds, if any."""
    held = _held.get()
    return held[-1] if held else None

