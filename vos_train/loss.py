"""Training losses: cross-entropy on the soft-aggregated probabilities (optionally bootstrapped) and the
paper's uncertainty loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vos_core.model.decoder import uncertainty_map


def pixel_ce(log_probs: torch.Tensor, labels: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """Cross-entropy over pixels; with top < 1, the mean over each sample's hardest ``top`` fraction
    of pixels (bootstrapped CE, as STCN and XMem train): it keeps a small object from being
    drowned by easy background."""
    ce = F.nll_loss(log_probs, labels, reduction="none").flatten(1)  # B×HW
    if top >= 1.0:
        return ce.mean()
    k = max(1, int(top * ce.shape[1]))
    return ce.topk(k, dim=1).values.mean()


def uncertainty_loss(probs: torch.Tensor) -> torch.Tensor:
    """probs B×K×H×W -> the RMS over pixels of U = exp(1 - top1/top2), mean over the batch (AFB-URR's L_u)."""
    b, _, h, w = probs.shape
    u = uncertainty_map(probs, dim=1)
    return (u.view(b, -1).norm(p=2, dim=1) / math.sqrt(h * w)).mean()


def aggregate_log_probs(fg_logits: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """Per-object foreground log-odds B×K×H×W (``decode(..., logits=True)``) -> log of the soft-aggregated
    probabilities, with padded objects (``absent`` B×K) given none.

    Inference aggregates log(p / (1 - p)) of the clamped probabilities, as the authors do; here the
    log-odds come straight from the decoder's two logits, so nothing saturates: a clamped or rounded
    p = 1 has no gradient, and a run whose decoder saturates for every object never recovers."""
    return F.log_softmax(fg_logits.masked_fill(absent[:, :, None, None], -1e4), dim=1)
