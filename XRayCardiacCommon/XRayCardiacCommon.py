"""XRayCardiacCommon: hidden module with what the XRayCardiac modules share on the Qt side.

* ``noteUnsupportedSlicer`` / ``showUnsupportedSlicer``: on a Slicer older than 5.10 a module still
  loads and says so (in the log, its help text and its panel) instead of failing with a trace; this
  file and what it imports at load therefore stay importable on Python 3.9.
* ``ensurePythonDependencies``: first-use install of torch (through the PyTorch extension, which
  picks the build that fits the GPU driver; an installed torch must be in the tested range) and then
  of the bundled ``xraycardiac`` library's packages (``Resources/requirements.txt``), each after the user
  confirms; a failure is shown with what failed and what to do.
* ``XRayCardiacWidget``: the base of every module panel: the widget lifecycle (setup, cleanup,
  enter, exit, scene close, parameter node and its observer) written once, and ``runJob``: a button's
  job from the dependency check through the module's Lib logic (``XRayCardiacCommonLib.JobLogic``)
  to the imported nodes, shown in a ``JobProgress``.
* ``JobProgress``: drives a progress bar, a status label and a Cancel button from a running job,
  polled on a ``qt.QTimer`` so the GUI never blocks.
* ``showError`` / ``showVolumeInSliceView``: small GUI conveniences.

The MRML <-> ``xraycardiac`` helpers (no Qt) are in ``XRayCardiacCommonLib``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from XRayCardiacCommonLib.support import unsupported_slicer_message


class XRayCardiacCommon(ScriptedLoadableModule):
    """Hidden module: shared helpers of the XRayCardiac extension."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XRayCardiac Common"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.hidden = True
        self.parent.contributors = ["XRayCardiac developers"]
        self.parent.helpText = (
            "Shared helpers of the XRayCardiac modules (dependency installation, job progress, "
            "MRML conversion). Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = "Part of the XRayCardiac extension."
        noteUnsupportedSlicer(self.parent)


# ------------------------------------------------------------------------------------------------
# Supported Slicer versions
# ------------------------------------------------------------------------------------------------


def unsupportedSlicerMessage() -> str | None:
    """Why this Slicer cannot run XRayCardiac (older than 5.10; see ``XRayCardiacCommonLib.support``), or None."""
    app = getattr(slicer, "app", None)
    version = None
    if app is not None:
        version = (int(app.majorVersion), int(app.minorVersion))
    return unsupported_slicer_message(version, tuple(sys.version_info[:3]))


def noteUnsupportedSlicer(parent: Any) -> bool:
    """At module load (a module's ``__init__``): on an unsupported Slicer, log why and put it in the help text.

    Returns:
        True when this Slicer is unsupported.
    """
    message = unsupportedSlicerMessage()
    if message is None:
        return False
    logging.error(f"{parent.title}: {message}")
    parent.helpText = f"{message}\n\n{parent.helpText}"
    return True


def showUnsupportedSlicer(widget: Any) -> bool:
    """At panel setup: on an unsupported Slicer, fill the panel with the reason instead of the GUI.

    Args:
        widget: the ``ScriptedLoadableModuleWidget`` (its ``layout`` receives the message).

    Returns:
        True when this Slicer is unsupported: the caller must not build its GUI.
    """
    message = unsupportedSlicerMessage()
    if message is None:
        return False
    label = qt.QLabel(message)
    label.wordWrap = True
    label.setStyleSheet("QLabel { color: #b00000; font-weight: bold; }")
    widget.layout.addWidget(label)
    widget.layout.addStretch(1)
    return True


# ------------------------------------------------------------------------------------------------
# Python dependencies
# ------------------------------------------------------------------------------------------------


class DependencyError(Exception):
    """A dependency cannot be installed or used; the message says what failed and what to do."""


def _userDeclined(exc: BaseException) -> bool:
    """True for ``slicer.packaging.pip_ensure``'s RuntimeError when the user declines the installation."""
    return type(exc) is RuntimeError and "declined" in str(exc).lower()


def _ensureTorch(confirm: bool) -> bool:
    """torch in ``TORCH_REQUIREMENT``, installed through the PyTorch extension; torch is not imported here.

    Returns:
        True when a suitable torch is installed; False when the user declined its installation.

    Raises:
        DependencyError: an installed torch is outside the range, or the PyTorch extension is missing.
    """
    from XRayCardiacCommonLib.dependencies import TORCH_REQUIREMENT, installed_version, torch_version_problem

    problem = torch_version_problem()
    if problem is not None:
        raise DependencyError(problem)
    if installed_version("torch") is not None:
        return True
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "XRayCardiac needs PyTorch, and the 'PyTorch' extension that installs it is missing. Install "
            "'PyTorch' from the Extensions Manager, restart Slicer, and try again."
        ) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=confirm, torchVersionRequirement=TORCH_REQUIREMENT
    )
    return torch is not None  # None: the user declined


