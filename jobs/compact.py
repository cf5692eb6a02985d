"""``vos compact`` / ``python -m jobs.compact``: merges a run's committed per-video files into a few
large files per shard, atomically, also while the job is still writing (jobs/label/compact.py).

    vos compact --output s3://bucket/labels/run1
    vos compact --output ./vos_output/run1 --target-mb 128

Rerun it at any time (after a crash too): it finishes an interrupted compaction and compacts
what was committed since. Readers (query, render, report, export) and resume work the same.
"""
from __future__ import annotations

import argparse
import sys

from . import storage as st
from .command import HelpFormatter, run_command
from .label.compact import DEFAULT_TARGET_MB, DEFAULT_THREADS, compact

HELP = "merge a run's per-video Parquet files into large ones (atomic, safe while the job runs)"
DESCRIPTION = ("Merges the committed videos' per-video files of each shard into files of about --target-mb; "
               "readers see the old files or the new ones, never both. Safe to rerun.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--target-mb", type=float, default=DEFAULT_TARGET_MB,
                   help="input bytes (MB) merged into one compacted file per table")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="per-video files read at once")
    st.add_storage_arguments(p)


def run(args: argparse.Namespace) -> int:
    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    reports = compact(args.output, storage, args.target_mb, args.threads)
    mb = sum(r.bytes for r in reports) / 2**20
    print(f"compacted {sum(r.compacted for r in reports)} video(s) into {sum(r.parts for r in reports)} new file(s) "
          f"per table ({mb:.1f} MB) over {sum(bool(r.parts) for r in reports)} of {len(reports)} shard(s); removed "
          f"{sum(r.removed for r in reports)} per-video file(s)"
          + (f", {sum(r.leftovers for r in reports)} left by an interrupted compaction" if any(r.leftovers for r in reports)
             else "")
          + f"; {sum(r.covered for r in reports)} video(s) compacted in all"
          + (f"; {sum(r.waiting for r in reports)} left for the next compaction (being rewritten)"
             if any(r.waiting for r in reports) else ""), flush=True)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compact", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.compact", description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run_command("vos compact", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
