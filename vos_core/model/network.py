"""The AFB-URR network: memory encoder, query encoder, key/value, decoder.

The memory read itself lives with the feature bank (it updates read counts as
it reads); this module only turns frames into keys/values and a readout into
per-object probabilities. All objects of a frame go through the memory
encoder and the decoder as one batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoder import Decoder
from .encoders import KeyValue, MemoryEncoder, QueryEncoder
from .trunk import trunk_channels


class QueryFeatures:
    """What the query encoder gives the decoder for one frame."""

    __slots__ = ("key", "value", "r3", "r2", "r1", "shape16")

    def __init__(self, key, value, r3, r2, r1, shape16):
        self.key, self.value, self.r3, self.r2, self.r1, self.shape16 = key, value, r3, r2, r1, shape16


class AFBURR(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        _, res3_ch, res4_ch = trunk_channels(c.trunk)
        res2_ch = trunk_channels(c.trunk)[0]
        self.encoder_m = MemoryEncoder(c.trunk)
        self.encoder_q = QueryEncoder(c.trunk)
        self.keyval_r4 = KeyValue(res4_ch, c.keydim, c.valdim)
        self.decoder = Decoder(c.valdim, res3_ch, res2_ch, c.mdim_global, c.mdim_local)

    def encode_memory(self, frame: torch.Tensor, masks: torch.Tensor):
        """frame: 1×3×H×W (padded to /16); masks: K×H×W soft masks, background
        first. Returns keys K×keydim×N and values K×valdim×N."""
        m = masks.unsqueeze(1).to(frame.dtype)
        r4, _ = self.encoder_m(frame, m, (1 - m).clamp(0, 1))
        return self.keyval_r4(r4)

    def encode_query(self, frame: torch.Tensor) -> QueryFeatures:
        """frame: 1×3×H×W (padded to /16)."""
        r4, r3, r2, r1 = self.encoder_q(frame)
        key, value = self.keyval_r4(r4)
        return QueryFeatures(key[0], value[0], r3, r2, r1, r4.shape[-2:])

    def decode(self, readout: torch.Tensor, q: QueryFeatures) -> torch.Tensor:
        """readout: K×valdim×N memory read per object. Returns K×H×W
        per-object foreground probabilities (before soft aggregation)."""
        k = readout.shape[0]
        h, w = q.shape16
        x = torch.cat([readout, q.value.unsqueeze(0).expand(k, -1, -1)], dim=1).view(k, -1, h, w)
        return self.decoder(x, q.r3, q.r2, q.r1, k)


def soft_aggregate(fg: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-object foreground probabilities -> logits log(p/(1-p)) (clamped as
    the authors do) -> softmax over objects."""
    p = fg.clamp(1e-7, 1 - 1e-7)
    return F.softmax(torch.log(p / (1 - p)), dim=dim)
