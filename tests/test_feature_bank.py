"""The adaptive feature bank on hand-made features with known answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from vos_core.inference.feature_bank import READ_THRESHOLD, FeatureBank


def unit(d, i, scale=1.0):
    v = torch.zeros(d)
    v[i] = scale
    return v


def make_bank(keys, values, budget=100, **kw):
    """One object whose bank holds the given columns, added at frame 0."""
    bank = FeatureBank(keydim=keys.shape[0], valdim=values.shape[0], budget=budget, **kw)
    bank.add_objects(keys[None], values[None], frame_idx=0)
    return bank


def test_close_feature_is_merged_by_moving_average():
    d = 4
    keys = torch.stack([unit(d, 0, 2.0), unit(d, 1, 3.0)], dim=1)  # stored keys with magnitudes 2 and 3
    values = torch.stack([unit(d, 2, 5.0), unit(d, 3, 1.0)], dim=1)
    bank = make_bank(keys, values, update_rate=0.1, merge_thres=0.95)
    new_k = torch.tensor([1.0, 0.1, 0.0, 0.0]).unsqueeze(1)  # cos to key 0 = 0.995 > 0.95
    new_v = torch.tensor([0.0, 0.0, 0.0, 7.0]).unsqueeze(1)
    bank.update(new_k[None], new_v[None], frame_idx=1)
    mem = bank.objects[0]
    assert mem.n == 2, "a close feature must be merged, not appended"
    nk = F.normalize(new_k[:, 0], dim=0)
    expect_k0 = 2.0 * (0.9 * unit(d, 0) + 0.1 * nk)
    assert torch.allclose(mem.keys[:, 0], expect_k0, atol=1e-6)
    assert torch.allclose(mem.keys[:, 1], unit(d, 1, 3.0))  # untouched
    expect_v0 = 5.0 * (0.9 * unit(d, 2) + 0.1 * unit(d, 3))  # value merged along its key's match
    assert torch.allclose(mem.values[:, 0], expect_v0, atol=1e-6)


def test_several_new_features_merging_into_one_entry_are_averaged():
    d = 3
    bank = make_bank(unit(d, 0).unsqueeze(1), unit(d, 0).unsqueeze(1), update_rate=0.5)
    a = torch.tensor([1.0, 0.2, 0.0])
    b = torch.tensor([1.0, -0.2, 0.0])
    bank.update(torch.stack([a, b], 1)[None], torch.stack([a, b], 1)[None], frame_idx=1)
    mean_new = (F.normalize(a, dim=0) + F.normalize(b, dim=0)) / 2
    assert torch.allclose(bank.objects[0].keys[:, 0], 0.5 * unit(d, 0) + 0.5 * mean_new, atol=1e-6)


def test_far_feature_is_appended_with_its_frame():
    d = 4
    bank = make_bank(unit(d, 0).unsqueeze(1), unit(d, 0).unsqueeze(1))
    new = unit(d, 1, 4.0).unsqueeze(1)  # orthogonal: cos 0
    bank.update(new[None], new[None], frame_idx=7)
    mem = bank.objects[0]
    assert mem.n == 2
    assert torch.equal(mem.keys[:, 1], unit(d, 1, 4.0))  # appended raw, not normalised
    assert mem.added.tolist() == [0.0, 7.0] and mem.usage.tolist() == [0.0, 0.0]


def test_threshold_is_strict():
    d = 2
    bank = make_bank(unit(d, 0).unsqueeze(1), unit(d, 0).unsqueeze(1), merge_thres=0.8)
    at = torch.tensor([0.8, 0.6]).unsqueeze(1)  # cosine exactly 0.8: not above the threshold
    bank.update(at[None], at[None], frame_idx=1)
    assert bank.objects[0].n == 2


def test_read_counts_uses_above_threshold():
    d, hw = 2, 3
    keys = torch.stack([unit(d, 0, 10.0), unit(d, 1, 10.0)], 1)
    bank = make_bank(keys, keys.clone())
    # Query pixels: two look at key 0 sharply, one sits halfway.
    q = torch.tensor([[10.0, 10.0, 1.0], [0.0, 0.0, 1.0]]) * math.sqrt(d)
    attn = torch.softmax(keys.t() @ q / math.sqrt(d), dim=0)
    used = (attn > READ_THRESHOLD).sum(1).float()
    out = bank.read(q)
    assert out.shape == (1, d, hw)
    assert torch.allclose(out[0], keys @ attn)
    assert torch.allclose(bank.objects[0].usage, torch.log(used + 1))
    assert used.tolist() == [3.0, 1.0]  # key 1 is read only by the middle pixel
    bank.read(q)
    assert torch.allclose(bank.objects[0].usage, 2 * torch.log(used + 1))


def test_eviction_removes_lowest_usage_over_age_first():
    d = 8
    keys = torch.eye(d)[:, :4]  # 4 mutually orthogonal entries, all added at frame 0
    bank = make_bank(keys, keys.clone(), budget=5)
    mem = bank.objects[0]
    mem.usage_buf[:4] = torch.tensor([4.0, 0.5, 3.0, 1.0])
    mem.added_buf[:4] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    # LFU at frame 4: [4/4, .5/4, 3/4, 1/2] = [1, .125, .75, .5] -> evict entry 1 first, then entry 3.
    new = torch.eye(d)[:, 4:7]  # 3 novel features: 4 + 3 > 5, two must go
    bank.update(new[None], new[None], frame_idx=4)
    assert mem.n == 5 and mem.evicted_total == 2 and bank.evicted() == [2]
    kept = mem.keys.argmax(0).tolist()
    assert kept == [0, 2, 4, 5, 6]


def test_hard_cap_holds_under_adversarial_input():
    torch.manual_seed(0)
    d = 16
    bank = FeatureBank(keydim=d, valdim=d, budget=30)
    first = torch.randn(2, d, 5)
    bank.add_objects(first, first, frame_idx=0)
    for t in range(1, 40):
        m = int(torch.randint(0, 200, ()).item())  # bursts far larger than the budget
        k = torch.randn(2, d, m)
        bank.update(k, k, frame_idx=t)
        assert all(0 < n <= bank.object_budget for n in bank.sizes()), bank.sizes()
    # a third object arrives: everyone's share shrinks, and the old banks are trimmed, not wiped
    third = torch.randn(1, d, 50)
    bank.add_objects(third, third, frame_idx=40)
    k = torch.randn(3, d, 3)
    bank.update(k, k, frame_idx=41)
    assert bank.object_budget == 10
    assert all(0 < n <= 10 for n in bank.sizes())


def test_never_deletes_everything_and_tiny_budgets_work():
    d = 4
    bank = FeatureBank(keydim=d, valdim=d, budget=1)
    k = torch.randn(1, d, 10)
    bank.add_objects(k, k, frame_idx=0)
    assert bank.sizes() == [1]
    bank.update(torch.randn(1, d, 10), torch.randn(1, d, 10), frame_idx=1)
    assert bank.sizes() == [1]


def test_empty_bank_reads_zeros():
    bank = FeatureBank(keydim=4, valdim=6, budget=10)
    bank.add_objects(torch.zeros(1, 4, 0), torch.zeros(1, 6, 0), frame_idx=0)
    out = bank.read(torch.randn(4, 5))
    assert out.shape == (1, 6, 5) and torch.count_nonzero(out) == 0


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        FeatureBank(4, 4, budget=0)
    with pytest.raises(ValueError):
        FeatureBank(4, 4, update_rate=1.5)


def test_dense_gpu_style_merge_equals_sparse_merge():
    torch.manual_seed(1)
    d = 8
    base = torch.randn(d, 20)
    new = base[:, :12] + 0.05 * torch.randn(d, 12)  # most merge, several into the same entry
    new[:, :3] = base[:, :1] + 0.01 * torch.randn(d, 3)
    banks = []
    for dense in (False, True):
        bank = make_bank(base.clone(), base.clone() * 2, budget=1000, update_rate=0.3)
        bank.sync_free = dense
        bank.update(new[None], (new * 2)[None], frame_idx=1)
        banks.append(bank.objects[0])
    a, b = banks
    assert a.n == b.n and 12 - (a.n - 20) > 3  # of the 12 new features, more than 3 were merged (not appended)
    assert torch.allclose(a.keys, b.keys, atol=1e-6) and torch.allclose(a.values, b.values, atol=1e-6)


def test_blocked_read_equals_one_shot_read(monkeypatch):
    import vos_core.inference.feature_bank as fb

    torch.manual_seed(2)
    keys, vals, q = torch.randn(16, 50), torch.randn(8, 50), torch.randn(16, 37)
    full = make_bank(keys, vals)
    ref = full.read(q)
    monkeypatch.setattr(fb, "_READ_BLOCK", 50 * 5)  # blocks of 5 query pixels
    blocked = make_bank(keys, vals)
    got = blocked.read(q)
    assert torch.allclose(ref, got, atol=1e-6)
    assert torch.allclose(full.objects[0].usage, blocked.objects[0].usage)


def test_read_of_a_grown_bank_matches_the_definition_in_float64(monkeypatch):
    """Thousands of entries in a buffer wider than the bank (as after growth), read in several
    blocks: readout and usage as the AFB definition gives them, computed in float64."""
    import vos_core.inference.feature_bank as fb

    torch.manual_seed(1)
    d, v, n, hw = 32, 16, 3000, 200
    keys, values, q = torch.randn(d, n), torch.randn(v, n), torch.randn(d, hw)
    attn = torch.softmax(keys.double().t() @ q.double() / math.sqrt(d), dim=0)
    want = (values.double() @ attn).float()
    want_usage = torch.log((attn > READ_THRESHOLD).sum(1).double() + 1).float()
    bank = fb.FeatureBank(d, v, budget=10 * n)
    mem = fb.ObjectMemory(d, v, "cpu", capacity=n + 100)
    mem.append(keys, values, 0, limit=n + 100)
    bank.objects.append(mem)
    monkeypatch.setattr(fb, "_READ_BLOCK", n * 64)  # blocks of 64 query pixels: 4 blocks
    with torch.inference_mode():
        got = bank.read(q)
    assert torch.allclose(got[0], want, atol=1e-5), (got[0] - want).abs().max()
    # a weight within float error of 1e-3 may count differently: allow a handful of such entries
    assert (bank.objects[0].usage - want_usage).abs().gt(1e-5).sum() <= 3


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not available in this torch build")
@pytest.mark.parametrize("n", [7, 1024, 1100, 2050])  # under the smallest bucket, on one, just past, capacity-capped
def test_bucketed_onednn_read_equals_the_mm_read(monkeypatch, n):
    """products='onednn' pads the bank to a bucket length (a -inf bias on the padding) and the query blocks
    to a bucketed row count: the same readout up to float rounding, the same usage, nothing else changed.
    The buffer past n holds old entries (as after an eviction), which the padding must not read."""
    import vos_core.inference.feature_bank as fb
    from vos_core.model.memory_read import bucket_length

    torch.manual_seed(n)
    d, v, hw = 32, 16, 150
    keys, values, q = torch.randn(d, n + 300) * 2, torch.randn(v, n + 300), torch.randn(d, hw)
    banks = {}
    for products in ("mm", "onednn"):
        bank = fb.FeatureBank(d, v, budget=10 * n, products=products)
        mem = fb.ObjectMemory(d, v, "cpu")
        mem.append(keys, values, 0, limit=n + 300)
        mem.n = n  # the last 300 columns are stale entries now
        bank.objects.append(mem)
        banks[products] = bank
    monkeypatch.setattr(fb, "_READ_BLOCK", 64 * bucket_length(n))  # several query blocks, a padded last one
    with torch.inference_mode():
        want, got = banks["mm"].read(q), banks["onednn"].read(q)
    assert got.shape == want.shape == (1, v, hw)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    a, b = banks["mm"].objects[0], banks["onednn"].objects[0]
    assert a.usage.gt(0).any() and (a.usage - b.usage).abs().gt(1e-6).sum() <= 2  # a weight at 1e-3 may flip
    assert torch.equal(a.usage_buf[n:], b.usage_buf[n:])  # the stale columns are not counted


def test_bucket_lengths_are_few_and_pad_by_at_most_a_quarter():
    from vos_core.model.memory_read import bucket_length

    sizes = {bucket_length(n) for n in range(1, 300_001)}
    assert len(sizes) <= 40
    assert all(n <= bucket_length(n) <= max(1024, 1.25 * n) for n in (1, 1023, 1024, 1025, 1537, 4097, 299_999))
    with pytest.raises(ValueError, match="products"):
        FeatureBank(4, 4, products="blas")


def test_drop_subnormal_zeroes_only_weights_below_the_smallest_normal_float():
    from vos_core.model.memory_read import drop_subnormal_

    tiny = torch.finfo(torch.float32).tiny
    w = torch.tensor([1e-39, 1e-45, 0.0, tiny, 2 * tiny, 1e-20, 0.5])
    assert w[:2].ne(0).all() and (w[:2] < tiny).all()  # really subnormal before
    got = drop_subnormal_(w.clone())
    assert torch.equal(got, torch.tensor([0.0, 0.0, 0.0, 0.0, 2 * tiny, 1e-20, 0.5]))


@pytest.mark.parametrize("products", ["mm", "onednn"])
def test_a_read_whose_weights_underflow_holds_no_subnormals_and_matches_float64(monkeypatch, products):
    """Keys far apart in similarity (scaled x30) put a fifth of the float32 softmax weights under 1.2e-38
    (subnormal, not yet zero): the read feeds no
    subnormal weight to the value product (x86 runs those through a slow path, 35x slower at 480p), and the
    readout is still the definition's, computed in float64."""
    import vos_core.inference.feature_bank as fb
    from vos_core.model import memory_read

    if products == "onednn" and not memory_read.onednn_available():
        pytest.skip("oneDNN is not available in this torch build")
    torch.manual_seed(3)
    d, v, n, hw = 32, 16, 2000, 90
    keys, values, q = torch.randn(d, n) * 30, torch.randn(v, n), torch.randn(d, hw)
    attn32 = torch.softmax(q.t() @ keys / math.sqrt(d), dim=-1)
    assert ((attn32 > 0) & (attn32 < torch.finfo(torch.float32).tiny)).float().mean() > 0.15  # the regime
    attn64 = torch.softmax(keys.double().t() @ q.double() / math.sqrt(d), dim=0)
    want = (values.double() @ attn64).float()
    seen = []
    real = fb.read_values if products == "mm" else fb.onednn_linear

    def spy(attn, *rest):
        if attn.shape[-1] >= n:  # the value product (the similarity product's operand is the query)
            seen.append(bool(((attn > 0) & (attn < torch.finfo(attn.dtype).tiny)).any()))
        return real(attn, *rest)

    monkeypatch.setattr(fb, "read_values" if products == "mm" else "onednn_linear", spy)

    def read():
        bank = fb.FeatureBank(d, v, budget=10 * n, products=products)
        bank.add_objects(keys[None], values[None], frame_idx=0)
        with torch.inference_mode():
            return bank.read(q)[0]

    got = read()
    assert seen and not any(seen)
    monkeypatch.setattr(fb, "drop_subnormal_", lambda attn: attn)
    kept = read()  # the subnormal weights left in
    assert any(seen)  # the spy sees them now: it can fail
    assert (got - kept).abs().max() <= 1e-6  # what they added is far below rounding
    # float32 rounding of logits near 100 (x30 keys) is ~1e-5 of a weight
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
