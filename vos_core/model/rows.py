"""Row layout of batched clips: the K objects of each of B frames are consecutive rows (B·K rows).

Features of a frame that every object shares (the stem convolution of the frame, the decoder's skip
connections) are computed once per frame and broadcast onto its objects' rows with these helpers.
"""
from __future__ import annotations

import torch


def per_frame_sum(shared: torch.Tensor, per_object: torch.Tensor) -> torch.Tensor:
    """shared B×C×H×W + per_object (B·K)×C×H×W -> (B·K)×C×H×W."""
    b = shared.shape[0]
    return (shared.unsqueeze(1) + per_object.view(b, -1, *per_object.shape[1:])).flatten(0, 1)


def per_frame(shared: torch.Tensor, k: int) -> torch.Tensor:
    """B×C×H×W -> (B·K)×C×H×W, each frame's row repeated for its K objects (a view where B = 1)."""
    b = shared.shape[0]
    return shared.unsqueeze(1).expand(b, k, *shared.shape[1:]).flatten(0, 1)
