"""The job's options as one typed value: what ``python -m jobs.pseudo_label`` parses, what the
driver runs on (``driver.run(JobOptions(...))``), with the defaults in one place."""
from __future__ import annotations

from dataclasses import dataclass, field

from vos_core.inference import SegmenterConfig
from vos_core.model import SHIPPED_CHECKPOINT

from ..layout import DEFAULT_SHARDS
from ..storage import Storage
from .inputs import SAMPLE_MANIFEST

#: Local output root when --output is not given: ./vos_output/<run_id>.
DEFAULT_OUTPUT_ROOT = "vos_output"
#: The job keeps no probability maps (masks and statistics only) but the U map, stored downscaled
#: as ``frames.u_map_png``.
JOB_OUTPUTS = {"keep_probs": False, "keep_uncertainty": True}


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N): slice I of N of the manifest's rows."""
    try:
        i, n = (int(v) for v in str(spec).strip().split("/"))
    except ValueError:
        raise ValueError(f"expected I/N (slice I of N, 0 <= I < N), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"need 0 <= I < N, got {spec!r}")
    return i, n


@dataclass(frozen=True)
class ActorPool:
    """Actors of the pool: ``min`` start at once; up to ``max`` while videos wait (None: what the cluster fits)."""

    min: int = 1
    max: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "ActorPool":
        """'4' -> 4..4; '1:8' or '1-8' -> 1..8; 'auto' -> 1..(what the cluster fits)."""
        spec = str(spec).strip().lower()
        if spec == "auto":
            return cls()
        try:
            for sep in (":", "-", ","):
                if sep in spec:
                    lo, hi = (int(v) for v in spec.split(sep, 1))
                    break
            else:
                lo = hi = int(spec)
        except ValueError:
            raise ValueError(f"expected N, MIN:MAX or auto (whole numbers >= 1), got {spec!r}") from None
        if lo < 1 or hi < lo:
            raise ValueError(f"need 1 <= min <= max, got {spec!r}")
        return cls(lo, hi)


@dataclass(frozen=True)
class JobOptions:
    # -- input and output
    manifest: str = SAMPLE_MANIFEST
    output: str | None = None  # None: ./vos_output/<run_id>
    checkpoint: str = SHIPPED_CHECKPOINT
    run_id: str | None = None  # None: the run found at the output, else a new timestamped id
    davis_resolution: str | None = None
    endpoint_url: str | None = None
    storage_options: dict = field(default_factory=dict)
    shards: int = DEFAULT_SHARDS
    # -- segmentation (the job's outputs forced: see JOB_OUTPUTS)
    segmenter: SegmenterConfig = SegmenterConfig(**JOB_OUTPUTS)
    # -- Ray
    actors: ActorPool = ActorPool()
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    streams_per_actor: int = 1  # videos stepped together in one actor (jobs/label/streams.py)
    max_retries: int = 3
    prefetch: int = 4
    videos_per_task: int = 8  # videos handed to an actor in one Ray task, at most (fewer for small runs)
    encode_inline: bool = False
    ray_address: str | None = None
    num_cpus: int | None = None
    # -- run
    retry_failed: bool = False
    fail_on_error: bool = False
    limit: int | None = None
    manifest_shard: tuple[int, int] | None = None  # (index, count): run slice index of count of the manifest's rows
    progress_interval: float = 15.0
    # -- review and corrections
    review_quality: float = 0.5  # frames whose quality is below this are counted (and flagged) for review
    corrections: str | None = None  # COCO JSON or folder of PNGs per video: re-segment the corrected videos
    parent: str | None = None  # the run the corrections are for (default: named in the COCO JSON)

    def __post_init__(self):
        object.__setattr__(self, "segmenter", self.segmenter.replace(**JOB_OUTPUTS))
        checks = {"prefetch": self.prefetch >= 1, "shards": self.shards >= 1, "max_retries": self.max_retries >= 0,
                  "gpus_per_actor": 0 <= self.gpus_per_actor < float("inf"),
                  "cpus_per_actor": 0 < self.cpus_per_actor < float("inf"),
                  "num_cpus": self.num_cpus is None or self.num_cpus >= 1,
                  "limit": self.limit is None or self.limit >= 0, "review_quality": 0.0 <= self.review_quality <= 1.0,
                  "videos_per_task": self.videos_per_task >= 1,
                  "manifest_shard": self.manifest_shard is None or 0 <= self.manifest_shard[0] < self.manifest_shard[1]}
        checks["streams_per_actor"] = (not isinstance(self.streams_per_actor, bool)
                                       and isinstance(self.streams_per_actor, int) and self.streams_per_actor >= 1)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(", ".join(f"--{k.replace('_', '-')} {getattr(self, k)!r} is out of range" for k in bad))

    def storage(self) -> Storage:
        """Where the job reads and writes (the S3 endpoint resolved now, on the driver)."""
        return Storage.from_env(self.endpoint_url, self.storage_options)
