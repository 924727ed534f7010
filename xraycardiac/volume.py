"""The one image type the library passes around: a voxel array with its place in patient RAS.

Arrays are indexed (K, J, I) exactly as ``slicer.util.arrayFromVolume`` returns them; a 2D image
(a radiograph, a DRR) is a volume with K = 1. ``ijk_to_ras`` is the 4x4 matrix that maps a
homogeneous voxel index (i, j, k, 1) -- note the I, J, K order, i.e. column, row, slice -- to
patient RAS millimetres, the same matrix as ``vtkMRMLVolumeNode.GetIJKToRASMatrix``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A scalar volume in patient RAS.

    Attributes:
        array: voxel values, shape (K, J, I); HU for CT, path length (mm) or intensity for DRRs.
        ijk_to_ras: (4, 4) float64 matrix mapping (i, j, k, 1) to RAS mm.
        meta: free-form provenance (strings, numbers, lists) carried to files and MRML attributes.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array: expected 3 dimensions (K, J, I), got shape {self.array.shape}")
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError(f"Volume.ijk_to_ras: expected a 4x4 matrix, got shape {self.ijk_to_ras.shape}")
        if not np.all(np.isfinite(self.ijk_to_ras)):
            raise ValueError("Volume.ijk_to_ras: contains NaN or infinite values (bad spacing/origin?)")
        if abs(np.linalg.det(self.ijk_to_ras[:3, :3])) < 1e-12:
            raise ValueError("Volume.ijk_to_ras: singular direction/spacing (a spacing of 0?)")

    @classmethod
    def from_geometry(
        cls,
        array: np.ndarray,
        spacing_ijk_mm: tuple[float, float, float],
        origin_ras_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
        directions_ras: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Volume:
        """Build from spacing (along I, J, K), origin (RAS of voxel 0,0,0) and a 3x3 direction matrix.

        Args:
            array: (K, J, I) voxel values.
            spacing_ijk_mm: voxel size along I, J, K in mm; each must be finite and > 0.
            origin_ras_mm: RAS position of the centre of voxel (0, 0, 0).
            directions_ras: (3, 3) matrix whose columns are the unit I, J, K axes in RAS; identity if None.
        """
        spacing = np.asarray(spacing_ijk_mm, dtype=np.float64)
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"spacing_ijk_mm: expected three finite values > 0 mm, got {spacing_ijk_mm}")
        d = np.eye(3) if directions_ras is None else np.asarray(directions_ras, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = d * spacing[None, :]
        m[:3, 3] = np.asarray(origin_ras_mm, dtype=np.float64)
        return cls(array=array, ijk_to_ras=m, meta=dict(meta or {}))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along I, J, K in mm, shape (3,)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS mm of the centre of voxel (0, 0, 0), shape (3,)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def directions(self) -> np.ndarray:
        """(3, 3) unit I, J, K axes in RAS as columns."""
        return self.ijk_to_ras[:3, :3] / self.spacing[None, :]

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along I, J, K."""
        k, j, i = self.array.shape
        return i, j, k

    def center_ras(self) -> np.ndarray:
        """RAS mm of the geometric centre of the voxel grid, shape (3,)."""
        ijk = (np.asarray(self.shape_ijk, dtype=np.float64) - 1.0) / 2.0
        return self.ijk_to_ras[:3, :3] @ ijk + self.ijk_to_ras[:3, 3]

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices (i, j, k) to (N, 3) RAS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS mm to (N, 3) continuous voxel indices (i, j, k)."""
        inv = np.linalg.inv(self.ijk_to_ras)
        ras = np.asarray(ras, dtype=np.float64)
        return ras @ inv[:3, :3].T + inv[:3, 3]
