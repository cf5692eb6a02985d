"""vos_core.model.fuse: batch norm folded into the convolutions computes the same function."""
import pytest
import torch
from torch import nn

from vos_core import Segmenter
from vos_core.model import AFBURR, COMPACT, OFFICIAL
from vos_core.model.config import COMPACT_RESNET18
from vos_core.model.fuse import fold_batchnorm


def _with_real_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("config", [COMPACT, COMPACT_RESNET18, OFFICIAL],
                         ids=["compact", "compact-resnet18", "official"])
def test_folded_encoders_compute_the_same_features(config):
    torch.manual_seed(0)
    model = _with_real_bn_statistics(AFBURR(config))
    folded = fold_batchnorm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_bn_left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert n_bn_left == 2  # only the two stems' bn1 stay
    assert n_bn > 10
    x = torch.rand(1, 3, 64, 96)
    masks = torch.rand(1, 2, 64, 96)
    with torch.inference_mode():
        a, b = model.encode_query(x), folded.encode_query(x)
        for name in ("key", "value", "r3", "r2", "r1"):
            u, v = getattr(a, name), getattr(b, name)
            assert torch.allclose(u, v, rtol=1e-4, atol=1e-4 * float(u.abs().max())), name
        (ka, va), (kb, vb) = model.encode_memory(x, masks), folded.encode_memory(x, masks)
        assert torch.allclose(ka, kb, rtol=1e-4, atol=1e-4 * float(ka.abs().max()))
        assert torch.allclose(va, vb, rtol=1e-4, atol=1e-4 * float(va.abs().max()))


def test_the_original_is_left_alone_and_training_models_are_refused():
    model = _with_real_bn_statistics(AFBURR(COMPACT))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())


def test_segmenter_folds_a_copy_and_gives_the_unfolded_masks():
    import numpy as np

    torch.manual_seed(1)
    # A random ResNet model gives decided probabilities (a random EfficientNet one sits near 0.5, where
    # float rounding alone flips the argmax); the folding of both trunks is checked feature by feature above.
    model = _with_real_bn_statistics(AFBURR(COMPACT_RESNET18))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    ann = np.zeros((64, 96), np.uint8)
    ann[20:40, 30:60] = 1
    plain = list(Segmenter(model, fold_bn=False).run(frames, {0: ann}))
    seg = Segmenter(model)
    folded = list(seg.run(frames, {0: ann}))
    assert seg.model is not model and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 2
    for a, b in zip(plain, folded):
        assert np.abs(a.probs - b.probs).max() < 1e-3
        # Where the two probabilities are not a tie (a random model leaves many near 0.5), the masks agree.
        clear = np.abs(a.probs[1] - a.probs[0]) > 1e-3
        assert clear.sum() > 100 and (a.mask == b.mask)[clear].all()
