"""Shared by the A/B benchmarks that run the Segmenter on one real sequence in two ways, alternating
(bench_subnormal.py, bench_reference_read.py): their options, the frames, and the alternating runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "davis16-val-public"


def add_arguments(ap, frames: int = 12) -> None:
    from vos_core.model import SHIPPED_CHECKPOINT

    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sequence", default="car-shadow")
    ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    ap.add_argument("--threads", type=int, default=2)


def load(a):
    """Sets the threads, prints the command and the machine; returns (model, frames, first-frame mask)."""
    import torch

    from benchmarks.machine import command_line, describe_machine
    from vos_core.model import load_model
    from vos_train.data import DavisIndex

    torch.set_num_threads(a.threads)
    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}", flush=True)
    model = load_model(a.checkpoint)
    index = DavisIndex(a.data, sequences=[a.sequence])
    pairs = [index.load(a.sequence, s, cache=False) for s in index.frames[a.sequence][: a.frames]]
    return model, [p[0] for p in pairs], pairs[0][1]


def alternate(modes: dict[str, Callable[[], tuple]], repeats: int):
    """Runs each mode (a call returning bench_precision.segment's (masks, seconds, step seconds)) in turn,
    ``repeats`` times. Returns per mode: whole-run seconds, step seconds (the annotated frame's left out: it
    is no segmentation) and the first run's masks."""
    runs = {m: [] for m in modes}
    steps = {m: [] for m in modes}
    masks = {}
    for _ in range(repeats):
        for name, run in modes.items():
            m, seconds, st = run()
            runs[name].append(seconds)
            steps[name] += st[1:]
            masks.setdefault(name, m)
    return runs, steps, masks