def _ensurePackages(requester: str, requirementsPath: str, confirm: bool) -> bool:
    """The packages of ``requirementsPath``, installed with pip; never replaces what Slicer ships.

    Returns:
        True when all are installed; False when the user declined.

    Raises:
        DependencyError: pip finished but something is still missing. Anything pip raises.
    """
    import tempfile

    from XRayCardiacCommonLib.dependencies import missing_requirements, read_requirements, slicer_constraints

    missing = missing_requirements(read_requirements(requirementsPath))
    if not missing:
        return True
    with tempfile.TemporaryDirectory(prefix="xraycardiac-pip-") as folder:
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as f:
            f.write("\n".join(slicer_constraints()) + "\n")
        try:
            import slicer.packaging as packaging
        except ImportError:  # Slicer 5.10: no slicer.packaging yet
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            try:
                packaging.pip_ensure(
                    missing,
                    constraints=constraints,
                    requester=requester,
                    prompt_install=confirm,
                    skip_in_testing=confirm,  # a non-interactive caller (a self-test) asked to install
                )
            except RuntimeError as exc:
                if _userDeclined(exc):
                    logging.info(f"{requester}: Python packages not installed: {exc}")
                    return False
                raise
        else:
            if confirm and not slicer.util.confirmOkCancelDisplay(
                f"{requester} needs these Python packages, which will be downloaded and installed now:\n"
                + "\n".join(missing),
                windowTitle="Install Python packages",
            ):
                return False
            with slicer.util.WaitCursor():
                slicer.util.pip_install(["-c", constraints, *missing])
    still = missing_requirements(missing)
    if still:
        raise DependencyError(
            f"These Python packages are still not installed: {', '.join(still)}. Install them from Slicer's "
            f"Python console with slicer.util.pip_install, restart Slicer, and try again."
        )
    return True


# Third-party packages of the bundled ``xraycardiac`` library that Slicer does not ship (the library
# itself ships inside the extension; see the top-level CMakeLists.txt). Testing/test_slicer_static.py
# keeps this file equal to pyproject.toml's dependencies less torch, vtk and Slicer's own packages.
REQUIREMENTS_PATH = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

_INSTALL_HINTS = {
    "PyTorch": (
        "Check the network connection, then install PyTorch from the 'PyTorch Utils' module (torch version "
        "requirement '{torch}'), restart Slicer and try again."
    ),
    "the Python packages": (
        "Check the network connection and the Python console for pip's messages, restart Slicer and try "
        "again; or install the packages named above from the Python console with slicer.util.pip_install."
    ),
}


