import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data; skips when absent, fails instead in CI
    (VOS_REQUIRE_SHARED_DATA=1, set by .ci/run)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data not found: {p}"
        if os.environ.get("VOS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (VOS_REQUIRE_SHARED_DATA=1: it must be present)")
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def tiny_official_ckpt(tmp_path_factory):
    """A randomly initialised official-architecture model saved in the official format."""
    import torch
    from vos_core.model import AFBURR, OFFICIAL

    torch.manual_seed(0)
    model = AFBURR(OFFICIAL)
    path = tmp_path_factory.mktemp("ckpt") / "official_random.pth"
    state = {k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 1, "loss": 0.5, "seed": 0}, path)  # no 'config': like the authors'
    return path
