"""The one error handler of the ``xraycardiac`` command line: a failed command prints one line.

Every Typer app of the CLI (the top level and each sub-app, which tests also invoke alone) is built
with ``cls=ErrorHandlingGroup``. An exception that escapes a command is printed as one line,
``error: <message>``, and the command exits with status 1; usage errors keep click's status 2.
An ``OSError`` reads ``error: <strerror>: <path>``. Exceptions that are not meant for users
(``TypeError``, ``KeyError``, ...: bugs) also print one line, with their type and a hint.

``--debug`` (a top-level option that ``xraycardiac.cli.main`` also accepts anywhere on the command
line) or the environment variable ``XRAYCARDIAC_DEBUG=1`` let the exception through, so Python
prints the whole traceback (for a job run in a child process, the child's stderr tail too).

Only typer is imported here, so ``xraycardiac --help`` stays fast.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["DEBUG_ENV", "ErrorHandlingGroup", "debug_requested", "error_message", "request_debug"]

DEBUG_ENV = "XRAYCARDIAC_DEBUG"
"""Environment variable: set to 1 (true, yes, on) to get full tracebacks instead of one-line errors."""

_DEBUG_KEY = "xraycardiac.debug"
# click's base of usage errors, found through typer's public BadParameter (typer vendors click from 0.17)
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_PASS_THROUGH = (typer.Exit, typer.Abort, _CLICK_EXCEPTION)
# exceptions whose message is written for the user; any other type is a bug and says so
_USER_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)
_ERRNO_PREFIX = re.compile(r"^\[Errno \d+\] ")


def debug_requested(ctx: Any = None) -> bool:
    """True when ``--debug`` was given (recorded in the click context) or ``XRAYCARDIAC_DEBUG`` is set."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    return bool(ctx is not None and ctx.meta.get(_DEBUG_KEY))


def request_debug(ctx: Any) -> None:
    """Record ``--debug`` in the click context (its ``meta`` is shared by every nested command)."""
    ctx.meta[_DEBUG_KEY] = True


def error_message(exc: BaseException) -> str:
    """The message of the one ``error:`` line printed for ``exc`` (without the prefix).

    ``OSError`` with a path: ``<strerror>: <path>`` (``-> <path2>`` for renames). A job that failed in
    a child process (``JobError``): the child's message, without its stderr (``--debug`` shows it).
    Other user-facing errors (``ValueError``, ``RuntimeError``, ...): their message. Anything else is
    a bug: its type and message, and how to get the traceback.
    """
    runner = sys.modules.get("xraycardiac.jobs.runner")  # loaded whenever a JobError can exist
    if runner is not None and isinstance(exc, runner.JobError):
        return _ERRNO_PREFIX.sub("", exc.message) or f"job failed ({exc.error_type or 'no message'})"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {_path(exc.filename)}"
        if exc.filename2 is not None:
            text += f" -> {_path(exc.filename2)}"
        if isinstance(exc, IsADirectoryError):
            text += " (a file was expected)"
        elif isinstance(exc, NotADirectoryError):
            text += " (a part of this path is a file)"
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    message = str(exc)
    if isinstance(exc, _USER_ERRORS):
        return message or type(exc).__name__
    return (
        f"{type(exc).__name__}: {message} (an unexpected error: rerun with --debug or {DEBUG_ENV}=1 "
        "for the traceback, and please report it)"
    )


def _path(name: Any) -> str:
    """An OSError's ``filename`` (str, bytes, path-like or a file descriptor) as text."""
    return os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else str(name)


class ErrorHandlingGroup(TyperGroup):
    """A Typer group whose commands' exceptions print one ``error:`` line and exit with status 1.

    click's own exceptions (usage errors: status 2, ``typer.Exit``, ``typer.Abort``) and
    ``BaseException`` (Ctrl-C, a job stopped by a signal) pass through unchanged.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            if debug_requested(ctx):
                raise
            typer.echo(f"{typer.style('error:', fg='red', bold=True)} {error_message(exc)}", err=True)
            raise typer.Exit(1) from exc
