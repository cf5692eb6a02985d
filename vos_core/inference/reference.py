"""The reference memory: what each object's mask is checked against for its quality estimate.

Each object's reference memory holds the frame where its mask was given (its annotation, or its latest
correction) and at most ``frames`` recent frames whose predicted mask agreed with this memory's own read
by at least ``trust`` (IoU of the rough masks), at most one every ``every`` frames. Decoding a frame from
it gives a second opinion: a mask that drifted onto the background was memorised by the feature bank, so
the bank's read agrees with it, but the reference read does not (the drifted frames never agreed, so
they never entered). The recent agreeing frames let the second opinion follow an object that changes
slowly (it grows as it comes closer, turns, changes its lighting): the annotated frame alone stops
recognising it after a few dozen frames, and the disagreement then says "wrong" about a right mask.

A :class:`vos_core.inference.feature_bank.FeatureBank` that never merges stores the frames; this class decides
which frames it keeps. Bounded: at most ``frames + 1`` frames per object, however long the video.
"""
from __future__ import annotations

import torch

from .feature_bank import FeatureBank


class ReferenceMemory:
    """Per object (rows as in the feature bank, background first): its given frame and its trusted frames."""

    def __init__(self, keydim: int, valdim: int, device="cpu", frames: int = 3, trust: float = 0.85, every: int = 5):
        self.bank = FeatureBank.reference(keydim, valdim, device)
        self.frames, self.trust, self.every = int(frames), float(trust), int(every)
        # the given frame is each row's oldest (give() empties the row; admitted frames come later)
        self._admitted_at: list[int] = []  # per row: the last frame it took (given or admitted)

    @property
    def objects(self):
        return self.bank.objects

    def sizes(self) -> list[int]:
        return self.bank.sizes()

    def held_frames(self, row: int) -> list[int]:
        """The frames an object's reference memory holds, oldest first (its given frame among them)."""
        return sorted({int(f) for f in self.bank.objects[row].added.tolist()})

    def add_objects(self, keys: torch.Tensor, values: torch.Tensor, frame: int) -> None:
        """New objects, from the frame their masks were given at. keys: J×keydim×M, values: J×valdim×M."""
        self.bank.add_objects(keys, values, frame)
        self._admitted_at += [frame] * keys.shape[0]

    def give(self, rows: list[int], keys: torch.Tensor, values: torch.Tensor, frame: int) -> None:
        """A correction: these rows forget what they held and start again from this frame."""
        self.bank.reset(rows)
        self.bank.update(keys, values, frame, objects=rows)
        for r in rows:
            self._admitted_at[r] = frame

    def admit(self, agreement: dict[int, float], keys: torch.Tensor, values: torch.Tensor, frame: int) -> list[int]:
        """Takes this frame (keys/values: every row's, K×C×M) for the rows whose mask agreed with the
        reference read by at least ``trust`` (``agreement``: row -> IoU, for the rows predicted here), and
        for the background when every object did; each row's oldest trusted frame goes once it holds more
        than ``frames``. Returns the rows that took it."""
        if not self.frames or not agreement:
            return []
        rows = [r for r, a in agreement.items() if a >= self.trust]
        if len(rows) == len(agreement):  # the background is right where every object is
            rows = [0] + rows
        rows = [r for r in rows if frame - self._admitted_at[r] >= self.every]
        if not rows:
            return []
        self.bank.update(keys[rows], values[rows], frame, objects=rows)
        for r in rows:
            self._admitted_at[r] = frame
            self._forget_oldest(r)
        return rows

    def _forget_oldest(self, row: int) -> None:
        mem = self.bank.objects[row]
        trusted = self.held_frames(row)[1:]  # all but the given frame, the oldest
        if len(trusted) > self.frames:
            old = torch.tensor(trusted[: len(trusted) - self.frames], dtype=mem.added.dtype, device=mem.added.device)
            mem.keep(~torch.isin(mem.added, old))

    def read(self, query_key: torch.Tensor) -> torch.Tensor:
        """Attention read, as the bank's (no usage counted: nothing here is evicted by usage)."""
        return self.bank.read(query_key, count_usage=False)
