"""``vos render`` / ``python -m jobs.render``: one committed video's pseudo-labels drawn over
its frames, as an mp4, a GIF or a folder of PNGs (jobs/inspect/render.py does the drawing).

    vos render --output ./vos_output/run1 --video judo-a --to judo-a.mp4
    vos render --output s3://bucket/labels/run1 --video judo-a --to frames/ --uncertainty blend
"""
from __future__ import annotations

import argparse
import sys

from . import storage as st
from .command import HelpFormatter, run_command
from .inspect.draw import UNCERTAINTY_MODES
from .inspect.render import DEFAULT_FPS, render_video

HELP = "draw one video's pseudo-labels (mp4, gif or PNGs)"
DESCRIPTION = "Draws a committed video's masks (and uncertainty) over its frames."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--video", required=True, metavar="VIDEO_ID", help="the video_id to draw")
    p.add_argument("--to", help="out.mp4, out.gif, or dir/ for one PNG per frame (default: <video_key>.mp4)")
    p.add_argument("--uncertainty", choices=UNCERTAINTY_MODES, default="beside",
                   help="draw the U map as a heatmap beside the frame, blended over it, or not at all")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate of mp4/gif")
    p.add_argument("--max-side", type=int, default=None, help="scale frames down to this longest side")
    st.add_storage_arguments(p)


def run(args: argparse.Namespace) -> int:
    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    result = render_video(args.output, args.video, args.to, args.uncertainty, args.fps, args.max_side, storage)
    print(f"wrote {result.frames} frame(s) of {args.video!r} to {result.to} (uncertainty: {result.uncertainty})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("render", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.render", description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run_command("vos render", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
