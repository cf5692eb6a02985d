"""The attention read over a memory (STM's space-time read), shared by training and the feature bank.

Similarities are computed with query pixels as rows (N×M: query pixels × memory entries), so the softmax
over the memory runs along contiguous memory, and the query is scaled by 1/sqrt(keydim) once.
"""
from __future__ import annotations

import math

import torch


def query_rows(query_key: torch.Tensor) -> torch.Tensor:
    """...×C×N keys of the query frame -> ...×N×C rows, pre-scaled by 1/sqrt(C)."""
    return (query_key * (1.0 / math.sqrt(query_key.shape[-2]))).transpose(-1, -2).contiguous()


def attend(rows: torch.Tensor, mem_key: torch.Tensor) -> torch.Tensor:
    """rows ...×N×C (from :func:`query_rows`), memory keys ...×C×M -> attention ...×N×M (softmax over M)."""
    return torch.softmax(rows @ mem_key, dim=-1)


def read_values(attn: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """attention ...×N×M, memory values ...×V×M -> readout ...×V×N."""
    return mem_value @ attn.transpose(-1, -2)


def memory_read(query_key: torch.Tensor, mem_key: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """Dense read: query keys ...×C×N, memory keys ...×C×M, values ...×V×M -> ...×V×N (broadcasting over
    the leading dims, e.g. B×1×C×N against B×K×C×M)."""
    return read_values(attend(query_rows(query_key), mem_key), mem_value)
