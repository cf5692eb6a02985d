import pickle

import pytest
import torch

from vos_core import CheckpointError, load_model
from vos_core.model import AFBURR, COMPACT, OFFICIAL, save_checkpoint


def test_official_format_loads_strictly(tiny_official_ckpt):
    model = load_model(tiny_official_ckpt)
    assert model.config == OFFICIAL
    ref = torch.load(tiny_official_ckpt, weights_only=True)["model"]
    got = model.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    # the key names official checkpoints use
    assert "encoder_m.conv1_m.weight" in got and "encoder_q.res4.5.conv3.weight" in got
    assert "keyval_r4.Key.weight" in got and "decoder.local_pred2.bias" in got
    assert "encoder_q.mean" in got


def test_bare_state_dict_loads(tmp_path, tiny_official_ckpt):
    state = torch.load(tiny_official_ckpt, weights_only=True)["model"]
    p = tmp_path / "bare.pth"
    torch.save(state, p)
    assert load_model(p).config == OFFICIAL


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_official_ckpt):
    state = torch.load(tiny_official_ckpt, weights_only=True)["model"]
    del state["decoder.pred2.weight"]
    state["decoder.bogus.weight"] = torch.zeros(1)
    p = tmp_path / "wrong.pth"
    torch.save({"model": state, "epoch": 0}, p)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    msg = str(e.value)
    assert str(p) in msg and "decoder.pred2.weight" in msg and "decoder.bogus.weight" in msg


def test_pickle_that_is_not_weights_is_refused(tmp_path):
    p = tmp_path / "evil.pth"

    import collections

    with open(p, "wb") as f:  # an arbitrary Python object: refused by the weights-only unpickler
        pickle.dump({"model": collections.Counter(a=1)}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(p)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_compact_config_travels_in_checkpoint(tmp_path):
    model = AFBURR(COMPACT)
    p = tmp_path / "compact.pth"
    save_checkpoint(model, p, epoch=3, half=True)
    loaded = load_model(p)
    assert loaded.config == COMPACT
    w = model.state_dict()["keyval_r4.Key.weight"]
    assert torch.allclose(loaded.state_dict()["keyval_r4.Key.weight"], w.half().float())
