"""Progress of a run as the driver sees it: a line per finished video, a heartbeat
while long videos run (frames counted live by a small Ray actor the workers report to),
and a final summary."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field


class LiveFrames:
    """Frames done so far by the videos in flight (one entry per video being processed).
    Used as a Ray actor (``ray.remote(num_cpus=0)(LiveFrames)``); workers call ``report`` fire-and-forget."""

    def __init__(self):
        self._frames: dict[str, int] = {}

    def report(self, video_id: str, frames: int) -> None:
        self._frames[video_id] = frames

    def done(self, video_id: str) -> None:
        self._frames.pop(video_id, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self._frames)


def _fmt_s(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class Progress:
    total: int  # videos this invocation processes
    skipped: int = 0  # videos already committed by an earlier invocation of the run
    out: object = None  # None: sys.stdout at the time of printing
    live: object = None  # a LiveFrames actor handle, or None
    interval: float = 15.0  # seconds between heartbeats
    done: int = 0
    ok: int = 0
    failed: int = 0
    frames: int = 0
    failures: list = field(default_factory=list)

    def __post_init__(self):
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out or sys.stdout, flush=True)

    def start(self) -> None:
        self.t0 = time.monotonic()  # throughput counts from here (after Ray start-up and checks)
        msg = f"{self.total} video(s) to process"
        if self.skipped:
            msg += f", {self.skipped} skipped (already committed by this run)"
        self._print(msg)
        if self.interval and self.interval > 0:
            self._thread = threading.Thread(target=self._beat, name="vos-progress", daemon=True)
            self._thread.start()

    def _live_frames(self) -> dict[str, int]:
        if self.live is None:
            return {}
        try:
            import ray
            return ray.get(self.live.snapshot.remote(), timeout=5)
        except Exception:
            return {}

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            live = self._live_frames()
            frames = self.frames + sum(live.values())
            el = self.elapsed()
            self._print(f"  ... {self.done}/{self.total} videos done, {len(live)} in progress, "
                        f"{frames} frames, {frames / el if el else 0:.1f} frames/s, {self.failed} failed, {_fmt_s(el)}")

    def video_done(self, r: dict) -> None:
        with self._lock:
            self.done += 1
            if r.get("status") == "ok":
                self.ok += 1
                self.frames += int(r.get("frames") or 0)
            else:
                self.failed += 1
                self.failures.append((r.get("video_id"), r.get("error")))
        el = self.elapsed()
        status = r.get("status", "?")
        detail = (f"{r.get('frames', 0)} frames in {r.get('seconds') or 0:.1f} s ({r.get('fps') or 0:.1f} fps)"
                  if status == "ok" else f"{r.get('error_type')}: {r.get('error')}")
        if r.get("attempts") and r["attempts"] > 1:
            detail += f" [attempt {r['attempts']}]"
        self._print(f"[{self.done}/{self.total}] {status:6s} {r.get('video_id')!r}: {detail} | overall "
                    f"{self.frames / el if el else 0:.1f} frames/s, {self.failed} failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self, run_id: str, output: str) -> str:
        el = self.elapsed()
        parts = [f"run {run_id}: {self.ok} ok, {self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (committed earlier)")
        return (", ".join(parts) + f"; {self.frames} frames in {_fmt_s(el)} "
                f"({self.frames / el if el else 0:.1f} frames/s, {self.done / el if el else 0:.2f} videos/s); "
                f"output: {output}")
