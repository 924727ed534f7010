"""Lungs, heart and spine of a chest CT cube by HU thresholds: the Dice of generated CTs (XRayToCT).

The same rules run on a generated volume and on the reference, so Dice compares like with like.
The cube is axis-aligned (I = R, J = A, K = S) and centred on the patient (see
:mod:`xraycardiac.xray2ct.evaluate` for the rules in words and their accuracy on phantoms).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["STRUCTURES", "chest_structures", "dice", "lung_mask"]

STRUCTURES = ("lungs", "heart", "spine")
# thresholds of chest_structures (module docstring)
LUNG_AIR_HU = -400.0
BONE_HU = 200.0
SOFT_TISSUE_HU = (0.0, 150.0)
SPINE_HALF_WIDTH_MM = 35.0
DISC_BRIDGE_MM = 10.0
HEART_OPENING_MM = 8.0
MIN_LUNG_COMPONENT = 0.1
MEDIASTINUM_LUNG_FRACTION = 0.25


# --- structures by thresholds ----------------------------------------------------------------------


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected labels of ``mask`` and the voxel count of each (index 0 = background, count 0)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, sizes


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """Lungs of a (K, J, I) HU cube: air below LUNG_AIR_HU not connected to the front/back faces."""
    from scipy import ndimage

    air = hu < LUNG_AIR_HU
    outside = np.zeros_like(air)
    for k in range(air.shape[0]):  # air reaching the anterior / posterior face of its slice
        lab, _ = ndimage.label(air[k])
        ids = np.union1d(lab[0], lab[-1])
        outside[k] = np.isin(lab, ids[ids > 0])
    lab, sizes = _components(air & ~outside)
    if sizes.max() == 0:
        return np.zeros_like(air)
    return np.isin(lab, np.flatnonzero(sizes >= MIN_LUNG_COMPONENT * sizes.max()))


def _spine(hu: np.ndarray, x_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    from scipy import ndimage

    bone = (hu > BONE_HU) & (np.abs(x_mm) <= SPINE_HALF_WIDTH_MM)[None, None, :]
    r = max(1, math.ceil(DISC_BRIDGE_MM / spacing_mm))
    bridged = bone | ndimage.binary_closing(bone, structure=np.ones((2 * r + 1, 1, 1), bool))
    lab, sizes = _components(bridged)
    if sizes.max() == 0:
        return bridged
    extent = np.array([sl[0].stop - sl[0].start for sl in ndimage.find_objects(lab)])  # slices along S
    best = np.lexsort((sizes[1:], extent))[-1] + 1  # the longest along S, then the largest
    return lab == best


def _heart(hu: np.ndarray, lungs: np.ndarray, spine: np.ndarray, x_mm: np.ndarray, spacing_mm: float):
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    right = (lungs & (x_mm > 0)[None, None, :]).sum(axis=(1, 2))
    left = (lungs & (x_mm <= 0)[None, None, :]).sum(axis=(1, 2))
    f = MEDIASTINUM_LUNG_FRACTION
    both = (right >= max(f * right.max(), 1)) & (left >= max(f * left.max(), 1))
    hull = np.zeros_like(lungs)
    for k in np.flatnonzero(both):
        hull[k] = convex_hull_image(lungs[k])
    soft = (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    tissue = soft & hull & ~lungs & ~ndimage.binary_dilation(spine)
    r = round(HEART_OPENING_MM / spacing_mm)
    if r > 0:
        tissue = ndimage.binary_opening(tissue, iterations=r)
    lab, sizes = _components(tissue)
    return lab == sizes.argmax() if sizes.max() > 0 else tissue


def chest_structures(hu: np.ndarray, spacing_mm: float) -> dict[str, np.ndarray]:
    """Lungs, heart and spine of a chest CT cube by HU thresholds (exact rules: the module docstring).

    Args:
        hu: (K, J, I) CT in HU on an axis-aligned RAS grid (I = R, J = A, K = S) whose centre lies
            near the patient's midline, as :func:`~xraycardiac.xray2ct.data.prepare_ct`'s cubes and the
            chest phantoms.
        spacing_mm: isotropic voxel size (mm).

    Returns:
        ``{"lungs", "heart", "spine"}``: (K, J, I) bool masks.
    """
    a = np.asarray(hu, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"hu: expected a (K, J, I) volume, got shape {a.shape}")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm: expected a finite voxel size > 0 mm, got {spacing_mm!r}")
    x_mm = (np.arange(a.shape[2]) - (a.shape[2] - 1) / 2.0) * spacing_mm
    lungs = lung_mask(a)
    spine = _spine(a, x_mm, spacing_mm)
    return {"lungs": lungs, "heart": _heart(a, lungs, spine, x_mm, spacing_mm), "spine": spine}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |a ∩ b| / (|a| + |b|) of two bool masks; NaN when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else math.nan
