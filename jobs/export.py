"""``vos export`` / ``python -m jobs.export``: a run's labels as DAVIS PNGs, COCO JSON, SA-V masklets,
or a review set for CVAT and Label Studio (jobs/inspect/export.py writes them).

    vos export --output ./vos_output/run1 --to davis_set/ --format davis --where "quality >= 0.8" --with-images
    vos export --output s3://labels/run1 --to s3://labels/run1-review --format review
"""
from __future__ import annotations

import argparse
import sys

from . import storage as st
from .command import HelpFormatter, run_command
from .inspect.export import FORMATS, export_run

HELP = "write a run's labels as davis / coco / sav files, or the frames to review (CVAT, Label Studio)"
DESCRIPTION = ("Writes the committed masks rows matching --where (a DuckDB predicate over the masks view; other "
               "views through subqueries) to --to, a local folder or any fsspec URL.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--to", required=True, help="destination folder (local path or fsspec URL, e.g. s3://...)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="davis: Annotations/<video>/<frame>.png; coco: annotations.json; sav: <video>.json "
                        "masklets; review: flagged frames as JPEGs + COCO/Label Studio pre-annotations")
    p.add_argument("--where", default=None, metavar="SQL",
                   help="DuckDB predicate over masks, e.g. \"quality >= 0.8 AND NOT annotated\" (review: frames with "
                        "a matching row; default for review: the frames vos report flags)")
    p.add_argument("--with-images", action="store_true",
                   help="also write the frames as JPEGs (davis, sav: JPEGImages/; coco: images/; review always has them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    st.add_storage_arguments(p)


def run(args: argparse.Namespace) -> int:
    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    r = export_run(args.output, args.to, args.format, args.where, args.with_images, storage,
                   progress=not args.no_progress)
    print(f"wrote {r.format} to {r.to}: {r.videos} video(s), {r.frames} frame(s), {r.masks} mask row(s)"
          f"{f', {r.images} image(s)' if r.images else ''}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.export", description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run_command("vos export", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
