"""A folder of cardiac phantoms in the TCDM training layout (``xraycardiac cardiac phantoms``), resumable.

Layout::

    images/phantom_<seed:05d>.nii.gz        CT image (HU, float32)
    labels/phantom_<seed:05d>.nii.gz        label map (values of xraycardiac.cardiac.labels)
    records/phantom_<seed:05d>.done.json    both files with sizes and sha256, written last: the
                                            record that the phantom is complete (xraycardiac.outputs)
    phantoms.json                           the settings every phantom of the folder shares

Phantom ``k`` of a run uses seed ``seed + k`` and is named after that seed, so runs with other
``seed`` / ``n`` add phantoms to one folder. ``grid`` and ``spacing_mm`` are the folder's settings:
a run with others is refused (naming the setting and both values) unless ``overwrite``, which
deletes this layout's files and starts again. A rerun keeps a phantom only if its record is there
and both files still match it; anything else (a file cut short, emptied, deleted) is made again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xraycardiac.outputs import check_output, discard, recorded_sample, verify_record, write_json_atomic

__all__ = ["FORMAT", "write_cardiac_phantoms"]

FORMAT = "xraycardiac.cardiac_phantoms"
SETTINGS_NAME = "phantoms.json"
_OWN = ("images", "labels", "records", SETTINGS_NAME)


def write_cardiac_phantoms(
    out: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    grid: int = 64,
    spacing_mm: float = 2.5,
    overwrite: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Write (or complete) phantoms ``seed .. seed + n - 1`` into ``out`` (module docstring).

    Args:
        out: the folder (created): absent, empty, or a phantom folder with the same grid and spacing.
        n: number of phantoms (>= 1).
        seed: seed of the first phantom (>= 0).
        grid: voxels per side.
        spacing_mm: voxel size (mm).
        overwrite: delete this layout's files in ``out`` and start again.
        progress: ``progress(name, fraction)`` after each phantom.

    Returns:
        ``written`` and ``kept`` phantom file names, and ``redone`` ({name, reason} of the phantoms
        found incomplete and made again).

    Raises:
        ValueError: bad settings, or ``out`` holds phantoms of another grid or spacing.
        FileExistsError: ``out`` is a file, or a non-empty folder that is not a phantom folder.
        PermissionError: ``out`` is read-only.
    """
    from xraycardiac.io import write_volume
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig, make_cardiac_phantom

    if not (isinstance(n, int) and n >= 1 and isinstance(seed, int) and seed >= 0):
        raise ValueError(f"write_cardiac_phantoms: n >= 1 and seed >= 0 expected, got n={n!r}, seed={seed!r}")
    CardiacPhantomConfig(seed=seed, shape_ijk=(grid,) * 3, spacing_mm=spacing_mm)  # bad settings fail now
    root = Path(out)
    settings = {"format": FORMAT, "grid": int(grid), "spacing_mm": float(spacing_mm)}
    check_output(root, overwrite=overwrite, settings_file=SETTINGS_NAME, settings=settings,
                 kind="a `cardiac phantoms` folder")  # fmt: skip
    if overwrite:
        discard(None, root, _OWN, folders=True)
    for sub in ("images", "labels", "records"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if not (root / SETTINGS_NAME).is_file():
        write_json_atomic(root / SETTINGS_NAME, settings)
    written, kept, redone = [], [], []
    for k in range(n):
        name = f"phantom_{seed + k:05d}.nii.gz"
        files = (f"images/{name}", f"labels/{name}")
        record = root / "records" / f"{name.removesuffix('.nii.gz')}.done.json"
        why = verify_record(record, root)
        if why is None:
            kept.append(name)
            continue
        if any((root / f).exists() for f in files):
            redone.append({"name": name, "reason": why})
        with recorded_sample(record, root, files):
            image, labels = make_cardiac_phantom(
                CardiacPhantomConfig(seed=seed + k, shape_ijk=(grid,) * 3, spacing_mm=spacing_mm)
            )
            write_volume(labels, root / files[1])
            write_volume(image, root / files[0])
        written.append(name)
        if progress is not None:
            progress(name, (k + 1) / n)
    return {"written": written, "kept": kept, "redone": redone}
