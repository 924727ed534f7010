"""XRayCoronaryRecon: X-ray Coronary Reconstruction. This release shows what the module will do; it has no action yet.

The panel says which capability is coming and holds no buttons that do nothing. The parameter node
exists so that the panel follows the same widget -> parameter node -> logic pattern as the
other XRayCardiac modules; it gets fields, and the module a ``XRayCoronaryReconLib`` package, as the
features land.
"""

# No "from __future__ import annotations" here: parameterNodeWrapper reads the field types with
# typing.get_type_hints, which needs them evaluated in this module as Slicer loads it.

from typing import Any

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class XRayCoronaryRecon(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray Coronary Reconstruction"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["XRayCardiacCommon"]
        self.parent.contributors = ["SlicerXRayCardiac developers"]
        self.parent.helpText = (
            "Coronary reconstruction from two X-ray angiography frames: matched vessel keypoints, a "
            "refined C-arm calibration and a 3D coronary centreline. Not available yet: this release "
            "holds the panel only. Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = (
            "Method: Zhao et al., Leveraging Diffusion Model and Image Foundation Model for Improved "
            "Correspondence Matching in Coronary Angiography (2025). Part of the SlicerXRayCardiac "
            "extension."
        )


@parameterNodeWrapper
class XRayCoronaryReconParameterNode:
    """What the panel edits; no fields yet (nothing is configurable before the feature lands)."""


class XRayCoronaryReconWidget(ScriptedLoadableModuleWidget):
    """The panel: a description of the coming capability."""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayCoronaryRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XRayCoronaryReconLogic()
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def cleanup(self) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode = None


class XRayCoronaryReconLogic(ScriptedLoadableModuleLogic):
    """Thin logic; the computation will live in the core library ``xraycardiac``."""

    def getParameterNode(self) -> XRayCoronaryReconParameterNode:
        return XRayCoronaryReconParameterNode(super().getParameterNode())


class XRayCoronaryReconTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the module's parameter node is created in the scene and reused."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_parameter_node()

    def test_parameter_node(self) -> None:
        first = XRayCoronaryReconLogic().getParameterNode().parameterNode
        second = XRayCoronaryReconLogic().getParameterNode().parameterNode
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(first.GetID()))
        self.assertEqual(first.GetID(), second.GetID())
        self.delayDisplay("Test passed")
