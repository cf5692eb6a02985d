"""The three output tables: Arrow schemas and one line of documentation per column.

``COLUMNS[table]`` is the single source of truth: the Parquet schemas below and
the column tables in docs/output-tables.md come from it (``python -m jobs.schema``
prints the Markdown), and a test checks that every column is documented there.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3  # 2: frames.u_map_png; 3: quality, annotation counts

BBOX = pa.list_(pa.int32())

OBJECT_STATS = pa.struct([
    pa.field("object_id", pa.int32()),
    pa.field("area", pa.int64()),
    pa.field("bbox", BBOX),
    pa.field("mean_prob", pa.float32()),
    pa.field("u_mean", pa.float32()),
    pa.field("u_p95", pa.float32()),
    pa.field("band_area", pa.int64()),
    pa.field("bank_size", pa.int64()),
    pa.field("bank_evicted", pa.int64()),
    pa.field("quality", pa.float32()),
    pa.field("components", pa.int32()),
])

_VIDEO_ID = ("video_id", pa.string(), "The manifest's `video_id`, unchanged (any string, also one that is not a safe "
             "file name; file names use `video_key`).")
_FRAME_INDEX = ("frame_index", pa.int32(), "0-based position of the frame in the video: sorted file order for a "
                "folder of frames, decode order for a video file. Frames before `start_frame` have no rows.")
_RUN_ID = ("run_id", pa.string(), "The run that wrote the row (`--run-id`).")
_ATTEMPT = ("attempt", pa.string(), "Id of the processing attempt that wrote the row; equal to `videos.attempt` "
            "for the committed attempt (the `jobs.query` views join on it).")
_HEIGHT = ("height", pa.int32(), "Frame (and mask) height in pixels, at the input resolution.")
_WIDTH = ("width", pa.int32(), "Frame (and mask) width in pixels.")
_QUALITY_DOC = ("the segmenter's quality estimate: the predicted region J (IoU with the true mask) in [0, 1], "
                "from a fitted estimator when the checkpoint carries one, else an uncalibrated rule "
                "(`videos.quality_calibrated`); null when the estimator reads the reference-read agreement and "
                "the run turned that read off (`--no-reference-read`)")

COLUMNS: dict[str, list[tuple[str, pa.DataType, str]]] = {
    "masks": [
        _VIDEO_ID,
        _FRAME_INDEX,
        ("object_id", pa.int32(), "Object id, as in the annotations (1..65535). Background (0) has no row. Every "
         "tracked object has a row in every frame from the one that introduced it, also when it is absent "
         "(`area` 0)."),
        _HEIGHT,
        _WIDTH,
        ("rle", pa.string(), "The object's mask as COCO compressed RLE `counts` (pycocotools convention: column-major, "
         "LEB128-like ASCII). Decode: `pycocotools.mask.decode({'size': [height, width], 'counts': rle})`."),
        ("area", pa.int64(), "Pixels in the mask (`pycocotools.mask.area` of the RLE)."),
        ("bbox", BBOX, "`[x, y, width, height]` of the mask in pixels (COCO convention); null when `area` is 0."),
        ("mean_prob", pa.float32(), "Mean probability of this object over its mask pixels; null when `area` is 0."),
        ("u_mean", pa.float32(), "Mean uncertainty U = exp(1 - p1/p2) over the object's band (pixels where its "
         "probability is >= 0.1 or that it is labelled); 1 is maximally uncertain. Null when the band is empty."),
        ("u_p95", pa.float32(), "95th percentile of U over the object's band; null when the band is empty."),
        ("quality", pa.float32(), f"Quality of this mask: {_QUALITY_DOC}. 1 where the mask was given at this frame "
         "(its annotation or a correction)."),
        ("annotated", pa.bool_(), "True when the frame had an input annotation (its mask is, at least partly, the "
         "given one rather than a prediction)."),
        _RUN_ID,
        _ATTEMPT,
    ],
    "frames": [
        _VIDEO_ID,
        _FRAME_INDEX,
        ("frame_name", pa.string(), "The frame's name: file stem for a folder of frames (`00012`), zero-padded "
         "index for a video file."),
        _HEIGHT,
        _WIDTH,
        ("annotated", pa.bool_(), "True when the frame had an input annotation."),
        ("num_objects", pa.int32(), "Objects tracked in this frame (background excluded); equals this frame's row "
         "count in `masks`."),
        ("u_mean", pa.float32(), "Mean uncertainty U over the whole frame (U = exp(1 - p1/p2) per pixel, in (0, 1])."),
        ("u_frac_uncertain", pa.float32(), "Fraction of the frame's pixels whose U exceeds `u_threshold`."),
        ("u_threshold", pa.float32(), "The U threshold used for `u_frac_uncertain` (`--u-threshold`)."),
        ("u_max_object", pa.float32(), "Largest `u_mean` over the frame's objects (background excluded): the least "
         "certain object. Null when no object has a band."),
        ("quality", pa.float32(), "Lowest `masks.quality` over the frame's objects: the frame is as trustworthy as "
         "its weakest mask (`WHERE quality >= 0.8` keeps frames whose every object is predicted at J >= 0.8). Null "
         "when the frame has no object."),
        ("u_map_png", pa.binary(), "The frame's U map, downscaled (area average) to a longest side of at most 128 "
         "px, as an 8-bit greyscale PNG: grey = round(255 * U). For `vos render` and `vos report`; decode with "
         "`cv2.imdecode` / PIL. Null when the segmenter kept no U map for the frame."),
        ("bank_size", pa.int64(), "Features in the adaptive feature bank, all objects and background together, when "
         "this frame was segmented."),
        ("objects", pa.list_(OBJECT_STATS), "Per-object statistics, background (id 0) first: `object_id`, `area`, "
         "`bbox`, `mean_prob`, `u_mean`, `u_p95`, `quality` (as in `masks`; null for background), `band_area` (pixels "
         "in the band), `bank_size` (features in this object's memory), `bank_evicted` (features evicted from it so "
         "far) and `components` (8-connected components of its mask)."),
        _RUN_ID,
        _ATTEMPT,
    ],
    "videos": [
        _VIDEO_ID,
        ("video_key", pa.string(), "File-name-safe key of the video (sanitised slug + 12 hex digits of SHA-1 of "
         "`video_id`): its files are `<table>/shard=NN/<video_key>.parquet`."),
        ("status", pa.string(), "`ok` (all of the video's masks and frames rows are committed) or `failed`."),
        ("error", pa.string(), "Why the video failed, naming the file or frame; null when `ok`."),
        ("error_type", pa.string(), "Exception class of the failure (`VideoReadError`, `AnnotationError`, "
         "`WorkerDied` ...); null when `ok`."),
        ("video_uri", pa.string(), "Frames: the video file or folder, as resolved from the manifest (the sample "
         "corpus run under `ray job submit`: its copy in the output's `_sample_corpus/`)."),
        ("annotations_uri", pa.string(), "The annotation folder or PNG, as resolved from the manifest."),
        ("start_frame", pa.int32(), "Frame where tracking started (the manifest's `start_frame`, else the first "
         "annotated frame); null when the video failed before it was known."),
        ("frames", pa.int32(), "Frames segmented (= rows in `frames` for this video); 0 when failed."),
        ("objects", pa.int32(), "Objects tracked by the end of the video (background excluded)."),
        ("masks_rows", pa.int64(), "Rows in `masks` for this video: a reader can check it got the whole video."),
        ("annotation_frames", pa.int32(), "Frames whose annotation was used: the first one and each later one that "
         "brought an object not tracked yet (the semi-supervised protocol of DAVIS and YouTube-VOS: later masks of "
         "tracked objects are ignored, so a folder of every frame's ground truth counts 1 here)."),
        ("annotation_objects", pa.int32(), "Objects those annotation frames started (= `objects`)."),
        ("correction_frames", pa.int32(), "Frames where a correction replaced masks (a corrections run, "
         "`--corrections`); 0 otherwise."),
        ("quality_mean", pa.float64(), "Mean `masks.quality` over the video's predicted masks (a mask given at its "
         "frame, annotation or correction, is not a prediction); null when it has none."),
        ("quality_min", pa.float64(), "Lowest `masks.quality` over the video's predicted masks; null when none."),
        ("frames_below_quality", pa.int32(), "Predicted frames (not `annotated`) whose `frames.quality` is below "
         "`review_quality`: what `vos report` flags for review and `vos export --format review` hands to "
         "annotators."),
        ("review_quality", pa.float32(), "The quality threshold of `frames_below_quality` (`--review-quality`)."),
        ("quality_calibrated", pa.bool_(), "True when the quality estimate came from an estimator fitted to "
         "ground truth and stored with the checkpoint (`vos calibrate`); false: the uncalibrated fallback rule, "
         "useful for ranking frames, not as a J."),
        ("height", pa.int32(), "Frame height in pixels; null when unknown."),
        ("width", pa.int32(), "Frame width in pixels; null when unknown."),
        ("seconds", pa.float64(), "Wall time of the attempt that committed: opening the video to committing."),
        ("fps", pa.float64(), "`frames / seconds`."),
        ("started_at", pa.timestamp("us", tz="UTC"), "When the committed attempt started."),
        ("finished_at", pa.timestamp("us", tz="UTC"), "When it committed."),
        ("attempt", pa.string(), "Id of the committed attempt (a uuid)."),
        ("attempts", pa.int32(), "Attempts started for this video in this run so far (> 1 after a worker died or a "
         "resumed run retried it)."),
        ("worker", pa.string(), "`host:pid` of the process that committed."),
        ("device", pa.string(), "Torch device the video ran on (`cpu`, `cuda:0` ...)."),
        ("model_checksum", pa.string(), "`sha256:<hex>` of the checkpoint file's bytes."),
        ("checkpoint_uri", pa.string(), "The `--checkpoint` URI."),
        ("settings", pa.string(), "JSON object of every segmentation setting (the fields of "
         "`vos_core.SegmenterConfig`: `size`, the largest shorter side the model ran at with these weights "
         "(smaller inputs ran at their own size), 0 = the input size; `budget`, `merge_thres`, `update_rate`, `u_threshold`, `resize_annotations`, `reference_read` (false: no "
         "`ref_agreement` signal, so a quality estimate that reads it is null), `reference_frames`, "
         "`reference_trust`, `reference_every` (the reference memory), `precision` ...); query with "
         "`json_extract`."),
        ("schema_version", pa.int32(), f"Version of this output schema ({SCHEMA_VERSION})."),
        _RUN_ID,
    ],
}

TABLES = tuple(COLUMNS)

#: Sort order of the rows in each file (each file holds one video).
SORT_KEYS = {"masks": ("video_id", "frame_index", "object_id"), "frames": ("video_id", "frame_index"),
             "videos": ("video_id",)}


def schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS[table]],
                     metadata={"vos.table": table, "vos.schema_version": str(SCHEMA_VERSION)})


SCHEMAS = {t: schema(t) for t in TABLES}


def _type_name(t: pa.DataType) -> str:
    if t == OBJECT_STATS:
        return "struct"
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_timestamp(t):
        return "timestamp (UTC)"
    return str(t).replace("bool", "boolean")


def markdown(table: str) -> str:
    """The column table of ``table`` as Markdown (for docs/output-tables.md)."""
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for name, typ, doc in COLUMNS[table]:
        lines.append(f"| `{name}` | {_type_name(typ)} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for t in TABLES:
        print(f"### `{t}/`\n\n{markdown(t)}\n")
