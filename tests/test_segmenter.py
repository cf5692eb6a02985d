"""Streaming segmenter behaviour on a small random model."""
import numpy as np
import pytest
import torch

from vos_core import AnnotationError, Segmenter, VOSInputError
from vos_core import SegmenterConfig
from vos_core.inference import FeatureBank
from vos_core.inference.preprocess import pad_to_multiple, unpad
from vos_core.model import AFBURR, COMPACT
from vos_core.model.config import COMPACT_RESNET18


@pytest.fixture(scope="module")
def model():
    # A random ResNet model gives decided, frame-dependent probabilities; a random EfficientNet-Lite one
    # sits near 0.5 everywhere (see test_pretrained_configuration_runs for that trunk).
    torch.manual_seed(0)
    return AFBURR(COMPACT_RESNET18).eval()


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


def test_pretrained_configuration_runs():
    torch.manual_seed(0)
    lite = AFBURR(COMPACT).eval()
    ann = np.zeros((60, 90), np.uint8)
    ann[10:30, 10:40] = 1
    rs = list(Segmenter(lite).run(frames_of(3), {0: ann}))
    assert [r.index for r in rs] == [0, 1, 2] and rs[2].probs.shape == (2, 60, 90)
    assert np.allclose(rs[2].probs.sum(0), 1, atol=1e-5)


def _two_objects():
    a0 = np.zeros((60, 90), np.uint8)
    a0[10:30, 10:30] = 1
    a0[35:55, 50:80] = 2
    return a0


def test_step_api_equals_run(model):
    frames = list(frames_of(5))
    ann = _two_objects()
    seg = Segmenter(model, SegmenterConfig(budget=5_000))
    ran = list(seg.run(frames, {0: ann}))
    session = seg.start()
    stepped = [session.step(frames[0], ann)] + [session.step(f) for f in frames[1:]]
    assert [r.index for r in stepped] == [0, 1, 2, 3, 4]
    for a, b in zip(ran, stepped):
        assert np.array_equal(a.probs, b.probs) and np.array_equal(a.mask, b.mask)
    assert session.objects == [1, 2] and session.annotation_frames == [0]
    # two sessions of one segmenter are independent
    other = seg.start()
    r0 = other.step(frames[0], ann)
    assert r0.annotated and r0.new_objects == [1, 2] and session.memory is not other.memory


def test_step_refuses_bad_order_and_a_first_frame_without_annotation(model):
    seg = Segmenter(model)
    session = seg.start()
    with pytest.raises(AnnotationError, match="first frame of a video needs an annotation"):
        session.step(next(frames_of(1)))
    session.step(next(frames_of(1)), _two_objects(), index=3)
    with pytest.raises(VOSInputError, match="in order"):
        session.step(next(frames_of(1)), index=3)


def test_later_masks_of_tracked_objects_are_ignored_bit_for_bit(model):
    """The semi-supervised protocol: ground truth of every frame given as annotations changes nothing,
    except where a new object first appears (and then only that object's mask is used)."""
    frames = list(frames_of(6))
    a0 = np.zeros((60, 90), np.uint8)
    a0[10:30, 10:30] = 1
    rng = np.random.default_rng(3)
    full = {t: a0.copy() for t in range(6)}
    for t in range(1, 6):  # "ground truth" of object 1 moving, and an object 5 that appears at frame 3
        full[t] = np.roll(a0, t * 3, axis=1)
        if t >= 3:
            full[t][40:55, 60:80] = 5
        full[t][rng.random((60, 90)) < 0.01] = 1  # noise: must not leak in either
    seg = Segmenter(model)
    first_only = list(seg.run(frames, {0: a0, 3: np.where(full[3] == 5, 5, 0).astype(np.uint8)}))
    session = seg.start()
    every = list(seg.run(frames, full, session=session))
    for a, b in zip(first_only, every):
        assert np.array_equal(a.probs, b.probs) and np.array_equal(a.mask, b.mask) and a.annotated == b.annotated
    assert [r.annotated for r in every] == [True, False, False, True, False, False]
    assert every[3].new_objects == [5] and session.annotation_frames == [0, 3]


