"""The AFB-URR network: memory encoder, query encoder, key/value projection, memory read, decoder.

Every method takes a batch of B frames (B clips in training, B = 1 for one video at inference) with K
objects each, so training and inference run the same code. The feature bank (``vos_core.inference.feature_bank``)
keeps the memory at inference and reads it with the same attention as :meth:`AFBURR.read`, in blocks and
counting reads as it goes; training reads a plain list of memorised frames with :meth:`AFBURR.read`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoder import Decoder
from .encoders import KeyValue, encoder_channels, make_encoders
from .memory_read import memory_read


@dataclass
class QueryFeatures:
    """What the query encoder gives the read and the decoder for B frames."""

    key: torch.Tensor  # B×keydim×N (N = h16·w16)
    value: torch.Tensor  # B×valdim×N
    r3: torch.Tensor  # B×C3×H/8×W/8
    r2: torch.Tensor  # B×C2×H/4×W/4
    r1: torch.Tensor  # B×C1×H/2×W/2
    shape16: tuple[int, int]

    def take(self, rows: list[int]) -> "QueryFeatures":
        """The features of some of the B frames (all of them, as they are, when rows is 0..B-1)."""
        if rows == list(range(self.key.shape[0])):
            return self
        idx = torch.tensor(rows, device=self.key.device)
        return QueryFeatures(*(t.index_select(0, idx) for t in (self.key, self.value, self.r3, self.r2, self.r1)),
                             self.shape16)


class AFBURR(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        r1_ch, res2_ch, res3_ch, res4_ch = encoder_channels(c.trunk)
        self.encoder_m, self.encoder_q = make_encoders(c.trunk)
        self.keyval_r4 = KeyValue(res4_ch, c.keydim, c.valdim)
        self.decoder = Decoder(c.valdim, res3_ch, res2_ch, c.mdim_global, c.mdim_local, r1_ch)
        #: Keep the trunks' batch-norm statistics (and affine parameters' running state) frozen in
        #: training mode: what a pretrained trunk trained with small batches needs.
        self.freeze_trunk_bn = False
        #: The shorter side the weights were trained for (set by ``load_model`` from the checkpoint's
        #: ``working_size``): the Segmenter's default working size. None: the input size.
        self.working_size: int | None = None
        #: The fitted per-frame quality estimator stored with the weights (set by ``load_model``), or None.
        self.quality_model = None

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_trunk_bn:
            for enc in (self.encoder_m, self.encoder_q):
                for m in enc.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def encode_memory(self, frames: torch.Tensor, masks: torch.Tensor):
        """frames: B×3×H×W (padded to /16); masks: B×K×H×W soft masks, background first.
        Returns keys B×K×keydim×N and values B×K×valdim×N."""
        b, k = masks.shape[:2]
        m = masks.reshape(b * k, 1, *masks.shape[2:]).to(frames.dtype)
        r4, _ = self.encoder_m(frames, m, (1 - m).clamp(0, 1))
        keys, values = self.keyval_r4(r4)
        return keys.view(b, k, *keys.shape[1:]), values.view(b, k, *values.shape[1:])

    def encode_query(self, frames: torch.Tensor) -> QueryFeatures:
        """frames: B×3×H×W (padded to /16)."""
        r4, r3, r2, r1 = self.encoder_q(frames)
        key, value = self.keyval_r4(r4)
        return QueryFeatures(key, value, r3, r2, r1, tuple(r4.shape[-2:]))

    @staticmethod
    def read(query_key: torch.Tensor, mem_keys: torch.Tensor, mem_values: torch.Tensor) -> torch.Tensor:
        """Dense memory read. query_key: B×keydim×N; mem_keys: B×K×keydim×M; mem_values: B×K×valdim×M.
        Returns B×K×valdim×N."""
        return memory_read(query_key.unsqueeze(1), mem_keys, mem_values)

    def decode(self, readout: torch.Tensor, q: QueryFeatures, logits: bool = False, with_rough: bool = False):
        """readout: B×K×valdim×N memory read per object. Returns B×K×H×W per-object foreground
        probabilities (before soft aggregation), or with ``logits`` their log-odds (training); with
        ``with_rough`` also the rough masks before the refinement, B×K×H/2×W/2 (see :meth:`decode_rough`)."""
        b, k = readout.shape[:2]
        fg = self.decoder(self._decoder_input(readout, q), q.r3, q.r2, q.r1, k, logits=logits, with_rough=with_rough)
        if with_rough:
            fg, rough = fg
            return fg.view(b, k, *fg.shape[1:]), rough
        return fg.view(b, k, *fg.shape[1:])

    def decode_rough(self, readout: torch.Tensor, q: QueryFeatures) -> torch.Tensor:
        """The decoder's rough masks only (no uncertain-region refinement): B×K×H/2×W/2 probabilities,
        normalised over the K objects. A cheap second opinion (the quality estimate's reference read)."""
        return self.decoder.rough(self._decoder_input(readout, q), q.r3, q.r2, readout.shape[1])

    @staticmethod
    def _decoder_input(readout: torch.Tensor, q: QueryFeatures) -> torch.Tensor:
        b, k = readout.shape[:2]
        h, w = q.shape16
        return torch.cat([readout, q.value.unsqueeze(1).expand(-1, k, -1, -1)], dim=2).view(b * k, -1, h, w)


def soft_aggregate(fg: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-object foreground probabilities -> logits log(p/(1-p)) (clamped as
    the authors do) -> softmax over objects."""
    p = fg.clamp(1e-7, 1 - 1e-7)
    return F.softmax(torch.log(p / (1 - p)), dim=dim)
