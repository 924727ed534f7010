"""A module's Lib logic runs its ``xraycardiac`` job in a separate process, without Qt: ``JobLogic``.

The core library runs every pipeline as ``python -m xraycardiac.jobs`` in a child process that
reports JSON-line events (``xraycardiac.jobs.JobProcess``). A job therefore goes through three
layers: the module widget (``XRayCardiacCommon.XRayCardiacWidget.runJob``) -> the module's Lib logic
(a ``JobLogic`` subclass, e.g. ``SimulateRadiographsLogic``) -> ``JobProcess``. The Lib logic owns
the run from start to clean-up:

* ``start(...)`` (written by each module): check the scene nodes and parameters, then
  ``start_job``: write the input nodes to NRRD (and geometry dicts to JSON) in a new temporary folder
  and start the ``JobProcess``; it returns a ``JobRun``, the record of that job (a module subclasses
  it with what importing its outputs needs, e.g. ``SimulationRun``). The scene is not changed.
* ``poll`` (non-blocking, from a Qt timer) folds the job's events into a ``JobStatus`` (stage,
  fraction done, ETA, final summary) and turns a failure into a message a user can act on;
  ``wait`` / ``result`` are the blocking path of scripts and tests.
* ``cancel`` stops the job and deletes the folder; ``import_results`` turns the finished job's
  outputs into nodes (``_add_nodes``, written by each module inside ``mrml_io.removed_on_error`` so
  that a failure adds no node) and deletes the folder whatever happens; ``wait_and_import`` is the
  blocking path each module's ``run(...)`` takes.
* ``job_python()`` chooses the interpreter: ``PythonSlicer`` inside Slicer (a plain ``python`` would
  not find Slicer's site-packages), ``sys.executable`` elsewhere (tests, a plain Python session).
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
from typing import Any, Generic, TypeVar

from xraycardiac.io import write_volume
from xraycardiac.jobs import JobCancelled, JobError, JobProcess, JobSpec
from xraycardiac.volume import Volume
from XRayCardiacCommonLib.mrml_io import export_node

__all__ = [
    "JobCancelled",
    "JobError",
    "JobLogic",
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
ResultT = TypeVar("ResultT")


@dataclass(eq=False)
class JobRun:
    """One started (or finished) job, as ``JobLogic`` keeps it: its process, its folder and its status.

    A record only: ``JobLogic`` starts, polls, cancels and deletes it. A module subclasses it with
    what importing its outputs needs (e.g. ``SimulationRun``: the CT node's name and the views).

    Attributes:
        process: the job's child process.
        work_dir: the temporary folder ``JobLogic.cancel`` deletes; None once deleted.
        status: the status as of the last ``JobLogic.poll``.
    """

    process: JobProcess
    work_dir: Path | None
    status: JobStatus = field(default_factory=JobStatus, init=False)

    @property
    def pipeline(self) -> str:
        """The pipeline name."""
        return self.process.spec.pipeline

    @property
    def output_dir(self) -> Path:
        """Where the outputs appear once the job is done."""
        return Path(self.process.spec.output_dir)


class JobLogic(Generic[RunT, ResultT]):
    """Start jobs on a scene's nodes, follow them, and import their outputs as nodes (module docstring).

    Args:
        scene: the ``vtkMRMLScene`` holding the inputs and receiving the outputs (None for a job that
            imports nothing, e.g. ``selftest``).
        python: interpreter for the job process; None chooses ``job_python()``.
    """

    def __init__(self, scene: Any, python: str | None = None) -> None:
        self.scene = scene
        self.python = python

    # ------------------------------------------------------------------------------ start

    def start_job(
        self,
        pipeline: str,
        params: Mapping[str, Any],
        /,
        input_nodes: Mapping[str, Any] | None = None,
        json_inputs: Mapping[str, Any] | None = None,
        run_type: type[RunT] = JobRun,  # type: ignore[assignment]
        **fields: Any,
    ) -> RunT:
        """Write the inputs to a new temporary folder and start ``pipeline`` on them; returns at once.

        Args:
            pipeline: registered pipeline name, e.g. ``"drr"``.
            params: JSON-serialisable pipeline parameters.
            input_nodes: job input name -> scalar volume node, or a ``Volume`` already read from one
                (saves a second copy of the voxels); each is written in world RAS to
                ``<tmp>/inputs/<name>.nrrd``.
            json_inputs: job input name -> JSON-serialisable data (e.g. a C-arm geometry dict), each
                written to ``<tmp>/inputs/<name>.json``.
            run_type: the ``JobRun`` (sub)class to return.
            fields: ``run_type``'s own fields (what importing the outputs needs; a field may be called
                ``params`` too: the arguments before it are positional-only).

        Returns:
            The running job; its outputs appear in ``<tmp>/output``. It owns the temporary folder:
            ``import_results`` or ``cancel`` deletes it.

        Raises:
            ValueError: an input node is not a usable scalar volume (the message names the input), or
                bad pipeline name or parameters (from ``JobSpec``).
        """
        work_dir = Path(tempfile.mkdtemp(prefix=f"xraycardiac-{pipeline}-"))
        try:
            paths: dict[str, Path] = {}
            if input_nodes or json_inputs:
                (work_dir / "inputs").mkdir()
            for key, item in (input_nodes or {}).items():
                path = work_dir / "inputs" / f"{key}.nrrd"
                paths[key] = (
                    write_volume(item, path)
                    if isinstance(item, Volume)
                    else export_node(item, path, name=key)
                )
            for key, data in (json_inputs or {}).items():
                paths[key] = work_dir / "inputs" / f"{key}.json"
                paths[key].write_text(json.dumps(data, indent=2), encoding="utf-8")
            spec = JobSpec(
                pipeline=pipeline,
                inputs={k: os.fspath(v) for k, v in paths.items()},
                params=dict(params),
                output_dir=str(work_dir / "output"),
            )
            process = JobProcess.start(spec, python=self.python or job_python())
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        return run_type(process, work_dir, **fields)

    # ----------------------------------------------------------------------------- follow

    def poll(self, run: RunT) -> JobStatus:
        """Read the events the job sent since the last call and return the updated status (non-blocking)."""
        s = run.status
        if s.finished:
            return s
        for event in run.process.poll():
            _apply(s, event)
        if not run.process.running:
            for event in run.process.poll():  # anything that arrived while it was ending
                _apply(s, event)
            _conclude(run)
        return s

    def wait(
        self,
        run: RunT,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        poll_interval_s: float = 0.1,
    ) -> JobStatus:
        """Block until the job finishes, calling ``on_update`` after every poll.

        Args:
            run: what ``start_job`` returned.
            timeout_s: give up after this many seconds: the job is stopped and TimeoutError raised.
            on_update: called with the status after each poll (e.g. to print progress).
            poll_interval_s: seconds between polls.

        Raises:
            TimeoutError: the job did not finish within ``timeout_s`` (it has been stopped).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.poll(run)
            if on_update is not None:
                on_update(status)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self._stop(run)
                raise TimeoutError(
                    f"The {run.pipeline} job did not finish within {timeout_s} s; it was cancelled."
                )
            time.sleep(poll_interval_s)

    def result(self, run: RunT) -> JobStatus:
        """The final status of a successful job.

        Raises:
            JobError: the job failed (the message says why; ``stderr_tail`` has details) or still runs.
            JobCancelled: the job was cancelled.
        """
        s = run.status
        if s.state == DONE:
            return s
        if s.state == CANCELLED:
            raise JobCancelled(f"The {run.pipeline} job was cancelled.")
        if s.state == RUNNING:
            raise JobError(f"The {run.pipeline} job is still running.")
        raise JobError(s.message, stderr_tail=s.details)

    # ------------------------------------------------------------------------------- end

    def cancel(self, run: RunT) -> None:
        """Stop the job if it still runs and delete its temporary folder; the scene is not changed.

        Also the clean-up of a finished run (``import_results`` calls it): nothing of the job is left.
        """
        if not run.status.finished:
            self._stop(run)
        if run.work_dir is not None:
            shutil.rmtree(run.work_dir, ignore_errors=True)
            run.work_dir = None

    def _stop(self, run: RunT) -> None:
        """Stop the job and its process tree (blocks a few seconds at most); its folder stays."""
        if run.status.finished:
            return
        run.process.cancel()
        self.poll(run)
        if run.status.state == DONE:
            return  # it finished before the signal arrived; its outputs are complete
        run.status.state, run.status.message = CANCELLED, "Cancelled"

    def import_results(self, run: RunT) -> ResultT:
        """Add a finished job's nodes to the scene, then delete its files.

        Returns:
            What the module's ``_add_nodes`` returns (its docstring says what that is).

        Raises:
            JobError: the job failed (the message says why). JobCancelled: it was cancelled.
            ValueError / FileNotFoundError: an output file is not what the job promises.
            On any error no node is added.
        """
        try:
            return self._add_nodes(run, self.result(run))
        finally:
            self.cancel(run)

    def wait_and_import(
        self,
        run: RunT,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
    ) -> ResultT:
        """Block until ``run``'s job ends, then ``import_results``; a failed or interrupted wait cancels it.

        Args:
            run: what ``start`` returned.
            timeout_s: give up (and cancel) after this many seconds; None waits as long as it takes.
            on_update: called with the status after each poll.

        Raises:
            everything ``import_results`` raises; TimeoutError after ``timeout_s``.
        """
        try:
            self.wait(run, timeout_s=timeout_s, on_update=on_update)
        except BaseException:
            self.cancel(run)
            raise
        return self.import_results(run)

    def _add_nodes(self, run: RunT, status: JobStatus) -> ResultT:
        """The module's import of a done job's outputs (``status.output_dir``, ``status.summary``)."""
        raise NotImplementedError(f"{type(self).__name__} does not import job outputs")


def _apply(s: JobStatus, event: Mapping[str, Any]) -> None:
    """Fold one job event into ``s``."""
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


def _conclude(run: JobRun) -> None:
    """Set ``run.status``'s final state from the ended process."""
    s, process = run.status, run.process
    outcome = process.status
    if outcome == "done":
        s.summary = dict(process.summary or {})
        s.output_dir = str(run.output_dir)
        s.progress, s.eta_s = 1.0, 0.0
        s.state, s.message = DONE, "Done"
    elif outcome == "cancelled":
        s.state, s.message = CANCELLED, "Cancelled"
    else:
        error = process.error
        s.state, s.message = ERROR, describe_error(error, run.pipeline)
        s.details = error.stderr_tail if error is not None else ""
