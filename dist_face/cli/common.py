"""What every command-line tool shares: quiet ends on closed pipes, progress-bar switching."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from dist_face.extras import MissingExtraError

_Main = TypeVar("_Main", bound=Callable[..., int])


def add_resize_mode(p: argparse.ArgumentParser) -> None:
    """``--resize-mode crop|pad|stretch``: how a tool fits an image that is not 112×112."""
    from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, RESIZE_MODES

    p.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default=DEFAULT_RESIZE_MODE,
        help="how an image that is not 112x112 is fitted (default crop: keeps the aspect ratio)",
    )


def progress_off(quiet: bool) -> bool | None:
    """Tqdm's ``disable`` for a tool: off with ``--quiet``, else shown only on a terminal.

    tqdm reads ``disable=None`` as "disable when the output is not a TTY", so logs and CI
    output get no bar lines.
    """
    return True if quiet else None


def silence_stdout() -> None:
    """Point standard output at /dev/null so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def closed_pipe_is_quiet(main: _Main) -> _Main:
    """Decorate a tool's ``main``: a reader that closes the pipe (``| head``) ends it quietly.

    Without this, Python prints a ``BrokenPipeError`` traceback, and another one when it
    flushes standard output at exit. The tool's exit code is kept when the output was
    complete; an interrupted output ends with 0 as ``head`` asked for no more. A missing
    optional package (:class:`~dist_face.extras.MissingExtraError`) is one line naming the
    extra, exit code 2.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # inside the try: a closed pipe shows up here at the latest
        except BrokenPipeError:
            silence_stdout()
            return 0
        except MissingExtraError as exc:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "dist_face"
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        return code

    return wrapper  # type: ignore[return-value]
