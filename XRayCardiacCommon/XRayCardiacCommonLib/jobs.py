"""Run an ``xraycardiac`` job in a separate process on behalf of a Slicer module, without Qt.

The core library runs every pipeline as ``python -m xraycardiac.jobs`` in a child process that
reports JSON-line events (``xraycardiac.jobs.JobProcess``). This file adds what the Slicer
modules need on top:

* ``job_python()`` chooses the interpreter: ``PythonSlicer`` inside Slicer (a plain ``python`` would
  not find Slicer's site-packages), ``sys.executable`` elsewhere (tests, a plain Python session).
* ``JobRun`` is one started job: its ``JobProcess`` and private temporary folder. It folds the event
  stream into a ``JobStatus`` (stage, fraction done, ETA, final summary), turns failures into a
  message a user can act on, cancels, and deletes the folder when asked. A module's run (e.g.
  ``SimulationRun``, which its ``JobLogic`` starts) subclasses it with what importing its outputs needs.
* ``JobRun.start_from_nodes`` writes MRML volume nodes to NRRD files (and geometry dicts to JSON) in
  that folder and starts the job.

Nothing here blocks except ``JobRun.wait``; a Qt widget calls ``JobRun.poll`` from a timer.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xraycardiac.io import write_volume
from xraycardiac.jobs import JobCancelled, JobError, JobProcess, JobSpec
from xraycardiac.volume import Volume
from XRayCardiacCommonLib.mrml_io import export_node

__all__ = [
    "JobCancelled",
    "JobError",
    "JobRun",
    "JobStatus",
    "describe_error",
    "job_python",
]

RUNNING, DONE, ERROR, CANCELLED = "running", "done", "error", "cancelled"


def _slicer_app() -> Any:
    """``slicer.app`` inside the Slicer application, None in slicer-core or plain Python."""
    try:
        import slicer
    except ImportError:
        return None
    return getattr(slicer, "app", None)


def job_python() -> str:
    """The Python interpreter that runs jobs.

    Returns:
        Inside Slicer: the ``PythonSlicer`` launcher (on PATH, next to ``sys.executable`` or in
        ``<slicerHome>/bin``), which sets up Slicer's environment for the child process. Elsewhere:
        ``sys.executable``.

    Raises:
        RuntimeError: inside Slicer, when no PythonSlicer executable can be found.
    """
    app = _slicer_app()
    if app is None:
        return sys.executable
    exe = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [shutil.which("PythonSlicer"), os.path.join(os.path.dirname(sys.executable), exe)]
    home = getattr(app, "slicerHome", None)
    if home:
        candidates.append(os.path.join(str(home), "bin", exe))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    searched = ", ".join(c for c in candidates if c)
    raise RuntimeError(
        f"Cannot find the PythonSlicer executable that runs XRayCardiac jobs (looked at: {searched}). "
        "Reinstall Slicer or start it from its own launcher."
    )


def describe_error(error: JobError | None, pipeline: str = "") -> str:
    """A short message for the user from a failed job's ``JobError`` (the stderr tail is left out).

    Args:
        error: the runner's error (``JobProcess.error``); None gives a generic message.
        pipeline: the pipeline name, for the message prefix.
    """
    prefix = f"The {pipeline} job failed" if pipeline else "The job failed"
    if error is None:
        return f"{prefix} for an unknown reason."
    message = (error.message or "").strip() or "no message"
    text = f"{error.error_type}: {message}" if error.error_type else message
    hint = ""
    lowered = f"{error.error_type or ''} {message}".lower()
    if "memoryerror" in lowered or "out of memory" in lowered:
        hint = " Try a smaller detector or input volume, or another device."
    elif error.error_type == "ModuleNotFoundError":
        hint = " A Python package is missing: reinstall the extension's Python dependencies."
    return f"{prefix}: {text}{hint}"


@dataclass
class JobStatus:
    """What is known about a job so far.

    Attributes:
        state: ``"running"``, ``"done"``, ``"error"`` or ``"cancelled"``.
        stage: last reported stage, e.g. ``"rendering DRR"``.
        progress: overall fraction done in [0, 1].
        eta_s: estimated seconds left, None when unknown.
        message: a status line while running; the user-facing error text when ``state == "error"``.
        details: technical details of a failure (the job's last stderr lines), else "".
        summary: the pipeline's summary dict once done.
        output_dir: folder holding the outputs once done.
        log: log messages the job sent (most recent last, at most 200).
    """

    state: str = RUNNING
    stage: str = "starting"
    progress: float = 0.0
    eta_s: float | None = None
    message: str = "Starting"
    details: str = ""
    summary: dict[str, Any] | None = None
    output_dir: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or was cancelled."""
        return self.state != RUNNING

    def status_line(self) -> str:
        """A short text for a status label, e.g. ``"rendering DRR: 42% (about 12 s left)"``."""
        if self.state == RUNNING:
            eta = f" (about {self.eta_s:.0f} s left)" if self.eta_s is not None else ""
            return f"{self.stage}: {100.0 * self.progress:.0f}%{eta}"
        return self.message


RunT = TypeVar("RunT", bound="JobRun")


@dataclass(eq=False)
class JobRun:
    """One started (or finished) job: its process and the temporary folder that holds its files.

    Use ``start`` or ``start_from_nodes`` (on a module's subclass, with its own fields as keywords);
    then ``poll`` (non-blocking) or ``wait``, and ``cleanup`` when the outputs have been read. Usable as
    a context manager (cleans up on exit).

    Attributes:
        process: the job's child process.
        work_dir: the temporary folder this run owns and ``cleanup`` deletes; None when it owns none.
        status: the status as of the last ``poll``.
    """

    process: JobProcess
    work_dir: Path | None
    status: JobStatus = field(default_factory=JobStatus, init=False)

    @classmethod
    def start(
        cls: type[RunT],
        pipeline: str,
        inputs: Mapping[str, str | os.PathLike[str]],
        params: Mapping[str, Any],
        /,
        work_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        **fields: Any,
    ) -> RunT:
        """Start ``pipeline`` on input files; its outputs appear in ``<work_dir>/output`` on success.

        Args:
            pipeline: registered pipeline name, e.g. ``"drr"``.
            inputs: input name -> file path.
            params: JSON-serialisable pipeline parameters.
            work_dir: folder for the job's files; None makes a temporary folder that ``cleanup``
                deletes (a given folder is left in place).
            python: interpreter for the child process; ``job_python()`` when None.
            fields: the subclass's own fields (what importing the outputs needs; a field may be
                called ``params`` too: the arguments before it are positional-only).

        Raises:
            ValueError: bad pipeline name or parameters (from ``JobSpec``).
            FileNotFoundError: an input file is missing.
        """
        owned = work_dir is None
        folder = Path(tempfile.mkdtemp(prefix=f"xraycardiac-{pipeline}-")) if owned else Path(work_dir)
        try:
            spec = JobSpec(
                pipeline=pipeline,
                inputs={k: os.fspath(v) for k, v in inputs.items()},
                params=dict(params),
                output_dir=str(folder / "output"),
            )
            process = JobProcess.start(spec, python=python or job_python())
        except BaseException:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(process, folder if owned else None, **fields)

    @classmethod
    def start_from_nodes(
        cls: type[RunT],
        pipeline: str,
        input_nodes: Mapping[str, Any],
        params: Mapping[str, Any],
        /,
        python: str | None = None,
        json_inputs: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> RunT:
        """Write volume nodes to NRRD files in a new temporary folder and start ``pipeline`` on them.

        Args:
            pipeline: registered pipeline name, e.g. ``"drr"``.
            input_nodes: job input name -> scalar volume node, or a ``Volume`` already read from one
                (saves a second copy of the voxels); each is written in world RAS to
                ``<tmp>/inputs/<name>.nrrd``.
            params: JSON-serialisable pipeline parameters.
            python: interpreter for the child process; ``job_python()`` when None.
            json_inputs: job input name -> JSON-serialisable data (e.g. a C-arm geometry dict), each
                written to ``<tmp>/inputs/<name>.json``.
            fields: the subclass's own fields (what importing the outputs needs; a field may be
                called ``params`` too: the arguments before it are positional-only).

        Returns:
            The running job; it owns the temporary folder: call ``cleanup()`` once its outputs are read.

        Raises:
            ValueError: an input node is not a usable scalar volume (the message names the input).
        """
        work_dir = Path(tempfile.mkdtemp(prefix=f"xraycardiac-{pipeline}-"))
        try:
            (work_dir / "inputs").mkdir()
            paths = {}
            for key, item in input_nodes.items():
                path = work_dir / "inputs" / f"{key}.nrrd"
                paths[key] = (
                    write_volume(item, path)
                    if isinstance(item, Volume)
                    else export_node(item, path, name=key)
                )
            for key, data in (json_inputs or {}).items():
                paths[key] = work_dir / "inputs" / f"{key}.json"
                paths[key].write_text(json.dumps(data, indent=2), encoding="utf-8")
            run = cls.start(pipeline, paths, params, work_dir=work_dir, python=python, **fields)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        run.work_dir = work_dir
        return run

    # -------------------------------------------------------------------------------- state

    @property
    def pipeline(self) -> str:
        """The pipeline name."""
        return self.process.spec.pipeline

    @property
    def output_dir(self) -> Path:
        """Where the outputs appear once the job is done."""
        return Path(self.process.spec.output_dir)

    def poll(self) -> JobStatus:
        """Read the events the job sent since the last call and return the updated status (non-blocking)."""
        s = self.status
        if s.finished:
            return s
        for event in self.process.poll():
            self._apply(event)
        if not self.process.running:
            for event in self.process.poll():  # anything that arrived while it was ending
                self._apply(event)
            self._conclude()
        return s

    def _apply(self, event: Mapping[str, Any]) -> None:
        s = self.status
        kind = event.get("event")
        if kind == "progress":
            s.stage = str(event.get("stage") or s.stage)
            value = event.get("progress")
            if isinstance(value, (int, float)):
                s.progress = min(1.0, max(s.progress, float(value)))
            eta = event.get("eta_s")
            s.eta_s = float(eta) if isinstance(eta, (int, float)) else None
            s.message = s.stage
        elif kind == "log":
            s.log.append(str(event.get("message", "")))
            del s.log[:-200]

    def _conclude(self) -> None:
        """Set the final state from the ended process."""
        s = self.status
        outcome = self.process.status
        if outcome == "done":
            s.summary = dict(self.process.summary or {})
            s.output_dir = str(self.output_dir)
            s.progress, s.eta_s = 1.0, 0.0
            s.state, s.message = DONE, "Done"
        elif outcome == "cancelled":
            s.state, s.message = CANCELLED, "Cancelled"
        else:
            error = self.process.error
            s.state, s.message = ERROR, describe_error(error, self.pipeline)
            s.details = error.stderr_tail if error is not None else ""

    # ------------------------------------------------------------------------------ control

    def cancel(self) -> None:
        """Stop the job and its process tree (blocks a few seconds at most); no output is kept."""
        if self.status.finished:
            return
        self.process.cancel()
        self.poll()
        if self.status.state == DONE:
            return  # it finished before the signal arrived; its outputs are complete
        self.status.state, self.status.message = CANCELLED, "Cancelled"

    def wait(
        self,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        poll_interval_s: float = 0.1,
    ) -> JobStatus:
        """Block until the job finishes, calling ``on_update`` after every poll.

        Args:
            timeout_s: give up after this many seconds: the job is cancelled and TimeoutError raised.
            on_update: called with the status after each poll (e.g. to print progress).
            poll_interval_s: seconds between polls.

        Raises:
            TimeoutError: the job did not finish within ``timeout_s`` (it has been cancelled).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.poll()
            if on_update is not None:
                on_update(status)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(
                    f"The {self.pipeline} job did not finish within {timeout_s} s; it was cancelled."
                )
            time.sleep(poll_interval_s)

    def result(self) -> JobStatus:
        """The final status of a successful job.

        Raises:
            JobError: the job failed (the message says why; ``stderr_tail`` has details) or still runs.
            JobCancelled: the job was cancelled.
        """
        s = self.status
        if s.state == DONE:
            return s
        if s.state == CANCELLED:
            raise JobCancelled(f"The {self.pipeline} job was cancelled.")
        if s.state == RUNNING:
            raise JobError(f"The {self.pipeline} job is still running.")
        raise JobError(s.message, stderr_tail=s.details)

    def cleanup(self) -> None:
        """Cancel the job if it still runs and delete its temporary folder (if this run owns one)."""
        if not self.status.finished:
            self.cancel()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __enter__(self: RunT) -> RunT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