def ensurePythonDependencies(
    requester: str, requirementsPath: str = REQUIREMENTS_PATH, confirm: bool = True
) -> bool:
    """Install what a module needs before its first run; asks the user before each installation.

    torch comes first, from the PyTorch extension (a plain pip install would pick a CUDA build that
    may not match the driver; an installed torch must be in ``TORCH_REQUIREMENT``); then the packages of
    ``requirementsPath`` with ``slicer.packaging.pip_ensure``, or ``slicer.util.pip_install`` on Slicer
    versions that lack it, constrained so that pip never replaces a package Slicer ships. Nothing here
    imports torch into Slicer's process (the jobs run in a separate one).

    Args:
        requester: module name shown in the confirmation dialogs and messages.
        requirementsPath: a requirements.txt (one requirement per line).
        confirm: ask before installing. False: install without asking, also in Slicer's testing
            mode (a self-test that was asked to install).

    Returns:
        True when everything is installed; False when the user declined or something failed (the
        user has been told what failed and what to do).
    """
    unsupported = unsupportedSlicerMessage()
    if unsupported is not None:
        showError(unsupported)
        return False
    step = "PyTorch"
    try:
        if not _ensureTorch(confirm):
            logging.info(f"{requester}: PyTorch not installed (declined)")
            return False
        step = "the Python packages"
        return _ensurePackages(requester, requirementsPath, confirm)
    except DependencyError as exc:
        showError(f"{requester}: {exc}")
    except Exception as exc:
        from XRayCardiacCommonLib.dependencies import TORCH_REQUIREMENT

        hint = _INSTALL_HINTS[step].format(torch=TORCH_REQUIREMENT)
        showError(f"{requester}: installing {step} failed: {exc}\n\n{hint}", details=_traceback())
    return False


SELFTEST_INSTALL_VARIABLE = "XRAYCARDIAC_TEST_INSTALL_DEPENDENCIES"
"""Set to 1 to let the modules' self-tests install missing dependencies (network; torch is 0.2-3 GB)."""


def dependenciesForSelfTest(test: Any, requester: str) -> bool:
    """First line of a self-test that runs jobs: are the Python dependencies there (installed if allowed)?

    On a fresh Slicer (or the extension build machines, without network) torch and the library's
    packages are missing. With ``XRAYCARDIAC_TEST_INSTALL_DEPENDENCIES=1`` they are installed through
    the same code as a panel's first run (``ensurePythonDependencies``, without the confirmations);
    otherwise the test is skipped with a message that says why and how to run it (as TotalSegmentator's
    self-test skips its logic test).

    Args:
        test: the ``ScriptedLoadableModuleTest`` (its ``delayDisplay`` shows the message).
        requester: the module name, for the messages.

    Returns:
        True when the test can run; False when it must return at once (skipped, reason logged).

    Raises:
        AssertionError: installation was asked for and failed (the error has been shown and logged).
    """
    from XRayCardiacCommonLib.dependencies import missing_dependencies

    missing = missing_dependencies(REQUIREMENTS_PATH)
    if not missing:
        return True
    if os.environ.get(SELFTEST_INSTALL_VARIABLE) == "1":
        test.delayDisplay(f"{requester}: installing the Python dependencies: {', '.join(missing)}")
        if ensurePythonDependencies(requester, confirm=False):
            return True
        raise test.failureException(f"{requester}: installing {', '.join(missing)} failed (see the log)")
    reason = (
        f"{requester} self-test skipped: the Python dependencies are not installed ({', '.join(missing)}). "
        f"Open the module and start a job once to install them, or set {SELFTEST_INSTALL_VARIABLE}=1 to let "
        "the test install them (needs network access)."
    )
    logging.warning(reason)
    test.delayDisplay(reason)
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
# The module panels' base
# ------------------------------------------------------------------------------------------------


class XRayCardiacWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Base of the XRayCardiac module panels: lifecycle, parameter node and jobs, written once.

    A module's widget (``<Module>Widget``) subclasses it and writes only what is its own:

    * ``createLogic()``: the module logic (a ``ScriptedLoadableModuleLogic`` whose
      ``getParameterNode()`` returns the typed parameter node);
    * ``setupPanel()``: its job sections (``JobProgress``) and button connections, after the .ui file
      ``Resources/UI/<Module>.ui`` is loaded into ``self.ui``;
    * ``updateGuiState()``: the buttons' enabled state and tooltips from ``self._parameterNode``;
    * optionally ``initializeParameterNode()`` to pick default nodes (call the base first).

    A button starts its job with ``runJob``: widget -> the module's Lib logic (a
    ``XRayCardiacCommonLib.JobLogic``, which starts ``xraycardiac.jobs.JobProcess``) -> nodes.
    On a Slicer older than 5.10 ``setup`` only shows why the panel cannot run (``self.logic`` stays
    None and every other method does nothing).
    """

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Any = None
        self._parameterNode: Any = None
        self._parameterNodeGuiTag: Any = None
        self._jobProgresses: list[JobProgress] = []

    # ------------------------------------------------------------------------ module hooks

    def createLogic(self) -> Any:
        """The module logic; ``<Module>Logic()``."""
        raise NotImplementedError(f"{type(self).__name__} must define createLogic()")

    def setupPanel(self) -> None:
        """Create the job sections (``addJobProgress``) and connect the buttons."""

    def updateGuiState(self, caller: Any = None, event: Any = None) -> None:
        """Enable the buttons and set their tooltips from the parameter node (also a VTK observer)."""

    # --------------------------------------------------------------------------- lifecycle

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if showUnsupportedSlicer(self):
            return  # an older Slicer: the panel says why
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.setupPanel()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is None:  # setup stopped on an unsupported Slicer
            return
        for progress in self._jobProgresses:
            progress.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is None:  # setup stopped on an unsupported Slicer
            return
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        for progress in self._jobProgresses:
            progress.cleanup()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets are bound through their "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
        self.updateGuiState()

    # -------------------------------------------------------------------------------- jobs

    def addJobProgress(self, progressBar: Any, statusLabel: Any, cancelButton: Any) -> JobProgress:
        """A job section of the panel (cancelled on cleanup and scene close); see ``JobProgress``."""
        progress = JobProgress(progressBar, statusLabel, cancelButton)
        self._jobProgresses.append(progress)
        return progress

    def runJob(
        self,
        progress: JobProgress,
        jobLogic: str,
        arguments: Callable[[], dict],
        what: str,
        outputs: str,
        onResult: Callable[[Any], None],
        onStarted: Callable[[Any], None] | None = None,
        onEnded: Callable[[bool], None] | None = None,
    ) -> None:
        """A button's job: dependency check, ``start``, progress with Cancel, then the outputs imported.

        Args:
            progress: the section's ``JobProgress``.
            jobLogic: ``"<package>.<module>.<Class>"`` of the module's Lib logic (a ``JobLogic``),
                imported only now: it needs ``xraycardiac``, installed on first use.
            arguments: returns ``start``'s keyword arguments from the parameter node; raises
                ValueError naming a missing input.
            what: the job in words, e.g. ``"simulation"``, for the error messages.
            outputs: the outputs in words, e.g. ``"radiographs"``, for the error messages.
            onResult: shows ``import_results``' result in the panel.
            onStarted: called with the run once the job started (e.g. to show what it will do).
            onEnded: called once the job ended: True when its outputs were added and shown.
        """
        if progress.running or not ensurePythonDependencies(self.moduleName):
            return
        try:
            moduleName, className = jobLogic.rsplit(".", 1)
            logic = getattr(importlib.import_module(moduleName), className)(slicer.mrmlScene)
            run = logic.start(**arguments())
        except ValueError as exc:  # a bad input or setting: the message names it
            showError(str(exc))
            return
        except Exception as exc:
            showError(f"Could not start the {what}: {exc}", details=_traceback())
            return
        if onStarted is not None:
            onStarted(run)

        def finished(status: Any) -> None:
            shown = False
            try:
                if status.state == "done":
                    onResult(logic.import_results(run))
                    shown = True
                else:
                    logic.cancel(run)
                    if status.state == "error":
                        showError(status.message, details=status.details)
            except Exception as exc:
                showError(f"Importing the {outputs} failed: {exc}", details=_traceback())
            if onEnded is not None:
                onEnded(shown)
            self.updateGuiState()

        progress.track(lambda: logic.poll(run), lambda: logic.cancel(run), finished)
        self.updateGuiState()


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
        from XRayCardiacCommonLib.jobs import JobLogic

        logic = JobLogic(None)
        run = logic.start_job("selftest", {"n_files": 2, "delay_s": 0.05})
        try:
            logic.wait(run, timeout_s=timeoutS)
            return logic.result(run).summary or {}
        finally:
            logic.cancel(run)


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
