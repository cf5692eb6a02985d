from pathlib import Path

from .checkpoint import CheckpointError, load_model, save_checkpoint
from .config import COMPACT, CONFIGS, OFFICIAL, ModelConfig
from .network import AFBURR, soft_aggregate

#: The weights shipped in the package: the default checkpoint of ``vos segment``, the job, render and report.
SHIPPED_CHECKPOINT = str(Path(__file__).resolve().parents[1] / "weights" / "compact.pth")

__all__ = [
    "AFBURR", "ModelConfig", "OFFICIAL", "COMPACT", "CONFIGS", "load_model", "save_checkpoint",
    "CheckpointError", "soft_aggregate", "SHIPPED_CHECKPOINT",
]
