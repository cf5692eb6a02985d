"""Streaming segmenter behaviour on a small random model."""
import numpy as np
import pytest
import torch

from vos_core import AnnotationError, Segmenter, VOSInputError
from vos_core.model import AFBURR, COMPACT
from vos_core.inference.preprocess import pad_to_multiple, unpad


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AFBURR(COMPACT).eval()


def frames_of(n, h=60, w=90, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_padding_matches_the_authors_split():
    x = torch.ones(1, 1, 37, 50)
    y, pad = pad_to_multiple(x)
    assert y.shape[-2:] == (48, 64)
    assert pad == (7, 7, 5, 6)  # (left, right, top, bottom): smaller half on top/left
    assert torch.equal(unpad(y, pad), x)


def test_streams_any_iterable_and_keeps_non_contiguous_ids(model):
    ann = np.zeros((60, 90), np.uint8)
    ann[10:30, 10:40] = 200
    ann[35:55, 50:80] = 7
    consumed = []

    def gen():
        for i, f in enumerate(frames_of(5)):
            consumed.append(i)
            yield f

    seen = 0
    for r in Segmenter(model).run(gen(), {0: ann}):
        # each result is handed out before the next frame is pulled
        assert consumed[-1] == r.index
        assert r.object_ids == [0, 7, 200]
        assert r.probs.shape == (3, 60, 90) and r.uncertainty.shape == (60, 90)
        assert np.allclose(r.probs.sum(0), 1, atol=1e-5)
        assert set(np.unique(r.mask)) <= {0, 7, 200}
        seen += 1
    assert seen == 5


def test_first_frame_returns_the_annotation(model):
    ann = np.zeros((60, 90), np.uint8)
    ann[5:25, 5:25] = 3
    r = next(iter(Segmenter(model).run(frames_of(3), {0: ann})))
    assert np.array_equal(r.mask, ann)
    o = r.stats.object(3)
    assert o.area == 400 and o.bbox == [5, 5, 20, 20] and o.mean_prob == pytest.approx(1.0)
    assert r.stats.u_mean == pytest.approx(0.0, abs=1e-6)


def test_objects_appearing_later_get_a_bank_without_wiping_others(model):
    a0 = np.zeros((60, 90), np.uint8)
    a0[10:30, 10:30] = 1
    a3 = np.zeros((60, 90), np.uint8)
    a3[35:55, 60:85] = 5  # a new object at frame 3; only it is annotated there
    seg = Segmenter(model, budget=10_000)
    session = seg.start()
    results = list(seg.run(frames_of(6), {0: a0, 3: a3}, session=session))
    assert [r.object_ids for r in results] == [[0, 1]] * 3 + [[0, 1, 5]] * 3
    r3 = results[3]
    assert (r3.mask[a3 == 5] == 5).all(), "the new object's annotation is applied where given"
    assert r3.annotated
    sizes = session.memory.sizes()
    assert len(sizes) == 3
    # background and object 1 kept memories from frames 0..4; object 5 only since frame 3
    added_first = [float(o.added.min()) for o in session.memory.objects]
    assert added_first[0] == 0.0 and added_first[1] == 0.0 and added_first[2] == 3.0


def test_working_resolution_returns_input_size(model):
    ann = np.zeros((120, 180), np.uint8)
    ann[20:80, 30:120] = 1
    rs = list(Segmenter(model, size=48).run(frames_of(3, 120, 180), {0: ann}))
    assert all(r.mask.shape == (120, 180) and r.probs.shape == (2, 120, 180) for r in rs)


def test_frames_before_the_first_annotation_are_skipped(model):
    ann = np.zeros((60, 90), np.uint8)
    ann[:10, :10] = 1
    assert [r.index for r in Segmenter(model).run(frames_of(5), {2: ann})] == [2, 3, 4]


def test_bad_annotations_are_named(model):
    with pytest.raises(AnnotationError, match="empty"):
        list(Segmenter(model).run(frames_of(2), {0: np.zeros((60, 90), np.uint8)}))
    with pytest.raises(AnnotationError, match="89x60 but its frame is 90x60"):
        list(Segmenter(model).run(frames_of(2), {0: np.ones((60, 89), np.uint8)}))
    rs = list(Segmenter(model, resize_annotations=True).run(frames_of(2), {0: np.ones((60, 89), np.uint8)}))
    assert rs[0].mask.shape == (60, 90)


def test_bad_frames_are_named(model):
    ann = np.ones((60, 90), np.uint8)
    with pytest.raises(VOSInputError, match="frame 1: size"):
        list(Segmenter(model).run([np.zeros((60, 90, 3), np.uint8), np.zeros((50, 90, 3), np.uint8)], {0: ann}))
    with pytest.raises(VOSInputError, match="uint8 RGB"):
        list(Segmenter(model).run([np.zeros((60, 90), np.uint8)], {0: ann}))


def test_memory_is_bounded_by_the_budget(model):
    ann = np.zeros((64, 96), np.uint8)
    ann[10:40, 10:40] = 1
    seg = Segmenter(model, budget=100, merge_thres=1.01)  # never merge: every frame appends
    session = seg.start()
    for r in seg.run(frames_of(12, 64, 96), {0: ann}, session=session):
        pass
    assert all(n <= 50 for n in session.memory.sizes())
    assert sum(session.memory.evicted()) > 0
    assert r.stats.objects[0].bank_size == session.memory.sizes()[0]
