"""Model configurations. The configuration travels inside our checkpoints;
official AFB-URR checkpoints carry none and are recognised as ``official``."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    trunk: str = "resnet50"  # resnet18/34/50 or efficientnet_lite0/1/2 (cut at stride 16)
    keydim: int = 128
    valdim: int = 512
    mdim_global: int = 256  # decoder width (convFM, Refine blocks)
    mdim_local: int = 32  # URR local branch width

    def __post_init__(self):
        from .encoders import encoder_channels

        encoder_channels(self.trunk)  # ValueError naming the choices for an unknown trunk
        for name in ("keydim", "valdim", "mdim_global", "mdim_local"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be a dict of fields, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


#: The authors' architecture; what official checkpoints need.
OFFICIAL = ModelConfig()
#: The shipped configuration: ImageNet-pretrained EfficientNet-Lite0 trunks, narrow key/value/decoder.
COMPACT = ModelConfig(trunk="efficientnet_lite0", keydim=64, valdim=128, mdim_global=64, mdim_local=32)
#: The first compact model (ResNet-18 trunks trained from scratch; kept so its checkpoints keep a name).
COMPACT_RESNET18 = ModelConfig(trunk="resnet18", keydim=64, valdim=128, mdim_global=64, mdim_local=32)

CONFIGS = {"official": OFFICIAL, "compact": COMPACT, "compact-resnet18": COMPACT_RESNET18}
