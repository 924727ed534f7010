"""What every module's job logic shares: start -> poll -> cancel -> import, with nothing left behind.

A module's Lib logic (``SimulateRadiographsLogic``, ``GenerateCTLogic``, ``CardiacSynthLogic``, ...)
subclasses ``JobLogic``. It writes two things itself:

* ``start(...)``: check the scene nodes and parameters, start an ``xraycardiac`` job and return a
  ``JobRun`` subclass (``<Run>.start`` / ``<Run>.start_from_nodes``): the job's process and folder, and
  what importing its outputs needs (the scene is not changed);
* ``_add_nodes(run, status)``: turn the finished job's outputs into nodes, inside
  ``mrml_io.removed_on_error`` so that a failure adds no node.

``JobLogic`` supplies the rest, the same for every module: ``poll`` / ``cancel`` (progress without
blocking; stop the job and delete its files), ``import_results`` (the job's final status ->
``_add_nodes``, the job's files deleted whatever happens) and ``wait_and_import`` (the blocking path
of scripts and tests, which each module's ``run(...)`` takes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from XRayCardiacCommonLib.jobs import JobStatus, RunT

__all__ = ["JobLogic"]


ResultT = TypeVar("ResultT")


class JobLogic(Generic[RunT, ResultT]):
    """Start jobs on a scene's nodes and import their outputs as nodes (module docstring).

    Args:
        scene: the ``vtkMRMLScene`` holding the inputs and receiving the outputs.
        python: interpreter for the job process; None chooses PythonSlicer inside Slicer,
            ``sys.executable`` elsewhere.
    """

    def __init__(self, scene: Any, python: str | None = None) -> None:
        self.scene = scene
        self.python = python

    def poll(self, run: RunT) -> JobStatus:
        """Non-blocking progress update of ``run``."""
        return run.poll()

    def cancel(self, run: RunT) -> None:
        """Stop the job and delete its files; the scene is not changed."""
        run.cleanup()

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
            return self._add_nodes(run, run.result())
        finally:
            run.cleanup()

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
            run.wait(timeout_s=timeout_s, on_update=on_update)
        except BaseException:
            self.cancel(run)
            raise
        return self.import_results(run)

    def _add_nodes(self, run: RunT, status: JobStatus) -> ResultT:
        """The module's import of a done job's outputs (``status.output_dir``, ``status.summary``)."""
        raise NotImplementedError(f"{type(self).__name__} does not import job outputs")
