"""XRayCardiacCommon: hidden module with what the XRayCardiac modules share on the Qt side.

* ``ensurePythonDependencies``: first-use install of torch (through the PyTorch extension, which
  picks the build that fits the GPU driver) and then of ``xraycardiac`` (a module's
  ``Resources/requirements.txt``), each after the user confirms.
* ``JobProgress``: drives a progress bar, a status label and a Cancel button from a running job,
  polled on a ``qt.QTimer`` so the GUI never blocks; ``startJob`` / ``finishJob``: what a panel does
  when its button starts a job and when the job ends (errors shown, a failed job's files deleted).
* ``showError`` / ``showVolumeInSliceView``: small GUI conveniences.

The MRML <-> ``xraycardiac`` helpers (no Qt) are in ``XRayCardiacCommonLib``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

# torch versions the core library is tested with (pyproject.toml pins the same range).
TORCH_REQUIREMENT = ">=2.3,<2.15"


class XRayCardiacCommon(ScriptedLoadableModule):
    """Hidden module: shared helpers of the XRayCardiac extension."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XRayCardiac Common"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.hidden = True
        self.parent.contributors = ["SlicerXRayCardiac developers"]
        self.parent.helpText = (
            "Shared helpers of the XRayCardiac modules (dependency installation, job progress, "
            "MRML conversion). Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = "Part of the SlicerXRayCardiac extension."


# ------------------------------------------------------------------------------------------------
# Python dependencies
# ------------------------------------------------------------------------------------------------


def _ensureTorch() -> bool:
    """Make torch importable, installing it through the PyTorch extension after confirmation."""
    try:
        import PyTorchUtils
    except ImportError:
        try:
            import torch  # noqa: F401
        except ImportError:
            slicer.util.errorDisplay(
                "XRayCardiac needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                "restart Slicer, and try again."
            )
            return False
        return True
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return True
    torch = logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
    return torch is not None


def _readRequirements(requirementsPath: str) -> list[str]:
    with open(requirementsPath, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line in lines if line and not line.startswith(("#", "-"))]


def _missingRequirements(requirements: list[str]) -> list[str]:
    """Requirements that are not installed at an accepted version (fallback for Slicer < pip_ensure)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if installed not in req.specifier:
            missing.append(text)
    return missing


# Third-party packages of the bundled ``xraycardiac`` library (the library itself ships inside the
# extension; see the top-level CMakeLists.txt). Testing/test_slicer_static.py keeps this file equal
# to pyproject.toml's dependencies less torch.
REQUIREMENTS_PATH = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")


def ensurePythonDependencies(requester: str, requirementsPath: str = REQUIREMENTS_PATH) -> bool:
    """Install what a module needs before its first run; asks the user before each installation.

    torch comes first, from the PyTorch extension (a plain pip install would pick a CUDA build that
    may not match the driver); then the packages of ``requirementsPath`` (what the bundled
    ``xraycardiac`` library imports) with ``slicer.packaging.pip_ensure``, or ``slicer.util.pip_install`` on Slicer
    versions that lack it.

    Args:
        requester: module name shown in the confirmation dialog.
        requirementsPath: a requirements.txt (one requirement per line).

    Returns:
        True when everything is installed; False when the user declined or installation failed
        (the user has been told why).
    """
    if not _ensureTorch():
        return False
    try:
        import slicer.packaging as packaging
    except ImportError:  # Slicer versions before slicer.packaging
        packaging = None
    try:
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(packaging.load_requirements(requirementsPath), requester=requester)
            return True
        missing = _missingRequirements(_readRequirements(requirementsPath))
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages, which will be downloaded and installed now:\n"
            + "\n".join(missing),
            windowTitle="Install Python packages",
        ):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(" ".join(missing))
        return True
    except RuntimeError as exc:  # pip_ensure raises RuntimeError when the user declines
        logging.info(f"{requester}: Python packages not installed: {exc}")
        return False
    except Exception as exc:
        showError(f"{requester}: installing the Python packages failed: {exc}", details=_traceback())
        return False


def _traceback() -> str:
    import traceback

    return traceback.format_exc()


# ------------------------------------------------------------------------------------------------
# GUI helpers
# ------------------------------------------------------------------------------------------------


def showError(message: str, details: str = "") -> None:
    """Show an error dialog (``details`` in its collapsible part) and log the message."""
    logging.error(message + (f"\n{details}" if details else ""))
    if details:
        slicer.util.errorDisplay(message, detailedText=details)
    else:
        slicer.util.errorDisplay(message)


def showVolumeInSliceView(node: Any, viewName: str = "Red") -> None:
    """Show a volume node (e.g. a 2D radiograph) in one slice view, rotated to its plane and fitted."""
    layoutManager = slicer.app.layoutManager()
    sliceWidget = layoutManager.sliceWidget(viewName) if layoutManager is not None else None
    if sliceWidget is None:
        return
    sliceLogic = sliceWidget.sliceLogic()
    sliceLogic.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
    sliceWidget.mrmlSliceNode().RotateToVolumePlane(node)
    sliceLogic.FitSliceToAll()


def startJob(requester: str, what: str, start: Callable[..., Any], *args: Any) -> Any:
    """A panel button's start of a job: the first-use dependency check, then ``start(*args)``.

    Args:
        requester: module name shown in the dependency installation dialog.
        what: the job in words, e.g. ``"simulation"``, for the error message.
        start: starts the job and returns its run; raises ValueError naming a bad setting.
        args: ``start``'s arguments (e.g. the parameter node).

    Returns:
        The run, or None when it did not start (the user has been told why).
    """
    if not ensurePythonDependencies(requester):
        return None
    try:
        return start(*args)
    except ValueError as exc:  # a bad input or setting: the message names it
        showError(str(exc))
    except Exception as exc:
        showError(f"Could not start the {what}: {exc}", details=_traceback())
    return None


def finishJob(
    status: Any,
    finish: Callable[[], Any],
    cancel: Callable[[], None],
    onResult: Callable[[Any], None],
    what: str,
) -> bool:
    """A panel's end of a job (``JobProgress``'s ``onFinished``): import a done job, else delete its files.

    Args:
        status: the job's final ``XRayCardiacCommonLib.JobStatus``.
        finish: adds the done job's outputs to the scene and returns them.
        cancel: deletes the job's files (a failed or cancelled job); the scene is not changed.
        onResult: shows ``finish()``'s result in the panel.
        what: the outputs in words, e.g. ``"radiographs"``, for the error message.

    Returns:
        True when the outputs were added and shown; False otherwise (a failure has been shown).
    """
    try:
        if status.state == "done":
            onResult(finish())
            return True
        cancel()
        if status.state == "error":
            showError(status.message, details=status.details)
    except Exception as exc:
        showError(f"Importing the {what} failed: {exc}", details=_traceback())
    return False


class JobProgress:
    """Shows a running job's progress in a progress bar and status label, with a working Cancel button.

    The job is given as two callables so any run object fits: ``poll()`` returns a
    ``XRayCardiacCommonLib.JobStatus`` (non-blocking) and ``cancel()`` stops the job. A
    ``qt.QTimer`` polls it; when it ends, ``onFinished(status)`` is called once (also after
    cancel), the timer stops and the Cancel button is disabled again.

    Args:
        progressBar: a ``qt.QProgressBar`` (range set to 0..100 here).
        statusLabel: a ``qt.QLabel`` for the stage / ETA / result text.
        cancelButton: a ``qt.QPushButton``; clicking it cancels the job.
        intervalMs: polling interval.
    """

    def __init__(self, progressBar: Any, statusLabel: Any, cancelButton: Any, intervalMs: int = 250) -> None:
        self.progressBar = progressBar
        self.statusLabel = statusLabel
        self.cancelButton = cancelButton
        self.progressBar.setRange(0, 100)
        self.progressBar.setValue(0)
        self.cancelButton.enabled = False
        self.cancelButton.connect("clicked(bool)", self.cancel)
        self._timer = qt.QTimer()
        self._timer.setInterval(intervalMs)
        self._timer.timeout.connect(self._onTimeout)
        self._poll: Callable[[], Any] | None = None
        self._cancel: Callable[[], None] | None = None
        self._onFinished: Callable[[Any], None] | None = None

    @property
    def running(self) -> bool:
        """True while a job is being tracked."""
        return self._poll is not None

    def track(
        self, poll: Callable[[], Any], cancel: Callable[[], None], onFinished: Callable[[Any], None]
    ) -> None:
        """Start showing a job's progress.

        Raises:
            RuntimeError: another job is still being tracked.
        """
        if self.running:
            raise RuntimeError("JobProgress: a job is already running; cancel it or wait for it first")
        self._poll, self._cancel, self._onFinished = poll, cancel, onFinished
        self.progressBar.setValue(0)
        self.statusLabel.text = "Starting"
        self.cancelButton.enabled = True
        self._timer.start()

    def cancel(self) -> None:
        """Stop the tracked job (if any)."""
        if self._cancel is None:
            return
        self.statusLabel.text = "Cancelling"
        slicer.app.processEvents()
        try:
            with slicer.util.WaitCursor():
                self._cancel()
        finally:
            self._onTimeout()

    def _onTimeout(self) -> None:
        if self._poll is None:
            return
        try:
            status = self._poll()
        except Exception as exc:
            self._end()
            showError(f"Lost track of the job: {exc}", details=_traceback())
            return
        self.progressBar.setValue(int(round(100.0 * status.progress)))
        self.statusLabel.text = status.status_line()
        if not status.finished:
            return
        onFinished = self._onFinished
        self._end()
        if onFinished is not None:
            onFinished(status)

    def _end(self) -> None:
        self._timer.stop()
        self._poll = self._cancel = self._onFinished = None
        self.cancelButton.enabled = False

    def cleanup(self) -> None:
        """Cancel a running job and stop the timer (call from the widget's ``cleanup``)."""
        if self.running:
            self.cancel()
        self._timer.stop()


# ------------------------------------------------------------------------------------------------
# Logic and tests
# ------------------------------------------------------------------------------------------------


class XRayCardiacCommonLogic(ScriptedLoadableModuleLogic):
    """Thin logic: checks that jobs can run in a separate process on this installation."""

    def checkJobRunner(self, timeoutS: float = 120.0) -> dict:
        """Run the core ``selftest`` job through PythonSlicer and return its summary.

        Raises:
            JobError: the job failed (the message says why).
        """
        from XRayCardiacCommonLib.jobs import JobHandle

        with JobHandle.start("selftest", {}, {"n_files": 2, "delay_s": 0.05}) as job:
            job.wait(timeout_s=timeoutS)
            return job.result().summary or {}


class XRayCardiacCommonTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: MRML round trip of an oblique volume, and the job runner."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_volume_round_trip()
        self.test_job_runner()

    def test_volume_round_trip(self) -> None:
        import numpy as np
        from XRayCardiacCommonLib.mrml_io import node_from_volume, volume_from_node

        from xraycardiac.volume import Volume

        directions = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        volume = Volume.from_geometry(
            np.arange(60, dtype=np.int16).reshape(3, 4, 5), (0.5, 0.7, 2.0), (10.0, -20.0, 5.0), directions
        )
        node = node_from_volume(slicer.mrmlScene, volume, "roundtrip")
        back = volume_from_node(node)
        self.assertTrue(np.array_equal(back.array, volume.array))
        self.assertTrue(np.allclose(back.ijk_to_ras, volume.ijk_to_ras))
        self.delayDisplay("Volume round trip passed")

    def test_job_runner(self) -> None:
        summary = XRayCardiacCommonLogic().checkJobRunner()
        self.assertEqual(summary.get("n_files"), 2)
        self.delayDisplay("Job runner passed")