def test_a_correction_replaces_the_mask_and_restarts_that_objects_memory(model):
    frames = list(frames_of(6))
    ann = _two_objects()
    fix = np.zeros((60, 90), np.uint8)
    fix[5:20, 60:85] = 1  # object 1 is really here at frame 2
    seg = Segmenter(model, budget=20_000)
    plain = list(seg.run(frames, {0: ann}))
    session = seg.start()
    fixed = list(seg.run(frames, {0: ann}, corrections={2: fix}, session=session))
    assert all(np.array_equal(a.probs, b.probs) for a, b in zip(plain[:2], fixed[:2]))  # before: untouched
    r2 = fixed[2]
    assert r2.annotated and r2.corrected_objects == [1] and r2.new_objects == []
    assert np.array_equal(r2.mask == 1, fix == 1)  # the corrected object is exactly the correction
    # the other object's prediction stands outside the correction (object 1's vacated share goes to background)
    assert np.allclose(r2.probs[2][fix == 0], plain[2].probs[2][fix == 0], atol=1e-6)
    assert any(not np.array_equal(a.probs, b.probs) for a, b in zip(plain[3:], fixed[3:]))  # later frames change
    # object 1's memory restarted at frame 2: nothing older than frame 2 is left in it
    assert float(session.memory.objects[1].added.min()) >= 2.0
    assert float(session.memory.objects[2].added.min()) == 0.0
    assert session.correction_frames == [2]
    with pytest.raises(AnnotationError, match="not tracked"):
        bad = np.zeros((60, 90), np.uint8)
        bad[:5, :5] = 9
        list(seg.run(frames, {0: ann}, corrections={1: bad}))


@pytest.mark.parametrize("size", [None, 24])
def test_small_objects_survive_a_reduced_working_size(model, size):
    ann = np.zeros((120, 180), np.uint8)
    ann[50:52, 50:52] = 3  # 2x2 pixels: at 1/5 scale nearest-neighbour would drop it
    ann[10:60, 100:170] = 1
    seg = Segmenter(model, size=size)
    r = next(iter(seg.run(frames_of(2, 120, 180), {0: ann})))
    assert r.object_ids == [0, 1, 3]
    only = np.zeros((120, 180), np.uint8)
    only[50:52, 50:52] = 2  # a mask whose only object is tiny is not "empty"
    r = next(iter(seg.run(frames_of(2, 120, 180), {0: only})))
    assert r.object_ids == [0, 2] and (r.mask == 2).any()


def test_memory_factory_swaps_the_memory(model):
    made = []

    class Counting(FeatureBank):
        def update(self, *a, **k):
            made.append("update")
            return super().update(*a, **k)

    def factory(keydim, valdim, config, device):
        made.append("new")
        return Counting(keydim, valdim, config.budget, config.merge_thres, config.update_rate, device=device)

    seg = Segmenter(model, memory=factory)
    list(seg.run(frames_of(4), {0: _two_objects()}))
    assert made == ["new", "update", "update"]  # frames 0 (start), 1 and 2 memorised; the last never is


def test_editing_a_result_does_not_change_what_is_memorised(model):
    frames = list(frames_of(4))
    ann = _two_objects()
    clean = list(Segmenter(model).run(frames, {0: ann}))
    edited = []
    for r in Segmenter(model).run(frames, {0: ann}):
        edited.append(r.probs.copy())
        r.probs[:] = 0.0  # a caller scribbling on its result
    assert all(np.array_equal(a.probs, b) for a, b in zip(clean, edited))


def test_the_working_size_scales_down_only():
    """--size is the largest shorter side the model runs at: larger inputs are scaled down to it, smaller ones
    run at their own size (upscaling would add compute and no detail), None keeps the input size."""
    from vos_core.inference.preprocess import working_size

    assert working_size(960, 1280, 480) == (480, 640)
    assert working_size(1280, 960, 480) == (640, 480)
    assert working_size(180, 320, 480) == (180, 320)
    assert working_size(480, 854, 480) == (480, 854)
    assert working_size(481, 854, 480) == (480, 852)
    assert working_size(180, 320, None) == (180, 320)


