"""Per-frame, per-object statistics that pseudo-labelers filter on.

All are computed from the final (soft-aggregated) probabilities at the output
resolution. See README "Statistics" for how to use each one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .config import DEFAULTS

#: An object "competes" at a pixel when its probability reaches this.
BAND_MIN_PROB = 0.1


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) of a non-empty 1-D tensor, by selection
    instead of a full sort: two ``kthvalue`` calls. Measured 3x faster on a 240x427 band."""
    n = x.numel()
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)  # in x's dtype, as torch.quantile computes it
    lo = int(rank.floor())
    below = torch.kthvalue(x, lo + 1).values
    above = torch.kthvalue(x, min(lo + 2, n)).values
    return torch.lerp(below, above, (rank - lo).to(x.device))


@dataclass
class ObjectStats:
    object_id: int
    area: int  # pixels labelled with this id in the mask
    bbox: list[int] | None  # [x, y, width, height] of the mask (COCO convention), None when empty
    mean_prob: float | None  # mean probability of this object over its mask pixels
    u_mean: float | None  # mean U over the object's band (pixels where p >= 0.1 or labelled it)
    u_p95: float | None  # 95th percentile of U over the band
    band_area: int  # pixels in the band
    bank_size: int  # features in this object's memory after absorbing this frame's predecessor
    bank_evicted: int  # features evicted from this object's memory so far
    centroid: list[float] | None = None  # [x, y] mean pixel position of the mask, None when empty
    components: int = 0  # connected components of the mask (8-connected)
    quality: float | None = None  # predicted J of this mask in [0, 1] (vos_core.inference.quality); None: background
    signals: dict | None = None  # the inputs of the quality estimate (vos_core.inference.quality.SIGNALS)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FrameStats:
    u_mean: float  # mean U over the whole frame
    u_frac_uncertain: float  # fraction of pixels whose U exceeds u_threshold
    u_threshold: float
    objects: list[ObjectStats] = field(default_factory=list)  # background (id 0) first

    def to_dict(self) -> dict:
        return asdict(self)

    def object(self, object_id: int) -> ObjectStats:
        for o in self.objects:
            if o.object_id == object_id:
                return o
        raise KeyError(object_id)


def compute_stats(probs: torch.Tensor, labels: torch.Tensor, u: torch.Tensor, object_ids: list[int],
                  bank_sizes: list[int], bank_evicted: list[int], u_threshold: float = DEFAULTS.u_threshold) -> FrameStats:
    """probs: K×H×W; labels: H×W index into object_ids; u: H×W."""
    k, h, w = probs.shape
    onehot = labels.unsqueeze(0) == torch.arange(k, device=labels.device).view(k, 1, 1)
    area = onehot.flatten(1).sum(1)
    prob_in = (probs * onehot).flatten(1).sum(1)
    band = (probs >= BAND_MIN_PROB) | onehot
    band_area = band.flatten(1).sum(1)
    u_in = (u.unsqueeze(0) * band).flatten(1).sum(1)
    rows = onehot.any(dim=2)  # K×H
    cols = onehot.any(dim=1)  # K×W
    ar_h = torch.arange(h, device=probs.device)
    ar_w = torch.arange(w, device=probs.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    x_sum = (onehot.sum(1).double() * ar_w).sum(1)  # Σ x over the mask's pixels (per column counts × x)
    y_sum = (onehot.sum(2).double() * ar_h).sum(1)
    # 95th percentile of U inside each band: quantile over the band's pixels.
    p95 = []
    uf = u.flatten()
    for i in range(k):
        sel = uf[band[i].flatten()]
        p95.append(quantile(sel.float(), 0.95) if sel.numel() else uf.new_tensor(float("nan")))
    frame_vals = torch.stack([u.mean(), (u > u_threshold).float().mean()])
    packed = torch.stack([area.float(), prob_in, band_area.float(), u_in, y0.float(), y1.float(), x0.float(),
                          x1.float(), torch.stack(p95).float(), x_sum.double(), y_sum.double()],
                         dim=1).cpu().tolist()  # one host sync
    fu = frame_vals.cpu().tolist()
    objects = []
    for i, (a, pin, ba, uin, yy0, yy1, xx0, xx1, q95, xs, ys) in enumerate(packed):
        a, ba = int(a), int(ba)
        objects.append(ObjectStats(
            object_id=int(object_ids[i]),
            area=a,
            bbox=[int(xx0), int(yy0), int(xx1 - xx0 + 1), int(yy1 - yy0 + 1)] if a else None,
            mean_prob=pin / a if a else None,
            u_mean=uin / ba if ba else None,
            u_p95=q95 if ba else None,
            band_area=ba,
            bank_size=int(bank_sizes[i]) if i < len(bank_sizes) else 0,
            bank_evicted=int(bank_evicted[i]) if i < len(bank_evicted) else 0,
            centroid=[xs / a, ys / a] if a else None,
        ))
    return FrameStats(u_mean=fu[0], u_frac_uncertain=fu[1], u_threshold=u_threshold, objects=objects)
