"""The feature bank's read through torch.mm (MKL) against oneDNN with bucketed shapes (CPU, float32):
(a) speed of ``FeatureBank.read`` over banks from small to full, (b) process memory over many bank lengths.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_bank_read.py --speed 2000,10000,40000,150000
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_bank_read.py --rss 200

(a) One bank of ``--rows`` rows (objects + background) of random keys (x2, as compare_reference.py's
prefill) and values, one 30x54 query (a 480x864 frame at 1/16), ``read`` with the usage count as the
Segmenter calls it, and the authors' ``Matcher`` on the same features (as compare_reference.py --read-bank,
when third_party/afb_urr is present); the implementations alternate, ``--repeats`` times; best and median
seconds, and the difference of the oneDNN readout and usage from the mm one.

(b) For each implementation a fresh process reads one bank at ``--rss`` successive lengths (a buffer filled
once to the largest, its length set before each read: the bank's own memory does not change) and reports
its resident memory after the first read and after the last, then after as many new lengths again in the
same range (half a step from the first ones): bounded growth stops there. ``onednn, no buckets`` is the route
without bucketing (the earlier attempt's growth), ``onednn (bucketed)`` the one
FeatureBank(products='onednn') takes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

KEYDIM, VALDIM = 128, 512
VARIANTS = {"mm": "mm", "onednn (bucketed)": "onednn", "onednn, no buckets": "onednn"}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def features(rows: int, n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(KEYDIM, n, generator=g) * 2 for _ in range(rows)]
    return keys, [torch.randn(VALDIM, n, generator=g) for _ in range(rows)]


def make_bank(products: str, rows: int, n: int, seed: int = 0, feats=None):
    from vos_core import FeatureBank
    from vos_core.inference.feature_bank import ObjectMemory

    keys, values = feats or features(rows, n, seed)
    bank = FeatureBank(KEYDIM, VALDIM, budget=rows * n * 2, products=products)
    for k, v in zip(keys, values):
        mem = ObjectMemory(KEYDIM, VALDIM, "cpu")
        mem.append(k, v, 0, limit=n)
        bank.objects.append(mem)
    return bank


def no_buckets():
    """FeatureBank's oneDNN route with the bank length and the query rows left as they are."""
    import vos_core.inference.feature_bank as fb

    fb.bucket_length = lambda n, **_: n


def speed(sizes: list[int], rows: int, query_hw: tuple[int, int], repeats: int, authors: bool) -> list[dict]:
    """Best and median seconds of each read, alternating; with ``authors``, their Matcher (as
    compare_reference.py --read-bank runs it) on the same features."""
    import contextlib
    import importlib

    import numpy as np
    import torch

    import compare_reference as cr

    out = []
    q = torch.randn(KEYDIM, query_hw[0] * query_hw[1], generator=torch.Generator().manual_seed(1))
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(cr.reference_modules(cr.default_reference_dir())) if authors else None
        for n in sizes:
            feats = features(rows, n)
            banks = {p: make_bank(p, rows, n, feats=feats) for p in ("mm", "onednn")}

            def theirs():
                fb = ref.FeatureBank(rows, 10 * rows * n, "cpu")
                fb.init_bank([k.clone() for k in feats[0]], [v.clone() for v in feats[1]])
                matcher = importlib.import_module("model.AFB_URR").Matcher(update_bank=True)
                t = time.perf_counter()
                matcher(fb, q[None], torch.zeros(1, VALDIM, q.shape[1]))
                return time.perf_counter() - t

            def ours(b):
                t = time.perf_counter()
                b.read(q)
                return time.perf_counter() - t

            runs = {p: (lambda b=b: ours(b)) for p, b in banks.items()}
            if ref is not None:
                runs["authors (Matcher)"] = theirs
            times = {p: [] for p in runs}
            with torch.inference_mode():
                results = {p: b.read(q) for p, b in banks.items()}  # warm-up (and the usage compared)
                if ref is not None:
                    theirs()
                for _ in range(repeats):
                    for p, fn in runs.items():
                        times[p].append(fn())
            flop = 2.0 * rows * n * q.shape[1] * (KEYDIM + VALDIM)
            diff = float((results["onednn"] - results["mm"]).abs().max())
            udiff = max(float((a.usage - b.usage).abs().max()) for a, b in zip(banks["mm"].objects,
                                                                            banks["onednn"].objects))
            for p in runs:
                best, med = min(times[p]), float(np.median(times[p]))
                out.append({"bank_per_row": n, "products": p, "best_s": best, "median_s": med,
                            "gflop_per_s": flop / best / 1e9, "speedup": float(np.median(times["mm"])) / med,
                            "vs_authors": float(np.median(times["authors (Matcher)"])) / med if ref else None,
                            "max_abs_diff": diff if p == "onednn" else None,
                            "max_usage_diff": udiff if p == "onednn" else None})
                print(f"  bank {n} x {rows}, {p}: best {best:.3f} s, median {med:.3f} s", flush=True)
            del banks
    return out


