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
from CardiacSynthLib import (
    DEFAULT_CASES,
    DEFAULT_DATASET_ID,
    DEFAULT_DATASET_NAME,
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
)

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
    labelMapping: how the template labels map to the table: empty, a preset (totalsegmentator,
        totalsegmentator_heartchambers, mmwhs, imagecas) or a JSON mapping file.
    numSamples: number of synthetic cases, 1..MAX_CASES.
    seed: case i's deformation is drawn from SeedSequence([seed, i]).
    deformationStrengthMm: largest magnitude of the random deformation's velocity field, mm.
    renderer: "warp" (the template CT deformed) or "tcdm" (diffusion model ``tcdmModel``).
    tcdmModel: TCDM model name (``xraycardiac models list``), run folder or weights file ("tcdm").
    samplerSteps: DDIM steps of each image ("tcdm").
    harmonise: "tcdm": bring each structure's mean HU and fine texture to the template's (default on).
    exportDir: a new or empty folder that receives the dataset; empty = the dataset is not kept. With
        exportNnunet: the nnUNet_raw folder that receives it as Dataset<datasetId>_<datasetName>.
    exportNnunet: export as an nnU-Net raw dataset (default on).
    datasetId: the nnU-Net dataset ID, 1..999 (default 900, as the CLI's --dataset-id).
    datasetName: the nnU-Net dataset name (default "CardiacSynth", as the CLI's --dataset-name).
    device: auto / cpu / cuda.
    """

    usePhantom: bool = True
    # typing.Union (not "|"): the parameter node wrapper recognises node unions by typing.Union
    templateVolume: Union[vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    templateSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    labelMapping: str = ""
    numSamples: Annotated[int, WithinRange(1, MAX_CASES)] = DEFAULT_CASES
    seed: Annotated[int, WithinRange(0, 2_000_000_000)] = 0
    deformationStrengthMm: Annotated[float, WithinRange(0.0, MAX_STRENGTH_MM)] = DEFAULT_STRENGTH_MM
    renderer: Annotated[str, Choice(list(RENDERER_CHOICES))] = "warp"
    tcdmModel: str = ""
    samplerSteps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_STEPS
    harmonise: bool = True
    exportDir: str = ""
    exportNnunet: bool = True
    datasetId: Annotated[int, WithinRange(1, 999)] = DEFAULT_DATASET_ID
    datasetName: str = DEFAULT_DATASET_NAME
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


class CardiacSynthWidget(XRayCardiacCommon.XRayCardiacWidget):
    """The panel: parameter node <-> .ui, Generate / Cancel, progress."""

    def createLogic(self) -> "CardiacSynthLogic":
        return CardiacSynthLogic()

    def setupPanel(self) -> None:
        self.progress = self.addJobProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.exportDirBrowseButton.connect("clicked(bool)", self.onBrowseExportDir)

    def updateGuiState(self, caller: Any = None, event: Any = None) -> None:
        p = self._parameterNode
        fromNodes = p is not None and not p.usePhantom
        for widget in (
            self.ui.templateVolumeSelector,
            self.ui.templateSegmentationSelector,
            self.ui.labelMappingLineEdit,
        ):
            widget.enabled = fromNodes
        diffusion = p is not None and p.renderer == "tcdm"
        for widget in (self.ui.tcdmModelLineEdit, self.ui.samplerStepsSpinBox, self.ui.harmoniseCheckBox):
            widget.enabled = diffusion
        for widget in (self.ui.datasetIdSpinBox, self.ui.datasetNameLineEdit):
            widget.enabled = p is not None and p.exportNnunet
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
            slicer.util.mainWindow(),
            "nnUNet_raw folder" if self._parameterNode.exportNnunet else "Export folder (new or empty)",
            self._parameterNode.exportDir or "",
        )
        if folder:
            self._parameterNode.exportDir = folder

    def onGenerateButton(self) -> None:
        self.runJob(
            self.progress,
            SYNTHESIS_LOGIC,
            lambda: self.logic.synthesisArguments(self._parameterNode),
            "synthesis",
            "synthetic cases",
            self._showCases,
        )

    def _showCases(self, result: dict) -> None:
        if result["cases"]:
            slicer.util.setSliceViewerLayers(background=result["cases"][0]["image"], fit=True)
        text = f"Added {len(result['cases'])} case(s): CT, segmentation and confidence each"
        if result["export_dir"]:
            text += f"; dataset exported to {result['export_dir']}"
        self.ui.statusLabel.text = text


SYNTHESIS_LOGIC = "CardiacSynthLib.synthesize.CardiacSynthLogic"
"""The Lib logic of the job (``JobLogic``: start, poll, cancel, import_results); imported when a job
starts, since it needs ``xraycardiac``, installed on first use after this module has been loaded."""


class CardiacSynthLogic(ScriptedLoadableModuleLogic):
    """The parameter node and its translation to the Lib logic's arguments (no job runs here).

    A job: ``CardiacSynthLib.synthesize.CardiacSynthLogic(scene).start(**synthesisArguments(p))``
    (or ``.run(...)`` to block).
    """

    def getParameterNode(self) -> CardiacSynthParameterNode:
        return CardiacSynthParameterNode(super().getParameterNode())

    @staticmethod
    def synthesisArguments(p: CardiacSynthParameterNode) -> dict:
        """The Lib logic's ``start`` arguments. Raises ValueError naming a bad parameter."""
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
                "label_mapping": p.labelMapping.strip() or None,
            }
        nnunet: dict = {}
        if p.exportNnunet and p.exportDir.strip():
            nnunet = {"nnunet_dataset_id": p.datasetId, "nnunet_dataset_name": p.datasetName.strip()}
        return {
            "n": p.numSamples,
            "seed": p.seed,
            "strength_mm": p.deformationStrengthMm,
            "renderer": p.renderer,
            "model": p.tcdmModel.strip() or None,
            "steps": p.samplerSteps,
            "harmonise": p.harmonise,
            "device": p.device,
            "export_dir": p.exportDir.strip() or None,
            **nnunet,
            **template,
        }


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
        from CardiacSynthLib.synthesize import CardiacSynthLogic as SynthesisLogic

        result = SynthesisLogic(slicer.mrmlScene).run(**logic.synthesisArguments(p), timeout_s=300)
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
