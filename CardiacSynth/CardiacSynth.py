"""CardiacSynth: synthetic cardiac CT volumes with label maps and confidence maps from a template.

Widget -> typed parameter node -> ``CardiacSynthLib`` logic -> the core ``cardiac-synth`` job in a
separate process (progress bar, Cancel) -> per case a CT volume (HU), a segmentation (the template's
segment names, colours from the cardiac label table) and a confidence volume, in one subject-hierarchy
folder. The template is the procedural cardiac phantom, or a CT with its segmentation (segments named
after the label table: lv, rv, la, ra, myo, aorta, pa, lca, rca, heart) or label map (table values).
"Export folder" keeps the whole dataset (nnU-Net / MONAI layout) on disk. All computation is in the
core library; nothing here does math.

Segmentation pretraining is not a button here: ``xraycardiac cardiac pretrain`` (the core's comparison of
no / plain synthetic / confidence-aware pretraining) needs real fine-tuning and test cases besides the
synthetic set and has no job pipeline for the panel to run in a separate process. Run it on an exported
dataset: ``xraycardiac cardiac pretrain --synthetic <export folder> --finetune <cases> --test <cases>``.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the field types with
# typing.get_type_hints, which needs them evaluated in this module as Slicer loads it. The annotations
# Python evaluates (signatures, class bodies) write no "X | Y" (quoted where needed), so that on Python 3.9
# (Slicer 5.8) the module still loads and says it needs Slicer 5.10 (Testing/test_slicer_python39.py).

from typing import Annotated, Any, Union

import qt
import slicer
import vtk
from CardiacSynthLib import (
    DEFAULT_CASES,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH_MM,
    DEVICE_CHOICES,
    MAX_CASES,
    MAX_STRENGTH_MM,
    RENDERER_CHOICES,
)
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import XRayCardiacCommon


class CardiacSynth(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cardiac CT Synthesis"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["XRayCardiacCommon"]
        self.parent.contributors = ["XRayCardiac developers"]
        self.parent.helpText = (
            "Synthetic cardiac CT volumes with their label maps and confidence maps, for segmentation "
            "pretraining. The template is the procedural cardiac phantom, or a cardiac CT (HU) with its "
            "segmentation (segments named after the label table: lv, rv, la, ra, myo, aorta, pa, lca, rca, "
            "heart, or the full names such as 'LV blood pool') or label map (the table's values). Each case "
            "deforms the template's labels by a random, topology-checked diffeomorphism and renders an image "
            "for them: 'warp' deforms the template CT (confidence 1), 'tcdm' samples the template-conditioned "
            "diffusion model (confidence from the skip-sampling variance). Each case adds a CT volume, a "
            "segmentation and a confidence volume; 'Export folder' keeps the whole dataset (nnU-Net / MONAI "
            "layout), which 'xraycardiac cardiac pretrain --synthetic <folder>' uses for segmentation "
            "pretraining. Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = (
            "Method: FCaS, Fine-grained Cardiac Image Synthesis based on 3D Template Conditional "
            "Diffusion Model. Part of the XRayCardiac extension."
        )
        XRayCardiacCommon.noteUnsupportedSlicer(self.parent)


@parameterNodeWrapper
class CardiacSynthParameterNode:
    """What the panel edits; saved with the scene.

    usePhantom: the template is the procedural cardiac phantom (the two nodes below are not used).
    templateVolume: the template CT (scalar volume, HU).
    templateSegmentation: its segmentation (segment names from the label table) or label map (table
        values on the CT's grid).
    numSamples: number of synthetic cases, 1..MAX_CASES.
    seed: case i's deformation is drawn from SeedSequence([seed, i]).
    deformationStrengthMm: largest magnitude of the random deformation's velocity field, mm.
    renderer: "warp" (the template CT deformed) or "tcdm" (diffusion model ``tcdmModel``).
    tcdmModel: TCDM model name (``xraycardiac models list``), run folder or weights file ("tcdm").
    samplerSteps: DDIM steps of each image ("tcdm").
    exportDir: a new or empty folder that receives the dataset; empty = the dataset is not kept.
    device: auto / cpu / cuda.
    """

    usePhantom: bool = True
    # typing.Union (not "|"): the parameter node wrapper recognises node unions by typing.Union
    templateVolume: Union[vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    templateSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    numSamples: Annotated[int, WithinRange(1, MAX_CASES)] = DEFAULT_CASES
    seed: Annotated[int, WithinRange(0, 2_000_000_000)] = 0
    deformationStrengthMm: Annotated[float, WithinRange(0.0, MAX_STRENGTH_MM)] = DEFAULT_STRENGTH_MM
    renderer: Annotated[str, Choice(list(RENDERER_CHOICES))] = "warp"
    tcdmModel: str = ""
    samplerSteps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_STEPS
    exportDir: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


class CardiacSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: parameter node <-> .ui, Generate / Cancel, progress."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: CardiacSynthLogic | None = None
        self._parameterNode: CardiacSynthParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._run = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if XRayCardiacCommon.showUnsupportedSlicer(self):
            return  # an older Slicer: the panel says why
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CardiacSynthLogic()
        self.progress = XRayCardiacCommon.JobProgress(
            self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton
        )

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.exportDirBrowseButton.connect("clicked(bool)", self.onBrowseExportDir)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is None:  # setup stopped on an unsupported Slicer
            return
        self.progress.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is None:  # setup stopped on an unsupported Slicer
            return
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

    def setParameterNode(self, inputParameterNode: "CardiacSynthParameterNode | None") -> None:
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
        fromNodes = p is not None and not p.usePhantom
        for widget in (self.ui.templateVolumeSelector, self.ui.templateSegmentationSelector):
            widget.enabled = fromNodes
        diffusion = p is not None and p.renderer == "tcdm"
        for widget in (self.ui.tcdmModelLineEdit, self.ui.samplerStepsSpinBox):
            widget.enabled = diffusion
        if self.progress.running:
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = "A synthesis is running; wait for it or cancel it."
        elif p is None:
            self.ui.generateButton.enabled = False
        elif fromNodes and (p.templateVolume is None or p.templateSegmentation is None):
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = (
                "Select the template CT and its segmentation or label map, or use the phantom template."
            )
        elif diffusion and not p.tcdmModel.strip():
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = (
                "The tcdm renderer needs a TCDM model (name, run folder or file)."
            )
        else:
            self.ui.generateButton.enabled = True
            self.ui.generateButton.toolTip = (
                "Generate the cases in a separate process; each adds a CT volume, a segmentation and a "
                "confidence volume."
            )

    def onBrowseExportDir(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Export folder (new or empty)", self._parameterNode.exportDir or ""
        )
        if folder:
            self._parameterNode.exportDir = folder

    def onGenerateButton(self) -> None:
        run = XRayCardiacCommon.startJob(
            "CardiacSynth", "synthesis", self.logic.startSynthesis, self._parameterNode
        )
        if run is None:
            return
        self._run = run
        self.progress.track(run.poll, lambda: self.logic.cancelSynthesis(run), self._onSynthesisFinished)
        self._updateGuiState()

    def _onSynthesisFinished(self, status: Any) -> None:
        run, self._run = self._run, None
        XRayCardiacCommon.finishJob(
            status,
            lambda: self.logic.finishSynthesis(run),
            lambda: self.logic.cancelSynthesis(run),
            self._showCases,
            "synthetic cases",
        )
        self._updateGuiState()

    def _showCases(self, result: dict) -> None:
        if result["cases"]:
            slicer.util.setSliceViewerLayers(background=result["cases"][0]["image"], fit=True)
        text = f"Added {len(result['cases'])} case(s): CT, segmentation and confidence each"
        if result["export_dir"]:
            text += f"; dataset exported to {result['export_dir']}"
        self.ui.statusLabel.text = text


class CardiacSynthLogic(ScriptedLoadableModuleLogic):
    """Thin logic: parameter node -> ``CardiacSynthLib.synthesize``. Usable from scripts without the GUI.

    ``CardiacSynthLib.synthesize`` is imported inside the methods: it needs ``xraycardiac``, which is
    installed on first use, after this module has been loaded.
    """

    def getParameterNode(self) -> CardiacSynthParameterNode:
        return CardiacSynthParameterNode(super().getParameterNode())

    @staticmethod
    def _synthesis() -> Any:
        """``CardiacSynthLib.synthesize.CardiacSynthLogic`` on the application's scene."""
        from CardiacSynthLib.synthesize import CardiacSynthLogic as SynthesisLogic

        return SynthesisLogic(slicer.mrmlScene)

    def startSynthesis(self, p: CardiacSynthParameterNode) -> Any:
        """Start the ``cardiac-synth`` job (returns at once). Raises ValueError naming a bad parameter."""
        template: dict = {}
        if not p.usePhantom:
            if p.templateVolume is None and p.templateSegmentation is None:
                raise ValueError(
                    "template_volume: select the template CT and its segmentation or label map, or use the "
                    "phantom template"
                )
            template = {
                "template_volume": p.templateVolume,
                "template_segmentation_or_labelmap": p.templateSegmentation,
            }
        return self._synthesis().start(
            n=p.numSamples,
            seed=p.seed,
            strength_mm=p.deformationStrengthMm,
            renderer=p.renderer,
            model=p.tcdmModel.strip() or None,
            steps=p.samplerSteps,
            device=p.device,
            export_dir=p.exportDir.strip() or None,
            **template,
        )

    def finishSynthesis(self, run: Any) -> dict:
        """Add the finished job's cases to the scene (and export them); see ``import_results``."""
        return self._synthesis().import_results(run)

    def cancelSynthesis(self, run: Any) -> None:
        """Stop a job and delete its files; the scene is not changed."""
        self._synthesis().cancel(run)

    def synthesize(self, p: CardiacSynthParameterNode, timeoutS: "float | None" = None) -> dict:
        """Blocking: start, wait and import (a failed wait cancels). Returns ``finishSynthesis``'s dict."""
        return self._synthesis().wait_and_import(self.startSynthesis(p), timeout_s=timeoutS)


class CardiacSynthTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the parameter node, and two warp cases of the phantom template.

    The tests that run jobs need torch and the library's packages: without them they are skipped with
    the reason logged (``XRayCardiacCommon.dependenciesForSelfTest``); with
    ``XRAYCARDIAC_TEST_INSTALL_DEPENDENCIES=1`` they install them first, as a panel's first run does.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_parameter_node()
        self.setUp()
        self.test_phantom_two_cases()

    def test_parameter_node(self) -> None:
        first = CardiacSynthLogic().getParameterNode().parameterNode
        second = CardiacSynthLogic().getParameterNode().parameterNode
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(first.GetID()))
        self.assertEqual(first.GetID(), second.GetID())
        self.delayDisplay("Test passed")

    def test_phantom_two_cases(self) -> None:
        if not XRayCardiacCommon.dependenciesForSelfTest(self, "CardiacSynth"):
            return
        import numpy as np

        self.delayDisplay("Generating two synthetic cases of the phantom template (warp renderer)")
        logic = CardiacSynthLogic()
        p = logic.getParameterNode()
        p.usePhantom, p.numSamples, p.renderer, p.device, p.exportDir = True, 2, "warp", "cpu", ""
        result = logic.synthesize(p, timeoutS=300)
        self.assertEqual(len(result["cases"]), 2)
        for i, case in enumerate(result["cases"]):
            self.assertEqual(case["image"].GetName(), f"CardiacSynth case {i} image")
            image = slicer.util.arrayFromVolume(case["image"])
            self.assertEqual(image.ndim, 3)
            self.assertGreater(float(image.std()), 0.0)
            self.assertGreater(case["labels"].GetSegmentation().GetNumberOfSegments(), 0)
            confidence = slicer.util.arrayFromVolume(case["confidence"])
            self.assertEqual(confidence.shape, image.shape)
            self.assertTrue(bool(np.all((confidence >= 0.0) & (confidence <= 1.0))))
        self.assertIsNone(result["export_dir"])
        self.delayDisplay("Test passed")
