"""Errors the jobs commands report as one line on stderr with exit status 2 ("bad input"),
the same status as ``vos segment``/``vos eval`` (vos_core.cli) give for a file they cannot use."""
from __future__ import annotations

EXIT_OK = 0
EXIT_VIDEOS_FAILED = 1  # pseudo-label --fail-on-error: the run finished, but a video failed
EXIT_BAD_INPUT = 2  # = vos_core.cli.EXIT_BAD_INPUT (not imported: that would load torch)
EXIT_INCOMPLETE = 3  # pseudo-label: a video's outcome could not be recorded (or the run's lease was lost): rerun


class BadInput(ValueError):
    """Input a command cannot use (manifest, output, run, video ...); the message names it."""


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Every exception type the commands turn into one line and exit 2 (imported when needed:
    vos_core.model loads torch)."""
    from vos_core.errors import VOSInputError
    from vos_core.model import CheckpointError

    return BadInput, VOSInputError, CheckpointError, FileNotFoundError
