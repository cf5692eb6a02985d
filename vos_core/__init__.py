"""vos_core: AFB-URR video object segmentation (no Ray, no Parquet in here).

``vos_core.model``: the network and its checkpoints; ``vos_core.inference``: the segmenter, its
configuration, the feature bank; ``vos_core.io``: frames and masks; ``vos_core.metrics``: DAVIS J/F.
"""
from .errors import AnnotationError, VideoReadError, VOSInputError
from .inference import FeatureBank, FrameResult, FrameStats, ObjectStats, Segmenter, SegmenterConfig, VideoSession
from .model import AFBURR, COMPACT, OFFICIAL, CheckpointError, ModelConfig, load_model, save_checkpoint

__all__ = [
    "AFBURR", "ModelConfig", "OFFICIAL", "COMPACT", "load_model", "save_checkpoint", "CheckpointError",
    "Segmenter", "SegmenterConfig", "VideoSession", "FrameResult", "FeatureBank", "FrameStats", "ObjectStats",
    "VOSInputError", "AnnotationError", "VideoReadError",
]
