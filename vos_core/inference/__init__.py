"""Inference: the configuration, the streaming segmenter and its per-video session, the feature bank
(the memory manager), per-frame statistics."""
from .config import SegmenterConfig
from .feature_bank import FeatureBank
from .segmenter import FrameResult, Segmenter, VideoSession
from .stats import FrameStats, ObjectStats

__all__ = ["SegmenterConfig", "Segmenter", "VideoSession", "FrameResult", "FeatureBank", "FrameStats", "ObjectStats"]
