"""``python -m xraycardiac.jobs <pipeline> job.json [--work-dir DIR]``: run one job, report in JSON lines.

stdout carries nothing but JSON lines, one event each, flushed at once::

    {"event": "start", "pipeline": "selftest", "pid": 123, "work_dir": "...", "output_dir": "..."}
    {"event": "progress", "stage": "writing files", "progress": 0.42, "eta_s": 12.0, "elapsed_s": 8.7}
    {"event": "log", "level": "warning", "message": "...", "logger": "py.warnings"}
    {"event": "done", "summary": {...}, "output_dir": "...", "duration_s": 20.7}

or, on failure, ``{"event": "error", "error": "<message>", "type": "<ExceptionClass>"}``.
Anything else written to stdout (print, C libraries) is sent to stderr, where tracebacks go too.
Python warnings and ``xraycardiac`` log records (INFO and up) become log events.

Exit status: 0 done; 1 the job failed; 2 bad command line or job spec (nothing was run);
143 stopped by SIGTERM (cancel), 130 by Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import IO, Any

from xraycardiac.jobs import registry
from xraycardiac.jobs.runner import JobTerminated, error_event, install_termination_handler, run_job
from xraycardiac.jobs.spec import JobSpec


class _EventWriter:
    """Writes one JSON line per event to the real stdout, thread-safe, flushed per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.terminal_sent = False

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=str)
        with self._lock:
            if event.get("event") in ("done", "error"):
                self.terminal_sent = True
            self._stream.write(line + "\n")
            self._stream.flush()


class _LogHandler(logging.Handler):
    """Turns log records into log events."""

    def __init__(self, write: _EventWriter) -> None:
        super().__init__(level=logging.INFO)
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(
                {
                    "event": "log",
                    "level": record.levelname.lower(),
                    "message": record.getMessage(),
                    "logger": record.name,
                }
            )
        except Exception:
            self.handleError(record)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (usage: {self.format_usage().strip().removeprefix('usage: ')})")


@contextlib.contextmanager
def _stdout_reserved_for_events() -> Iterator[IO[str]]:
    """Yield a stream on the real stdout; meanwhile fd 1 and ``sys.stdout`` point at stderr."""
    sys.stdout.flush()
    saved_fd = os.dup(1)
    saved_stdout = sys.stdout
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)  # also catches output from C code and child processes
    sys.stdout = sys.stderr
    try:
        yield events
    finally:
        with contextlib.suppress(OSError):
            events.close()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stdout


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m xraycardiac.jobs``; returns the exit status."""
    with _stdout_reserved_for_events() as stream:
        return _main(argv, _EventWriter(stream))


def _main(argv: list[str] | None, write: _EventWriter) -> int:
    parser = _Parser(prog="python -m xraycardiac.jobs", description="Run one xraycardiac job.")
    parser.add_argument("pipeline", help="pipeline name; must match the job spec")
    parser.add_argument("job_json", help="path of the job spec (job.json)")
    parser.add_argument(
        "--work-dir", default=None, help="empty or new folder for the job's files while it runs"
    )
    try:
        args = parser.parse_args(argv)
        spec = JobSpec.from_json(args.job_json)
        if spec.pipeline != args.pipeline:
            raise ValueError(
                f"the command line names pipeline {args.pipeline!r} but {args.job_json} is a {spec.pipeline!r} job"
            )
        registry.get(spec.pipeline)
    except (_UsageError, ValueError, OSError) as exc:
        event = error_event(exc)
        if isinstance(exc, _UsageError):
            event["type"] = "UsageError"
        write(event)
        return 2

    install_termination_handler()
    handler = _LogHandler(write)
    logging.captureWarnings(True)
    for name in ("xraycardiac", "py.warnings"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        run_job(spec, on_event=write, work_dir=args.work_dir)
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        if not write.terminal_sent:
            with contextlib.suppress(Exception):
                write(error_event(exc))
        if isinstance(exc, JobTerminated):
            return 143
        if isinstance(exc, KeyboardInterrupt):
            return 130
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
