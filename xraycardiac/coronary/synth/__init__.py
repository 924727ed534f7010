"""Synthetic coronary angiography data: view pairs with ground-truth correspondences.

:mod:`~xraycardiac.coronary.synth.config` (:class:`SynthConfig`, what a run makes) and
:mod:`~xraycardiac.coronary.synth.engine` (:func:`synthesize`, the resumable, sharded writer of one
dataset folder) are loaded here; the views, projection, correspondences, renderers and the dataset
format are the other modules of this package (imported on use: the renderers need torch).
"""

from __future__ import annotations

from xraycardiac.coronary.synth.config import INJECTIONS, RENDERERS, SynthConfig, check_renderer
from xraycardiac.coronary.synth.engine import labelmap_tree, prepare_dataset_dir, record_shard, synthesize
from xraycardiac.outputs import parse_shard

__all__ = [
    "INJECTIONS",
    "RENDERERS",
    "SynthConfig",
    "check_renderer",
    "labelmap_tree",
    "parse_shard",
    "prepare_dataset_dir",
    "record_shard",
    "synthesize",
]
