"""Reading videos and masks, writing masks: local paths, ``file://`` or any fsspec URL."""
from .davis import davis_sequences
from .frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, FrameSource, ImageFolderSource, VideoFileSource, open_frames
from .masks import Annotations, davis_palette, load_annotations, read_id_map, write_palette_png
from .prefetch import prefetch
from .selection import SelectedAnnotations, select_annotations

__all__ = [
    "open_frames", "FrameSource", "ImageFolderSource", "VideoFileSource", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS",
    "load_annotations", "Annotations", "read_id_map", "write_palette_png", "davis_palette",
    "davis_sequences", "prefetch", "select_annotations", "SelectedAnnotations",
]
