"""The training loop: AdamW with a lower learning rate for pretrained trunks, warm-up then cosine decay
(``torch.optim.lr_scheduler``), held-out validation, resumable checkpoints.

Writes to ``--out``: ``last.pth`` (model, optimizer, scheduler, iteration: ``--resume`` continues from it
exactly where it stopped, also after a machine restart), ``best.pth`` (the best mean J on held-out DAVIS
train sequences, ``--val-seqs``, never the val split) and ``log.jsonl`` (loss and validation over time).
Both checkpoints are in the official layout plus ``config`` and ``working_size``, so ``load_model`` and
the Segmenter's defaults need nothing else.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import random
import time

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from vos_core.model import CONFIGS, AFBURR, ModelConfig, save_checkpoint
from vos_core.model.checkpoint import read_checkpoint
from vos_core.model.efficientnet import LITE_VARIANTS

from .clip import clip_forward
from .data import CocoIndex, DavisIndex, SampleStream
from .evaluate import held_out_j
from .pretrained import load_imagenet_trunks

DEFAULT_VAL_SEQS = ("bear", "hockey", "motorbike")
TRUNK_PREFIXES = ("_conv_stem.", "_bn0.", "_blocks.", "conv1.", "bn1.", "res2.", "res3.", "res4.")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vos_train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Train AFB-URR: stage 1 on pseudo-videos of static images, "
                                             "stage 2 on real DAVIS clips.")
    ap.add_argument("--data-root", help="DAVIS-layout training set (any fsspec URI)")
    ap.add_argument("--coco-root", help="coco128-seg-style images + instance_masks (stage 1)")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=2)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="compact")
    ap.add_argument("--trunk", help="replace the configuration's trunk (e.g. efficientnet_lite2)")
    ap.add_argument("--out", required=True, help="output directory (any fsspec URI)")
    ap.add_argument("--iters", type=int, default=1000, help="iterations of the whole run (the schedule's length)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop (saving last.pth) after this much wall time in this invocation; --resume continues")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop (saving last.pth) after this many iterations in this invocation; --resume continues")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--frames", type=int, default=3, help="frames per clip")
    ap.add_argument("--max-skip", type=int, default=5, help="stage 2: largest gap between sampled frames")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--trunk-lr-mult", type=float, default=0.1,
                    help="learning-rate factor of the encoders' trunks (pretrained)")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=100, help="iterations of linear warm-up")
    ap.add_argument("--min-lr-frac", type=float, default=0.02, help="cosine decay ends at this fraction of --lr")
    ap.add_argument("--clip-grad", type=float, default=5.0)
    ap.add_argument("--pretrained", choices=("auto", "imagenet", "none"), default="auto",
                    help="trunk initialisation of a fresh run: ImageNet weights (auto: for EfficientNet-Lite trunks)")
    ap.add_argument("--freeze-bn", choices=("auto", "yes", "no"), default="auto",
                    help="keep the trunks' batch-norm statistics frozen (auto: when the trunks are pretrained)")
    ap.add_argument("--max-objects", type=int, default=3, help="stage 1: objects per pseudo-video (plus background)")
    ap.add_argument("--coco-fraction", type=float, default=0.7, help="stage 1: share of COCO images (rest: DAVIS frames)")
    ap.add_argument("--static-fraction", type=float, default=0.0,
                    help="stage 2: share of COCO pseudo-videos among the real clips (needs --coco-root)")
    ap.add_argument("--lu", type=float, default=0.5, help="weight of the uncertainty loss")
    ap.add_argument("--memory", choices=("growing", "first"), default="growing")
    ap.add_argument("--ce-top", type=float, default=1.0,
                    help="bootstrapped cross-entropy: mean over the hardest fraction of pixels (1: plain CE, "
                         "the paper's)")
    ap.add_argument("--working-size", type=int, default=240,
                    help="shorter side the model is meant to run at, recorded in the checkpoint (the scale of "
                         "the training frames)")
    ap.add_argument("--resume", help="last.pth of a run: continue it (weights, optimizer, schedule, iteration)")
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
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: autocast the network (losses stay fp32); fast on CPUs with AMX/AVX-512 BF16 and GPUs")
    ap.add_argument("--channels-last", action="store_true", help="NHWC convolutions (faster with oneDNN/cuDNN)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not 2 <= args.frames <= 8:
        ap.error("--frames must be in 2..8")
    if args.crop % 16:
        ap.error("--crop must be a multiple of 16")
    if args.resume and args.init:
        ap.error("--resume and --init are exclusive")
    if args.iters < 1 or args.batch < 1:
        ap.error("--iters and --batch must be positive")
    return args


def _read(uri: str) -> dict:
    with fsspec.open(uri, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def _float_state(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def param_groups(model: AFBURR, lr: float, trunk_mult: float) -> list[dict]:
    """Two groups: the encoders' trunks (pretrained: a lower rate) and everything else."""
    trunk, rest = [], []
    for name, p in model.named_parameters():
        enc, _, sub = name.partition(".")
        (trunk if enc in ("encoder_m", "encoder_q") and sub.startswith(TRUNK_PREFIXES) else rest).append(p)
    return [{"params": trunk, "lr": lr * trunk_mult, "name": "trunk"}, {"params": rest, "lr": lr, "name": "rest"}]


