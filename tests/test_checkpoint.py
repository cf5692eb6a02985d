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


def _compact_with(tmp_path, name, config=None, change=None):
    """A compact checkpoint with its config replaced (``config``) or its tensors changed (``change``)."""
    torch.manual_seed(0)
    state = AFBURR(COMPACT).state_dict()
    if change:
        state = change(state)
    p = tmp_path / f"{name}.pth"
    torch.save({"model": state, "config": COMPACT.to_dict() if config is None else config, "epoch": 0}, p)
    return p


@pytest.mark.parametrize("config, words", [
    ({**COMPACT.to_dict(), "trunk": "resnet1000"}, ["bad model config", "unknown trunk 'resnet1000'", "resnet18"]),
    ("gin", ["bad model config 'gin'", "must be a dict"]),
    ([], ["must be a dict", "list"]),
    ({**COMPACT.to_dict(), "keydim": -1}, ["keydim must be a positive integer"]),
    ({"trunk": "resnet18", "colour": "red"}, ["unknown model config fields", "colour"]),
])
def test_bad_config_is_a_checkpoint_error(tmp_path, config, words):
    p = _compact_with(tmp_path, "bad_config", config=config)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert str(p) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _nan_in_first(state):
    k = next(k for k, v in state.items() if v.is_floating_point())
    state[k] = state[k].clone()
    state[k].view(-1)[0] = float("nan")
    return state


@pytest.mark.parametrize("change, words", [
    (_nan_in_first, ["NaN or infinite", "encoder"]),
    (lambda s: {k: (v.clone().fill_(float("inf")) if k.startswith("decoder.") and v.is_floating_point() else v)
                for k, v in s.items()}, ["NaN or infinite", "decoder."]),
    (lambda s: {k: v.round().to(torch.int32) if v.is_floating_point() else v for k, v in s.items()},
     ["not floating-point weights", "(int32)"]),
    (lambda s: {k: (v != 0) if v.is_floating_point() else v for k, v in s.items()}, ["(bool)"]),
])
def test_weights_that_cannot_segment_are_refused_at_load(tmp_path, change, words):
    p = _compact_with(tmp_path, "bad_weights", change=change)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert str(p) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_bad_checkpoints_are_one_line_for_the_job_and_vos_segment(tmp_path, capsys):
    """What the user sees: one line naming the file, exit status 2 (no traceback), before any video runs."""
    from jobs import pseudo_label
    from vos_core import cli
    from job_helpers import tiny_corpus, write_mask, write_video_folder

    manifest = tiny_corpus(tmp_path / "corpus", n=1, frames=2)
    frames, mask = write_video_folder(tmp_path / "frames", 2), write_mask(tmp_path / "mask.png")
    for p in (_compact_with(tmp_path, "trunk", config={**COMPACT.to_dict(), "trunk": "resnet1000"}),
              _compact_with(tmp_path, "nan", change=_nan_in_first)):
        out = tmp_path / f"out-{p.stem}"
        assert pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(p)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pseudo-label: error: ") and str(p) in err and len(err.splitlines()) == 1, err
        assert not out.exists()  # refused before anything was written
        assert cli.main(["segment", "--checkpoint", str(p), "--frames", str(frames), "--annotations", str(mask),
                         "--output", str(tmp_path / "seg"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vos segment: error: ") and str(p) in err and len(err.splitlines()) == 1, err
