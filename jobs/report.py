"""``vos report`` / ``python -m jobs.report``: a static HTML report of one pseudo-label run, the
videos most in need of review first (jobs/inspect/report.py builds it).

    vos report --output ./vos_output/run1 --to report/        (then open report/index.html)
"""
from __future__ import annotations

import argparse
import sys

from . import storage as st
from .command import HelpFormatter, run_command
from .inspect.report import THUMBNAILS, write_report

HELP = "static HTML report of a run: videos to review, plots, thumbnails"
DESCRIPTION = "Writes index.html (and img/) summarising a pseudo-label run."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--to", help="local folder for index.html and img/ (default: vos_report_<run_id>)")
    p.add_argument("--thumbnails", type=int, default=THUMBNAILS,
                   help="overlay thumbnails per video (0: do not reopen the videos)")
    st.add_storage_arguments(p)


def run(args: argparse.Namespace) -> int:
    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    print(f"wrote {write_report(args.output, args.to, args.thumbnails, storage)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run_command("vos report", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
