"""FLOPs of one AFB-URR frame, counted with torch.utils.flop_counter.FlopCounterMode.

    python benchmarks/count_flops.py                                  # official, 480x864, 1 and 3 objects
    python benchmarks/count_flops.py --config compact --size 240x432

Counts, per frame, each stage of ``vos_core`` inference exactly as the
Segmenter calls it (same modules, same batch shapes), on the ``meta`` device:
shapes only, nothing is computed, so it takes seconds on any machine.

- query encoder: ``encode_query`` (trunk to res4 + key/value projection), batch 1;
- memory encoder: ``encode_memory`` of one frame with K soft masks (K = objects
  + background), batch K (the frame's conv1 runs once and is broadcast);
- decoder: ``decode`` of K readouts (the query-side skip branches run once per
  frame, the rest once per row);
- memory read: ``FeatureBank.read`` of a full bank, ``--bank`` features over
  all K rows (``budget // K`` each): per row, keys^T @ query and values @ attention.

FlopCounterMode counts matrix products and convolutions (2 FLOPs per
multiply-add); batch norm, activations, softmax, pooling and interpolation are
not counted (they are a small share of the arithmetic, not of the time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vos_core.inference.feature_bank import FeatureBank, ObjectMemory  # noqa: E402
from vos_core.model import AFBURR, CONFIGS  # noqa: E402

DEVICE = torch.device("meta")


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def full_bank(cfg, rows: int, total: int) -> FeatureBank:
    bank = FeatureBank(cfg.keydim, cfg.valdim, budget=total, device=DEVICE)
    for _ in range(rows):
        mem = ObjectMemory(cfg.keydim, cfg.valdim, DEVICE, capacity=total // rows)
        mem.n = total // rows
        bank.objects.append(mem)
    return bank


def count(config: str, h: int, w: int, objects: int, bank_features: int) -> dict[str, int]:
    cfg = CONFIGS[config]
    with torch.device(DEVICE):
        model = AFBURR(cfg).eval()
    k = objects + 1  # background is a row of its own, as in the authors' code
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    frame = torch.empty(1, 3, hp, wp, device=DEVICE)
    masks = torch.empty(1, k, hp, wp, device=DEVICE)
    out = {}
    with torch.inference_mode():
        out["query encoder (+ key/value)"] = _flops(lambda: model.encode_query(frame))
        q = model.encode_query(frame)
        out[f"memory encoder (+ key/value), {k} rows"] = _flops(lambda: model.encode_memory(frame, masks))
        bank = full_bank(cfg, k, bank_features)
        out[f"memory read, {bank_features} features in {k} rows"] = _flops(lambda: bank.read(q.key[0]))
        readout = torch.empty(1, k, cfg.valdim, q.key.shape[2], device=DEVICE)
        out[f"decoder, {k} rows"] = _flops(lambda: model.decode(readout, q))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="official", choices=sorted(CONFIGS))
    ap.add_argument("--size", default="480x864", help="HxW of the frame (padded to /16 as the Segmenter does)")
    ap.add_argument("--objects", default="1,3", help="numbers of objects (background not counted)")
    ap.add_argument("--bank", type=int, default=300_000, help="features in the full bank, all rows together")
    args = ap.parse_args(argv)
    from benchmarks.machine import command_line

    h, w = (int(v) for v in args.size.lower().split("x"))
    cfg = CONFIGS[args.config]
    feats = -(-h // 16) * -(-w // 16)
    objs = [int(v) for v in args.objects.split(",") if v]
    print(f"command: {command_line()}")
    print(f"torch {torch.__version__}; {args.config} ({cfg.trunk}, keydim {cfg.keydim}, valdim {cfg.valdim}, "
          f"decoder {cfg.mdim_global}); frame {h}x{w} ({feats} query features); bank {args.bank} features "
          f"(budget // rows each); GFLOP = 1e9 FLOPs, 2 per multiply-add, convolutions and matrix products only\n")
    cols = {n: count(args.config, h, w, n, args.bank) for n in objs}
    names = [[s.split(",")[0] for s in c] for c in cols.values()]
    stages = names[0]
    head = ["stage"] + [f"{n} object{'s' if n > 1 else ''} (K={n + 1}): GFLOP" for n in objs] + \
        [f"share ({objs[0]} object{'s' if objs[0] > 1 else ''})"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    totals = {n: sum(c.values()) for n, c in cols.items()}
    for i, stage in enumerate(stages):
        vals = [list(cols[n].values())[i] for n in objs]
        detail = list(cols[objs[0]].keys())[i].split(",", 1)
        label = stage + (f" ({detail[1].strip().replace(str(objs[0] + 1) + ' rows', 'K rows')})"
                         if len(detail) > 1 else "")
        print("| " + " | ".join([label] + [f"{v / 1e9:.1f}" for v in vals] +
                                [f"{vals[0] / totals[objs[0]]:.0%}"]) + " |")
    print("| **total per frame** | " + " | ".join(f"**{totals[n] / 1e9:.1f}**" for n in objs) + " | 100% |")
    # The read without the bank: what a frame costs while the bank is still small.
    net = {n: totals[n] - list(cols[n].values())[2] for n in objs}
    print("| network only (no read) | " + " | ".join(f"{net[n] / 1e9:.1f}" for n in objs) +
          f" | {net[objs[0]] / totals[objs[0]]:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
