"""The ``vos`` command: vos_core's ``segment`` and ``eval`` plus the commands of the jobs package.

    vos segment ... / vos eval ...             one video, no Ray (vos_core.cli)
    vos pseudo-label --manifest M --output O   the Ray job (python -m jobs.pseudo_label)
    vos train ...                              training (python -m vos_train)
    vos calibrate --checkpoint C --data D --out C2   fit the quality estimate (vos_train.calibrate)
    vos query --output O "SELECT ..."          DuckDB over a run (python -m jobs.query)
    vos render --output O --video ID --to x.mp4
    vos report --output O --to report/
    vos export --output O --to DIR --format davis|coco|sav|review [--where SQL]
    vos compact --output O                     merge per-video files into large ones (python -m jobs.compact)

vos_core stays free of Ray, Parquet and DuckDB: its parser is extended here, not there. This
module imports the subcommands' modules; none of them imports it back.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vos_core.cli import build_parser as build_core_parser

from . import compact, export, render, report
from .command import run_command

#: Commands handed over whole to another module's ``main(argv)`` (their own options and --help).
DELEGATED = {
    "pseudo-label": ("jobs.pseudo_label", "pseudo-label a corpus on Ray (Parquet masks, frames, videos)"),
    "train": ("vos_train.__main__", "train or fine-tune the model (`vos train evaluate ...` to score)"),
    "calibrate": ("vos_train.calibrate", "fit a checkpoint's per-frame quality estimate on sequences with ground truth"),
    "query": ("jobs.query", "DuckDB SQL over a run's output; --decode-video writes masks as PNGs"),
}


def _subcommands(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    parser = build_core_parser()
    sub = _subcommands(parser)
    for name, (_, help_text) in DELEGATED.items():
        # listed in `vos --help`; main() passes their arguments on before argparse sees them
        sub.add_parser(name, help=help_text, add_help=False)
    render.add_parser(sub)
    report.add_parser(sub)
    export.add_parser(sub)
    compact.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_command(f"vos {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
