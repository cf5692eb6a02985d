"""Ends what the job's local Ray left behind when its driver dies, however it dies.

Ray ties the GCS and the raylet it starts for ``ray.init()`` to the driver (the kernel kills them
with it), but the raylet's agents (dashboard agent, runtime-env agent) noticed the raylet gone
and then waited about a minute on the dead GCS before exiting: after ``kill -9`` of a driver,
two agent processes stayed behind (Ray 2.60). So the driver starts this small process (``start()``,
stdlib only, Linux ``/proc``) and tells it the pids of the processes ``ray.init()`` started
(``watch_ray()``); twice a second it notes those and all their descendants, and when the driver
goes (its pipe closes, or it is no longer the parent) it sends SIGTERM, then SIGKILL, to those
still running. Nothing else is touched: a process is recognised by pid *and* start time, so a pid
reused by an unrelated process is left alone, and other children of the driver are not Ray's.

    python reaper.py DRIVER_PID      (stdin: a pipe whose other end only the driver holds; one root pid a line)
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 5.0


def _processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, start time)} of every process (/proc/<pid>/stat)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
        out[int(d)] = (int(fields[1]), int(fields[19]))  # fields 4 (ppid) and 22 (starttime) of proc(5)
    return out


def descendants(roots, procs: dict[int, tuple[int, int]]) -> dict[int, int]:
    """{pid: start time} of the ``roots`` still running and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found = {r: procs[r][1] for r in roots if r in procs}
    stack = list(found)
    while stack:
        for pid in children.get(stack.pop(), []):
            if pid not in found:
                found[pid] = procs[pid][1]
                stack.append(pid)
    return found


def _still(tracked: dict[int, int]) -> dict[int, int]:
    procs = _processes()
    return {pid: start for pid, start in tracked.items() if procs.get(pid, (0, None))[1] == start}


def reap(tracked: dict[int, int]) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        left = _still(tracked)
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {p: s for p, s in _still(left).items() if not _zombie(p)}
        if not left:
            return


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")


def watch(driver: int) -> None:
    roots: set[int] = set()
    tracked: dict[int, int] = {}
    pending = b""
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # EOF: the driver closed the pipe (done) or died
            *lines, pending = (pending + chunk).split(b"\n")
            roots |= {int(line) for line in lines if line.strip().isdigit()}
        for pid, start in descendants(roots, _processes()).items():
            tracked.setdefault(pid, start)
        if os.getppid() != driver:
            break  # the driver died and this process was handed to another parent
    tracked.update({p: s for p, s in descendants(roots, _processes()).items() if p not in tracked})
    reap(tracked)


def start() -> subprocess.Popen | None:
    """Starts the reaper of this process (None where there is no /proc); ``watch_ray`` then names
    what to end, ``stop`` ends it after a normal ``ray.shutdown()``."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def watch_ray(proc: subprocess.Popen | None) -> None:
    """Hands the reaper the processes the local Ray of this driver consists of (GCS, raylet,
    dashboard, monitors: their descendants are followed)."""
    if proc is None:
        return
    try:
        import ray

        node = ray._private.worker._global_node  # Ray keeps no public list of the processes it started
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
    except Exception:
        return
    proc.stdin.write("".join(f"{pid}\n" for pid in pids).encode())
    proc.stdin.flush()


def stop(proc: subprocess.Popen | None, timeout: float = 2 * GRACE_S + 5) -> None:
    if proc is None:
        return
    proc.stdin.close()  # EOF: it ends whatever is left, then exits
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