def rss_child(variant: str, lengths: int, start: int, step: int, hw: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if variant == "onednn, no buckets":
        no_buckets()
    last = start + step * (lengths - 1)
    bank = make_bank(VARIANTS[variant], 1, last + step)
    q = torch.randn(KEYDIM, hw, generator=torch.Generator().manual_seed(1))
    mem = bank.objects[0]
    marks = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(lengths):
            mem.n = start + step * i
            bank.read(q)
            if i == 0:
                marks["after_first_mb"] = rss_mb()
        marks["after_last_mb"] = rss_mb()
        for i in range(lengths):  # as many new lengths again, in the same range (between the first ones)
            mem.n = start + step * i + step // 2
            bank.read(q)
        marks["after_second_mb"] = rss_mb()
    marks["seconds"] = time.perf_counter() - t0
    return marks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speed", default=None, metavar="N[,N...]", help="bank lengths per row to time the read at")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--query", default="30x54", help="HxW of the query features (--speed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss", type=int, default=0, metavar="LENGTHS", help="successive bank lengths to read (b)")
    ap.add_argument("--rss-start", type=int, default=1000)
    ap.add_argument("--rss-step", type=int, default=101, help="length added between reads (odd: a new shape each)")
    ap.add_argument("--rss-query", type=int, default=405, help="query pixels of (b) (405: a 240x432 frame)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-authors", action="store_true", help="(a) without the authors' Matcher")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(rss_child(a.child, a.rss, a.rss_start, a.rss_step, a.rss_query)))
        return 0
    import torch

    from machine import command_line, describe_machine

    torch.set_num_threads(a.threads)
    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"load average at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if a.speed:
        qh, qw = (int(v) for v in a.query.lower().split("x"))
        import compare_reference as cr

        authors = not a.no_authors and cr.reference_present(cr.default_reference_dir())
        rows = speed([int(x) for x in a.speed.split(",")], a.rows, (qh, qw), a.repeats, authors)
        print(f"\n(a) FeatureBank.read, {a.rows} rows, query {qh}x{qw}, usage counted; {a.repeats} alternating repeats")
        print("| bank per row | products | best s | median s | GFLOP/s (best) | speed vs mm (median) | "
              "speed vs authors (median) | max abs readout diff vs mm | max abs usage diff vs mm |")
        print("|---|---|---|---|---|---|---|---|---|")
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        for r in rows:
            print(f"| {r['bank_per_row']} | {r['products']} | {r['best_s']:.3f} | {r['median_s']:.3f} | "
                  f"{r['gflop_per_s']:.0f} | {r['speedup']:.2f} | {f(r['vs_authors'], '.2f')} | "
                  f"{f(r['max_abs_diff'], '.1e')} | {f(r['max_usage_diff'], '.1e')} |")
    if a.rss:
        env = dict(os.environ, BENCH_THREADS=str(a.threads))
        last = a.rss_start + a.rss_step * (a.rss - 1)
        print(f"\n(b) resident memory over {a.rss} successive bank lengths ({a.rss_start}..{last}, step {a.rss_step}), "
              f"1 row, {a.rss_query} query pixels; each implementation in a fresh process")
        print("| products | RSS after the first read MB | after the last MB | growth MB | per length kB | "
              f"growth over {a.rss} more lengths in the same range MB | seconds |")
        print("|---|---|---|---|---|---|---|")
        for variant in VARIANTS:
            p = subprocess.run([sys.executable, __file__, "--child", variant, "--rss", str(a.rss), "--rss-start",
                                str(a.rss_start), "--rss-step", str(a.rss_step), "--rss-query", str(a.rss_query)],
                               env=env, capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(p.stderr[-3000:])
            r = json.loads(p.stdout.strip().splitlines()[-1])
            grow = r["after_last_mb"] - r["after_first_mb"]
            print(f"| {variant} | {r['after_first_mb']:.0f} | {r['after_last_mb']:.0f} | {grow:+.0f} | "
                  f"{grow * 1024 / max(1, a.rss - 1):.0f} | {r['after_second_mb'] - r['after_last_mb']:+.0f} | "
                  f"{r['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
