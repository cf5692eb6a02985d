"""``torch_scatter`` stand-in: scatter_sum / scatter_mean with its semantics.

torch_scatter.scatter_mean(src, index, dim, out): ``index`` is broadcast to
``src`` (a 1-D index runs along ``dim``), src is summed into ``out`` at the
index positions, then every slot is divided by how many src entries landed
in it (slots that got none are divided by 1, so a zero ``out`` keeps 0 there).
"""
from __future__ import annotations

import torch

__all__ = ["scatter_sum", "scatter_add", "scatter_mean"]


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    # torch_scatter.utils.broadcast
    if dim < 0:
        dim = src.dim() + dim
    if index.dim() == 1:
        for _ in range(dim):
            index = index.unsqueeze(0)
    for _ in range(index.dim(), src.dim()):
        index = index.unsqueeze(-1)
    return index.expand_as(src)


def _out_for(src: torch.Tensor, index: torch.Tensor, dim: int, out, dim_size):
    if out is not None:
        return out
    size = list(src.size())
    if dim_size is not None:
        size[dim] = dim_size
    elif index.numel() == 0:
        size[dim] = 0
    else:
        size[dim] = int(index.max()) + 1
    return src.new_zeros(size)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                dim_size: int | None = None) -> torch.Tensor:
    dim = src.dim() + dim if dim < 0 else dim
    index = _broadcast(index, src, dim)
    out = _out_for(src, index, dim, out, dim_size)
    return out.scatter_add_(dim, index, src)


scatter_add = scatter_sum


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                 dim_size: int | None = None) -> torch.Tensor:
    dim = src.dim() + dim if dim < 0 else dim
    out = scatter_sum(src, index, dim, out, dim_size)
    dim_size = out.size(dim)
    index_dim = dim if dim >= 0 else dim + src.dim()
    if index.dim() <= index_dim:
        index_dim = index.dim() - 1
    ones = torch.ones(index.size(), dtype=src.dtype, device=src.device)
    count = scatter_sum(ones, index, index_dim, None, dim_size)
    count[count < 1] = 1
    count = _broadcast(count, out, dim)
    if out.is_floating_point():
        out.true_divide_(count)
    else:
        out.div_(count, rounding_mode="floor")
    return out
