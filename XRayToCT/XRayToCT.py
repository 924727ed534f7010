"""XRayToCT: radiographs <-> CT. This release: simulate radiographs (DRRs) of a CT.

Widget -> typed parameter node -> ``XRayToCTLib`` logic -> the core ``drr`` job in a separate
process (progress bar, Cancel) -> one 2D volume node per view with its projection matrix and
provenance as node attributes. All computation is in the core library; nothing here does math.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the field types with
# typing.get_type_hints, which needs them evaluated in this module as Slicer loads it.

import traceback
from typing import Annotated, Any

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from XRayToCTLib.choices import (
    DEFAULT_DETECTOR_COLS,
    DEFAULT_DETECTOR_ROWS,
    DEFAULT_PIXEL_SPACING_MM,
    DEFAULT_SID_MM,
    DEFAULT_SOD_MM,
    DEVICE_CHOICES,
    POSE_CHOICES,
)

import XRayCardiacCommon


class XRayToCT(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray to CT"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["XRayCardiacCommon"]
        self.parent.contributors = ["SlicerXRayCardiac developers"]
        self.parent.helpText = (
            "Simulate chest radiographs (digitally reconstructed radiographs) of a CT for PA, lateral or "
            "any C-arm pose (primary angle + LAO / − RAO, secondary angle + cranial / − caudal). Each "
            "output is a 2D volume on the detector plane with its 3x4 projection matrix in the node "
            "attribute XRayCardiac.ProjectionMatrix. Reconstruction of a CT from radiographs comes in a "
            "later release. Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = "Geometry presets follow X2CT-GAN (Ying et al., CVPR 2019). Part of the SlicerXRayCardiac extension."


@parameterNodeWrapper
class XRayToCTParameterNode:
    """What the panel edits; saved with the scene.

    inputCT: CT volume (HU) to project.
    pose: one of POSE_CHOICES; the custom fields below are used only for "Custom".
    primaryAngleDeg: + LAO, - RAO. secondaryAngleDeg: + cranial, - caudal.
    sidMm / sodMm: source to detector / source to isocentre distances (mm).
    detectorRows / detectorCols / pixelSpacingMm: the detector (pixel size at the detector).
    device: auto / cpu / cuda.
    """

    inputCT: vtkMRMLScalarVolumeNode
    pose: Annotated[str, Choice(list(POSE_CHOICES))] = "PA + lateral"
    primaryAngleDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    secondaryAngleDeg: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    sidMm: Annotated[float, WithinRange(100.0, 3000.0)] = DEFAULT_SID_MM
    sodMm: Annotated[float, WithinRange(50.0, 2990.0)] = DEFAULT_SOD_MM
    detectorRows: Annotated[int, WithinRange(8, 4096)] = DEFAULT_DETECTOR_ROWS
    detectorCols: Annotated[int, WithinRange(8, 4096)] = DEFAULT_DETECTOR_COLS
    pixelSpacingMm: Annotated[float, WithinRange(0.01, 10.0)] = DEFAULT_PIXEL_SPACING_MM
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


class XRayToCTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: parameter node <-> .ui, Apply / Cancel, progress."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: XRayToCTLogic | None = None
        self._parameterNode: XRayToCTParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._run = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayToCT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = XRayToCTLogic()
        self.progress = XRayCardiacCommon.JobProgress(
            self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton
        )

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.simulateButton.connect("clicked(bool)", self.onSimulateButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.progress.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.progress.cleanup()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputCT:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputCT = firstVolume

    def setParameterNode(self, inputParameterNode: XRayToCTParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets are bound through their "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)
        self._updateGuiState()

    def _updateGuiState(self, caller: Any = None, event: Any = None) -> None:
        p = self._parameterNode
        self.ui.customPoseGroupBox.enabled = bool(p) and p.pose == "Custom"
        running = self.progress.running
        if running:
            self.ui.simulateButton.enabled = False
            self.ui.simulateButton.toolTip = "A simulation is running; wait for it or cancel it."
        elif p and p.inputCT:
            self.ui.simulateButton.enabled = True
            self.ui.simulateButton.toolTip = "Render the radiographs; one 2D volume per view is added."
        else:
            self.ui.simulateButton.enabled = False
            self.ui.simulateButton.toolTip = "Select an input CT volume."

    def onSimulateButton(self) -> None:
        if not XRayCardiacCommon.ensurePythonDependencies("XRayToCT"):
            return
        try:
            run = self.logic.startSimulation(self._parameterNode)
        except ValueError as exc:  # a bad input or setting: the message names it
            XRayCardiacCommon.showError(str(exc))
            return
        except Exception as exc:
            XRayCardiacCommon.showError(
                f"Could not start the simulation: {exc}", details=traceback.format_exc()
            )
            return
        self._run = run
        self.progress.track(run.poll, lambda: self.logic.cancelSimulation(run), self._onSimulationFinished)
        self._updateGuiState()

    def _onSimulationFinished(self, status: Any) -> None:
        run, self._run = self._run, None
        try:
            if status.state == "done":
                nodes = self.logic.finishSimulation(run)
                if nodes:
                    XRayCardiacCommon.showVolumeInSliceView(nodes[0])
                self.ui.statusLabel.text = "Added " + ", ".join(n.GetName() for n in nodes)
            else:
                self.logic.cancelSimulation(run)  # deletes the job's files
                if status.state == "error":
                    XRayCardiacCommon.showError(status.message, details=status.details)
        except Exception as exc:
            XRayCardiacCommon.showError(
                f"Importing the radiographs failed: {exc}", details=traceback.format_exc()
            )
        finally:
            self._updateGuiState()


class XRayToCTLogic(ScriptedLoadableModuleLogic):
    """Thin logic: parameter node -> ``XRayToCTLib.simulate``. Usable from scripts without the GUI.

    ``XRayToCTLib`` is imported inside the methods: it needs ``xraycardiac``, which is installed on
    first use, after this module has been loaded.
    """

    def getParameterNode(self) -> XRayToCTParameterNode:
        return XRayToCTParameterNode(super().getParameterNode())

    def views(self, p: XRayToCTParameterNode) -> list[dict]:
        """The ``drr`` job's views for the pose and detector in the parameter node."""
        from XRayToCTLib.simulate import build_views

        return build_views(
            p.pose,
            detector_rows=p.detectorRows,
            detector_cols=p.detectorCols,
            pixel_spacing_mm=p.pixelSpacingMm,
            primary_angle_deg=p.primaryAngleDeg,
            secondary_angle_deg=p.secondaryAngleDeg,
            sid_mm=p.sidMm,
            sod_mm=p.sodMm,
        )

    def startSimulation(self, p: XRayToCTParameterNode) -> Any:
        """Start the DRR job (returns at once). Raises ValueError naming a bad parameter."""
        from XRayToCTLib.simulate import SimulateRadiographsLogic

        if not p.inputCT:
            raise ValueError("Input CT: select a CT volume")
        return SimulateRadiographsLogic(slicer.mrmlScene).start(p.inputCT, self.views(p), device=p.device)

    def finishSimulation(self, run: Any) -> list:
        """Add the finished job's radiographs to the scene (one 2D volume node per view)."""
        from XRayToCTLib.simulate import SimulateRadiographsLogic

        return SimulateRadiographsLogic(slicer.mrmlScene).import_results(run)

    def cancelSimulation(self, run: Any) -> None:
        """Stop a job and delete its files; the scene is not changed."""
        from XRayToCTLib.simulate import SimulateRadiographsLogic

        SimulateRadiographsLogic(slicer.mrmlScene).cancel(run)

    def simulate(self, p: XRayToCTParameterNode, timeoutS: float | None = None) -> list:
        """Blocking: start, wait and import. Returns the new nodes."""
        run = self.startSimulation(p)
        try:
            run.job.wait(timeout_s=timeoutS)
        except BaseException:
            self.cancelSimulation(run)
            raise
        return self.finishSimulation(run)


class XRayToCTTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: simulate PA + lateral radiographs of a box phantom."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_simulate_pa_lateral()

    def test_simulate_pa_lateral(self) -> None:
        import numpy as np
        from XRayCardiacCommonLib.mrml_io import PROJECTION_MATRIX_ATTRIBUTE, parse_projection_matrix

        self.delayDisplay("Simulating radiographs of a box phantom")
        voxels = np.full((40, 48, 56), -1000, dtype=np.int16)
        voxels[10:30, 12:36, 14:42] = 300
        ct = slicer.util.addVolumeFromArray(voxels, name="phantom")
        ct.SetSpacing(3.0, 3.0, 3.0)
        logic = XRayToCTLogic()
        p = logic.getParameterNode()
        p.inputCT = ct
        p.pose = "PA + lateral"
        p.detectorRows = p.detectorCols = 64
        p.device = "cpu"
        nodes = logic.simulate(p, timeoutS=300)
        self.assertEqual([n.GetName() for n in nodes], ["phantom DRR PA", "phantom DRR Lateral"])
        for node in nodes:
            image = slicer.util.arrayFromVolume(node)
            self.assertEqual(image.shape, (1, 64, 64))
            self.assertGreater(float(image.std()), 0.0)
            self.assertEqual(
                parse_projection_matrix(node.GetAttribute(PROJECTION_MATRIX_ATTRIBUTE)).shape, (3, 4)
            )
        self.delayDisplay("Test passed")
