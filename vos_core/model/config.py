"""Model configurations. The configuration travels inside our checkpoints;
official AFB-URR checkpoints carry none and are recognised as ``official``."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    trunk: str = "resnet50"
    keydim: int = 128
    valdim: int = 512
    mdim_global: int = 256  # decoder width (convFM, Refine blocks)
    mdim_local: int = 32  # URR local branch width

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


#: The authors' architecture; what official checkpoints need.
OFFICIAL = ModelConfig()
#: Small enough to ship in the repository and run on a CPU.
COMPACT = ModelConfig(trunk="resnet18", keydim=64, valdim=128, mdim_global=64, mdim_local=32)

CONFIGS = {"official": OFFICIAL, "compact": COMPACT}
