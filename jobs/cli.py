"""The ``vos`` command: vos_core's ``segment`` and ``eval`` plus the commands of the jobs package.

    vos segment ... / vos eval ...             one video, no Ray (vos_core.cli)
    vos pseudo-label --manifest M --output O   the Ray job (python -m jobs.pseudo_label)
    vos train ...                              training (python -m jobs.train)
    vos query --output O "SELECT ..."          DuckDB over a run (python -m jobs.query)
    vos render --output O --video ID --to x.mp4
    vos report --output O --to report/

vos_core stays free of Ray, Parquet and DuckDB: its parser is extended here, not there.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vos_core.cli import EXIT_BAD_INPUT
from vos_core.cli import build_parser as build_core_parser

#: Commands handed over whole to another module's ``main(argv)`` (their own options and --help).
DELEGATED = {
    "pseudo-label": ("jobs.pseudo_label", "pseudo-label a corpus on Ray (Parquet masks, frames, videos)"),
    "train": ("jobs.train", "train or fine-tune the model (`vos train evaluate ...` to score)"),
    "query": ("jobs.query", "DuckDB SQL over a run's output; --decode-video writes masks as PNGs"),
}


def _subcommands(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    from . import render, report

    parser = build_core_parser()
    sub = _subcommands(parser)
    for name, (module, help_text) in DELEGATED.items():
        # listed in `vos --help`; main() passes their arguments on before argparse sees them
        sub.add_parser(name, help=help_text, add_help=False)
    render.add_parser(sub)
    report.add_parser(sub)
    return parser


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from vos_core.errors import VOSInputError
    from vos_core.model import CheckpointError

    from .render import RenderError

    return VOSInputError, CheckpointError, RenderError, FileNotFoundError


def run_command(args) -> int:
    """Runs a parsed subcommand; bad input is one line on stderr and exit status 2, as in vos_core.cli."""
    try:
        return args.func(args)
    except _bad_input_errors() as e:
        print(f"vos {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:])
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
