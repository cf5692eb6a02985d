"""The ``vos`` command line.

    vos segment --checkpoint CKPT --frames DIR_OR_VIDEO --annotations DIR_OR_PNG --output DIR
    vos eval --results DIR --annotations DIR --output scores.json

Each subcommand is one ``cmd_*`` function taking the parsed arguments and
returning an exit status. Bad input (a file that cannot be used) is reported as
one line on stderr with exit status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import closing

from .errors import VOSInputError
from .model import CheckpointError

EXIT_BAD_INPUT = 2


def _json_safe(value):
    """NaN/inf become null: they are not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- vos segment --------------------------------------------------------------
def add_segment_parser(sub) -> None:
    from .inference import config as seg_config
    from .model import SHIPPED_CHECKPOINT

    p = sub.add_parser("segment", help="segment one video from its first-frame mask(s)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Segments a video (folder of frames or video file) from annotation PNG(s) and "
                                   "writes <output>/<frame>.png (DAVIS palette) and <output>/stats.jsonl. "
                                   "Semi-supervised protocol: an annotation frame contributes only the objects that "
                                   "first appear in it, so a folder holding every frame's ground truth gives what "
                                   "the first frame's mask alone gives.")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT, help="model weights (.pth, local or fsspec URL)")
    p.add_argument("--frames", required=True, help="folder of frames or a video file (local or fsspec URL)")
    p.add_argument("--annotations", required=True,
                   help="folder of id-map PNGs named like the frames, or one PNG (the mask of --start-frame)")
    p.add_argument("--output", required=True, help="folder for the masks and stats.jsonl")
    p.add_argument("--start-frame", type=int, default=None,
                   help="frame to start tracking at (default: the first annotated frame); earlier frames and "
                        "masks are ignored")
    seg_config.add_arguments(p)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)


def cmd_segment(args) -> int:
    import fsspec
    import torch
    from tqdm import tqdm

    from .inference import Segmenter
    from .inference.config import from_args
    from .io import load_annotations, open_frames, prefetch, select_annotations, write_palette_png
    from .io._fs import is_local
    from .model import load_model

    if args.start_frame is not None and args.start_frame < 0:
        raise VOSInputError(f"--start-frame must be >= 0, got {args.start_frame}")
    config = from_args(args, keep_probs=False, keep_uncertainty=False)  # validates the settings
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    frames = open_frames(args.frames)
    annotations = load_annotations(args.annotations, frame_names=frames.names if frames.kind == "folder" else None)
    annotations, start = select_annotations(annotations, args.annotations, args.start_frame)
    validate = getattr(annotations, "validate", None)
    if validate:
        validate()  # fail now, not at a mask halfway through the video
    model = load_model(args.checkpoint, device=device)
    segmenter = Segmenter(model, config)
    output = args.output.rstrip("/")
    fs, out_path = fsspec.core.url_to_fs(output)
    if is_local(fs):  # object stores have no folders to create
        if fs.isfile(out_path):
            raise VOSInputError(f"--output {output}: is a file, not a folder")
        try:
            fs.makedirs(out_path, exist_ok=True)
        except OSError as e:  # under a file, or a read-only parent
            raise VOSInputError(f"--output {output}: cannot create the folder: {e.strerror or e}") from None
        if not os.access(out_path, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
            raise VOSInputError(f"--output {output}: is not writable (a read-only folder or file system)")
    try:
        total = len(frames)
    except TypeError:
        total = None
    written = 0
    session = segmenter.start()
    # closing(): stop the decoding thread at once when the run fails, not when the traceback is freed
    with frames, closing(prefetch(frames)) as decoded, fs.open(f"{out_path}/stats.jsonl", "w") as stats_file, \
            tqdm(total=total, unit="frame", disable=args.no_progress, desc="segment") as bar:
        for result in segmenter.run(decoded, annotations, session=session):
            name = frames.name(result.index)
            write_palette_png(f"{output}/{name}.png", result.mask)
            record = {"index": result.index, "name": name, "annotated": result.annotated,
                      "object_ids": result.object_ids, "new_objects": result.new_objects,
                      "stats": result.stats.to_dict()}
            stats_file.write(json.dumps(_json_safe(record)) + "\n")
            written += 1
            bar.update(result.index + 1 - bar.n)  # frames before the first mask are skipped, not segmented
    print(f"wrote {written} masks and stats.jsonl to {output} (from frame {start}; "
          f"{len(session.annotation_frames)} annotation frame(s) used: {session.annotation_frames}, "
          f"{len(session.objects)} object(s); working size {segmenter.working_size or 'input'})", file=sys.stderr)
    return 0


# -- vos eval -----------------------------------------------------------------
def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="DAVIS J/F scores of result masks against ground truth",
                       description="Scores <results>/<seq>/<frame>.png against <annotations>/<seq>/<frame>.png "
                                   "with the DAVIS measures (first and last frames unscored).")
    p.add_argument("--results", required=True, help="folder of result sequences")
    p.add_argument("--annotations", required=True, help="folder of ground-truth sequences")
    p.add_argument("--output", help="write the scores here as JSON")
    p.add_argument("--sequences", nargs="+", help="only these sequences (default: all in --results)")
    p.add_argument("--bound-th", type=float, default=0.008, help="boundary tolerance (fraction of the diagonal)")
    p.set_defaults(func=cmd_eval)


def format_scores_table(scores: dict) -> str:
    def cell(x):
        return f"{x:7.4f}" if x is not None else "      -"

    width = max([len("sequence")] + [len(s) for s in scores["sequences"]])
    lines = [f"{'sequence':<{width}}  {'J&F':>7}  {'J_mean':>7}  {'F_mean':>7}"]
    for seq, s in scores["sequences"].items():
        jf = (s["J_mean"] + s["F_mean"]) / 2 if s["J_mean"] is not None and s["F_mean"] is not None else None
        lines.append(f"{seq:<{width}}  {cell(jf)}  {cell(s['J_mean'])}  {cell(s['F_mean'])}")
    lines.append(f"{'overall':<{width}}  {cell(scores['J&F'])}  {cell(scores['J_mean'])}  {cell(scores['F_mean'])}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    import fsspec

    from .metrics import evaluate_folders

    scores = evaluate_folders(args.results, args.annotations, sequences=args.sequences, bound_th=args.bound_th)
    print(format_scores_table(scores))
    if args.output:
        with fsspec.open(args.output, "w") as f:
            json.dump(_json_safe(scores), f, indent=1)
    return 0


# -- entry point --------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vos", description="AFB-URR video object segmentation and pseudo-labelling")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_segment_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (VOSInputError, CheckpointError) as e:
        print(f"vos {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
