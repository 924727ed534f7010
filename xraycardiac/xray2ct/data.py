"""XRayToCT data pipeline (CLS-DM): CT cubes in [-1, 1] with their PA + lateral DRRs, cached per case.

What one training case is (the X2CT-GAN / CLS-DM setting):

* **CT**: resampled (trilinear, after a Gaussian anti-aliasing blur when coarser than the source)
  onto a cube of ``grid``³ voxels of ``spacing_mm``, axis-aligned in RAS (I = R, J = A, K = S, as
  the chest phantom), centred on the volume's centre; outside the source and below -1000 HU
  (scanner padding) = air, -1000 HU. For learning, HU are clipped to ``hu_window`` and mapped
  linearly to [-1, 1] (:func:`hu_to_unit`; default [-1000, 1000]: air -1, water 0, bone +1).
* **Views**: DRRs (:func:`xraycardiac.projection.render_drr`, line integrals of
  ``mu = mu_water (1 + HU / 1000)``) of the un-clipped HU cube for the named ``views`` ("pa": C-arm
  0/0, source posterior, beam posterior -> anterior, the patient's left on the image's right;
  "lateral": primary +90, source at the patient's right, detector at the left, a left-lateral
  film with anterior on the image's left), about the cube centre. Values are the line integral
  divided by the fixed constant ``mu_water * drr_water_mm`` (the water-equivalent path length in
  units of ``drr_water_mm``: with 400 mm a chest lies in about [0, 0.8]). No per-image min-max:
  absolute attenuation is kept, so the two views and all cases share one scale.
* **Geometry** ("x2ct" preset): X2CT-GAN's SID 949 mm and SOD 541 mm; by default the detector
  pixel makes the whole cube project inside the ``drr_size``² detector (the near face is widest:
  side = cube · SID / (SOD - cube/2), 588 mm for the 256 mm demo cube).

Cache layout (format ``xraycardiac.x2ct_cache``, version 1), written by :func:`build_cache`::

    OUT/dataset.json          format, version, config, seed, cases [{name, source, group, split, file}],
                              splits {train, val, test: [names]}
    OUT/cases/<name>.npz      ct (1, D, H, W) float16 in [-1, 1] (D = K = S, H = J = A, W = I = R),
                              views (V, S, S) float16, ijk_to_ras (4, 4) float64 of the cube,
                              projection_matrices (V, 3, 4) float64 (RAS mm -> pixel), view_names,
                              name, source
    OUT/records/<name>.done.json  the case's completion record (size + sha256, written last;
                              :func:`xraycardiac.outputs.recorded_sample`)

Sources: CT files (NIfTI ``.nii``/``.nii.gz``, NRRD, MetaImage), DICOM series folders (a folder
holding at least 16 ``*.dcm`` files), folders searched recursively for both, chest phantoms
``"phantom:<k>"`` / ``"phantom:<first>-<last>"`` (inclusive; the cube rendered alone), and whole-body
phantoms ``"body:<k>"`` / ``"body:<a>-<b>"`` (:mod:`xraycardiac.xray2ct.body_source`: the whole body
rendered with a randomised acquisition, the cube about the drawn isocentre; its geometry is stored
per case and :class:`X2CTDataset` items carry it). LIDC-IDRI as downloaded from TCIA
(``LIDC-IDRI/<patient>/<study>/<series>/*.dcm``) is given as the ``LIDC-IDRI`` folder: every CT
series is one case named ``<patient>__<study>__<series>``; its few radiograph (CR/DX) series hold
fewer than 16 files and are skipped. Splits are a fixed hash of the case's *group* (the first
folder below the given root, i.e. the LIDC patient; the name for files and phantoms) against
``SPLIT_FRACTIONS``, so a patient's series never straddle splits and adding cases moves none.

Augmentation is not baked into the cache: :func:`augment_views` (gamma, contrast, brightness,
Gaussian noise, per view) is applied at training time with the trainer's seeded generator, so a
resumed run sees the same augmentations; ``render_views(augment=rng)`` uses the same function.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.carm import X2CT_SID_MM, X2CT_SOD_MM
from xraycardiac.io import require_3d
from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.outputs import atomic_path, parse_shard, recorded_sample, verify_record, write_json_atomic
from xraycardiac.projection import MU_WATER_PER_MM, DRRConfig, render_drr
from xraycardiac.volume import Volume

__all__ = [
    "CACHE_FORMAT", "SPLIT_FRACTIONS", "VIEW_ANGLES", "CTCase", "X2CTDataConfig", "X2CTDataset",
    "augment_views", "build_cache", "discover_cases", "hu_to_unit", "parse_shard", "prepare_ct",
    "read_cache_info", "render_views", "split_of_group", "unit_to_hu", "view_geometries",
]  # fmt: skip

CACHE_FORMAT = "xraycardiac.x2ct_cache"
CACHE_VERSION = 1
INFO_NAME = "dataset.json"
VIEW_ANGLES: dict[str, float] = {"pa": 0.0, "lateral": 90.0}
"""Primary angle (degrees, + = LAO) of each named view; secondary angle 0."""
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
CT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MIN_DICOM_FILES = 16
AIR_HU = -1000.0


def _check_window(window: Sequence[float], name: str = "window") -> tuple[float, float]:
    """(lo, hi) floats with lo < hi, or a ValueError naming ``name``."""
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (low, high) HU, got {window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name}: expected finite (low, high) HU with low < high, got {window!r}")
    return lo, hi


@dataclass(frozen=True)
class X2CTDataConfig:
    """What a cached XRayToCT case is (stored in ``dataset.json``; see the module docstring).

    Attributes:
        grid: voxels per side of the CT cube (demo 64, CLS-DM/X2CT-GAN 128); >= 16.
        spacing_mm: isotropic voxel size in mm (demo 4.0: a 256 mm cube; paper 2.5: 320 mm).
        hu_window: (low, high) HU; CT is clipped to it and mapped linearly to [-1, 1].
        drr_size: DRR side in pixels; None = ``grid``.
        detector_spacing_mm: detector pixel size in mm at the detector; None = the smallest that
            holds the projection of the whole cube (see ``detector_pixel_mm``).
        sid_mm: source to detector distance (X2CT-GAN: 949 mm).
        sod_mm: source to cube centre (isocentre) distance (X2CT-GAN: 541 mm).
        views: names of the rendered views, from ``VIEW_ANGLES`` ("pa", "lateral").
        drr_water_mm: DRR scale: view value = line integral of mu / (mu_water * drr_water_mm).
        drr_step_mm: ray sample spacing in mm; None = half the voxel size.
        augment_gamma: (low, high) of the gamma applied to a view (log-uniform draw).
        augment_contrast: (low, high) of the multiplicative contrast factor (uniform).
        augment_brightness: (low, high) of the additive offset (uniform), in view units.
        augment_noise_std: standard deviation of the additive Gaussian noise, in view units.
    """

    grid: int = 64
    spacing_mm: float = 4.0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    drr_size: int | None = None
    detector_spacing_mm: float | None = None
    sid_mm: float = X2CT_SID_MM
    sod_mm: float = X2CT_SOD_MM
    views: tuple[str, ...] = ("pa", "lateral")
    drr_water_mm: float = 400.0
    drr_step_mm: float | None = None
    augment_gamma: tuple[float, float] = (0.8, 1.25)
    augment_contrast: tuple[float, float] = (0.9, 1.1)
    augment_brightness: tuple[float, float] = (-0.05, 0.05)
    augment_noise_std: float = 0.01

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"X2CTDataConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("hu_window", "views", "augment_gamma", "augment_contrast", "augment_brightness"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not is_int(self.grid, 16):
            fail("grid", "an integer >= 16 (voxels per side)")
        for name in ("spacing_mm", "sid_mm", "sod_mm", "drr_water_mm"):
            if not (is_number(getattr(self, name)) and getattr(self, name) > 0):
                fail(name, "a finite number > 0 (mm)")
        _check_window(self.hu_window, "X2CTDataConfig.hu_window")
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        if self.drr_size is not None and not is_int(self.drr_size, 8):
            fail("drr_size", "None or an integer >= 8 (pixels)")
        for name in ("detector_spacing_mm", "drr_step_mm"):
            v = getattr(self, name)
            if v is not None and not (is_number(v) and v > 0):
                fail(name, "None or a finite number > 0 (mm)")
        if self.sod_mm >= self.sid_mm:
            fail("sod_mm", f"less than sid_mm ({self.sid_mm})")
        half = self.cube_mm / 2.0
        if self.sod_mm <= half or self.sid_mm - self.sod_mm <= half:
            fail("sod_mm", f"a source and a detector outside the {self.cube_mm:g} mm cube (sod_mm > "
                 f"{half:g} and sid_mm - sod_mm > {half:g})")  # fmt: skip
        views = self.views
        if not (isinstance(views, tuple) and views and set(views) <= set(VIEW_ANGLES)) or len(
            set(views)
        ) < len(views):
            fail("views", f"a non-empty tuple of distinct names from {sorted(VIEW_ANGLES)}")
        for name in ("augment_gamma", "augment_contrast", "augment_brightness"):
            r, positive = getattr(self, name), name != "augment_brightness"
            ok = isinstance(r, tuple) and len(r) == 2 and all(is_number(v) for v in r) and r[0] <= r[1]
            if not ok or (positive and r[0] <= 0):
                fail(
                    name, "a finite (low, high) pair with low <= high" + (" and low > 0" if positive else "")
                )
        if not (is_number(self.augment_noise_std) and self.augment_noise_std >= 0):
            fail("augment_noise_std", "a finite number >= 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> X2CTDataConfig:
        """``"demo"`` (64³ x 4 mm, CPU size) or ``"paper"`` (128³ x 2.5 mm, CLS-DM/X2CT-GAN size)."""
        presets = {"demo": dict(grid=64, spacing_mm=4.0), "paper": dict(grid=128, spacing_mm=2.5)}
        if name not in presets:
            raise ValueError(f"X2CTDataConfig.preset: unknown preset {name!r}; allowed: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    @property
    def cube_mm(self) -> float:
        """Side of the CT cube in mm (``grid * spacing_mm``)."""
        return self.grid * self.spacing_mm

    @property
    def image_size(self) -> int:
        """DRR side in pixels (``drr_size`` or ``grid``)."""
        return self.drr_size if self.drr_size is not None else self.grid

    @property
    def detector_pixel_mm(self) -> float:
        """Detector pixel size (mm): ``detector_spacing_mm`` or the size whose detector holds the cube."""
        if self.detector_spacing_mm is not None:
            return float(self.detector_spacing_mm)
        side = self.cube_mm * self.sid_mm / (self.sod_mm - self.cube_mm / 2.0)
        return side / self.image_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "X2CT data config") -> X2CTDataConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ValueError naming ``where``."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown X2CTDataConfig field(s) {unknown}")
        return cls(**data)


# --- intensities -----------------------------------------------------------------------------------


def hu_to_unit(hu: Any, window: Sequence[float] = (-1000.0, 1000.0)) -> Any:
    """HU clipped to ``window`` and mapped linearly to [-1, 1] (numpy array or torch tensor, float32).

    Raises:
        ValueError: ``window`` is not finite (low, high) with low < high.
    """
    lo, hi = _check_window(window)
    if isinstance(hu, torch.Tensor):
        return (hu.float().clamp(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    return (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) * np.float32(2.0 / (hi - lo)) - 1.0


def unit_to_hu(x: Any, window: Sequence[float] = (-1000.0, 1000.0)) -> Any:
    """Inverse of :func:`hu_to_unit` on [-1, 1] (values outside are clipped to it first): HU, float32."""
    lo, hi = _check_window(window)
    if isinstance(x, torch.Tensor):
        return (x.float().clamp(-1.0, 1.0) + 1.0) * ((hi - lo) / 2.0) + lo
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) + 1.0) * np.float32((hi - lo) / 2.0) + lo


# --- CT cube and views -----------------------------------------------------------------------------


def cube_ijk_to_ras(config: X2CTDataConfig, centre_ras: Sequence[float]) -> np.ndarray:
    """(4, 4) affine of the axis-aligned RAS cube of ``config`` centred on ``centre_ras`` (mm)."""
    s, g = config.spacing_mm, config.grid
    m = np.diag([s, s, s, 1.0])
    m[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - s * (g - 1) / 2.0
    return m


def prepare_ct(volume: Volume, config: X2CTDataConfig, centre_ras: Sequence[float] | None = None) -> Volume:
    """Resample a CT onto the training cube of ``config`` (HU; see the module docstring).

    Args:
        volume: CT in HU, (K, J, I), any orientation and spacing in RAS.
        config: ``grid`` and ``spacing_mm`` of the cube.
        centre_ras: cube centre in RAS mm; None = the centre of ``volume``'s voxel grid.

    Returns:
        Volume (grid, grid, grid) float32 HU, identity directions (I = R, J = A, K = S), voxel
        centres at ``centre + spacing * (index - (grid - 1) / 2)``; meta records the source.

    Raises:
        ValueError: ``volume`` is 2D, or ``centre_ras`` is not three finite numbers.
    """
    require_3d(volume, "volume")
    centre = volume.center_ras() if centre_ras is None else np.asarray(centre_ras, dtype=np.float64)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"centre_ras: expected three finite RAS mm values, got {centre_ras!r}")
    from scipy import ndimage

    src = np.maximum(np.asarray(volume.array, dtype=np.float32), AIR_HU)
    # Anti-aliasing before trilinear sampling on a coarser grid: skimage's rule, sigma = (factor - 1) / 2.
    sigma_kji = [max(0.0, (config.spacing_mm / s - 1.0) / 2.0) for s in volume.spacing[::-1]]
    if max(sigma_kji) > 0.1:
        src = ndimage.gaussian_filter(src, sigma_kji, mode="nearest")
    target = cube_ijk_to_ras(config, centre)
    g = config.grid
    idx = torch.arange(g, dtype=torch.float64)
    kk, jj, ii = torch.meshgrid(idx, idx, idx, indexing="ij")
    ijk = torch.stack([ii, jj, kk, torch.ones_like(ii)], dim=-1)  # (g, g, g, 4) target (i, j, k, 1)
    to_src = torch.from_numpy(np.linalg.inv(volume.ijk_to_ras) @ target)
    src_ijk = (ijk @ to_src.T)[..., :3]
    ni, nj, nk = volume.shape_ijk
    norm = src_ijk * torch.tensor([2.0 / (ni - 1), 2.0 / (nj - 1), 2.0 / (nk - 1)], dtype=torch.float64) - 1.0
    shifted = torch.from_numpy(src - AIR_HU)[None, None]  # 0 = air, so zero padding is air
    out = F.grid_sample(
        shifted, norm.float()[None], mode="bilinear", padding_mode="zeros", align_corners=True
    )
    meta = {k: v for k, v in volume.meta.items() if k in ("source", "source_path", "series_instance_uid")}
    meta.update(quantity="HU", x2ct_grid=g, x2ct_spacing_mm=config.spacing_mm)
    return Volume(array=(out[0, 0] + AIR_HU).numpy().astype(np.float32), ijk_to_ras=target, meta=meta)


def view_geometries(config: X2CTDataConfig, centre_ras: Sequence[float]) -> dict[str, CArmGeometry]:
    """The C-arm views of ``config.views`` about ``centre_ras`` (RAS mm), in the order of ``views``.

    "pa": primary 0 (source posterior, detector anterior); "lateral": primary +90 (source at the
    patient's right, detector at the left). SID/SOD, detector size and pixel from ``config``.
    """
    c = tuple(float(v) for v in np.asarray(centre_ras, dtype=np.float64).reshape(3))
    p, n = config.detector_pixel_mm, config.image_size
    return {
        name: CArmGeometry.preset(
            name, sid_mm=config.sid_mm, sod_mm=config.sod_mm, detector_rows=n, detector_cols=n,
            pixel_spacing_mm=(p, p), isocenter_ras_mm=c,
        )
        for name in config.views
    }  # fmt: skip


def augment_views(views: torch.Tensor, config: X2CTDataConfig, generator: torch.Generator) -> torch.Tensor:
    """Random radiograph style: ``contrast * max(x, 0) ** gamma + brightness + noise`` per view.

    Args:
        views: (..., H, W) float tensor of DRRs in view units (e.g. (B, V, H, W)); every (H, W)
            image draws its own gamma, contrast and brightness.
        config: the ``augment_*`` ranges.
        generator: torch generator on ``views.device`` (the trainer's, for an exact resume).

    Returns:
        Tensor of the same shape and dtype.
    """
    lead = views.shape[:-2]
    kw = dict(generator=generator, device=views.device, dtype=torch.float32)

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(lead, **kw))[..., None, None]

    g_lo, g_hi = config.augment_gamma
    gamma = torch.exp(draw(math.log(g_lo), math.log(g_hi)))
    out = draw(*config.augment_contrast) * views.float().clamp_min(0.0).pow(gamma)
    out = out + draw(*config.augment_brightness)
    if config.augment_noise_std > 0:
        out = out + config.augment_noise_std * torch.randn(views.shape, **kw)
    return out.to(views.dtype)


def render_views(
    ct: Volume, config: X2CTDataConfig, augment: np.random.Generator | None = None, device: str = "cpu"
) -> np.ndarray:
    """DRRs of ``config.views`` about the CT's centre, on the fixed scale of ``config.drr_water_mm``.

    Args:
        ct: CT in HU (any grid; usually the cube of :func:`prepare_ct`), not clipped to the window.
        config: views, geometry and scale.
        augment: when given, :func:`augment_views` with a torch generator seeded from it.
        device: torch device for the ray casting.

    Returns:
        (V, S, S) float32, S = ``config.image_size``: line integral of mu / (mu_water * drr_water_mm).

    Raises:
        ValueError: ``ct`` is not a 3D volume.
    """
    require_3d(ct, "ct")
    drr = DRRConfig(step_mm=config.drr_step_mm)
    scale = 1.0 / (MU_WATER_PER_MM * config.drr_water_mm)
    images = [
        render_drr(ct, geom, drr, device=device).array[0] * scale
        for geom in view_geometries(config, ct.center_ras()).values()
    ]
    views = np.stack(images).astype(np.float32)
    if augment is not None:
        gen = torch.Generator().manual_seed(int(augment.integers(0, 2**63 - 1)))
        views = augment_views(torch.from_numpy(views), config, gen).numpy()
    return views


# --- sources and splits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CTCase:
    """One CT source of the cache.

    Attributes:
        name: file-safe unique case name (``cases/<name>.npz``).
        source: ``"phantom:<k>"`` or the path of a CT file / DICOM series folder.
        group: split unit (LIDC patient folder; the name for files and phantoms).
        kind: "phantom", "file" or "dicom".
    """

    name: str
    source: str
    group: str
    kind: str


_PHANTOM_RE = re.compile(r"^(phantom|body):(\d+)(?:-(\d+))?$")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _ct_stem(path: Path) -> str | None:
    ext = next((e for e in CT_EXTENSIONS if path.name.lower().endswith(e)), None)
    return None if ext is None else path.name[: -len(ext)]


def discover_cases(sources: Sequence[str | os.PathLike[str]]) -> list[CTCase]:
    """The cases of ``sources`` (see the module docstring), sorted by name.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a phantom spec, file type or folder that yields no case, or two cases of one name.
    """
    cases: list[CTCase] = []
    for src in sources:
        text = str(src)
        m = _PHANTOM_RE.match(text)
        if text.startswith(("phantom:", "body:")):
            kind = text.split(":", 1)[0]
            if m is None or (m.group(3) is not None and int(m.group(3)) < int(m.group(2))):
                raise ValueError(f"sources: bad spec {text!r}; expected {kind}:<k> or {kind}:<a>-<b>")
            for k in range(int(m.group(2)), int(m.group(3) or m.group(2)) + 1):
                name = f"{kind}_{k:05d}"
                cases.append(CTCase(name, f"{kind}:{k}", name, kind))
            continue
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"sources: {path} does not exist")
        if path.is_file():
            stem = _ct_stem(path)
            if stem is None:
                raise ValueError(f"sources: {path} is not a CT file ({', '.join(CT_EXTENSIONS)})")
            cases.append(CTCase(_safe(stem), str(path), _safe(stem), "file"))
            continue
        if sum(1 for _ in path.glob("*.dcm")) >= MIN_DICOM_FILES:
            cases.append(CTCase(_safe(path.name), str(path), _safe(path.name), "dicom"))
            continue
        found = []
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            rel = Path(folder).relative_to(path)
            if sum(f.lower().endswith(".dcm") for f in files) >= MIN_DICOM_FILES:
                found.append(CTCase(_safe("__".join(rel.parts)), folder, _safe(rel.parts[0]), "dicom"))
            for f in sorted(files):
                stem = _ct_stem(Path(f))
                if stem is not None:
                    parts = (*rel.parts, stem)
                    found.append(
                        CTCase(_safe("__".join(parts)), str(Path(folder) / f), _safe(parts[0]), "file")
                    )
        if not found:
            raise ValueError(
                f"sources: {path} holds no CT file ({', '.join(CT_EXTENSIONS)}) and no DICOM series folder "
                f"(>= {MIN_DICOM_FILES} *.dcm files)"
            )
        cases.extend(found)
    cases.sort(key=lambda c: c.name)
    for a, b in zip(cases, cases[1:], strict=False):
        if a.name == b.name:
            raise ValueError(f"sources: {a.source} and {b.source} both make case {a.name!r}; rename one")
    return cases


def split_of_group(group: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """The split ("train", "val", "test") of a group: its sha256 as a number in [0, 1) vs ``fractions``."""
    u = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") / 2.0**64
    edges = np.cumsum(np.asarray(fractions, dtype=np.float64) / float(np.sum(fractions)))
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


def _phantom_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def load_case_ct(case: CTCase, config: X2CTDataConfig, seed: int = 0) -> Volume:
    """The case's CT in HU: a chest phantom on the cube grid (seed from (``seed``, k)) or the file read."""
    if case.kind == "phantom":
        from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom

        k = int(case.source.split(":", 1)[1])
        g, seed_k = config.grid, _phantom_seed(seed, k)
        pcfg = ChestPhantomConfig(shape_ijk=(g, g, g), spacing_mm=config.spacing_mm, seed=seed_k)
        ct, _ = make_chest_phantom(pcfg)
        ct.meta["source"] = f"chest phantom seed {pcfg.seed}"
        return ct
    from xraycardiac.io import read_volume

    return read_volume(case.source)


# --- cache -----------------------------------------------------------------------------------------


def read_cache_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``dataset.json`` of a cache, checked for format and version.

    Raises:
        ValueError: missing, unreadable or foreign ``dataset.json`` (says what it expected).
    """
    path = Path(root) / INFO_NAME
    if not path.is_file():
        raise ValueError(f"{root}: no {INFO_NAME}; build an XRayToCT cache there first (build_cache)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{path}: not an XRayToCT cache (format {CACHE_FORMAT!r} expected, got {got!r})")
    if info.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: cache version {info.get('version')!r}; this library reads {CACHE_VERSION}")
    return info


def _info_for(cases: list[CTCase], config: X2CTDataConfig, seed: int, old: dict[str, Any] | None) -> dict:
    """``dataset.json`` content: the union of ``old``'s cases and ``cases``, with their splits."""
    by_name = {c["name"]: c for c in (old or {}).get("cases", [])}
    for c in cases:
        entry = {"name": c.name, "source": c.source, "group": c.group, "kind": c.kind,
                 "split": split_of_group(c.group), "file": f"cases/{c.name}.npz"}  # fmt: skip
        if c.name in by_name and by_name[c.name]["source"] != c.source:
            raise ValueError(
                f"sources: case {c.name!r} is {c.source} here but {by_name[c.name]['source']} in the cache; "
                "use another output folder"
            )
        by_name[c.name] = entry
    all_cases = [by_name[n] for n in sorted(by_name)]
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "config": config.to_dict(),
        "resolved": dict(image_size=config.image_size, detector_pixel_mm=config.detector_pixel_mm),
        "seed": seed,
        "split_fractions": list(SPLIT_FRACTIONS),
        "cases": all_cases,
        "splits": {s: [c["name"] for c in all_cases if c["split"] == s] for s in SPLITS},
    }


def build_cache(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: X2CTDataConfig | None = None,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Build (or resume) the cache of ``sources`` in ``out_dir``; shard ``(i, n)`` does cases ``i::n``.

    Every case file is a deterministic function of (config, seed, source), written to a temporary
    name and renamed, then recorded (:func:`xraycardiac.outputs.recorded_sample`, the one resumable
    sample step of every dataset writer), so an interrupted run leaves no partial case and rerunning
    skips the cases whose record and file agree; shards of the same sources write disjoint cases and the same ``dataset.json``.

    Args:
        sources: CT files, DICOM series folders, folders to search, ``"phantom:<k>"`` or
            ``"phantom:<a>-<b>"`` (see the module docstring).
        out_dir: cache folder (created).
        config: the :class:`X2CTDataConfig` (default: demo size).
        seed: seeds the chest phantoms (phantom k gets ``SeedSequence([seed, k])``).
        shard: (i, n) with 0 <= i < n.
        progress: ``progress(stage, fraction)`` after each case.

    Returns:
        ``written`` and ``skipped`` case names of this shard, ``cases`` (count), ``shard``, ``seconds``.

    Raises:
        ValueError: bad ``shard``/``seed``/sources, or an existing cache made with another config or seed.
        FileNotFoundError: a source that does not exist.
    """
    config = config or X2CTDataConfig()
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    ok = isinstance(shard, tuple | list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard: expected (i, n) with 0 <= i < n, got {shard!r}")
    i, n = shard
    t0 = time.monotonic()
    cases = discover_cases(sources)
    if not cases:
        raise ValueError("sources: no case given")
    root = Path(out_dir)
    for sub in ("cases", "records"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    old = None
    if (root / INFO_NAME).is_file():
        old = read_cache_info(root)
        if old.get("config") != config.to_dict() or old.get("seed") != seed:
            raise ValueError(
                f"{root / INFO_NAME}: the cache was built with another config or seed; use a new out_dir "
                f"(cache: seed {old.get('seed')}, config {old.get('config')})"
            )
    write_json_atomic(root / INFO_NAME, _info_for(cases, config, seed, old), indent=2, default=None)
    mine = cases[i::n]
    written, skipped = [], []
    for done, case in enumerate(mine, start=1):
        rel = f"cases/{case.name}.npz"
        record = root / "records" / f"{case.name}.done.json"
        if verify_record(record, root) is None:
            skipped.append(case.name)
        else:  # not there, or not as its record says (or made before records): made again, same bytes
            with recorded_sample(record, root, [rel]):
                _write_case(root / rel, case, config, seed)
            written.append(case.name)
        if progress is not None:
            progress(f"case {case.name}", done / len(mine))
    return {"written": written, "skipped": skipped, "cases": len(cases), "shard": f"{i}/{n}",
            "seconds": round(time.monotonic() - t0, 2)}  # fmt: skip


def _write_case(path: Path, case: CTCase, config: X2CTDataConfig, seed: int) -> None:
    """Prepare, render and write one case atomically."""
    extra = {}
    if case.kind == "body":
        from xraycardiac.phantoms.chest_body import BODY_LABELS, make_body_phantom
        from xraycardiac.xray2ct.body_source import render_body_case

        k = int(case.source.split(":", 1)[1])
        body, labels = make_body_phantom(_phantom_seed(seed, k), config.spacing_mm)
        lungs = np.argwhere(np.asarray(labels.array) == BODY_LABELS["lungs"])[:, ::-1].mean(axis=0)
        res = render_body_case(body, body.ijk_to_ras_points(lungs[None])[0], config.views, config.image_size,
                               np.random.SeedSequence([seed, k, 1]), config.drr_step_mm)  # fmt: skip
        ct, geoms = prepare_ct(body, config, res["centre"]), res["geometries"]
        views = res["lines"] / (MU_WATER_PER_MM * config.drr_water_mm)
        extra = {"acquisition": np.asarray(json.dumps(res["acquisition"]))}
    else:
        ct = prepare_ct(load_case_ct(case, config, seed), config)
        views, geoms = render_views(ct, config), view_geometries(config, ct.center_ras())
    arrays = {
        **extra,
        "ct": hu_to_unit(ct.array, config.hu_window)[None].astype(np.float16),
        "views": views.astype(np.float16),
        "ijk_to_ras": ct.ijk_to_ras,
        "projection_matrices": np.stack([g.projection_matrix() for g in geoms.values()]),
        "view_names": np.asarray(list(geoms)),
        "name": np.asarray(case.name),
        "source": np.asarray(case.source),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


class X2CTDataset(torch.utils.data.Dataset):
    """Cached XRayToCT cases of one split, as training items.

    Each item: ``{"ct": (1, D, H, W) float32 in [-1, 1], "views": (V, S, S) float32}`` (view units),
    ``"projection_matrices"`` (V, 3, 4) and ``"ijk_to_ras"`` (4, 4) float64 (the case's own geometry).

    Args:
        root: a cache folder written by :func:`build_cache`.
        split: "train", "val", "test" or "all".

    Raises:
        ValueError: missing or foreign ``dataset.json``, unknown split, an empty split, or cases of
            the split not built yet (finish every shard of :func:`build_cache` first).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        info = read_cache_info(self.root)
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split: expected one of {[*SPLITS, 'all']}, got {split!r}")
        self.info = info
        self.config = X2CTDataConfig.from_dict(info["config"], where=str(self.root / INFO_NAME))
        self.cases = [c for c in info["cases"] if split == "all" or c["split"] == split]
        if not self.cases:
            raise ValueError(f"{self.root}: split {split!r} has no case ({len(info['cases'])} cases in all)")
        missing = [c["name"] for c in self.cases if not (self.root / c["file"]).is_file()]
        if missing:
            raise ValueError(
                f"{self.root}: {len(missing)} of {len(self.cases)} {split} cases are not built yet "
                f"(e.g. {missing[0]}); finish build_cache (every shard) first"
            )

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.root / self.cases[index]["file"]
        with np.load(path) as z:
            ct, views = z["ct"].astype(np.float32), z["views"].astype(np.float32)
            p, a = z["projection_matrices"].astype(np.float64), z["ijk_to_ras"].astype(np.float64)
        return {"ct": torch.from_numpy(ct), "views": torch.from_numpy(views),
                "projection_matrices": torch.from_numpy(p), "ijk_to_ras": torch.from_numpy(a)}  # fmt: skip
