from .checkpoint import CheckpointError, load_model, save_checkpoint
from .config import COMPACT, CONFIGS, OFFICIAL, ModelConfig
from .network import AFBURR, soft_aggregate

__all__ = [
    "AFBURR", "ModelConfig", "OFFICIAL", "COMPACT", "CONFIGS", "load_model", "save_checkpoint",
    "CheckpointError", "soft_aggregate",
]
