"""Refinement decoder with Uncertain-Region Refinement (URR)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rows import per_frame, per_frame_sum


def uncertainty_map(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """U = exp(1 - top1/(top2 + 1e-8)) over the object axis ``dim``.

    1 where the two most likely objects tie, falling towards 0 as the winner
    dominates. Needs at least two objects (background counts as one)."""
    top = probs.topk(k=2, dim=dim).values
    top1, top2 = top.select(dim, 0), top.select(dim, 1)
    return torch.exp(1 - top1 / (top2 + 1e-8)).unsqueeze(dim)


def full_precision(like: torch.Tensor):
    """Autocast off on ``like``'s device type for the block it guards; its inputs go through :func:`upcast`."""
    return torch.autocast(like.device.type, enabled=False)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32; float32 and float64 as they are (fp32 and float64 runs are unchanged)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class ResBlock(nn.Module):
    def __init__(self, indim: int, outdim: int | None = None, stride: int = 1):
        super().__init__()
        outdim = outdim or indim
        self.downsample = None
        if indim != outdim or stride != 1:
            self.downsample = nn.Conv2d(indim, outdim, 3, stride, 1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, stride, 1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, 1, 1)

    def forward(self, x):
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class Refine(nn.Module):
    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.convFS = nn.Conv2d(inplanes, planes, 3, 1, 1)
        self.ResFS = ResBlock(planes)
        self.ResMM = ResBlock(planes)

    def forward(self, skip, coarse):
        # ``skip`` comes from the query frame and is the same for every object of that frame:
        # it is passed once per frame (B rows against B·K for ``coarse``) and broadcast, so
        # convFS/ResFS run once per frame instead of once per object. Same arithmetic as per-object runs.
        s = self.ResFS(self.convFS(skip))
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.ResMM(per_frame_sum(s, up))


class Decoder(nn.Module):
    LOCAL = 7  # URR neighbourhood

    def __init__(self, valdim: int, res3_ch: int, res2_ch: int, mdim_global: int = 256, mdim_local: int = 32,
                 r1_ch: int = 64):
        super().__init__()
        self.convFM = nn.Conv2d(2 * valdim, mdim_global, 3, 1, 1)
        self.ResMM = ResBlock(mdim_global)
        self.RF3 = Refine(res3_ch, mdim_global)
        self.RF2 = Refine(res2_ch, mdim_global)
        self.pred2 = nn.Conv2d(mdim_global, 2, 3, 1, 1)
        # URR local branch on the stem features r1 and their local mask-weighted mean.
        self.local_convFM = nn.Conv2d(2 * r1_ch, mdim_local, 3, 1, 1)
        self.local_ResMM = ResBlock(mdim_local)
        self.local_pred2 = nn.Conv2d(mdim_local, 2, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, readout, r3, r2, r1, num_objects: int, logits: bool = False, with_rough: bool = False):
        """readout: (B·K)×2valdim×h16×w16, the K objects of each of B frames as consecutive rows; r3, r2,
        r1: the B query frames' features (broadcast over their objects).
        Returns per-object foreground probabilities (B·K)×H×W at the input resolution, or with ``logits``
        their log-odds log(p / (1 - p)) (what training aggregates: exact where p saturates in float); with
        ``with_rough`` also the rough masks before the refinement (see :meth:`rough`)."""
        p, rough = self._global(readout, r3, r2, num_objects)
        k = num_objects
        bk, _, h, w = p.shape
        with full_precision(p):
            u = uncertainty_map(rough).expand(-1, k, -1, -1).reshape(bk, 1, h, w)
            rough_rows = rough.reshape(bk, 1, h, w)

            pad = self.LOCAL // 2
            # Mean of r1 over the object's 7x7 neighbourhood, weighted by its rough mask.
            # (AvgPool counts padded zeros, as the official nn.AvgPool2d does.)
            r1_rows = upcast(per_frame(r1, k))
            num = F.avg_pool2d(r1_rows * rough_rows, self.LOCAL, 1, pad)
            den = F.avg_pool2d(rough_rows, self.LOCAL, 1, pad)
            r1_local = num / (den + 1e-8)
            conf = F.max_pool2d(rough_rows, self.LOCAL, 1, pad)
        out = self._refine(p, u, conf, r1_rows, r1_local, logits)
        return (out, rough) if with_rough else out

    def rough(self, readout, r3, r2, num_objects: int):
        """The rough masks alone, without the uncertain-region refinement (about a quarter of the decoder's
        cost): B×K×H/2×W/2 probabilities, normalised over each frame's K objects."""
        return self._global(readout, r3, r2, num_objects)[1]

    def _global(self, readout, r3, r2, num_objects: int):
        """The global branch: 2-channel logits at 1/2 resolution ((B·K)×2×H/2×W/2) and the rough masks
        B×K×H/2×W/2 (object-normalised)."""
        p = self.ResMM(self.convFM(readout))
        p = self.RF3(r3, p)
        p = self.RF2(r2, p)
        # The heads and the URR arithmetic run in float32 under a bf16/fp16 autocast: bf16's 8-bit mantissa
        # quantises the logits and the probabilities near 0 and 1, U = exp(1 - top1/top2) where top1 ~ top2,
        # and the weighted local mean; with the shipped weights that cost 0.12 J&F on car-shadow, while the
        # 256-channel convolutions above (most of the decoder's cost) lose nothing measurable in bf16.
        with full_precision(p):
            p = self.pred2(upcast(F.relu(p)))  # 1/4, 2 ch logits
            p = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)  # 1/2
            bk, _, h, w = p.shape
            k = num_objects
            rough = F.softmax(p, dim=1)[:, 1].view(bk // k, k, h, w)
            rough = F.softmax(rough, dim=1)  # object-level normalisation
        return p, rough

    def _refine(self, p, u, conf, r1_rows, r1_local, logits: bool):
        """The uncertain-region refinement: a local correction of the logits where U is high."""
        q = self.local_ResMM(self.local_convFM(torch.cat([r1_rows, r1_local], dim=1)))
        with full_precision(q):
            q = conf * self.local_pred2(upcast(F.relu(q)))
            p = p + u * q
            p = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
            if logits:
                return p[:, 1] - p[:, 0]  # log-odds of the 2-way softmax below
            return F.softmax(p, dim=1)[:, 1]