def test_under_bf16_only_the_convolutions_run_in_bf16(model):
    """precision='bf16': the bank's products (read, merge search) see no autocast, and the decoder's heads
    and URR arithmetic are float32 (bf16 there cost 0.12 J&F on car-shadow); the convolutions do run in bf16."""
    from vos_core.model.decoder import Decoder

    autocast_in_bank = []

    class Watching(FeatureBank):
        def update(self, *a, **k):
            autocast_in_bank.append(torch.is_autocast_enabled("cpu"))
            return super().update(*a, **k)

        def read(self, *a, **k):
            autocast_in_bank.append(torch.is_autocast_enabled("cpu"))
            return super().read(*a, **k)

    def factory(keydim, valdim, config, device):
        return Watching(keydim, valdim, config.budget, config.merge_thres, config.update_rate, device=device)

    conv_dtypes, head_dtypes = set(), set()
    seg = Segmenter(model, precision="bf16", memory=factory)
    decoder = seg.model.decoder
    hooks = [decoder.convFM.register_forward_hook(lambda m, i, o: conv_dtypes.add(o.dtype)),
             decoder.pred2.register_forward_hook(lambda m, i, o: head_dtypes.add(o.dtype)),
             decoder.local_pred2.register_forward_hook(lambda m, i, o: head_dtypes.add(o.dtype))]
    try:
        results = list(seg.run(frames_of(4), {0: _two_objects()}))
    finally:
        for h in hooks:
            h.remove()
    assert autocast_in_bank and not any(autocast_in_bank)
    assert conv_dtypes == {torch.bfloat16} and head_dtypes == {torch.float32}
    assert isinstance(decoder, Decoder) and results[-1].probs.dtype == np.float32


