"""One configuration object for inference: every setting of the Segmenter, with its default, in one place.

``vos segment``, the Ray job and training's evaluation all build it from the same command-line options
(:func:`add_arguments` / :func:`from_args`), and the job records ``asdict(config)`` in ``_run.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import asdict, dataclass, fields

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class SegmenterConfig:
    # -- memory (the adaptive feature bank) --
    #: features over all objects, background included; each object gets budget // K (the authors used
    #: 300,000 for an 11 GB GPU)
    budget: int = 300_000
    #: cosine similarity above which a new feature is merged into its nearest stored one
    merge_thres: float = 0.95
    #: weight of a merged new feature in the moving average
    update_rate: float = 0.1
    # -- input --
    #: working resolution: the largest shorter side in pixels the model runs at (a larger input is scaled
    #: down to it, a smaller one runs at its own size); None: the checkpoint's working size (the input size
    #: when it records none); 0: the input size. Results always come back at the input size.
    size: int | None = None
    #: resize an annotation whose size differs from its frame (nearest) instead of refusing it
    resize_annotations: bool = False
    # -- output --
    keep_probs: bool = True  # FrameResult.probs: K×H×W probabilities
    keep_uncertainty: bool = True  # FrameResult.uncertainty: the H×W U map
    #: U above which a pixel counts as uncertain (frame statistic u_frac_uncertain)
    u_threshold: float = 0.5
    #: also decode each frame from each object's reference memory (the frame where its mask was given, and a
    #: few recent frames that agreed with it) and compare: the quality estimate's strongest signal
    #: (``ref_agreement``). Costs one more rough decoder pass per frame; off, a fitted estimate that reads
    #: the signal gives no quality (null)
    reference_read: bool = True
    #: recent frames the reference memory keeps besides the given frame (0: the given frame alone)
    reference_frames: int = 3
    #: agreement (IoU of the rough masks) with the reference read a frame needs to enter the reference memory
    reference_trust: float = 0.85
    #: at most one frame enters the reference memory per this many frames (spread over time, not the last few)
    reference_every: int = 5
    # -- runtime --
    #: network precision: fp32 (exact), or bf16/fp16 autocast of the convolutions (the bank, its products,
    #: the decoder's heads and the URR arithmetic stay fp32)
    precision: str = "fp32"
    channels_last: bool = True  # NHWC convolutions (faster with oneDNN and cuDNN, same results)
    fold_bn: bool = True  # run a copy of the model with batch norm folded into the convolutions
    #: torch.compile the fixed-shape parts (encoders, key/value, decoder; the bank read stays eager for its
    #: changing shapes): "off", or a torch.compile mode ("reduce-overhead": CUDA graphs on a GPU). Each new
    #: frame size or object count compiles once; see BENCHMARKS.md for when it pays.
    compile: str = "off"

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        def whole(v):  # an int, not a bool (True is an int to Python)
            return isinstance(v, int) and not isinstance(v, bool)

        if not whole(self.budget) or self.budget < 1:
            bad("budget", "must be a positive integer")
        if not 0.0 <= self.update_rate <= 1.0:
            bad("update_rate", "must be in [0, 1]")
        if not math.isfinite(self.merge_thres):
            bad("merge_thres", "must be a finite cosine similarity (above 1: never merge)")
        if self.size is not None and (not whole(self.size) or self.size < 0):
            bad("size", "must be a positive number of pixels, 0 (input size) or None (the checkpoint's)")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {list(PRECISIONS)}")
        if self.compile not in COMPILE_MODES:
            bad("compile", f"must be one of {list(COMPILE_MODES)}")
        if not 0.0 <= self.u_threshold <= 1.0:
            bad("u_threshold", "must be in [0, 1]")
        if not whole(self.reference_frames) or self.reference_frames < 0:
            bad("reference_frames", "must be a whole number of frames, 0 or more")
        if not 0.0 <= self.reference_trust <= 1.0:
            bad("reference_trust", "must be an IoU in [0, 1]")
        if not whole(self.reference_every) or self.reference_every < 1:
            bad("reference_every", "must be a whole number of frames, 1 or more")

    def replace(self, **changes) -> "SegmenterConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown segmenter settings: {sorted(unknown)}")
        return cls(**d)

    def working_size_for(self, model) -> int | None:
        """The shorter side to process at with this model (None: the input size)."""
        if self.size is None:
            return getattr(model, "working_size", None) or None
        return self.size or None


DEFAULTS = SegmenterConfig()


def add_arguments(parser, *, runtime: bool = True) -> None:
    """The Segmenter's command-line options (an argparse parser or group), defaults from SegmenterConfig."""
    d = DEFAULTS
    parser.add_argument("--size", type=int, default=d.size,
                        help="working resolution: the largest shorter side in pixels the model runs at; a larger "
                             "input is scaled down to it, a smaller one runs at its own size (default: the "
                             "checkpoint's working size, else the input size; 0: the input size); outputs are "
                             "always at the input size")
    parser.add_argument("--budget", type=int, default=d.budget,
                        help=f"feature-bank budget: features over all objects, budget // K each, background "
                             f"included (default {d.budget})")
    parser.add_argument("--merge-thres", type=float, default=d.merge_thres,
                        help=f"cosine similarity above which a new feature merges into the bank (default {d.merge_thres})")
    parser.add_argument("--update-rate", type=float, default=d.update_rate,
                        help=f"feature-bank moving-average rate of a merge (default {d.update_rate})")
    parser.add_argument("--u-threshold", type=float, default=d.u_threshold,
                        help=f"U above which a pixel counts as uncertain (default {d.u_threshold})")
    parser.add_argument("--resize-annotations", action="store_true",
                        help="resize an annotation whose size differs from its frame (nearest) instead of refusing it")
    parser.add_argument("--no-reference-read", dest="reference_read", action="store_false", default=d.reference_read,
                        help="skip the second decoding of each frame from the reference memory "
                             "(faster; the quality estimate then has no value where it reads that agreement)")
    parser.add_argument("--reference-frames", type=int, default=d.reference_frames,
                        help="recent frames whose masks agreed with the reference read that the reference memory "
                             f"keeps besides the given frame (0: the given frame alone; default {d.reference_frames}); "
                             "the shipped quality estimate is calibrated with the default")
    if runtime:
        parser.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                            help=f"network precision (autocast); fp32 is exact (default {d.precision})")
        parser.add_argument("--compile", default=d.compile, choices=COMPILE_MODES,
                            help=f"torch.compile the encoders and decoder (default {d.compile})")


def from_args(args: argparse.Namespace, **overrides) -> SegmenterConfig:
    """SegmenterConfig from options added by :func:`add_arguments` (absent ones keep their defaults)."""
    names = ("size", "budget", "merge_thres", "update_rate", "u_threshold", "resize_annotations", "reference_read",
             "reference_frames", "precision", "compile")
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values["resize_annotations"] = bool(values.get("resize_annotations", False))
    values.update(overrides)
    return SegmenterConfig(**values)
