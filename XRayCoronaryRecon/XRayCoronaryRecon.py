"""XRayCoronaryRecon: X-ray coronary reconstruction: synthetic angiograms, and 3D reconstruction from 2-4 frames.

Widget -> typed parameter node -> ``XRayCoronaryReconLib`` logic -> the core ``coronary-synth`` job
in a separate process (progress bar, Cancel) -> per view pair two 2D volume nodes on their detector
planes (projection matrix and C-arm geometry as node attributes), the ground-truth keypoints of each
view as markups, and the tree's 3D centreline as a model. The tree is procedural (a seed) or comes
from a coronary label map or segmentation node (exported to a label map by the Lib logic, with
slicer-core's segmentations logic). "Reconstruct": two 2D X-ray volumes with their C-arm geometry
(or cine runs: sequence nodes / multi-frame volumes, a frame per run, suggested at end-diastole by the
Lib logic from the run's ECG or images; optional vessel masks) -> the core ``coronary-reconstruct`` job -> matched keypoints (two point lists
and a table), view 2's refined geometry (node attributes), the 3D centreline (curves per branch) and
a tube model. All computation is in the core library; nothing here does math.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the field types with
# typing.get_type_hints, which needs them evaluated in this module as Slicer loads it. The annotations
# Python evaluates (signatures, class bodies) write no "X | Y" (quoted where needed), so that on Python 3.9
# (Slicer 5.8) the module still loads and says it needs Slicer 5.10 (Testing/test_slicer_python39.py).

from typing import Annotated, Any, Union

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)
from XRayCoronaryReconLib import (
    DEFAULT_IMAGE_SIZE,
    DEVICE_CHOICES,
    INJECTION_CHOICES,
    LEARNED_METHOD_CHOICES,
    MAX_PAIRS,
    RECONSTRUCT_DEFAULT_METHOD,
    RECONSTRUCT_METHOD_CHOICES,
    RENDERER_CHOICES,
    SEGMENTATION_CHOICES,
    TREE_SOURCE_CHOICES,
)

import XRayCardiacCommon


class XRayCoronaryRecon(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray Coronary Reconstruction"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["XRayCardiacCommon"]
        self.parent.contributors = ["XRayCardiac developers"]
        self.parent.helpText = (
            "Synthetic coronary angiograms with exact ground truth: a coronary tree (procedural, from a "
            "seed, or the centreline tree of a coronary label map or segmentation) seen in K clinically "
            "used C-arm view pairs, rendered by X-ray physics or a diffusion model. Each view is a 2D "
            "volume on its detector plane with its 3x4 projection matrix in the node attribute "
            "XRayCardiac.ProjectionMatrix; the ground-truth keypoints of each view are a point list on "
            "the detector plane (the same label in both views is a match); the tree's 3D centreline is "
            "a model. Reconstruct: from two X-ray frames with their C-arm geometry (and optional vessel "
            "masks, the accurate path), matched keypoints, a refined geometry of view 2, the 3D "
            "centreline as curves per branch and a tube model. "
            "Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = (
            "Method: Zhao et al., Leveraging Diffusion Model and Image Foundation Model for Improved "
            "Correspondence Matching in Coronary Angiography (2025). Part of the XRayCardiac "
            "extension."
        )
        XRayCardiacCommon.noteUnsupportedSlicer(self.parent)


@parameterNodeWrapper
class XRayCoronaryReconParameterNode:
    """What the panel edits; saved with the scene.

    treeSource: procedural (seed) / label map or segmentation (``inputLabelMap``).
    seed: phantom seed of the procedural coronary tree, and of the views and renderings.
    inputLabelMap: coronary label map or segmentation node (tree source "label map / segmentation").
    leftLabel, rightLabel: label values of the left / right coronary trees in it (0 = none).
    pairs: number of view pairs K.
    injection: left / right: the opacified coronary tree and its standard views.
    renderer: physics / diffusion (the diffusion model's own 128-pixel grid; imageSize is not used).
    imageSize: square detector size in pixels (the field of view stays ~150-200 mm).
    device: auto / cpu / cuda.
    reconVolume1, reconVolume2: the two X-ray frames (2D volumes with ``XRayCardiac.Geometry``), or cine
        runs (sequence nodes, e.g. from ``XRayCoronaryReconLib.cine.load_xa_cine``, or multi-frame volumes).
    reconFrame1, reconFrame2: the frame of each run (-1 = "auto": the suggested end-diastole).
    reconEcgOffsetMs: the wanted phase after the R peak (ms); 0 = end-diastole.
    reconMask1, reconMask2: optional vessel masks of the frames (the accurate path): label maps or scalar
        volumes; the frame selectors hide label maps (showChildNodeTypes false in the .ui).
    reconVolume3, reconVolume4, reconFrame3, reconFrame4, reconMask3, reconMask4: optional views 3 and 4
        (frame or run, its frame, its mask): an N-view reconstruction, views 2-N calibrated jointly.
    reconMethod: keypoint matcher; the learned ones (``LEARNED_METHOD_CHOICES``) use ``reconMatcherModel``.
    reconFoundation: "family:/folder" of the learned matcher's foundation model, or empty.
    reconRefine: refine view 2's geometry from the matches.
    reconDevice: auto / cpu / cuda.
    reconSegmentation: how a frame without a mask is segmented: network (learned) / frangi.
    reconPriorSigmaDeg, reconPriorSigmaMm: how far view 2's recorded angles (deg) and isocentre (mm) may
        be off: the calibration prior's standard deviations.
    """

    treeSource: Annotated[str, Choice(list(TREE_SOURCE_CHOICES))] = TREE_SOURCE_CHOICES[0]
    seed: Annotated[int, WithinRange(0, 2_000_000_000)] = 0
    # typing.Union (not "|"): the parameter node wrapper recognises node unions by typing.Union
    inputLabelMap: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]  # noqa: UP007
    leftLabel: Annotated[int, WithinRange(0, 65535)] = 1
    rightLabel: Annotated[int, WithinRange(0, 65535)] = 2
    pairs: Annotated[int, WithinRange(1, MAX_PAIRS)] = 2
    injection: Annotated[str, Choice(list(INJECTION_CHOICES))] = "left"
    renderer: Annotated[str, Choice(list(RENDERER_CHOICES))] = "physics"
    imageSize: Annotated[int, WithinRange(64, 2048)] = DEFAULT_IMAGE_SIZE
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    reconVolume1: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]  # noqa: UP007
    reconVolume2: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]  # noqa: UP007
    reconFrame1: Annotated[int, WithinRange(-1, 99999)] = -1
    reconFrame2: Annotated[int, WithinRange(-1, 99999)] = -1
    reconEcgOffsetMs: Annotated[float, WithinRange(-2000.0, 2000.0)] = 0.0
    reconMask1: Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    reconMask2: Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    reconVolume3: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]  # noqa: UP007
    reconVolume4: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]  # noqa: UP007
    reconFrame3: Annotated[int, WithinRange(-1, 99999)] = -1
    reconFrame4: Annotated[int, WithinRange(-1, 99999)] = -1
    reconMask3: Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    reconMask4: Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, None]  # noqa: UP007
    reconMethod: Annotated[str, Choice(list(RECONSTRUCT_METHOD_CHOICES))] = RECONSTRUCT_DEFAULT_METHOD
    reconMatcherModel: str = ""
    reconFoundation: str = ""
    reconRefine: bool = True
    reconDevice: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    reconSegmentation: Annotated[str, Choice(list(SEGMENTATION_CHOICES))] = "network"
    reconPriorSigmaDeg: Annotated[float, WithinRange(0.1, 20.0)] = 1.5
    reconPriorSigmaMm: Annotated[float, WithinRange(0.1, 50.0)] = 3.0


class XRayCoronaryReconWidget(XRayCardiacCommon.XRayCardiacWidget):
    """The panel: parameter node <-> .ui, Generate / Cancel, progress."""

    def createLogic(self) -> "XRayCoronaryReconLogic":
        return XRayCoronaryReconLogic()

    def setupPanel(self) -> None:
        self.progress = self.addJobProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        self.reconProgress = self.addJobProgress(
            self.ui.reconProgressBar, self.ui.reconStatusLabel, self.ui.reconCancelButton
        )
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.reconstructButton.connect("clicked(bool)", self.onReconstructButton)
        self.ui.suggestFramesButton.connect("clicked(bool)", self.onSuggestFrames)

    def updateGuiState(self, caller: Any = None, event: Any = None) -> None:
        p = self._parameterNode
        fromLabels = p is not None and self.logic.usesLabelMap(p)
        for widget in (self.ui.inputLabelMapSelector, self.ui.leftLabelSpinBox, self.ui.rightLabelSpinBox):
            widget.enabled = fromLabels
        self.ui.imageSizeSpinBox.enabled = p is not None and p.renderer == "physics"
        if self.progress.running:
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = "A synthesis is running; wait for it or cancel it."
        elif fromLabels and p.inputLabelMap is None:
            self.ui.generateButton.enabled = False
            self.ui.generateButton.toolTip = "Select the coronary label map or segmentation."
        else:
            self.ui.generateButton.enabled = p is not None
            self.ui.generateButton.toolTip = (
                "Generate the view pairs; per pair two 2D volumes and two keypoint lists are added, "
                "and the tree's centreline model once."
            )

        self.ui.reconMatcherModelLineEdit.enabled = p is not None and p.reconMethod in LEARNED_METHOD_CHOICES
        self.ui.suggestFramesButton.enabled = p is not None and (
            p.reconVolume1 is not None or p.reconVolume2 is not None
        )
        if self.reconProgress.running:
            self.ui.reconstructButton.enabled = False
            self.ui.reconstructButton.toolTip = "A reconstruction is running; wait for it or cancel it."
        elif p is None or p.reconVolume1 is None or p.reconVolume2 is None:
            self.ui.reconstructButton.enabled = False
            self.ui.reconstructButton.toolTip = "Select the two X-ray frames (view 1 and view 2)."
        else:
            self.ui.reconstructButton.enabled = True
            self.ui.reconstructButton.toolTip = (
                "Match, refine view 2 and reconstruct the 3D centreline in a separate process."
            )

    def onReconstructButton(self) -> None:
        self.runJob(
            self.reconProgress,
            RECONSTRUCTION_LOGIC,
            lambda: self.logic.reconstructionArguments(self._parameterNode),
            "reconstruction",
            "reconstruction",
            self._showReconstruction,
            onStarted=self._clearReconstructionText,
        )

    def onSuggestFrames(self) -> None:
        """Fill the frame boxes with the suggested end-diastolic frames of the selected runs."""
        try:
            self.ui.reconFrameInfoLabel.text = self.logic.suggestFrames(self._parameterNode)
        except ValueError as exc:
            XRayCardiacCommon.showError(f"Cannot suggest frames: {exc}")

    def _clearReconstructionText(self, run: Any) -> None:
        self.ui.reconErrorLabel.text = ""

    def _showReconstruction(self, result: dict) -> None:
        self.ui.reconErrorLabel.text = result["text"]
        self.ui.reconStatusLabel.text = (
            f"Added {sum(t.GetNumberOfRows() for t in result['tables'])} matches, "
            f"{len(result['branches'])} centreline branches and the tube model"
        )

    def onGenerateButton(self) -> None:
        self.runJob(
            self.progress,
            SYNTHESIS_LOGIC,
            lambda: self.logic.synthesisArguments(self._parameterNode),
            "synthesis",
            "synthetic angiograms",
            self._showSynthesis,
        )

    def _showSynthesis(self, result: dict) -> None:
        if result["pairs"]:
            XRayCardiacCommon.showVolumeInSliceView(result["pairs"][0]["view1"])
        text = f"Added {len(result['pairs'])} view pair(s) and the centreline model"
        if result["skipped"]:
            text += f"; skipped {len(result['skipped'])} pair(s) with the tree outside the field of view"
        self.ui.statusLabel.text = text


SYNTHESIS_LOGIC = "XRayCoronaryReconLib.synthetic.SyntheticAngiogramsLogic"
RECONSTRUCTION_LOGIC = "XRayCoronaryReconLib.reconstruct.ReconstructLogic"
"""The Lib logic of each job (``JobLogic``: start, poll, cancel, import_results); imported when a job
starts, since it needs ``xraycardiac``, installed on first use after this module has been loaded."""


class XRayCoronaryReconLogic(ScriptedLoadableModuleLogic):
    """The parameter node and its translation to the Lib logic's arguments (no job runs here).

    A job: ``SyntheticAngiogramsLogic(scene).start(**synthesisArguments(p))`` (or ``.run(...)`` to
    block), and the same with ``ReconstructLogic`` / ``reconstructionArguments``.
    """

    def getParameterNode(self) -> XRayCoronaryReconParameterNode:
        return XRayCoronaryReconParameterNode(super().getParameterNode())

    @staticmethod
    def usesLabelMap(p: XRayCoronaryReconParameterNode) -> bool:
        """True when the tree comes from ``p.inputLabelMap`` rather than from the seed."""
        return p.treeSource == TREE_SOURCE_CHOICES[1]

    @classmethod
    def synthesisArguments(cls, p: XRayCoronaryReconParameterNode) -> dict:
        """``SyntheticAngiogramsLogic.start``'s arguments. Raises ValueError naming a bad parameter.

        Label map / segmentation source: ``p.inputLabelMap`` with its labels (0 = none). Renderer
        "diffusion": images on the model's own grid (``image_size`` None).
        """
        options: dict = {"renderer": p.renderer}
        if cls.usesLabelMap(p):
            if p.inputLabelMap is None:
                raise ValueError("labelmap_node: select the coronary label map or segmentation")
            options.update(
                labelmap_node=p.inputLabelMap,
                left_label=p.leftLabel or None,
                right_label=p.rightLabel or None,
            )
        return {
            "seed": p.seed,
            "pairs": p.pairs,
            "injection": p.injection,
            "image_size": p.imageSize if p.renderer == "physics" else None,
            "device": p.device,
            **options,
        }

    @staticmethod
    def reconstructionArguments(p: XRayCoronaryReconParameterNode) -> dict:
        """``ReconstructLogic.start``'s arguments. Raises ValueError naming a bad parameter."""
        from XRayCoronaryReconLib.reconstruct import method_spec

        return {
            "volume_node1": p.reconVolume1,
            "volume_node2": p.reconVolume2,
            "mask_node1": p.reconMask1,
            "mask_node2": p.reconMask2,
            "method": method_spec(p.reconMethod, p.reconMatcherModel),
            "foundation": p.reconFoundation or None,
            "refine_calibration": bool(p.reconRefine),
            "device": p.reconDevice,
            "frame1": p.reconFrame1 if p.reconFrame1 >= 0 else None,
            "frame2": p.reconFrame2 if p.reconFrame2 >= 0 else None,
            "ecg_offset_ms": float(p.reconEcgOffsetMs),
            "segmentation": p.reconSegmentation,
            "prior_sigma_deg": float(p.reconPriorSigmaDeg),
            "prior_sigma_mm": float(p.reconPriorSigmaMm),
            "more_volume_nodes": [p.reconVolume3, p.reconVolume4],
            "more_mask_nodes": [p.reconMask3, p.reconMask4],
            "more_frames": [f if f >= 0 else None for f in (p.reconFrame3, p.reconFrame4)],
        }

    @staticmethod
    def suggestFrames(p: XRayCoronaryReconParameterNode) -> str:
        """Set ``reconFrame1`` / ``reconFrame2`` of the runs among the views to the suggested frames.

        Returns:
            One line per run saying the frame and why. Raises ValueError naming a bad node.
        """
        from XRayCoronaryReconLib.cine import is_run, suggest_frame

        lines = []
        for v in (1, 2, 3, 4):
            node = getattr(p, f"reconVolume{v}")
            if node is None or not is_run(node):
                continue
            choice = suggest_frame(node, p.reconEcgOffsetMs, f"volume_node{v}")
            setattr(p, f"reconFrame{v}", int(choice.frame))
            lines.append(f"view {v}: frame {choice.frame} ({choice.reason})")
        return "\n".join(lines) or "No cine run selected: a 2D frame is used as it is."


class XRayCoronaryReconTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: one small synthetic view pair with its keypoints and centreline.

    The tests that run jobs need torch and the library's packages: without them they are skipped with
    the reason logged (``XRayCardiacCommon.dependenciesForSelfTest``); with
    ``XRAYCARDIAC_TEST_INSTALL_DEPENDENCIES=1`` they install them first, as a panel's first run does.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_synthetic_pair()
        self.setUp()
        self.test_reconstruct_pair()

    def test_synthetic_pair(self) -> None:
        if not XRayCardiacCommon.dependenciesForSelfTest(self, "XRayCoronaryRecon"):
            return
        from XRayCardiacCommonLib.mrml_io import PROJECTION_MATRIX_ATTRIBUTE, parse_projection_matrix
        from XRayCoronaryReconLib.synthetic import SyntheticAngiogramsLogic

        self.delayDisplay("Generating one synthetic angiogram pair")
        logic = XRayCoronaryReconLogic()
        p = logic.getParameterNode()
        p.seed, p.pairs, p.injection, p.imageSize, p.device = 1, 1, "left", 128, "cpu"
        result = SyntheticAngiogramsLogic(slicer.mrmlScene).run(**logic.synthesisArguments(p), timeout_s=300)
        self.assertEqual(len(result["pairs"]), 1)
        pair = result["pairs"][0]
        for v in (1, 2):
            image = slicer.util.arrayFromVolume(pair[f"view{v}"])
            self.assertEqual(image.shape, (1, 128, 128))
            self.assertGreater(float(image.std()), 0.0)
            self.assertEqual(
                parse_projection_matrix(pair[f"view{v}"].GetAttribute(PROJECTION_MATRIX_ATTRIBUTE)).shape,
                (3, 4),
            )
            self.assertGreater(pair[f"keypoints{v}"].GetNumberOfControlPoints(), 0)
        self.assertGreater(result["centreline"].GetPolyData().GetNumberOfPoints(), 0)
        self.delayDisplay("Test passed")

    def test_reconstruct_pair(self) -> None:
        if not XRayCardiacCommon.dependenciesForSelfTest(self, "XRayCoronaryRecon"):
            return
        from XRayCoronaryReconLib.reconstruct import ReconstructLogic
        from XRayCoronaryReconLib.synthetic import SyntheticAngiogramsLogic

        self.delayDisplay("Generating a pair, then reconstructing it (vessel keypoints, epipolar filter)")
        logic = XRayCoronaryReconLogic()
        p = logic.getParameterNode()
        p.seed, p.pairs, p.injection, p.imageSize, p.device = 2, 1, "left", 256, "cpu"
        synthetic = SyntheticAngiogramsLogic(slicer.mrmlScene)
        pair = synthetic.run(**logic.synthesisArguments(p), timeout_s=300)["pairs"][0]
        result = ReconstructLogic(slicer.mrmlScene).run(
            pair["view1"], pair["view2"], timeout_s=300, method="vessel+epipolar", device="cpu"
        )
        self.assertGreater(result["keypoints1"].GetNumberOfControlPoints(), 0)
        self.assertEqual(
            result["keypoints1"].GetNumberOfControlPoints(), result["keypoints2"].GetNumberOfControlPoints()
        )
        self.assertGreater(result["tube"].GetPolyData().GetNumberOfPoints(), 0)
        self.assertIn("reprojection", result["text"].lower())
        self.delayDisplay(result["text"])
        self.delayDisplay("Test passed")
