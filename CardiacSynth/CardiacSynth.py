"""CardiacSynth: Cardiac CT Synthesis. This release shows what the module will do; it has no action yet.

The panel says which capability is coming and holds no buttons that do nothing. The parameter node
exists so that the panel follows the same widget -> parameter node -> logic pattern as the
other XRayCardiac modules; it gets fields, and the module a ``CardiacSynthLib`` package, as the
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


class CardiacSynth(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cardiac CT Synthesis"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["XRayCardiacCommon"]
        self.parent.contributors = ["SlicerXRayCardiac developers"]
        self.parent.helpText = (
            "Synthesis of cardiac CT volumes with label maps and confidence maps from a template CT and"
            " its segmentation, for segmentation pretraining. Not available yet: this release holds the"
            " panel only. Research use only; not for clinical decisions."
        )
        self.parent.acknowledgementText = (
            "Method: FCaS, Fine-grained Cardiac Image Synthesis based on 3D Template Conditional "
            "Diffusion Model. Part of the SlicerXRayCardiac extension."
        )


@parameterNodeWrapper
class CardiacSynthParameterNode:
    """What the panel edits; no fields yet (nothing is configurable before the feature lands)."""


class CardiacSynthWidget(ScriptedLoadableModuleWidget):
    """The panel: a description of the coming capability."""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CardiacSynthLogic()
        self._parameterNode = self.logic.getParameterNode()
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def cleanup(self) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode = None


class CardiacSynthLogic(ScriptedLoadableModuleLogic):
    """Thin logic; the computation will live in the core library ``xraycardiac``."""

    def getParameterNode(self) -> CardiacSynthParameterNode:
        return CardiacSynthParameterNode(super().getParameterNode())


class CardiacSynthTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the module's parameter node is created in the scene and reused."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_parameter_node()

    def test_parameter_node(self) -> None:
        first = CardiacSynthLogic().getParameterNode().parameterNode
        second = CardiacSynthLogic().getParameterNode().parameterNode
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(first.GetID()))
        self.assertEqual(first.GetID(), second.GetID())
        self.delayDisplay("Test passed")
