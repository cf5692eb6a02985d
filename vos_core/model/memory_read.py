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


def drop_subnormal_(attn: torch.Tensor) -> torch.Tensor:
    """Sets attention weights below the smallest normal float (exp of a similarity far below the row's
    maximum underflows into subnormals) to exactly zero, in place. Why: many x86 CPUs multiply subnormal
    operands through a slow path; the bank's products over such weights ran 35x slower (3.2 s against 0.09 s
    over two frames at 480p with the shipped weights on an Intel Xeon), about a tenth of a trained model's
    weights being subnormal. The readout moves by at most bank length x 1.2e-38 x |value|, far below float32
    rounding of the result. The same as the CPU's flush-to-zero mode, without changing the floating-point mode
    of the caller's threads (a library should leave that alone). CPU tensors only: GPUs multiply subnormals at
    full speed, so there the extra pass would cost without paying."""
    if attn.device.type != "cpu":
        return attn
    return torch.threshold_(attn, torch.finfo(attn.dtype).tiny, 0.0)


def read_values(attn: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """attention ...×N×M, memory values ...×V×M -> readout ...×V×N."""
    return mem_value @ attn.transpose(-1, -2)


def memory_read(query_key: torch.Tensor, mem_key: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """Dense read: query keys ...×C×N, memory keys ...×C×M, values ...×V×M -> ...×V×N (broadcasting over
    the leading dims, e.g. B×1×C×N against B×K×C×M)."""
    return read_values(attend(query_rows(query_key), mem_key), mem_value)


# -- the bank's products through oneDNN, with bucketed shapes (CPU) --------------------------------------
# torch's float32 CPU matmul calls MKL's sgemm; oneDNN's inner product (the op torch's compiler emits for
# linear layers on the CPU) can be faster, but keeps state for every operand shape it has seen (about
# 0.6 MB each, never given back), and a feature bank changes length on most frames. Padding the length
# to a few bucket sizes (the padded entries masked out of the softmax by a -inf bias) bounds the shapes.

#: Bucket sizes per octave (4: at most 25% padding) and the smallest bucket.
BUCKETS_PER_OCTAVE = 4
MIN_BUCKET = 1024


def bucket_length(n: int, per_octave: int = BUCKETS_PER_OCTAVE, floor: int = MIN_BUCKET) -> int:
    """The smallest bucket size >= n: ``floor``, then 2^e x (1 + i / per_octave)."""
    if n <= floor:
        return floor
    base = 1 << ((n - 1).bit_length() - 1)  # base < n <= 2 base
    step = max(1, base // per_octave)
    return base + -(-(n - base) // step) * step


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x N×C, weight M×C -> x @ weight.T (+ bias) through oneDNN's inner product (fp32, CPU)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
