"""What the benchmarks print at the top of their output: the machine and the command."""
from __future__ import annotations

import os
import platform
import shlex
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def describe_machine(threads: int | None = None, device: str = "cpu") -> str:
    """One line: CPU model, cores, memory, torch version and threads, GPU if any."""
    import torch

    mem = mem_total_gib()
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in txt or f" {f}\n" in txt]
    except OSError:
        pass
    parts = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible, {', '.join(flags) or 'no avx flags read'})",
        f"RAM {mem:.0f} GiB" if mem else "RAM ?",
        f"torch {torch.__version__} (threads {threads if threads is not None else torch.get_num_threads()}, "
        f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'})",
        f"python {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
    else:
        parts.append("no GPU")
    parts.append(f"device used: {device}")
    return "; ".join(parts)


def command_line() -> str:
    """The command as it was run (relative script path kept as given)."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)
