"""XRayToCT: radiographs <-> CT: simulate radiographs (DRRs) of a CT, and generate a CT from radiographs.

Widget -> typed parameter node -> ``XRayToCTLib`` logic -> a core job in a separate process (progress
bar, Cancel) -> MRML nodes with provenance attributes. "Simulate radiographs": the ``drr`` job, one
2D volume node per view with its projection matrix and C-arm geometry. "Generate CT": a PA (+ lateral)
radiograph node (its C-arm geometry from ``XRayCardiac.Geometry`` when present) -> the ``x2ct-generate``
job (CLS-DM latent diffusion, K samples) -> a CT volume (HU), a per-voxel uncertainty volume (HU: the
model's calibrated expected |error|, or the std over the samples when the model has no calibration; the
node's Content attribute says which), optionally the encoder's direct estimate, and with a reference CT a metrics table.
All computation is in the core library; nothing here does math.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the field types with
# typing.get_type_hints, which needs them evaluated in this module as Slicer loads it. The annotations
# Python evaluates (signatures, class bodies) write no "X | Y" (quoted where needed), so that on Python 3.9
# (Slicer 5.8) the module still loads and says it needs Slicer 5.10 (Testing/test_slicer_python39.py).

from typing import Annotated, Any, Union

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from XRayToCTLib import (
    X2CT_DEFAULT_MODEL,
    X2CT_DEFAULT_SAMPLES,
    X2CT_DEFAULT_STEPS,
    X2CT_MAX_SAMPLES,
    X2CT_MAX_STEPS,
)
from XRayToCTLib.choices import (
    DEFAULT_DETECTOR_COLS,
    DEFAULT_DETECTOR_ROWS,
    DEFAULT_PIXEL_SPACING_MM,
    DEFAULT_SID_MM,
    DEFAULT_SOD_MM,
    DEVICE_CHOICES,
    INTENSITY_CHOICES,
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
        self.parent.contributors = ["XRayCardiac developers"]
        self.parent.helpText = (
            "Simulate chest radiographs (digitally reconstructed radiographs) of a CT for PA, lateral or "
            "any C-arm pose (primary angle + LAO / − RAO, secondary angle + cranial / − caudal). Each "
            "output is a 2D volume on the detector plane with its 3x4 projection matrix in the node "
            "attribute XRayCardiac.ProjectionMatrix and its C-arm geometry in XRayCardiac.Geometry. "
            "Generate CT: a 3D CT volume (HU) and a per-voxel uncertainty volume (expected absolute error in "
            "HU, calibrated on phantoms the model was not trained on; the std over K diffusion samples for "
            "a model without calibration) from a PA radiograph or a PA + lateral pair (a latent diffusion "
            "model conditioned on the radiographs, CLS-DM), optionally the encoder's direct estimate, and "
            "with a reference CT a table of PSNR / SSIM / MAE. Radiographs hold line integrals (what "
            "'Simulate radiographs' makes); their geometry is read from XRayCardiac.Geometry, else the "
            "model's default view is assumed (the status says which). Models are installed with "
            "'xraycardiac x2ct install FOLDER'. Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = (
            "Geometry presets follow X2CT-GAN (Ying et al., CVPR 2019). CT generation follows CLS-DM (Latent "
            "Space Consistency for Sparse-View CT Reconstruction) and X-ray2CTPA. Part of the XRayCardiac "
            "extension."
        )
        XRayCardiacCommon.noteUnsupportedSlicer(self.parent)


@parameterNodeWrapper
class XRayToCTParameterNode:
    """What the panel edits; saved with the scene.

    inputCT: CT volume (HU) to project.
    pose: one of POSE_CHOICES; the custom fields below are used only for "Custom".
    primaryAngleDeg: + LAO, - RAO. secondaryAngleDeg: + cranial, - caudal.
    sidMm / sodMm: source to detector / source to isocentre distances (mm).
    detectorRows / detectorCols / pixelSpacingMm: the detector (pixel size at the detector).
    device: auto / cpu / cuda; used by both sections.
    paVolume: the PA radiograph (one-slice volume of line integrals, ideally with XRayCardiac.Geometry).
    lateralVolume: the lateral radiograph (biplanar models), or None (single-view models).
    x2ctModel: x2ct model name (installed) or bundle folder.
    samplerSteps: sampler steps (1..25). numSamples: K (the uncertainty needs K >= 2).
    x2ctSeed: noise seed (same inputs, seed and device: same volumes).
    referenceCT: optional CT (HU) to score the result against (PSNR / SSIM / MAE table).
    addDirectEstimate: also add the encoder's direct (no diffusion) estimate.
    inputIntensity: what the radiograph nodes hold (INTENSITY_CHOICES); inputInverted: bone dark.
    inputGamma: display gamma of a picture, 0 = estimate. inputSidMm / inputSodMm / inputPixelMm:
    the geometry of nodes without XRayCardiac.Geometry (e.g. loaded from a PNG), 0 = from the node.
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
    # typing.Union (not "|"): the parameter node wrapper recognises node unions by typing.Union
    paVolume: Union[vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    lateralVolume: Union[vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    x2ctModel: str = X2CT_DEFAULT_MODEL
    samplerSteps: Annotated[int, WithinRange(1, X2CT_MAX_STEPS)] = X2CT_DEFAULT_STEPS
    numSamples: Annotated[int, WithinRange(1, X2CT_MAX_SAMPLES)] = X2CT_DEFAULT_SAMPLES
    x2ctSeed: Annotated[int, WithinRange(0, 2_000_000_000)] = 0
    referenceCT: Union[vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    addDirectEstimate: bool = False
    inputIntensity: Annotated[str, Choice(list(INTENSITY_CHOICES))] = "auto"
    inputInverted: bool = False
    inputGamma: Annotated[float, WithinRange(0.0, 5.0)] = 0.0
    inputSidMm: Annotated[float, WithinRange(0.0, 3000.0)] = 0.0
    inputSodMm: Annotated[float, WithinRange(0.0, 2990.0)] = 0.0
    inputPixelMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0


class XRayToCTWidget(XRayCardiacCommon.XRayCardiacWidget):
    """The panel: parameter node <-> .ui; Apply / Generate, each with its progress bar and Cancel."""

    def createLogic(self) -> "XRayToCTLogic":
        return XRayToCTLogic()

    def setupPanel(self) -> None:
        self.progress = self.addJobProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        self.generateProgress = self.addJobProgress(
            self.ui.generateProgressBar, self.ui.generateStatusLabel, self.ui.generateCancelButton
        )
        self.ui.simulateButton.connect("clicked(bool)", self.onSimulateButton)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)

    def initializeParameterNode(self) -> None:
        super().initializeParameterNode()
        if not self._parameterNode.inputCT:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputCT = firstVolume

    def updateGuiState(self, caller: Any = None, event: Any = None) -> None:
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

        if self.generateProgress.running:
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = "A CT generation is running; wait for it or cancel it."
        elif p is None or p.paVolume is None:
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = (
                "Select the PA radiograph (and the lateral one for a biplanar model)."
            )
        elif not p.x2ctModel.strip():
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = "Type an x2ct model name or bundle folder."
        else:
            self.ui.generateButton.enabled = True
            self.ui.generateButton.toolTip = "Generate the CT and its uncertainty in a separate process; the volumes are added to the scene."

    def onSimulateButton(self) -> None:
        self.runJob(
            self.progress,
            SIMULATION_LOGIC,
            lambda: self.logic.simulationArguments(self._parameterNode),
            "simulation",
            "radiographs",
            self._showRadiographs,
        )

    def _showRadiographs(self, nodes: list) -> None:
        if nodes:
            XRayCardiacCommon.showVolumeInSliceView(nodes[0])
            self.logic.useAsGenerateInputs(self._parameterNode, nodes)
        self.ui.statusLabel.text = "Added " + ", ".join(n.GetName() for n in nodes)

    def onGenerateButton(self) -> None:
        self.runJob(
            self.generateProgress,
            GENERATION_LOGIC,
            lambda: self.logic.generationArguments(self._parameterNode),
            "CT generation",
            "generated CT",
            self._showGeneratedCT,
            onStarted=self._showGeometry,
            onEnded=self._clearResultUnlessShown,
        )

    def _showGeometry(self, run: Any) -> None:
        self.ui.generateResultLabel.text = run.geometry_text()

    def _clearResultUnlessShown(self, shown: bool) -> None:
        if not shown:
            self.ui.generateResultLabel.text = ""

    def _showGeneratedCT(self, result: Any) -> None:
        slicer.util.setSliceViewerLayers(background=result.ct, fit=True)
        self.ui.generateStatusLabel.text = "Added " + ", ".join(n.GetName() for n in result.nodes)
        self.ui.generateResultLabel.text = result.text


SIMULATION_LOGIC = "XRayToCTLib.simulate.SimulateRadiographsLogic"
GENERATION_LOGIC = "XRayToCTLib.generate.GenerateCTLogic"
"""The Lib logic of each job (``JobLogic``: start, poll, cancel, import_results); imported when a job
starts, since it needs ``xraycardiac``, installed on first use after this module has been loaded."""


class XRayToCTLogic(ScriptedLoadableModuleLogic):
    """The parameter node and its translation to the Lib logic's arguments (no job runs here).

    A job: ``SimulateRadiographsLogic(scene).start(**simulationArguments(p))`` (or ``.run(...)`` to
    block), and the same with ``GenerateCTLogic`` / ``generationArguments``.
    """

    def getParameterNode(self) -> XRayToCTParameterNode:
        return XRayToCTParameterNode(super().getParameterNode())

    @staticmethod
    def simulationArguments(p: XRayToCTParameterNode) -> dict:
        """``SimulateRadiographsLogic.start``'s arguments. Raises ValueError naming a bad parameter."""
        from XRayToCTLib.simulate import build_views

        if not p.inputCT:
            raise ValueError("Input CT: select a CT volume")
        views = build_views(
            p.pose,
            detector_rows=p.detectorRows,
            detector_cols=p.detectorCols,
            pixel_spacing_mm=p.pixelSpacingMm,
            primary_angle_deg=p.primaryAngleDeg,
            secondary_angle_deg=p.secondaryAngleDeg,
            sid_mm=p.sidMm,
            sod_mm=p.sodMm,
        )
        return {"ct_node": p.inputCT, "views": views, "device": p.device}

    @staticmethod
    def useAsGenerateInputs(p: XRayToCTParameterNode, nodes: list) -> None:
        """Select simulated "PA" / "Lateral" radiographs as the Generate CT inputs (other views are left)."""
        from XRayCardiacCommonLib.mrml_io import read_attributes

        for node in nodes:
            view = (read_attributes(node).get("Parameters") or {}).get("view") or {}
            if view.get("preset") == "pa":
                p.paVolume = node
            elif view.get("preset") == "lateral":
                p.lateralVolume = node

    @staticmethod
    def generationArguments(p: XRayToCTParameterNode) -> dict:
        """``GenerateCTLogic.start``'s arguments. Raises ValueError naming a bad parameter."""
        if not p.paVolume:
            raise ValueError("pa_node: select the PA radiograph")
        return {
            "pa_node": p.paVolume,
            "lateral_node": p.lateralVolume,
            "model": p.x2ctModel,
            "steps": p.samplerSteps,
            "samples": p.numSamples,
            "seed": p.x2ctSeed,
            "device": p.device,
            "reference_node": p.referenceCT,
            "add_direct": bool(p.addDirectEstimate),
            "reading": {
                "intensity": p.inputIntensity,
                "invert": True if p.inputInverted else None,
                "gamma": p.inputGamma or None,
                "sid_mm": p.inputSidMm or None,
                "sod_mm": p.inputSodMm or None,
                "pixel_mm": p.inputPixelMm or None,
            },
        }


class XRayToCTTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: simulate PA + lateral radiographs of a box phantom; generate a CT from a chest phantom's.

    The tests that run jobs need torch and the library's packages: without them they are skipped with
    the reason logged (``XRayCardiacCommon.dependenciesForSelfTest``); with
    ``XRAYCARDIAC_TEST_INSTALL_DEPENDENCIES=1`` they install them first, as a panel's first run does.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_simulate_pa_lateral()
        self.setUp()
        self.test_generate_ct()

    def test_simulate_pa_lateral(self) -> None:
        if not XRayCardiacCommon.dependenciesForSelfTest(self, "XRayToCT"):
            return
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
        from XRayToCTLib.simulate import SimulateRadiographsLogic

        nodes = SimulateRadiographsLogic(slicer.mrmlScene).run(**logic.simulationArguments(p), timeout_s=300)
        self.assertEqual([n.GetName() for n in nodes], ["phantom DRR PA", "phantom DRR Lateral"])
        for node in nodes:
            image = slicer.util.arrayFromVolume(node)
            self.assertEqual(image.shape, (1, 64, 64))
            self.assertGreater(float(image.std()), 0.0)
            self.assertEqual(
                parse_projection_matrix(node.GetAttribute(PROJECTION_MATRIX_ATTRIBUTE)).shape, (3, 4)
            )
        self.delayDisplay("Test passed")

    def test_generate_ct(self) -> None:
        """Chest phantom (written to a temp file and loaded) -> PA + lateral DRRs -> the installed x2ct model."""
        if not XRayCardiacCommon.dependenciesForSelfTest(self, "XRayToCT"):
            return
        import os
        import tempfile

        from XRayToCTLib.generate import GenerateCTLogic, installed_x2ct_models
        from XRayToCTLib.simulate import SimulateRadiographsLogic

        logic = XRayToCTLogic()
        p = logic.getParameterNode()
        model = p.x2ctModel
        if model not in installed_x2ct_models():
            self.delayDisplay(
                f"Generate CT skipped: x2ct model {model!r} is not installed "
                "(install one with 'xraycardiac x2ct install FOLDER')"
            )
            return
        from xraycardiac.io import write_volume
        from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom

        self.delayDisplay(
            f"Simulating PA + lateral radiographs of a chest phantom, then generating with {model!r}"
        )
        ct, _ = make_chest_phantom(ChestPhantomConfig(shape_ijk=(64, 64, 64), spacing_mm=6.0, seed=3))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "chest_phantom.nrrd")
            write_volume(ct, path)
            ctNode = slicer.util.loadVolume(path)
        p.inputCT = ctNode
        p.pose = "PA + lateral"
        p.detectorRows = p.detectorCols = 256
        p.pixelSpacingMm = 2.8
        p.device = "cpu"
        views = SimulateRadiographsLogic(slicer.mrmlScene).run(**logic.simulationArguments(p), timeout_s=300)
        logic.useAsGenerateInputs(p, views)
        self.assertIs(p.paVolume, views[0])
        self.assertIs(p.lateralVolume, views[1])
        p.samplerSteps, p.numSamples, p.x2ctSeed, p.referenceCT = 10, 2, 0, ctNode
        result = GenerateCTLogic(slicer.mrmlScene).run(**logic.generationArguments(p), timeout_s=600)
        array = slicer.util.arrayFromVolume(result.ct)
        self.assertEqual(array.ndim, 3)
        self.assertEqual(len(set(array.shape)), 1)
        self.assertIsNotNone(result.uncertainty)
        self.assertGreater(float(slicer.util.arrayFromVolume(result.uncertainty).max()), 0.0)
        self.assertEqual(result.table.GetNumberOfRows(), 4)
        self.assertEqual(result.geometry, {"pa": "node", "lateral": "node"})
        self.assertEqual(result.ct.GetAttribute("XRayCardiac.Pipeline"), "x2ct-generate")
        self.delayDisplay(result.text)
        self.delayDisplay("Test passed")
