"""Where a CardiacSynth dataset is exported: a new or empty folder, or nnUNet_raw/Dataset<ID>_<NAME>.

The copy is atomic (to a hidden sibling, then renamed), so an export never leaves half a dataset.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from CardiacSynthLib import DEFAULT_DATASET_NAME
from xraycardiac.cardiac.synth import nnunet_dataset_path
from xraycardiac.jsonutil import is_int

__all__ = ["export_dataset", "export_target"]


def export_target(
    export_dir: Any, dataset_id: Any = None, dataset_name: Any = DEFAULT_DATASET_NAME
) -> Path | None:
    """``export_dir`` as an absolute path, or None (no export); refuses a file or a non-empty folder.

    With ``dataset_id`` (nnU-Net export), ``export_dir`` is the nnUNet_raw folder and the target its
    ``Dataset<ID>_<NAME>`` folder (:func:`xraycardiac.cardiac.synth.nnunet_dataset_path`).
    """
    if export_dir is None or str(export_dir).strip() in ("", "."):
        if dataset_id is not None:
            raise ValueError("export_dir: an nnU-Net export (nnunet_dataset_id) needs the nnUNet_raw folder")
        return None
    target = Path(str(export_dir).strip()).expanduser().resolve()
    if dataset_id is not None:
        if not is_int(dataset_id, numpy=True):
            raise ValueError(f"dataset_id: expected an nnU-Net dataset ID from 1 to 999, got {dataset_id!r}")
        target = nnunet_dataset_path(target, int(dataset_id), dataset_name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "a folder that is not empty" if target.is_dir() else "a file"
        raise ValueError(
            f"export_dir: {target} is {what}; choose a new or empty folder (an export never mixes datasets)"
        )
    return target


def export_dataset(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a dataset folder to ``target`` atomically: to a hidden sibling first, then renamed.

    Args:
        source: the job's output folder.
        target: a folder that does not exist yet or is empty (its parents are created).

    Returns:
        The absolute ``target``.

    Raises:
        ValueError: ``target`` is a file or a folder that is not empty. OSError: the copy failed
            (nothing is left at ``target``).
    """
    checked = export_target(target)
    if checked is None:
        raise ValueError(f"export_dir: expected a folder path, got {target!r}")
    checked.parent.mkdir(parents=True, exist_ok=True)
    partial = checked.parent / f".{checked.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(source, partial)
        if checked.exists():  # an empty folder picked in the folder dialog
            checked.rmdir()
        os.rename(partial, checked)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return checked
