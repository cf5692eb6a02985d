"""The Adaptive Feature Bank (AFB): bounded per-object memory.

Each object (background included) owns keys (keydim×N) and values (valdim×N),
plus, per entry, the frame it was added and its accumulated read count
("usage"). New frames are absorbed: a new feature whose cosine similarity to
its nearest stored key exceeds ``merge_thres`` is merged into that entry by a
moving average; the rest are appended. When appending would exceed the
object's budget, the least-frequently-used entries (usage / age) are evicted.

Differences from the authors' implementation (on purpose):
- eviction removes exactly as many entries as needed, lowest LFU first (theirs
  removes every entry under an integer threshold, possibly all of them);
- the per-object budget is an integer, ``budget // num_objects``;
- a hard cap holds whatever the input: if one frame brings more novel features
  than the budget allows, a deterministic, evenly strided subset of them is
  kept, and at least a quarter of the budget's worth of old entries survive;
- an empty bank reads as zeros instead of crashing;
- objects can be added mid-video without resetting the others.
Storage is preallocated and grown in chunks, not concatenated every frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.memory_read import (attend, bucket_length, drop_subnormal_, onednn_available, onednn_linear, query_rows,
                                 read_values)
from .config import DEFAULTS, SegmenterConfig

READ_THRESHOLD = 1e-3  # attention weight above which a read counts as a use
USAGE_CLAMP = 1e5  # as the authors: keeps usage finite
_CORR_CHUNK = 8192  # bank rows per block when matching new features
_READ_BLOCK = 1 << 25  # attention-matrix elements per block of query pixels (128 MiB in fp32)
PRODUCTS = ("mm", "onednn")  # the read's matrix products: torch.mm (MKL on CPU), or oneDNN with bucketed shapes
_ROW_BUCKET = 64  # oneDNN read: query blocks are padded to a bucketed number of rows, at least this many


class ObjectMemory:
    """Storage for one object: columns [0, n) of preallocated buffers."""

    def __init__(self, keydim: int, valdim: int, device, dtype=torch.float32, capacity: int = 0):
        self.keydim, self.valdim = keydim, valdim
        self.n = 0
        # Zeroed, not empty: the bucketed read multiplies columns past n (by a zero attention weight), and
        # uninitialised memory may hold NaNs. Columns a compaction leaves behind hold old, finite entries.
        self.keys_buf = torch.zeros(keydim, capacity, device=device, dtype=dtype)
        self.values_buf = torch.zeros(valdim, capacity, device=device, dtype=dtype)
        self.added_buf = torch.empty(capacity, device=device, dtype=torch.float32)
        self.usage_buf = torch.empty(capacity, device=device, dtype=torch.float32)
        self.evicted_total = 0

    @property
    def keys(self) -> torch.Tensor:
        return self.keys_buf[:, : self.n]

    @property
    def values(self) -> torch.Tensor:
        return self.values_buf[:, : self.n]

    @property
    def added(self) -> torch.Tensor:
        return self.added_buf[: self.n]

    @property
    def usage(self) -> torch.Tensor:
        return self.usage_buf[: self.n]

    @property
    def capacity(self) -> int:
        return self.keys_buf.shape[1]

    def reserve(self, needed: int, limit: int) -> None:
        """Grows the buffers geometrically (capped at ``limit``) to hold ``needed`` entries."""
        if needed <= self.capacity:
            return
        cap = max(needed, min(max(limit, needed), max(2 * self.capacity, 1024)))
        for name in ("keys_buf", "values_buf"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], cap)
            new[:, : self.n] = old[:, : self.n]
            setattr(self, name, new)
        for name in ("added_buf", "usage_buf"):
            old = getattr(self, name)
            new = old.new_empty(cap)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def append(self, keys: torch.Tensor, values: torch.Tensor, frame_idx: int, limit: int) -> None:
        m = keys.shape[1]
        self.reserve(self.n + m, limit)
        s = slice(self.n, self.n + m)
        self.keys_buf[:, s] = keys
        self.values_buf[:, s] = values
        self.added_buf[s] = frame_idx
        self.usage_buf[s] = 0
        self.n += m

    def keep(self, mask: torch.Tensor) -> None:
        """Compacts storage to the entries where ``mask`` is true."""
        idx = mask.nonzero().squeeze(1)
        k = idx.numel()
        self.keys_buf[:, :k] = self.keys_buf[:, idx]
        self.values_buf[:, :k] = self.values_buf[:, idx]
        self.added_buf[:k] = self.added_buf[idx]
        self.usage_buf[:k] = self.usage_buf[idx]
        self.n = k


class FeatureBank:
    """Per-object adaptive feature banks for one video.

    ``budget`` is the total number of features over all objects (the authors
    used 300,000 for an 11 GB GPU); each object gets ``budget // num_objects``.
    """

    def __init__(self, keydim: int, valdim: int, budget: int = DEFAULTS.budget, merge_thres: float = DEFAULTS.merge_thres,
                 update_rate: float = DEFAULTS.update_rate, device="cpu", dtype=torch.float32, products: str = "mm"):
        """``products``: how the read multiplies, "mm" (torch.mm) or "onednn" (CPU, float32: oneDNN's inner
        product over the bank padded to a few bucketed lengths, the padding masked out; see BENCHMARKS.md
        for when it is faster)."""
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {list(PRODUCTS)}, got {products!r}")
        if budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget}")
        if not 0.0 <= update_rate <= 1.0:
            raise ValueError(f"update_rate must be in [0, 1], got {update_rate}")
        self.keydim, self.valdim = keydim, valdim
        self.budget = int(budget)
        self.merge_thres = float(merge_thres)
        self.update_rate = float(update_rate)
        self.device, self.dtype = torch.device(device), dtype
        self.products = products
        if products == "onednn" and (self.device.type != "cpu" or dtype != torch.float32 or not onednn_available()):
            raise ValueError("products='onednn' needs a float32 bank on a CPU with oneDNN")
        # On GPU, merge with fixed-shape ops so the frame loop does not wait on the host.
        self.sync_free = self.device.type != "cpu"
        self.objects: list[ObjectMemory] = []

    @classmethod
    def from_config(cls, keydim: int, valdim: int, config: SegmenterConfig, device="cpu") -> "FeatureBank":
        """The memory factory the Segmenter uses by default (kept in fp32 whatever the precision)."""
        return cls(keydim, valdim, config.budget, config.merge_thres, config.update_rate, device=device)

    @classmethod
    def reference(cls, keydim: int, valdim: int, device="cpu") -> "FeatureBank":
        """Storage for the reference memory (reference.py: which frames it keeps, a few per object), the second
        read the quality estimate compares against. Never merging (each frame stays whole, so it can be
        dropped whole) and unbounded here: ReferenceMemory bounds it in frames."""
        return cls(keydim, valdim, budget=1 << 40, merge_thres=2.0, update_rate=0.0, device=device)

    # -- shape ---------------------------------------------------------------
    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def object_budget(self) -> int:
        return max(1, self.budget // max(1, self.num_objects))

    def sizes(self) -> list[int]:
        return [o.n for o in self.objects]

    def evicted(self) -> list[int]:
        """Features evicted so far, per object."""
        return [o.evicted_total for o in self.objects]

    # -- writing -------------------------------------------------------------
    def add_objects(self, keys: torch.Tensor, values: torch.Tensor, frame_idx: int) -> None:
        """Starts banks for new objects from their first memorised frame.
        keys: J×keydim×M, values: J×valdim×M."""
        for j in range(keys.shape[0]):
            mem = ObjectMemory(self.keydim, self.valdim, self.device, self.dtype)
            self.objects.append(mem)
        budget = self.object_budget
        for j, mem in enumerate(self.objects[-keys.shape[0]:]):
            self._absorb_append(mem, keys[j], values[j], frame_idx, budget)

    def reset(self, objects: list[int]) -> None:
        """Empties these objects' memories (a correction restarts them); the next ``update`` refills them."""
        for i in objects:
            self.objects[i].n = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor, frame_idx: int, objects: list[int] | None = None) -> None:
        """Absorbs a memorised frame: keys K×keydim×M, values K×valdim×M, one
        row per object in ``objects`` (default: all, in bank order)."""
        objects = list(range(self.num_objects)) if objects is None else objects
        if keys.shape[0] != len(objects):
            raise ValueError(f"got features for {keys.shape[0]} objects, expected {len(objects)}")
        budget = self.object_budget
        for row, i in enumerate(objects):
            mem = self.objects[i]
            if mem.n == 0:
                self._absorb_append(mem, keys[row], values[row], frame_idx, budget)
                continue
            novel = self._merge(mem, keys[row], values[row])
            self._absorb_append(mem, keys[row][:, novel], values[row][:, novel], frame_idx, budget)
            mem.usage_buf[: mem.n].clamp_(0, USAGE_CLAMP)

    def _nearest(self, mem: ObjectMemory, new_keys_n: torch.Tensor):
        """Cosine similarity of each new key to its nearest stored key, in blocks
        of bank rows so the bank×new matrix is never materialised whole."""
        best_val = best_idx = None
        # New keys as rows, so each one's maximum over the bank runs along contiguous memory.
        bank_rows = F.normalize(mem.keys.t(), dim=1).contiguous()
        new_rows = new_keys_n.t().contiguous()
        for s in range(0, mem.n, _CORR_CHUNK):
            corr = new_rows @ bank_rows[s: s + _CORR_CHUNK].t()  # M×chunk
            v, i = corr.max(dim=1)
            i = i + s
            if best_val is None:
                best_val, best_idx = v, i
            else:
                better = v > best_val  # strict: ties keep the earlier entry, as argmax does
                best_val = torch.where(better, v, best_val)
                best_idx = torch.where(better, i, best_idx)
        return best_val, best_idx

    def _merge(self, mem: ObjectMemory, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Merges new features close to a stored key into it; returns the mask of the rest."""
        keys_n = F.normalize(keys, dim=0)
        best_val, best_idx = self._nearest(mem, keys_n)
        close = best_val > self.merge_thres
        r = self.update_rate
        if self.sync_free:
            self._merge_dense(mem, keys_n, F.normalize(values, dim=0), close, best_idx, r)
        elif bool(close.any()):
            self._merge_sparse(mem, keys_n, F.normalize(values, dim=0), close, best_idx, r)
        return ~close

    @staticmethod
    def _merge_sparse(mem, keys_n, values_n, close, best_idx, r):
        """Touches only the stored entries that receive a merge (cheap on CPU; syncs on GPU)."""
        targets = best_idx[close]
        uniq, inverse = torch.unique(targets, return_inverse=True)
        counts = torch.bincount(inverse, minlength=uniq.numel()).to(keys_n.dtype)
        for buf, new_n in ((mem.keys_buf, keys_n), (mem.values_buf, values_n)):
            # Mean of the normalised new features per target, mixed into the
            # normalised stored feature, rescaled to the stored magnitude.
            mean_new = torch.zeros(buf.shape[0], uniq.numel(), device=buf.device, dtype=buf.dtype)
            mean_new.index_add_(1, inverse, new_n[:, close])
            mean_new /= counts
            old = buf[:, uniq]
            buf[:, uniq] = old.norm(dim=0) * ((1 - r) * F.normalize(old, dim=0) + r * mean_new)

    @staticmethod
    def _merge_dense(mem, keys_n, values_n, close, best_idx, r):
        """Same update with fixed shapes over the whole bank: no data-dependent
        sizes, so no host synchronisation (used on GPU)."""
        w = close.to(keys_n.dtype)
        counts = torch.zeros(mem.n, device=w.device, dtype=w.dtype).index_add_(0, best_idx, w)
        hit = counts > 0
        for buf, new_n in ((mem.keys_buf, keys_n), (mem.values_buf, values_n)):
            sums = torch.zeros(buf.shape[0], mem.n, device=buf.device, dtype=buf.dtype)
            sums.index_add_(1, best_idx, new_n * w)
            old = buf[:, : mem.n]
            merged = old.norm(dim=0) * ((1 - r) * F.normalize(old, dim=0) + r * sums / counts.clamp(min=1))
            buf[:, : mem.n] = torch.where(hit, merged, old)

    def _absorb_append(self, mem: ObjectMemory, keys: torch.Tensor, values: torch.Tensor, frame_idx: int,
                       budget: int) -> None:
        m = keys.shape[1]
        keep_old = min(mem.n, max(1, budget // 4))
        room_for_new = max(0, budget - keep_old)
        if m > room_for_new:  # hard cap: more novel features than the bank may hold
            pick = torch.linspace(0, m - 1, room_for_new, device=keys.device).round().long() if room_for_new else \
                torch.empty(0, dtype=torch.long, device=keys.device)
            keys, values, m = keys[:, pick], values[:, pick], room_for_new
        overflow = mem.n + m - budget
        if overflow > 0:
            self._evict(mem, overflow, frame_idx)
        if m:
            mem.append(keys, values, frame_idx, limit=budget)

    @staticmethod
    def _evict(mem: ObjectMemory, count: int, frame_idx: int) -> None:
        """Removes the ``count`` entries with the lowest usage / age (LFU)."""
        age = (frame_idx - mem.added).clamp(min=1)
        lfu = mem.usage / age
        # Stable sort: among equal scores the oldest entry goes first.
        order = torch.sort(lfu, stable=True).indices
        keep = torch.ones(mem.n, dtype=torch.bool, device=lfu.device)
        keep[order[:count]] = False
        mem.keep(keep)
        mem.evicted_total += count

    # -- reading -------------------------------------------------------------
    def read(self, query_key: torch.Tensor, count_usage: bool = True) -> torch.Tensor:
        """Attention read of every object's memory for one query frame.

        query_key: keydim×HW. Returns K×valdim×HW. Entries whose attention
        weight exceeds 1e-3 for a query pixel add log(1 + #such pixels) to
        their usage (fused here so the attention matrix is used once). The
        softmax runs over the bank for each query pixel, so query pixels are
        processed in blocks: exact, and the bank×HW matrix never exists whole."""
        hw = query_key.shape[1]
        out = query_key.new_zeros(self.num_objects, self.valdim, hw)
        # Query pixels as rows (HW×keydim), pre-scaled once: the similarities come out
        # block×N, so the softmax over the bank and the usage count run along
        # contiguous memory (on CPU: softmax 83 -> 46 ms, count 113 -> 65 ms for
        # 30,000 entries × 1,620 pixels, against the bank-major order).
        rows = query_rows(query_key)
        onednn = self.products == "onednn" and not torch.is_autocast_enabled("cpu")
        for i, mem in enumerate(self.objects):
            if mem.n == 0:
                continue
            if onednn:
                self._read_bucketed(rows, mem, out[i], count_usage)
                continue
            keys, values = mem.keys, mem.values  # keydim×N, valdim×N
            used = torch.zeros(mem.n, device=query_key.device, dtype=torch.int32) if count_usage else None
            step = max(1, _READ_BLOCK // mem.n)
            for s in range(0, hw, step):
                attn = drop_subnormal_(attend(rows[s: s + step], keys))  # block×N
                out[i, :, s: s + step] = read_values(attn, values)
                if count_usage:
                    used += attn.gt(READ_THRESHOLD).sum(dim=0, dtype=torch.int32)
            if count_usage:
                mem.usage_buf[: mem.n] += torch.log(used.to(torch.float32) + 1)
        return out

    @staticmethod
    def _read_bucketed(rows: torch.Tensor, mem: ObjectMemory, out: torch.Tensor, count_usage: bool) -> None:
        """``read`` for one object through oneDNN, on operands of bucketed shapes: the bank's first
        ``width`` columns (its length rounded up to a bucket, at most its capacity; the columns past n get
        a -inf bias, so exactly zero weight) and query blocks of a bucketed number of rows (zero rows
        added, their outputs dropped). A bank of any length then brings one of a few shapes."""
        n, hw = mem.n, rows.shape[0]
        width = min(bucket_length(n), mem.capacity)
        # oneDNN takes its weights dense: one copy per read (the values are already dense at full capacity)
        # rather than one inside every block's product
        keys = mem.keys_buf[:, :width].t().contiguous()  # width×keydim
        values = mem.values_buf[:, :width].contiguous()  # valdim×width
        bias = torch.zeros(width, dtype=rows.dtype, device=rows.device)
        bias[n:] = float("-inf")
        step = max(_ROW_BUCKET, _READ_BLOCK // width // _ROW_BUCKET * _ROW_BUCKET)
        used = torch.zeros(n, device=rows.device, dtype=torch.int32) if count_usage else None
        for s in range(0, hw, step):
            block = rows[s: s + step]
            m = block.shape[0]
            padded = min(step, bucket_length(m, floor=_ROW_BUCKET))
            if padded > m:
                block = F.pad(block, (0, 0, 0, padded - m))
            attn = drop_subnormal_(torch.softmax(onednn_linear(block, keys, bias), dim=-1))  # padded×width
            out[:, s: s + m] = onednn_linear(attn, values)[:m].t()
            if count_usage:
                used += attn[:m, :n].gt(READ_THRESHOLD).sum(dim=0, dtype=torch.int32)
        if count_usage:
            mem.usage_buf[:n] += torch.log(used.to(torch.float32) + 1)
