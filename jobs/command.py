"""What the jobs command lines share: --help that shows defaults, and bad input as one line + exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import EXIT_BAD_INPUT, bad_input_types


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says its default,
    or the default is empty (None, False: nothing worth printing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or any(action.default is d for d in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit status 2, like every other bad
    input of the commands (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def run_command(name: str, fn: Callable[[], int]) -> int:
    """Runs ``fn``; bad input becomes ``<name>: error: <message>`` on stderr and exit status 2."""
    try:
        return fn()
    except Exception as e:
        if not isinstance(e, bad_input_types()):
            raise
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