def test_the_decoder_under_bf16_autocast_stays_close_to_float32(model):
    """The decoder alone, same inputs, bf16 autocast against float32: close on average (bf16's 3 digits in the
    convolutions move transition pixels of a random model by up to ~0.15), and the probabilities near 1 are
    not quantised to bf16's steps (1 - 2^-8 and 1.0), which the soft aggregation's log-odds would amplify."""
    torch.manual_seed(0)
    dec = model.decoder
    c = model.config
    r3c, r2c, r1c = dec.RF3.convFS.in_channels, dec.RF2.convFS.in_channels, dec.local_convFM.in_channels // 2
    x = torch.randn(2, 2 * c.valdim, 4, 6)
    r3, r2, r1 = torch.randn(1, r3c, 8, 12), torch.randn(1, r2c, 16, 24), torch.randn(1, r1c, 32, 48)
    with torch.inference_mode():
        want = dec(x, r3, r2, r1, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = dec(x, r3, r2, r1, 2)
    assert got.dtype == torch.float32 and got.shape == want.shape == (2, 64, 96)
    assert (got - want).abs().mean() < 0.01
    near_one = (want > 0.999) & (want < 1 - 1e-5)
    assert near_one.sum() > 100
    off_grid = got[near_one].to(torch.bfloat16).float() != got[near_one]
    assert off_grid.float().mean() > 0.9
    assert (got[near_one] - want[near_one]).abs().max() < 1e-3


def test_the_reference_read_compares_with_the_reference_memory_and_changes_no_mask(model):
    """Each object's ``ref_agreement`` is the IoU of its rough mask from the bank's read with the one from its
    reference memory: exactly 1 at frame 1 (both hold only the annotated frame then),
    in [0, 1] always, below 1 once the bank holds predictions; turning the read off leaves every mask and
    probability as it was and the signal None."""
    ann = _two_objects()
    frames = list(frames_of(6))
    on, off = (list(Segmenter(model, reference_read=flag).run(frames, {0: ann})) for flag in (True, False))
    assert [o.signals["ref_agreement"] for o in on[1].stats.objects[1:]] == [1.0, 1.0]
    agreements = [o.signals["ref_agreement"] for r in on[2:] for o in r.stats.objects[1:]]
    assert all(0.0 <= a <= 1.0 for a in agreements) and min(agreements) < 1.0
    for a, b in zip(on, off):
        assert np.array_equal(a.probs, b.probs) and np.array_equal(a.mask, b.mask)
        assert all(o.signals["ref_agreement"] is None for o in b.stats.objects[1:])


def _run_with_corrections(model, n=6, **config):
    """Objects 1, 2 given at frame 0, object 3 at frame 2, object 1 corrected at frame 4; the session."""
    ann = _two_objects()
    later = np.zeros((60, 90), np.uint8)
    later[40:55, 5:20] = 3
    fix = np.zeros((60, 90), np.uint8)
    fix[5:20, 60:85] = 1
    seg = Segmenter(model, budget=20_000, **config)
    session = seg.start()
    list(seg.run(frames_of(n), {0: ann, 2: later}, corrections={4: fix}, session=session))
    return session


def test_the_reference_memory_without_recent_frames_holds_the_given_frames_only(model):
    """reference_frames=0: new objects bring their first frame; a correction replaces its object's;
    predictions never enter."""
    ref = _run_with_corrections(model, reference_frames=0).reference
    assert [float(o.added.min()) for o in ref.objects] == [0.0, 4.0, 0.0, 2.0]
    assert all(float(o.added.max()) == float(o.added.min()) for o in ref.objects)  # one frame each
    assert ref.sizes() == [4 * 6] * 4  # one 64x96 (padded) frame's keys at stride 16, nothing merged away


def test_the_reference_memory_keeps_its_given_frame_and_the_latest_agreeing_frames(model):
    """With every frame agreeing (trust 0), each row takes a frame every ``reference_every`` frames after it
    last took one, keeps the latest ``reference_frames`` of them and never loses its given frame; the
    background takes a frame only where every object did (frame 5: objects 1 and 3 are still waiting)."""
    session = _run_with_corrections(model, n=30, reference_trust=0.0, reference_frames=3, reference_every=5)
    ref = session.reference
    # rows: background, object 1 (given at 0, corrected at 4), object 2 (given at 0), object 3 (given at 2);
    # frame 29 is the last, never memorised
    assert [ref.held_frames(r) for r in range(4)] == [[0, 15, 20, 25], [4, 14, 19, 24], [0, 15, 20, 25],
                                                      [2, 17, 22, 27]]
    assert ref.sizes() == [4 * 24] * 4  # four whole frames each


def test_mask_agreement_is_the_iou_of_the_label_maps():
    from vos_core.inference.session import mask_agreement

    def onehot(labels, k=3):
        return torch.nn.functional.one_hot(torch.as_tensor(labels), k).permute(2, 0, 1).float()

    a = np.zeros((4, 6), np.int64)
    a[0:2, 0:3] = 1  # 6 pixels
    a[3, :] = 2
    b = a.copy()
    b[0:2, 0:3] = 0
    b[0:2, 2:6] = 1  # object 1 moved: 8 pixels, 2 shared, 12 in the union
    b[3, :] = 0  # object 2 lost
    assert mask_agreement(onehot(a), onehot(b)) == pytest.approx([2 / 12, 0.0])
    empty = np.zeros((4, 6), np.int64)
    assert mask_agreement(onehot(empty), onehot(empty)) == [1.0, 1.0]  # both leave them out: they agree


def test_decoding_with_the_rough_masks_changes_nothing_and_the_rough_decoder_matches(model):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        q = model.encode_query(x)
        read = torch.rand(2, 3, q.value.shape[1], q.shape16[0] * q.shape16[1])
        plain = model.decode(read, q)
        fg, rough = model.decode(read, q, with_rough=True)
        alone = model.decode_rough(read, q)
    assert torch.equal(plain, fg)
    assert rough.shape == (2, 3, 32, 48) and torch.allclose(rough.sum(1), torch.ones(2, 32, 48), atol=1e-5)
    assert torch.allclose(rough, alone, atol=1e-6)
