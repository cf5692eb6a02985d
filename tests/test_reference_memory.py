"""ReferenceMemory: which frames each object's second opinion keeps (on synthetic features)."""
import pytest
import torch

from vos_core.inference.config import SegmenterConfig
from vos_core.inference.reference import ReferenceMemory


def _features(k, frame, n=5, keydim=4, valdim=3):
    g = torch.Generator().manual_seed(frame)
    return torch.randn(k, keydim, n, generator=g), torch.randn(k, valdim, n, generator=g)


def _memory(k=3, **kw):
    mem = ReferenceMemory(4, 3, frames=kw.pop("frames", 2), trust=kw.pop("trust", 0.8), every=kw.pop("every", 1))
    mem.add_objects(*_features(k, 0), 0)  # background and two objects, given at frame 0
    return mem


def test_a_frame_enters_only_for_the_objects_that_agreed_and_the_background_only_when_all_did():
    mem = _memory()
    assert mem.admit({1: 0.9, 2: 0.5}, *_features(3, 1), 1) == [1]  # object 2 disagreed: not it, not the background
    assert mem.admit({1: 0.79, 2: 0.8}, *_features(3, 2), 2) == [2]  # the threshold is inclusive
    assert mem.admit({1: 0.95, 2: 0.85}, *_features(3, 3), 3) == [0, 1, 2]
    assert [mem.held_frames(r) for r in range(3)] == [[0, 3], [0, 1, 3], [0, 2, 3]]
    assert mem.admit({}, *_features(3, 4), 4) == []  # nothing predicted (the first frame): nothing to trust


def test_it_keeps_the_given_frame_and_the_latest_trusted_ones_spaced_by_every():
    mem = _memory(k=2, frames=2, every=3)
    taken = [f for f in range(1, 20) if mem.admit({1: 1.0}, *_features(2, f), f)]
    assert taken == [3, 6, 9, 12, 15, 18]
    assert mem.held_frames(1) == [0, 15, 18] and mem.held_frames(0) == [0, 15, 18]
    assert mem.sizes() == [15, 15]  # three whole frames of five features: a trusted frame is never merged away
    # the stored features are the given frame's and the admitted frames', unchanged
    k0, _ = _features(2, 0)
    k18, _ = _features(2, 18)
    keys = mem.objects[1].keys
    assert torch.equal(keys[:, :5], k0[1]) and torch.equal(keys[:, -5:], k18[1])


def test_a_correction_restarts_an_object_from_its_frame():
    mem = _memory(frames=3)
    for f in (1, 2, 3):
        mem.admit({1: 1.0, 2: 1.0}, *_features(3, f), f)
    keys, values = _features(3, 7)
    mem.give([1], keys[[1]], values[[1]], 7)
    assert mem.held_frames(1) == [7] and mem.held_frames(2) == [0, 1, 2, 3]
    for f in (8, 9, 10, 11, 12):
        mem.admit({1: 1.0, 2: 1.0}, *_features(3, f), f)
    assert mem.held_frames(1) == [7, 10, 11, 12]  # the correction is its new given frame, never dropped


def test_without_recent_frames_it_is_the_given_frame_alone():
    mem = _memory(frames=0)
    assert mem.admit({1: 1.0, 2: 1.0}, *_features(3, 5), 5) == []
    assert [mem.held_frames(r) for r in range(3)] == [[0], [0], [0]]


@pytest.mark.parametrize("bad", [dict(reference_frames=-1), dict(reference_frames=1.5), dict(reference_trust=1.2),
                                 dict(reference_every=0)])
def test_bad_reference_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SegmenterConfig(**bad)