def make_scheduler(opt: torch.optim.Optimizer, iters: int, warmup: int, min_lr_frac: float):
    """Linear warm-up over ``warmup`` iterations, then cosine decay to ``min_lr_frac`` of each group's rate
    at ``iters`` (a LambdaLR: CosineAnnealingLR's floor is one absolute rate for every group)."""
    span = max(1, iters - warmup)

    def cosine(step: int) -> float:
        p = min(1.0, step / span)
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))

    decay = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    if warmup <= 0:
        return decay
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[warmup])


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        torch.set_num_threads(args.threads)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.device = torch.device(args.device)
        fs, path = fsspec.core.url_to_fs(args.out)
        fs.makedirs(path, exist_ok=True)
        self.fs, self.out_path, self.out = fs, path.rstrip("/"), args.out.rstrip("/")
        self.val_seqs = [s for s in (args.val_seqs or "").split(",") if s]
        self.davis = DavisIndex(args.data_root, exclude=self.val_seqs) if args.data_root else None
        self.coco = CocoIndex(args.coco_root) if args.coco_root else None
        self.val_davis = DavisIndex(args.data_root, sequences=self.val_seqs) if (args.data_root and self.val_seqs) else None
        self.iteration, self.best, self.elapsed0 = 0, -1.0, 0.0
        self.model, state = self._build_model()
        self.opt = torch.optim.AdamW(param_groups(self.model, args.lr, args.trunk_lr_mult), lr=args.lr,
                                     weight_decay=args.weight_decay)
        self.sched = make_scheduler(self.opt, args.iters, args.warmup, args.min_lr_frac)
        if state is not None:  # resuming
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        self.model.to(self.device).train()
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)

    # -- set-up ---------------------------------------------------------------
    def _build_model(self):
        a = self.args
        if a.resume:
            ck = _read(a.resume)
            model = AFBURR(ModelConfig.from_dict(ck["config"]))
            model.load_state_dict(_float_state(ck["model"]))
            self.iteration = int(ck["iteration"])
            self.best = float(ck.get("best_val", -1.0))
            self.elapsed0 = float(ck.get("elapsed_s", 0.0))
            model.freeze_trunk_bn = bool(ck.get("freeze_trunk_bn", False))
            print(f"resumed {a.resume} at iteration {self.iteration}", flush=True)
            return model, ck
        if a.init:
            state, cfg, meta = read_checkpoint(a.init)
            model = AFBURR(cfg)
            model.load_state_dict(_float_state(state))
            pretrained = bool(meta.get("freeze_trunk_bn", cfg.trunk in LITE_VARIANTS))
            print(f"initialised from {a.init}", flush=True)
        else:
            config = CONFIGS[a.config]
            model = AFBURR(dataclasses.replace(config, trunk=a.trunk) if a.trunk else config)
            # Near-zero prediction heads, so training starts from p = 0.5 everywhere.
            for conv in (model.decoder.pred2, model.decoder.local_pred2):
                torch.nn.init.normal_(conv.weight, std=1e-3)
                torch.nn.init.zeros_(conv.bias)
            want = a.pretrained == "imagenet" or (a.pretrained == "auto" and model.config.trunk in LITE_VARIANTS)
            pretrained = False
            if want:
                n = load_imagenet_trunks(model)
                pretrained = True
                print(f"trunks initialised from ImageNet weights ({n} tensors)", flush=True)
        model.freeze_trunk_bn = a.freeze_bn == "yes" or (a.freeze_bn == "auto" and pretrained)
        return model, None

    def autocast(self):
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints ----------------------------------------------------------
    def _save(self, name: str, with_state: bool, loss: float, t0: float) -> None:
        a = self.args
        extra = {"iteration": self.iteration, "stage": a.stage, "best_val": self.best,
                 "elapsed_s": time.time() - t0, "args": json.dumps(vars(a)), "working_size": a.working_size,
                 "freeze_trunk_bn": self.model.freeze_trunk_bn}
        if with_state:
            extra["optimizer"] = self.opt.state_dict()
            extra["scheduler"] = self.sched.state_dict()
        tmp = f"{self.out}/{name}.tmp"
        save_checkpoint(self.model, tmp, epoch=self.iteration, loss=loss, seed=a.seed, extra=extra)
        self.fs.mv(f"{self.out_path}/{name}.tmp", f"{self.out_path}/{name}")  # a crash never leaves half a file

    def _log(self, log_f, rec: dict) -> None:
        log_f.write(json.dumps(rec) + "\n")
        log_f.flush()

    # -- the loop -------------------------------------------------------------
    def validate(self, log_f, t0: float, loss: float) -> float | None:
        if self.val_davis is None:
            return None
        tv = time.time()
        js = held_out_j(self.model, self.val_davis, self.val_seqs, self.args.val_frames)
        mj = float(np.mean(list(js.values())))
        rec = {"iter": self.iteration, "time_s": round(time.time() - t0, 1), "val_J": mj, "val_J_seq": js,
               "val_s": round(time.time() - tv, 1)}
        if mj > self.best:
            self.best = mj
            self._save("best.pth", False, loss, t0)
            rec["best"] = True
        self._log(log_f, rec)
        return mj

    def run(self) -> dict:
        a = self.args
        stream = SampleStream(a.stage, a.crop, a.frames, self.davis, self.coco, seed=a.seed * 1000 + self.iteration,
                              max_skip=a.max_skip, coco_fraction=a.coco_fraction, max_objects=a.max_objects,
                              static_fraction=a.static_fraction)
        log_f = fsspec.open(f"{self.out}/log.jsonl", "a").open()
        t0 = time.time() - self.elapsed0
        started = time.time()
        losses: list[float] = []
        loss_value = float("nan")
        fixed = None
        bar = tqdm(total=a.iters, initial=self.iteration, disable=a.no_progress, dynamic_ncols=True, smoothing=0.05)
        try:
            while self.iteration < a.iters:
                if a.max_minutes and time.time() - started > 60 * a.max_minutes:
                    break
                if a.stop_after is not None and len(losses) >= a.stop_after:
                    break
                if a.overfit_one_batch:
                    fixed = fixed or stream.batch(a.batch)
                    frames, labels, valid = fixed
                else:
                    frames, labels, valid = stream.batch(a.batch)
                frames, labels, valid = frames.to(self.device), labels.to(self.device), valid.to(self.device)
                with self.autocast():
                    out = clip_forward(self.model, frames, labels, valid, a.memory, a.lu, a.ce_top)
                self.opt.zero_grad(set_to_none=True)
                out.total.backward()
                if a.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip_grad)
                self.opt.step()
                self.sched.step()
                self.iteration += 1
                loss_value = float(out.total.detach())
                losses.append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", best_J=f"{self.best:.3f}")
                if self.iteration % a.log_every == 0 or len(losses) == 1:
                    self._log(log_f, {"iter": self.iteration, "time_s": round(time.time() - t0, 1), "loss": loss_value,
                                      "ce": float(out.ce.detach()), "u": float(out.uncertainty.detach()),
                                      "lr": self.opt.param_groups[1]["lr"], "K": int(valid.shape[1])})
                if self.iteration % a.save_every == 0:
                    self._save("last.pth", True, loss_value, t0)
                if a.val_every and self.iteration % a.val_every == 0:
                    self.validate(log_f, t0, loss_value)
            self._save("last.pth", True, loss_value, t0)
            finished = self.iteration >= a.iters
            if finished and self.val_davis is not None and a.val_every and self.iteration % a.val_every:
                self.validate(log_f, t0, loss_value)
            if finished and (self.val_davis is None or not a.val_every):  # no validation: the best is the last
                self._save("best.pth", False, loss_value, t0)
        finally:
            bar.close()
            log_f.close()
        return {"iterations": self.iteration, "losses": losses, "best_val": self.best,
                "elapsed_s": round(time.time() - t0, 1)}


def train(args: argparse.Namespace) -> dict:
    return Trainer(args).run()
