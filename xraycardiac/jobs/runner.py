"""Run a job in this process (``run_job``) or in a child process the GUI polls and cancels (``JobProcess``).

Both paths share one contract: the pipeline writes into a private work folder next to
``spec.output_dir``; only when it has succeeded (and ``job_report.json`` is written) is that folder
renamed to ``output_dir`` in one step. On any failure or cancel the work folder is deleted, so
nothing partial ever appears at ``output_dir``. A non-empty ``output_dir`` is refused before the job
starts unless ``params["overwrite"]`` is true; then the old folder is swapped out and deleted only
after the new one is in place. A read-only ``output_dir`` (even an empty one) is refused with a
PermissionError, never replaced by a writable one (:func:`xraycardiac.outputs.check_output`).

``JobProcess`` never blocks the caller except in ``wait()``/``cancel()``: stdout (JSON lines, one
event each) and stderr are read by daemon threads, and ``poll()`` returns the events gathered so
far. The child runs in its own process group (POSIX session / Windows process group) so that
``cancel()`` can end the whole process tree.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xraycardiac
from xraycardiac.jobs import registry
from xraycardiac.jobs.registry import EventSink, Progress
from xraycardiac.jobs.spec import JobSpec
from xraycardiac.outputs import check_output, move_into_place, new_work_dir

REPORT_NAME = "job_report.json"
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}  # disk or quota full


class JobError(RuntimeError):
    """A job failed in its child process.

    Attributes:
        message: the child's error message (or how the process ended, if it reported none).
        error_type: the exception class name reported by the child, or None.
        returncode: the child's exit status (negative: killed by that signal on POSIX).
        stderr_tail: the last lines the child wrote to stderr (tracebacks, warnings).
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        returncode: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = f"{self.error_type}: {self.message}" if self.error_type else self.message
        tail = self.stderr_tail.strip().splitlines()[-20:]
        if tail:
            text += "\n\nlast lines of the job's stderr:\n" + "\n".join(tail)
        return text


class JobCancelled(JobError):
    """The job was cancelled with ``JobProcess.cancel()``."""


class JobTerminated(BaseException):
    """Raised when a signal asks a job to stop, so clean-up code runs: inside a job process on SIGTERM,
    and in a process waiting on a child job (``run_in_subprocess``) on SIGTERM or SIGHUP.

    A BaseException, like KeyboardInterrupt, so that a pipeline's ``except Exception`` cannot
    swallow it.

    Attributes:
        signum: the signal that stopped the job, or None.
    """

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


# ------------------------------------------------------------------------------------ in-process


def run_job(
    spec: JobSpec, on_event: EventSink | None = None, work_dir: str | os.PathLike[str] | None = None
) -> dict:
    """Run a job in this process: validate, run the pipeline in a work folder, move it into place.

    Events sent to ``on_event``: ``start`` (pipeline, pid, work_dir, output_dir), ``progress``
    and ``log`` from the pipeline, then exactly one of ``done`` (summary, output_dir, duration_s)
    or ``error`` (error, type).

    Args:
        spec: the job; relative paths are taken relative to the current directory.
        on_event: called with each event dict, in this thread.
        work_dir: folder for the pipeline's files; must be empty or absent. Default: a fresh
            hidden folder next to ``output_dir`` (same filesystem, so the final move is a rename).

    Returns:
        The pipeline's summary (JSON-serialisable dict), as also stored in ``job_report.json``.

    Raises:
        FileNotFoundError: an input is missing (naming its key and path).
        FileExistsError: ``output_dir`` is not empty and ``params.overwrite`` is not true.
        PermissionError: ``output_dir`` (or the folder it would be made in) is read-only.
        ValueError: unknown pipeline or bad parameters.
        Exception: whatever the pipeline raised; the work folder is gone by then.
    """
    emit: EventSink = on_event if on_event is not None else _drop
    try:
        return _run(spec, emit, work_dir)
    except BaseException as exc:
        emit(error_event(exc))
        raise


def error_event(exc: BaseException) -> dict[str, Any]:
    """The ``{"event": "error", ...}`` dict for an exception."""
    return {"event": "error", "error": str(exc) or type(exc).__name__, "type": type(exc).__name__}


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """The overwrite rule for ``output_dir`` (:func:`xraycardiac.outputs.check_output`), before the job starts.

    Raises:
        FileExistsError: a file, or a non-empty folder without ``overwrite``, naming the folder.
        PermissionError: the folder (or the one it would be made in) is read-only: it is never
            replaced by a writable one.
    """
    check_output(
        output_dir,
        overwrite=overwrite,
        what="output_dir",
        how="pass --overwrite (in a job spec: params.overwrite = true)",
    )


