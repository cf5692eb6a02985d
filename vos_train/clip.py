"""The training forward pass over a batch of clips, with the network's batched methods.

Per clip of T frames: memorise frame 0 with its one-hot ground truth; for t = 1..T-1: query-encode frame
t, read the memory, decode, soft-aggregate over objects (padded objects masked out), then memorise frame t
with its (detached) soft prediction and add it to the memory (``memory="growing"``, as at inference) or
keep frame 0 only (``memory="first"``, as the authors train).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vos_core.model import AFBURR
from vos_core.model.network import QueryFeatures

from .loss import aggregate_log_probs, pixel_ce, uncertainty_loss


@dataclass
class ClipLoss:
    total: torch.Tensor
    ce: torch.Tensor
    uncertainty: torch.Tensor
    probs: list[torch.Tensor]  # per predicted frame, B×K×H×W soft-aggregated probabilities


def _frame_of(q: QueryFeatures, b: int, t: int) -> QueryFeatures:
    """The query features of predicted frame ``t`` (1-based) of each of ``b`` clips, from a batch
    holding the (T-1) predicted frames of every clip, clip-major."""
    def pick(x):
        return x.view(b, -1, *x.shape[1:])[:, t - 1]
    return QueryFeatures(pick(q.key), pick(q.value), pick(q.r3), pick(q.r2), pick(q.r1), q.shape16)


def clip_forward(model: AFBURR, frames: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                 memory: str = "growing", lu: float = 0.5, ce_top: float = 1.0) -> ClipLoss:
    """frames B×T×3×H×W in [0, 1], labels B×T×H×W (0..K-1), valid B×K (background always valid)."""
    b, t_n = frames.shape[:2]
    k = valid.shape[1]
    onehot = F.one_hot(labels[:, 0].clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
    keys, values = model.encode_memory(frames[:, 0], onehot)
    mem_k, mem_v = [keys], [values]
    # Query features of every predicted frame in one batch (they do not depend on predictions).
    q_all = model.encode_query(frames[:, 1:].flatten(0, 1))
    absent = ~valid
    ce_total = u_total = 0.0
    probs_out = []
    for t in range(1, t_n):
        q = _frame_of(q_all, b, t)
        readout = model.read(q.key, torch.cat(mem_k, dim=-1), torch.cat(mem_v, dim=-1))
        # Losses in fp32 whatever the network's precision (under bf16 autocast the decoder's output is bf16).
        log_probs = aggregate_log_probs(model.decode(readout, q, logits=True).float(), absent)
        probs = log_probs.exp()
        ce_total = ce_total + pixel_ce(log_probs, labels[:, t], ce_top)
        u_total = u_total + uncertainty_loss(probs)
        probs_out.append(probs)
        if memory == "growing" and t < t_n - 1:
            keys, values = model.encode_memory(frames[:, t], probs.detach())
            mem_k.append(keys)
            mem_v.append(values)
    n = t_n - 1
    ce, ul = ce_total / n, u_total / n
    return ClipLoss(ce + lu * ul, ce, ul, probs_out)
