"""CardiacSynth core: the label table, cardiac templates and the training-free Mask Generation Module.

``labels``, ``label_maps`` and ``templates`` need numpy/scipy/SimpleITK only; ``mgm`` imports torch and MONAI on
first use (inside its functions), so importing this package stays light. The torch-level parts are
submodules: ``tcdm`` (template-guided conditional diffusion), ``ssv`` (skip-sampling-variance
confidence), ``cal`` (confidence-aware segmentation pretraining) and ``synth`` (dataset writer, whose
names are re-exported here).
"""

from __future__ import annotations

from xraycardiac.cardiac.label_maps import (
    IMAGECAS_MAPPING,
    MMWHS_MAPPING,
    PRESETS,
    SPLIT_CORONARIES,
    LabelMapping,
    resolve_label_mapping,
    split_coronary_trees,
)
from xraycardiac.cardiac.labels import (
    BACKGROUND_HU,
    CORONARY_LABELS,
    FINE_LABELS,
    LABEL_TABLE,
    WHOLE_HEART,
    CardiacLabel,
    expected_betti,
    label_by_name,
    label_info,
    label_names,
    slicer_color_table,
    structure_betti,
)
from xraycardiac.cardiac.mgm import (
    REJECTION_REASONS,
    MGMConfig,
    MGMReport,
    MGMSample,
    ddf_ras_to_voxel,
    ddf_voxel_to_ras,
    generate_masks,
    jacobian_determinant,
    topology_violations,
    warp_image,
    warp_labels,
)
from xraycardiac.cardiac.synth import RENDERERS, CardiacSynthConfig, synthesize_dataset
from xraycardiac.cardiac.templates import (
    CardiacTemplate,
    imagecas_cases,
    load_template,
    mmwhs_cases,
    template_from_phantom,
    template_from_real_ct,
)

__all__ = [
    "RENDERERS",
    "CardiacSynthConfig",
    "synthesize_dataset",
    "BACKGROUND_HU",
    "CORONARY_LABELS",
    "FINE_LABELS",
    "IMAGECAS_MAPPING",
    "LABEL_TABLE",
    "MMWHS_MAPPING",
    "REJECTION_REASONS",
    "SPLIT_CORONARIES",
    "PRESETS",
    "LabelMapping",
    "resolve_label_mapping",
    "WHOLE_HEART",
    "CardiacLabel",
    "CardiacTemplate",
    "MGMConfig",
    "MGMReport",
    "MGMSample",
    "ddf_ras_to_voxel",
    "ddf_voxel_to_ras",
    "expected_betti",
    "generate_masks",
    "imagecas_cases",
    "jacobian_determinant",
    "label_by_name",
    "label_info",
    "label_names",
    "load_template",
    "mmwhs_cases",
    "slicer_color_table",
    "split_coronary_trees",
    "structure_betti",
    "template_from_phantom",
    "template_from_real_ct",
    "topology_violations",
    "warp_image",
    "warp_labels",
]