def _run(spec: JobSpec, emit: EventSink, work_dir: str | os.PathLike[str] | None) -> dict:
    if not isinstance(spec, JobSpec):
        raise TypeError(f"run_job needs a JobSpec, got {type(spec).__name__}")
    spec = spec.resolved()
    spec.check_inputs()
    pipeline = registry.get(spec.pipeline)
    out = Path(spec.output_dir)
    overwrite = bool(spec.params.get("overwrite", False))
    check_output_dir(out, overwrite)
    work = _make_work_dir(out, work_dir)
    started = time.time()
    t0 = time.monotonic()
    emit(
        {
            "event": "start",
            "pipeline": spec.pipeline,
            "pid": os.getpid(),
            "work_dir": str(work),
            "output_dir": str(out),
        }
    )
    try:
        summary = _checked_summary(pipeline(spec, work, Progress(emit)), work, spec.pipeline)
        report = _report(spec, summary, started, time.time(), time.monotonic() - t0)
        (work / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        with _termination_deferred():
            move_into_place(work, out, overwrite, check=check_output_dir)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        named = no_space_error(exc, out)
        if named is not None:
            raise named from exc
        raise
    emit(
        {
            "event": "done",
            "summary": summary,
            "output_dir": str(out),
            "duration_s": round(time.monotonic() - t0, 3),
        }
    )
    return summary


def no_space_error(exc: BaseException, path: Path) -> OSError | None:
    """For a disk-full / quota / file-too-large ``OSError`` that names no file (a failed ``write()``
    never does): the same error naming ``path``, the output being written. Otherwise None."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in _NO_SPACE:
        return OSError(exc.errno, exc.strerror, str(path))
    return None


def _drop(event: dict[str, Any]) -> None:
    """Event sink that ignores events."""


def _make_work_dir(out: Path, work_dir: str | os.PathLike[str] | None) -> Path:
    """Create the default work folder next to ``out``, or check a given one is empty."""
    if work_dir is None:
        return new_work_dir(out)
    work = Path(os.path.abspath(work_dir))
    if work == out:
        raise ValueError(f"work_dir must differ from output_dir, both are {out}")
    if work.exists():
        if not work.is_dir() or any(work.iterdir()):
            raise ValueError(f"work_dir {work} must be an empty folder or not exist yet")
    else:
        work.mkdir(parents=True)
    return work


def _checked_summary(summary: Any, work: Path, pipeline: str) -> dict:
    """A JSON round-tripped copy of the pipeline's summary, after checking its listed outputs exist."""
    if not isinstance(summary, dict):
        raise TypeError(
            f"pipeline {pipeline!r} returned {type(summary).__name__}; it must return a dict summary"
        )
    try:
        summary = json.loads(json.dumps(summary))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"pipeline {pipeline!r} returned a summary that is not JSON-serialisable: {exc}"
        ) from exc
    if (work / REPORT_NAME).exists():
        raise RuntimeError(
            f"pipeline {pipeline!r} wrote {REPORT_NAME}, a file name reserved for the job report"
        )
    outputs = summary.get("outputs", {})
    if not isinstance(outputs, dict):
        raise TypeError(f"pipeline {pipeline!r}: summary['outputs'] must map names to file names")
    for key, name in outputs.items():
        if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
            raise RuntimeError(
                f"pipeline {pipeline!r}: output {key!r} = {name!r} must be a path inside the output folder"
            )
        if not (work / name).exists():
            raise RuntimeError(f"pipeline {pipeline!r} lists output {key!r} = {name!r} but did not write it")
    return summary


def _report(spec: JobSpec, summary: dict, started: float, finished: float, duration_s: float) -> dict:
    """The provenance record written as job_report.json."""

    def iso(t: float) -> str:
        return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat(timespec="seconds")

    report: dict[str, Any] = {
        "pipeline": spec.pipeline,
        "spec": spec.to_dict(),
        "summary": summary,
        "xraycardiac_version": xraycardiac.__version__,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round(duration_s, 3),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    torch = sys.modules.get("torch")  # recorded only if the pipeline used it; never imported here
    if torch is not None:
        report["torch"] = {
            "version": getattr(torch, "__version__", "?"),
            "cuda": getattr(getattr(torch, "version", None), "cuda", None),
        }
    return report


# SIGTERM arriving while the finished outputs are being renamed into place is ignored: the job is
# complete at that point, and stopping half-way through a swap could lose the old outputs.
_DEFER_DEPTH = 0


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    global _DEFER_DEPTH
    _DEFER_DEPTH += 1
    try:
        yield
    finally:
        _DEFER_DEPTH -= 1


def install_termination_handler() -> None:
    """Make SIGTERM (SIGBREAK on Windows) raise ``JobTerminated`` so clean-up code runs (job processes only)."""

    def handler(signum: int, frame: Any) -> None:
        if _DEFER_DEPTH == 0:
            raise JobTerminated(f"job terminated by signal {signum}", signum)

    signal.signal(signal.SIGTERM, handler)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, handler)
