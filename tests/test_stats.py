"""vos_core.inference.stats: the per-object statistics against direct definitions."""
import numpy as np
import pytest
import torch

from vos_core.model.decoder import uncertainty_map
from vos_core.inference.stats import BAND_MIN_PROB, compute_stats, quantile


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20, 37, 1000, 25_621])
def test_quantile_by_selection_equals_torch_quantile(n):
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, generator=g)
    for data in (x, (x * 4).round() / 4):  # with and without ties
        for q in (0.0, 0.5, 0.95, 1.0):
            assert torch.equal(quantile(data, q), torch.quantile(data, q)), (n, q)


def test_object_statistics_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 40, 50, generator=g) * 3, 0)
    labels = probs.max(0).indices
    u = uncertainty_map(probs, dim=0)[0]
    stats = compute_stats(probs, labels, u, [0, 5, 9], [10, 20, 30], [0, 1, 2])
    p, lab, un = probs.numpy(), labels.numpy(), u.numpy()
    for i, o in enumerate(stats.objects):
        mine = lab == i
        band = (p[i] >= BAND_MIN_PROB) | mine
        ys, xs = np.nonzero(mine)
        assert o.area == mine.sum()
        assert o.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert o.mean_prob == pytest.approx(p[i][mine].mean(), rel=1e-5)
        assert o.band_area == band.sum()
        assert o.u_mean == pytest.approx(un[band].mean(), rel=1e-5)
        assert o.u_p95 == pytest.approx(np.percentile(un[band], 95), rel=1e-5)
        assert (o.bank_size, o.bank_evicted) == ([10, 20, 30][i], i)
    assert stats.u_mean == pytest.approx(un.mean(), rel=1e-5)
