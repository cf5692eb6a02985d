"""vos_core: AFB-URR video object segmentation (no Ray, no Parquet in here)."""
from .errors import AnnotationError, VideoReadError, VOSInputError
from .feature_bank import FeatureBank
from .model import AFBURR, COMPACT, OFFICIAL, CheckpointError, ModelConfig, load_model, save_checkpoint
from .segmenter import FrameResult, Segmenter
from .stats import FrameStats, ObjectStats

__all__ = [
    "AFBURR", "ModelConfig", "OFFICIAL", "COMPACT", "load_model", "save_checkpoint", "CheckpointError",
    "FeatureBank", "Segmenter", "FrameResult", "FrameStats", "ObjectStats",
    "VOSInputError", "AnnotationError", "VideoReadError",
]
