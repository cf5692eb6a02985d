"""Train AFB-URR (the authors' two-stage recipe) on CPU or GPU.

    python -m jobs.train --stage 1 --coco-root ../shared/data/coco128-seg \
        --data-root ../shared/data/davis16-train-240p --config compact --out runs/s1 --iters 3000
    python -m jobs.train --stage 2 --data-root ../shared/data/davis16-train-240p \
        --init runs/s1/best.pth --out runs/s2 --iters 6000

Training forward, per clip of T frames: memorise frame 0 with its one-hot
ground truth; for t = 1..T-1: query-encode frame t, read the memory, decode,
soft-aggregate over objects (absent padded objects masked out), then memorise
frame t with its (detached) soft prediction and append it to the memory
(``--memory growing``, STM-style) or keep only frame 0 (``--memory first``, as
the authors train). Loss per predicted frame: cross-entropy on the log of the
soft-aggregated probabilities + ``--lu`` × the uncertainty loss (RMS over
pixels of U = exp(1 - top1/top2), mean over the batch), averaged over frames.

Writes ``last.pth`` (with optimizer state, resumable with ``--resume``) and
``best.pth`` (best mean J on held-out DAVIS-train sequences, ``--val-seqs``)
in the official checkpoint format plus ``config``; ``log.jsonl`` holds the
loss over time.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from vos_core.model import CONFIGS, AFBURR, save_checkpoint
from vos_core.model.checkpoint import read_checkpoint
from vos_core.metrics import db_eval_iou, evaluate_sequence
from vos_core.model.decoder import uncertainty_map

from .train_data import CocoIndex, DavisIndex, SampleStream

DEFAULT_VAL_SEQS = ("bear", "hockey", "motorbike")


# ------------------------------------------------------------------- forward
def _encode_memory(model: AFBURR, frames: torch.Tensor, masks: torch.Tensor):
    """frames B×3×H×W, masks B×K×H×W soft -> keys B×K×Ck×N, values B×K×Cv×N."""
    b, k = masks.shape[:2]
    x = frames.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(b * k, *frames.shape[1:])
    m = masks.reshape(b * k, 1, *masks.shape[2:])
    r4, _ = model.encoder_m(x, m, (1 - m).clamp(0, 1))
    key, val = model.keyval_r4(r4)
    return key.view(b, k, *key.shape[1:]), val.view(b, k, *val.shape[1:])


def _per_object(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.unsqueeze(1).expand(-1, k, *t.shape[1:]).reshape(-1, *t.shape[1:])


def pixel_ce(log_probs: torch.Tensor, labels: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """Cross-entropy over pixels; with top < 1, the mean over each sample's hardest ``top`` fraction
    of pixels (bootstrapped CE, as STCN and XMem train): it keeps a small object from being
    drowned by easy background, the collapse a from-scratch model falls into first."""
    ce = F.nll_loss(log_probs, labels, reduction="none").flatten(1)  # B×HW
    if top >= 1.0:
        return ce.mean()
    k = max(1, int(top * ce.shape[1]))
    return ce.topk(k, dim=1).values.mean()


def clip_forward(model: AFBURR, frames: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                 memory: str = "growing", lu: float = 0.5, ce_top: float = 1.0):
    """frames B×T×3×H×W, labels B×T×H×W (0..K-1), valid B×K.
    Returns (loss, ce, uncertainty loss, per-frame probs list)."""
    b, t_n, _, h, w = frames.shape
    k = valid.shape[1]
    onehot = F.one_hot(labels[:, 0].clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
    keys, vals = _encode_memory(model, frames[:, 0], onehot)
    mem_k, mem_v = [keys], [vals]
    # Query features of every predicted frame in one batch (they do not depend on predictions).
    r4, r3, r2, r1 = model.encoder_q(frames[:, 1:].reshape(b * (t_n - 1), 3, h, w))
    qk, qv = model.keyval_r4(r4)
    h16, w16 = r4.shape[-2:]

    def frame_slice(x, t):  # rows of predicted frame t (1-based) for every sample
        return x.view(b, t_n - 1, *x.shape[1:])[:, t - 1]

    scale = 1.0 / math.sqrt(qk.shape[1])
    ce_total, u_total, probs_out = 0.0, 0.0, []
    absent = ~valid  # B×K
    for t in range(1, t_n):
        km = torch.cat(mem_k, dim=-1)  # B×K×Ck×M
        vm = torch.cat(mem_v, dim=-1)  # B×K×Cv×M
        q_key = frame_slice(qk, t)  # B×Ck×N
        attn = torch.softmax(torch.einsum("bkcm,bcn->bkmn", km, q_key) * scale, dim=2)
        read = torch.einsum("bkvm,bkmn->bkvn", vm, attn)  # B×K×Cv×N
        q_val = frame_slice(qv, t).unsqueeze(1).expand(-1, k, -1, -1)
        x = torch.cat([read, q_val], dim=2).reshape(b * k, -1, h16, w16)
        fg = model.decoder(x, _per_object(frame_slice(r3, t), k), _per_object(frame_slice(r2, t), k),
                           _per_object(frame_slice(r1, t), k), k).view(b, k, h, w)
        # The authors' clamp, but straight-through: a hard clamp has zero gradient, and a run
        # whose decoder saturates (p exactly 0/1 for every object) then never recovers.
        p = fg + (fg.clamp(1e-7, 1 - 1e-7) - fg).detach()
        logits = torch.log(p / (1 - p)).masked_fill(absent[:, :, None, None], -1e4)
        log_probs = F.log_softmax(logits, dim=1)  # log of the soft-aggregated probabilities
        probs = log_probs.exp()
        ce_total = ce_total + pixel_ce(log_probs, labels[:, t], ce_top)
        u = uncertainty_map(probs, dim=1)  # B×1×H×W
        u_total = u_total + (u.view(b, -1).norm(p=2, dim=1) / math.sqrt(h * w)).mean()
        probs_out.append(probs)
        if memory == "growing" and t < t_n - 1:
            keys, vals = _encode_memory(model, frames[:, t], probs.detach())
            mem_k.append(keys)
            mem_v.append(vals)
    n = t_n - 1
    ce, ul = ce_total / n, u_total / n
    return ce + lu * ul, ce, ul, probs_out


# ---------------------------------------------------------------- validation
def validate(model: AFBURR, davis: DavisIndex, seqs, max_frames: int = 40, size: int | None = None) -> dict:
    """Mean J (frames 1..) per held-out sequence with the streaming Segmenter."""
    from vos_core.segmenter import Segmenter

    was_training = model.training
    model.eval()
    out = {}
    try:
        for s in seqs:
            stems = davis.frames[s][:max_frames]
            data = [davis.load(s, st, cache=True) for st in stems]
            seg = Segmenter(model, size=size, keep_probs=False)
            js = []
            for r in seg.run((d[0] for d in data), {0: data[0][1]}):
                if r.index > 0:
                    js.append(db_eval_iou(data[r.index][1] > 0, r.mask > 0))
            out[s] = float(np.mean(js))
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------ training
def _load_state(uri: str):
    with fsspec.open(uri, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def _lr_factor(progress: float, it: int, warmup: int, steps: list[float], gamma: float) -> float:
    f = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
    for s in steps:
        if progress >= s:
            f *= gamma
    return f


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", help="DAVIS-layout training set (any fsspec URI)")
    ap.add_argument("--coco-root", help="coco128-seg-style images + instance_masks (stage 1)")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=2)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="compact")
    ap.add_argument("--out", required=True, help="output directory (any fsspec URI)")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="also stop after this much wall time; the LR schedule follows whichever of "
                         "iterations/time is further along")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--frames", type=int, default=3, help="frames per clip (3..6)")
    ap.add_argument("--max-skip", type=int, default=5, help="stage 2: largest gap between sampled frames")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--lr-steps", default="0.7,0.9", help="fractions of training where the LR is multiplied by --gamma")
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--clip-grad", type=float, default=5.0)
    ap.add_argument("--max-objects", type=int, default=3, help="stage 1: objects per pseudo-video (plus background)")
    ap.add_argument("--coco-fraction", type=float, default=0.7, help="stage 1: share of COCO images (rest: DAVIS frames)")
    ap.add_argument("--lu", type=float, default=0.5, help="weight of the uncertainty loss")
    ap.add_argument("--memory", choices=("growing", "first"), default="growing")
    ap.add_argument("--ce-top", type=float, default=1.0,
                    help="bootstrapped cross-entropy: mean over the hardest fraction of pixels (1: plain CE, "
                         "the paper's; 0.15-0.3 keeps small objects from collapsing to background)")
    ap.add_argument("--resume", help="checkpoint with optimizer state (last.pth): continue that run")
    ap.add_argument("--init", help="checkpoint to start the weights from (e.g. stage 1's best), fresh optimizer")
    ap.add_argument("--val-seqs", default=",".join(DEFAULT_VAL_SEQS),
                    help="DAVIS-train sequences held out for validation (never trained on); empty: none")
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-frames", type=int, default=40)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--overfit-one-batch", action="store_true",
                    help="draw one batch and train on it every iteration (a smoke test of the optimisation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if not 2 <= args.frames <= 8:
        ap.error("--frames must be in 2..8")
    if args.crop % 16:
        ap.error("--crop must be a multiple of 16")
    if args.resume and args.init:
        ap.error("--resume and --init are exclusive")
    return args


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    fs, out = fsspec.core.url_to_fs(args.out)
    fs.makedirs(out, exist_ok=True)
    out_uri = args.out.rstrip("/")

    val_seqs = [s for s in (args.val_seqs or "").split(",") if s]
    davis = DavisIndex(args.data_root, exclude=val_seqs) if args.data_root else None
    coco = CocoIndex(args.coco_root) if args.coco_root else None
    val_davis = DavisIndex(args.data_root, sequences=val_seqs) if (args.data_root and val_seqs) else None

    model = AFBURR(CONFIGS[args.config])
    if not (args.resume or args.init):
        # Fresh start: near-zero prediction heads, so training starts from p = 0.5 everywhere.
        for conv in (model.decoder.pred2, model.decoder.local_pred2):
            torch.nn.init.normal_(conv.weight, std=1e-3)
            torch.nn.init.zeros_(conv.bias)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start_it, best, elapsed0 = 0, -1.0, 0.0
    if args.resume:
        ck = _load_state(args.resume)
        if ck.get("config") and ck["config"] != model.config.to_dict():
            model = AFBURR(type(model.config).from_dict(ck["config"]))
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
        if "optimizer" in ck:
            opt.load_state_dict(ck["optimizer"])
        start_it = int(ck.get("iteration", ck.get("epoch", 0)))
        best = float(ck.get("best_val", -1.0))
        elapsed0 = float(ck.get("elapsed_s", 0.0))
        print(f"resumed {args.resume} at iteration {start_it}", flush=True)
    elif args.init:
        state, cfg, _ = read_checkpoint(args.init)
        if cfg != model.config:
            model = AFBURR(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        print(f"initialised from {args.init}", flush=True)
    model.to(device).train()
    for g in opt.param_groups:
        g["initial_lr"] = args.lr

    stream = SampleStream(args.stage, args.crop, args.frames, davis, coco, seed=args.seed * 1000 + start_it,
                          max_skip=args.max_skip, coco_fraction=args.coco_fraction, max_objects=args.max_objects)
    steps = [float(s) for s in args.lr_steps.split(",") if s]
    log_f = fsspec.open(f"{out_uri}/log.jsonl", "a").open()
    t0 = time.time() - elapsed0
    it = start_it
    hist: list[float] = []
    last_loss = float("nan")
    fixed_batch = None

    def progress() -> float:
        p = it / args.iters
        if args.max_minutes:
            p = max(p, (time.time() - t0) / (60 * args.max_minutes))
        return p

    def save(path, with_opt, loss):
        extra = {"iteration": it, "stage": args.stage, "best_val": best, "elapsed_s": time.time() - t0,
                 "args": json.dumps(vars(args))}
        if with_opt:
            extra["optimizer"] = opt.state_dict()
        save_checkpoint(model, path, epoch=it, loss=loss, seed=args.seed, extra=extra)

    def run_val():
        nonlocal best
        if val_davis is None:
            return None
        tv = time.time()
        js = validate(model, val_davis, val_seqs, args.val_frames)
        mj = float(np.mean(list(js.values())))
        rec = {"iter": it, "time_s": round(time.time() - t0, 1), "val_J": mj, "val_J_seq": js,
               "val_s": round(time.time() - tv, 1)}
        if mj > best:
            best = mj
            save(f"{out_uri}/best.pth", False, last_loss)
            rec["best"] = True
        log_f.write(json.dumps(rec) + "\n")
        log_f.flush()
        print(json.dumps(rec), flush=True)
        return mj

    while it < args.iters and progress() < 1.0:
        frac = progress()
        lr = args.lr * _lr_factor(frac, it, args.warmup, steps, args.gamma)
        for g in opt.param_groups:
            g["lr"] = lr
        if args.overfit_one_batch:
            if fixed_batch is None:
                fixed_batch = stream.batch(args.batch)
            frames, labels, valid = fixed_batch
        else:
            frames, labels, valid = stream.batch(args.batch)
        frames, labels, valid = frames.to(device), labels.to(device), valid.to(device)
        loss, ce, ul, _ = clip_forward(model, frames, labels, valid, args.memory, args.lu, args.ce_top)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        opt.step()
        it += 1
        last_loss = float(loss.detach())
        hist.append(last_loss)
        if it % args.log_every == 0 or it == start_it + 1:
            rec = {"iter": it, "time_s": round(time.time() - t0, 1), "loss": last_loss, "ce": float(ce.detach()),
                   "u": float(ul.detach()), "lr": lr, "K": int(valid.shape[1])}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            print(json.dumps(rec), flush=True)
        if it % args.save_every == 0:
            save(f"{out_uri}/last.pth", True, last_loss)
        if args.val_every and it % args.val_every == 0:
            run_val()
    save(f"{out_uri}/last.pth", True, last_loss)
    if val_davis is not None and args.val_every and (it % args.val_every or it == start_it):
        run_val()
    if val_davis is None or not args.val_every:  # no validation: the best is the last
        save(f"{out_uri}/best.pth", False, last_loss)
    log_f.close()
    return {"iterations": it, "losses": hist, "best_val": best, "elapsed_s": time.time() - t0}


# ---------------------------------------------------------------- evaluation
def evaluate_davis(model: AFBURR, root: str, sequences=None, size: int | None = 240, max_frames: int | None = None,
                   budget: int = 300_000) -> dict:
    """Segments DAVIS-layout sequences from their first-frame mask with the
    project's Segmenter (processing at shorter side ``size``, results at full
    size) and scores them with vos_core.metrics (DAVIS toolkit J and F; first
    and last frame unscored)."""
    from vos_core.segmenter import Segmenter

    index = DavisIndex(root, sequences=list(sequences) if sequences else None)
    model.eval()
    out = {}
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        data = [index.load(seq, st, cache=False) for st in stems]
        t0 = time.time()
        seg = Segmenter(model, budget=budget, size=size, keep_probs=False)
        preds = [r.mask for r in seg.run((d[0] for d in data), {0: data[0][1]})]
        dt = time.time() - t0
        gts = [d[1] for d in data]
        sc = evaluate_sequence(gts, preds)
        j, f = sc["J_mean"], sc["F_mean"]
        out[seq] = {"J": j, "F": f, "JF": (j + f) / 2, "frames": len(stems), "seconds": round(dt, 1)}
    return out


def eval_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.train evaluate")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--root", required=True, help="DAVIS-layout evaluation set")
    ap.add_argument("--sequences", default="")
    ap.add_argument("--size", type=int, default=240, help="processing shorter side (0: full size)")
    ap.add_argument("--max-frames", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the scores here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from vos_core.model import load_model

    model = load_model(a.ckpt)
    res = evaluate_davis(model, a.root, [s for s in a.sequences.split(",") if s] or None, a.size or None,
                         a.max_frames or None)
    for seq, r in res.items():
        print(f"{seq:20s} J {r['J']:.4f}  F {r['F']:.4f}  J&F {r['JF']:.4f}  ({r['frames']} frames, {r['seconds']} s)")
    if a.json:
        with fsspec.open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "evaluate":
        return eval_main(argv[1:])
    args = parse_args(argv)
    res = train(args)
    print(json.dumps({k: v for k, v in res.items() if k != "losses"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
