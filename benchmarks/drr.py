"""DRR speed and agreement: our renderer vs diffdrr 0.6.1 and nanodrr 0.1.7 on a real chest CT.

Run (needs the bench venv, see benchmarks/README.md)::

    /work/benchvenv/bin/python benchmarks/drr.py [--downsample-mm 1.5] [--n-samples 500] [--repeats 5]

What is compared, and why it is fair:

* Volume: one float32 attenuation array ``hu_to_mu(ct)`` (1/mm, (K, J, I)) with the CT's ``ijk_to_ras``
  is written once and handed unchanged to all three (nanodrr with ``convert_to_mu=False``; diffdrr as
  the torchio ``density`` image, a zero-copy (I, J, K) view of the same memory).
* Rays: the source and the 256 x 256 detector pixel positions in RAS come from our ``CArmGeometry``
  and are given to every renderer as points (ray-level APIs, no pose conversion): ours
  ``ray_integrals``, nanodrr ``nanodrr.drr.render(..., src=, tgt=, rt_inv=identity, backend="torch")``,
  diffdrr ``DRR.render(density, source, target, n_points=, alphamin=, alphamax=)``. Each peer's own
  pose API (nanodrr ``DRR.from_carm_intrinsics`` + camera-to-world ``rt_inv``; diffdrr ``DRR`` +
  ``RigidTransform`` pose) is also mapped from our geometry, and the rays it builds are checked against
  ours (printed under the table), so the mapping of conventions is verified, not assumed.
* Rows: ``ours`` is ``ray_integrals`` on that same mu array (the peers' workload). ``ours-render_drr``
  is the public ``render_drr`` from HU: it also converts HU -> mu on every call and crops the volume
  to its mu > 0 support before marching (so its samples per ray can be fewer; the table shows them).
* Samples per ray: N on each ray's own chord through the volume. Ours: ``step_mm = max chord /
  (N - 0.5)``, so ``ceil(max chord / step) = N`` midpoint samples per ray. nanodrr: ``n_samples = N``
  midpoints on its per-ray clip (box half a voxel wider than ours). diffdrr: ``n_points = N`` with
  per-ray ``alphamin/alphamax`` = the chord (its Trilinear default spreads N points over the union
  of all chords, fewer inside each ray; that default is also rendered once and its NCC printed).
* Time: median wall time of one image over ``--repeats`` calls after one warm-up, with
  ``torch.set_num_threads(--threads)``; only the render call is timed. Per view, one subprocess builds
  every renderer's scene and calls them in turn, rotating the order each round, so a change in the
  machine's load (it may be shared) hits all renderers alike.
* Memory: peak RSS growth during rendering, from the kernel's RSS high-water mark (VmHWM, what
  ``resource.getrusage`` reports as ``ru_maxrss`` in a process that did not fork-exec from a bigger
  one). One fresh subprocess per renderer and view builds the scene, resets the mark
  (``/proc/self/clear_refs``), reads it, renders twice and reads it again; the difference is the
  renderer's working memory (the shared volume is excluded). Allocations
  under glibc's mmap threshold (<= 32 MB) that a renderer frees and reuses count once; torch's
  profiler would count allocations, not resident memory.
* The machine may be shared: the 1-minute load average before and after the runs is printed, and
  the minimum time is shown next to the median.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.volume import Volume

RENDERERS = ("ours", "ours-render_drr", "nanodrr", "diffdrr")
PEERS = ("nanodrr", "diffdrr")
VIEWS = {"pa": (0.0, 0.0), "lao30cra20": (30.0, 20.0)}


# ---- shared set-up (parent process) ----------------------------------------------------------------


def load_ct(ct_path: str | None, downsample_mm: float | None) -> tuple[Volume, str]:
    """The CT in HU and a description: ``--ct`` if given, else the real chest CT of the project's fixtures."""
    if ct_path is not None:
        from xraycardiac.io import read_volume

        if downsample_mm is not None:
            raise ValueError(
                "--downsample-mm applies to the built-in chest CT only; resample your --ct file first"
            )
        return read_volume(ct_path), ct_path
    from xraycardiac.data.fixtures import load_real_ct

    ct, _, _ = load_real_ct(downsample_mm=downsample_mm)
    how = "native grid" if downsample_mm is None else f"resampled to {downsample_mm} mm isotropic"
    return ct, f"{ct.meta.get('source_path', '?')} via xraycardiac.data.fixtures.load_real_ct ({how})"


def view_geometry(name: str, ct: Volume, size: int, pixel_mm: float) -> CArmGeometry:
    """A chest view at the CT centre with X2CT-GAN's distances (SID 949 mm, SOD 541 mm)."""
    from xraycardiac.geometry import X2CT_SID_MM, X2CT_SOD_MM, CArmGeometry

    primary, secondary = VIEWS[name]
    return CArmGeometry(
        primary_angle_deg=primary,
        secondary_angle_deg=secondary,
        sid_mm=X2CT_SID_MM,
        sod_mm=X2CT_SOD_MM,
        detector_rows=size,
        detector_cols=size,
        pixel_spacing_mm=(pixel_mm, pixel_mm),
        isocenter_ras_mm=tuple(float(x) for x in ct.center_ras()),
        name=name,
    )


def rays(
    geometry: CArmGeometry, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source (3,), pixel targets (R, 3) in RAS mm (row-major), and each ray's chord t_near, t_far (R,).

    The chord is the ray's part inside the voxel box [-0.5, n - 0.5] per index axis, t in [0, 1] from
    the source to the pixel, computed exactly as ``xraycardiac.projection.ray_integrals`` does.
    """
    rows, cols = geometry.detector_rows, geometry.detector_cols
    vv, uu = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    targets = geometry.pixel_to_detector_ras(np.stack([uu.ravel(), vv.ravel()], axis=1))
    src = geometry.source_position
    inv = np.linalg.inv(ijk_to_ras)
    s = inv[:3, :3] @ src + inv[:3, 3]
    d = targets @ inv[:3, :3].T + inv[:3, 3] - s
    nk, nj, ni = shape_kji
    lo, hi = np.full(3, -0.5), np.array([ni, nj, nk], dtype=np.float64) - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - s) / d, (hi - s) / d
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    parallel, inside = d == 0, (s >= lo) & (s <= hi)
    tmin = np.where(parallel, np.where(inside, -np.inf, np.inf), tmin)
    tmax = np.where(parallel, np.where(inside, np.inf, -np.inf), tmax)
    t_near = np.clip(tmin.max(axis=1), 0.0, 1.0)
    t_far = np.maximum(np.clip(tmax.min(axis=1), 0.0, 1.0), t_near)
    return src, targets, t_near, t_far


def support_box(mu: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the grid ``render_drr`` really marches: its crop to mu > 0 (+1 voxel).

    At a given step the cropped rays can carry fewer samples than ``ray_integrals`` on the full
    grid; the table reports the count it really uses.
    """
    from xraycardiac.projection.drr import support_box

    box, affine = support_box(mu > 0, ijk_to_ras)
    return mu[box].shape, affine


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two images (float64)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


# ---- one renderer in its own process -----------------------------------------------------------------


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """The process's RSS high-water mark (VmHWM) in MB.

    ``resource.getrusage(...).ru_maxrss`` is not used directly: in a child started by fork + exec it
    also holds the parent's RSS at the fork, which here (the parent holds the CT) exceeds the child's.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _build_ours(work: Path, view: str, n: int, threads: int) -> tuple[Callable[[], np.ndarray], dict]:
    import torch

    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.projection import ray_integrals

    mu = torch.from_numpy(np.load(work / "mu.npy"))
    affine = np.load(work / "ijk_to_ras.npy")
    geometry = CArmGeometry.from_dict(json.loads((work / f"geometry_{view}.json").read_text()))
    step = float(json.loads((work / f"rays_{view}.json").read_text())["step_mm"])
    channels = mu[None]

    def call() -> np.ndarray:
        return ray_integrals(channels, affine, geometry, step)[0].numpy()

    return call, {"api": "xraycardiac.projection.ray_integrals(mu[None], ijk_to_ras, geometry, step_mm)"}


def _build_ours_render_drr(
    work: Path, view: str, n: int, threads: int
) -> tuple[Callable[[], np.ndarray], dict]:
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.projection import DRRConfig, render_drr
    from xraycardiac.volume import Volume

    ct = Volume(array=np.load(work / "hu.npy"), ijk_to_ras=np.load(work / "ijk_to_ras.npy"))
    geometry = CArmGeometry.from_dict(json.loads((work / f"geometry_{view}.json").read_text()))
    step = float(json.loads((work / f"rays_{view}.json").read_text())["step_mm"])
    config = DRRConfig(step_mm=step)

    def call() -> np.ndarray:
        return render_drr(ct, geometry, config).array[0]

    return call, {
        "api": "xraycardiac.projection.render_drr(ct_hu, geometry, DRRConfig(step_mm)) incl. HU->mu"
    }


def _build_nanodrr(work: Path, view: str, n: int, threads: int) -> tuple[Callable[[], np.ndarray], dict]:
    import torch
    from nanodrr.data import Subject
    from nanodrr.drr import DRR, render
    from nanodrr.geometry import transform_point

    from xraycardiac.geometry import CArmGeometry

    mu = torch.from_numpy(np.load(work / "mu.npy"))  # (K, J, I) = nanodrr's (D, H, W)
    affine = np.load(work / "ijk_to_ras.npy")
    geometry = CArmGeometry.from_dict(json.loads((work / f"geometry_{view}.json").read_text()))
    ray = np.load(work / f"rays_{view}.npz")
    rows, cols = geometry.detector_rows, geometry.detector_cols

    v2w = torch.from_numpy(affine)
    subject = Subject(
        mu[None, None],
        torch.zeros(1, 1, 1, 1, 1),  # no labels; broadcast-free: only read when n_classes > 1
        v2w.float(),
        v2w.inverse().float(),
        Subject._make_voxel_to_grid(mu[None, None].shape),
        torch.from_numpy(geometry.isocenter).float(),
        max_label=0,
        convert_to_mu=False,
    )
    src = torch.from_numpy(ray["src"]).float().reshape(1, 1, 3)
    tgt = torch.from_numpy(ray["targets"]).float()[None]
    eye = torch.eye(4)[None]
    sr, sc = geometry.pixel_spacing_mm
    # Pose API, used only to check the mapping of conventions: nanodrr's camera has x along columns,
    # y along rows, z along the beam, source at the origin, pixel centres at (u + 0.5, v + 0.5) with the
    # principal point at (W/2, H/2): exactly our camera frame, so rt_inv = inverse of our extrinsic.
    drr = DRR.from_carm_intrinsics(float(geometry.sid_mm), sc, sr, 0.0, 0.0, rows, cols, dtype=torch.float32)
    ext = np.eye(4)
    ext[:3] = geometry.extrinsic_matrix()
    rt_inv = torch.from_numpy(np.linalg.inv(ext)).float()[None]
    with torch.no_grad():
        pose_tgt = transform_point(rt_inv, drr.tgt)[0].double().numpy()
        pose_src = transform_point(rt_inv, drr.src)[0, 0].double().numpy()
    check = {
        "pose_api": "DRR.from_carm_intrinsics(sid, col_mm, row_mm, 0, 0, H, W) + rt_inv = inv(our extrinsic)",
        "pose_ray_err_mm": float(
            max(np.abs(pose_tgt - ray["targets"]).max(), np.abs(pose_src - ray["src"]).max())
        ),
    }

    def call() -> np.ndarray:
        img = render(subject, drr.k_inv, eye, drr.sdd, rows, cols, n, src=src, tgt=tgt, backend="torch")
        return img[0, 0].numpy()

    def extra() -> dict:
        return {"pose_api_image": drr(subject, rt_inv, n_samples=n, backend="torch")[0, 0].numpy()}

    check["extra"] = extra
    check["api"] = (
        'nanodrr.drr.render(subject, ..., rt_inv=I, src=our source, tgt=our pixels, backend="torch")'
    )
    return call, check


def _build_diffdrr(work: Path, view: str, n: int, threads: int) -> tuple[Callable[[], np.ndarray], dict]:
    import torch
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from torchio import ScalarImage
    from torchio import Subject as TioSubject

    from xraycardiac.geometry import CArmGeometry

    mu = torch.from_numpy(np.load(work / "mu.npy"))  # (K, J, I)
    affine = np.load(work / "ijk_to_ras.npy")
    geometry = CArmGeometry.from_dict(json.loads((work / f"geometry_{view}.json").read_text()))
    ray = np.load(work / f"rays_{view}.npz")
    rows, cols = geometry.detector_rows, geometry.detector_cols
    sr, sc = geometry.pixel_spacing_mm

    density = ScalarImage(tensor=mu.permute(2, 1, 0)[None], affine=affine)  # torchio (1, I, J, K) view
    subject = TioSubject(volume=density, density=density, mask=None, reorient=torch.eye(4))
    # reverse_x_axis=False: diffdrr's camera then has x = +column, y = -row, z = beam (right-handed),
    # so the camera-to-world pose is [u, -v, beam | source] with our detector axes u, v.
    drr = DRR(subject, float(geometry.sid_mm), rows, sc, width=cols, dely=sr, reverse_x_axis=False,
              renderer="trilinear")  # fmt: skip
    u, v = geometry.detector_axes
    pose = np.eye(4)
    pose[:3, :3] = np.stack([u, -v, geometry.beam_direction], axis=1)
    pose[:3, 3] = geometry.source_position
    pose_t = RigidTransform(torch.from_numpy(pose).float())
    with torch.no_grad():
        p_src, p_tgt = drr.detector(pose_t, None)
    err = max(
        np.abs(p_tgt[0].double().numpy() - ray["targets"]).max(),
        np.abs(p_src[0, 0].double().numpy() - ray["src"]).max(),
    )
    check = {
        "pose_api": "DRR(reverse_x_axis=False, reorient=I) + RigidTransform([u, -v, beam | source])",
        "pose_ray_err_mm": float(err),
    }
    src = torch.from_numpy(ray["src"]).float().reshape(1, 1, 3)
    tgt = torch.from_numpy(ray["targets"]).float()[None]
    w2v = torch.from_numpy(np.linalg.inv(affine)).float()
    nk, nj, ni = mu.shape
    lo = torch.full((3,), -0.5)
    hi = torch.tensor([ni, nj, nk], dtype=torch.float32) - 0.5

    def chord(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = source @ w2v[:3, :3].T + w2v[:3, 3]
        d = target @ w2v[:3, :3].T + w2v[:3, 3] - s
        d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t0, t1 = (lo - s) / d, (hi - s) / d
        tn = torch.minimum(t0, t1).amax(-1, keepdim=True).clamp(0, 1)
        tf = torch.maximum(t0, t1).amin(-1, keepdim=True).clamp(0, 1).maximum(tn)
        return tn, tf  # (1, R, 1)

    def call() -> np.ndarray:
        tn, tf = chord(src, tgt)
        img = drr.render(drr.density, src, tgt, n_points=n, alphamin=tn, alphamax=tf)
        return img.reshape(rows, cols).numpy()

    def extra() -> dict:
        default = drr(pose_t, n_points=n)  # diffdrr's own clip: N points over the union of all chords
        return {"default_clip_image": default.reshape(rows, cols).numpy()}

    check["extra"] = extra
    check["api"] = "diffdrr DRR.render(density, our source, our pixels, n_points=N, alphamin/alphamax=chord)"
    return call, check


BUILDERS = {
    "ours": _build_ours,
    "ours-render_drr": _build_ours_render_drr,
    "nanodrr": _build_nanodrr,
    "diffdrr": _build_diffdrr,
}


def time_worker(renderers: list[str], view: str, work: Path, n: int, repeats: int, threads: int) -> None:
    """Build every renderer's scene in this process and time them interleaved, one call each per round.

    Round 0 is the warm-up. The order rotates every round, so a change of the machine's load during
    the run is shared by all renderers instead of falling on whichever ran last. Writes each image,
    the times and the geometry checks into ``work``.
    """
    import gc

    import torch

    torch.set_num_threads(threads)
    with torch.no_grad():
        built, failed = {}, {}
        for r in renderers:
            try:
                built[r] = BUILDERS[r](work, view, n, threads)
            except Exception as exc:  # e.g. a peer not installed: report it, time the others
                failed[r] = f"{type(exc).__name__}: {exc}"
                (work / f"rec_{view}_{r}.json").write_text(json.dumps({"error": failed[r]}))
        renderers = [r for r in renderers if r in built]
        gc.collect()
        times: dict[str, list[float]] = {r: [] for r in renderers}
        imgs: dict[str, np.ndarray] = {}
        for i in range(repeats + 1):
            k = i % len(renderers)
            for r in renderers[k:] + renderers[:k]:
                t = time.perf_counter()
                imgs[r] = built[r][0]()
                if i > 0:
                    times[r].append(time.perf_counter() - t)
        for r in renderers:
            info = dict(built[r][1])
            extra = info.pop("extra", None)
            for key, value in (extra() if extra is not None else {}).items():
                np.save(work / f"img_{view}_{r}_{key}.npy", np.asarray(value, dtype=np.float32))
            np.save(work / f"img_{view}_{r}.npy", np.asarray(imgs[r], dtype=np.float32))
            record = {"times_s": times[r], "threads": torch.get_num_threads(), **info}
            (work / f"rec_{view}_{r}.json").write_text(json.dumps(record))


def memory_worker(renderer: str, view: str, work: Path, n: int, threads: int) -> None:
    """Peak RSS growth of one renderer over two calls, alone in a fresh process, into ``work``."""
    import gc

    import torch

    torch.set_num_threads(threads)
    with torch.no_grad():
        call, _ = BUILDERS[renderer](work, view, n, threads)
        gc.collect()
        reset = _reset_peak_rss()
        base = _peak_rss_mb()
        for _ in range(2):
            call()
        peak = _peak_rss_mb()
    record = {"peak_mb": peak - base, "process_peak_mb": peak, "hwm_reset": reset}
    (work / f"mem_{view}_{renderer}.json").write_text(json.dumps(record))


# ---- parent: set up, run workers, print the table --------------------------------------------------------


def _run_worker(
    args: argparse.Namespace, mode: str, renderers: list[str], view: str, work: Path
) -> str | None:
    """Run a worker subprocess; returns None, or the last line of its error output."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--renderers",
        ",".join(renderers),
    ]
    cmd += ["--view", view, "--work", str(work), "--n-samples", str(args.n_samples)]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["?"])[-1]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ct", default=None, help="CT file (NIfTI/NRRD/DICOM dir); default: the real chest CT")
    p.add_argument(
        "--downsample-mm",
        type=float,
        default=None,
        help="resample the chest CT to this isotropic spacing (mm); default native grid",
    )
    p.add_argument("--n-samples", type=int, default=500, help="samples per ray for every renderer")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up (>= 5)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every renderer")
    p.add_argument("--size", type=int, default=256, help="detector rows = columns")
    p.add_argument("--pixel-mm", type=float, default=2.8, help="detector pixel spacing (mm)")
    p.add_argument("--views", default=",".join(VIEWS), help=f"comma list from {list(VIEWS)}")
    p.add_argument("--renderers", default=",".join(RENDERERS), help=f"comma list from {list(RENDERERS)}")
    p.add_argument("--save-dir", default=None, help="also copy every rendered image (.npy) here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--view", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "time":
        renderers = args.renderers.split(",")
        time_worker(renderers, args.view, Path(args.work), args.n_samples, args.repeats, args.threads)
        return 0
    if args.worker == "memory":
        memory_worker(args.renderers, args.view, Path(args.work), args.n_samples, args.threads)
        return 0
    if args.n_samples < 2:
        raise ValueError(f"--n-samples: expected >= 2, got {args.n_samples}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {args.repeats}")
    views = [v for v in args.views.split(",") if v]
    renderers = [r for r in args.renderers.split(",") if r]
    for name, given, allowed in (("--views", views, VIEWS), ("--renderers", renderers, RENDERERS)):
        bad = [x for x in given if x not in allowed]
        if bad:
            raise ValueError(f"{name}: unknown {bad}; allowed: {list(allowed)}")

    from xraycardiac.projection import hu_to_mu

    t0 = time.perf_counter()
    ct, source = load_ct(args.ct, args.downsample_mm)
    with tempfile.TemporaryDirectory(prefix="drr_bench_") as tmp:
        work = Path(tmp)
        mu = np.ascontiguousarray(hu_to_mu(np.asarray(ct.array)), dtype=np.float32)
        np.save(work / "mu.npy", mu)
        np.save(work / "hu.npy", np.ascontiguousarray(ct.array))
        np.save(work / "ijk_to_ras.npy", ct.ijk_to_ras)
        chords: dict[str, tuple[float, float]] = {}
        n_used: dict[str, dict[str, int]] = {}
        crop_shape, crop_affine = support_box(mu, ct.ijk_to_ras)
        for view in views:
            g = view_geometry(view, ct, args.size, args.pixel_mm)
            (work / f"geometry_{view}.json").write_text(json.dumps(g.to_dict()))
            src, targets, tn, tf = rays(g, ct.ijk_to_ras, mu.shape)
            seg = (tf - tn) * np.linalg.norm(targets - src, axis=1)
            step = float(seg.max()) / (args.n_samples - 0.5)  # ceil(max chord / step) = N in ray_integrals
            assert math.ceil(seg.max() / step) == args.n_samples
            chords[view] = (float(seg.max()), step)
            s2, t2, tn2, tf2 = rays(g, crop_affine, crop_shape)
            seg2 = (tf2 - tn2) * np.linalg.norm(t2 - s2, axis=1)
            n_used[view] = {r: args.n_samples for r in renderers}
            n_used[view]["ours-render_drr"] = max(1, math.ceil(float(seg2.max()) / step))
            np.savez(work / f"rays_{view}.npz", src=src, targets=targets)
            (work / f"rays_{view}.json").write_text(json.dumps({"step_mm": step}))

        import torch

        sp = ", ".join(f"{s:.3f}" for s in ct.spacing)
        print(f"DRR benchmark: CT {source}")
        print(
            f"  shape (K, J, I) = {mu.shape}, spacing (I, J, K) = ({sp}) mm, float32 mu = hu_to_mu(HU) (1/mm)"
        )
        print(f"  torch {torch.__version__}, threads = {args.threads} for every renderer, CPU")
        print(
            f"  detector {args.size} x {args.size} px of {args.pixel_mm} mm, SID 949 mm, SOD 541 mm, "
            "isocentre = CT centre"
        )
        print(
            f"  samples per ray N = {args.n_samples} on each ray's own chord through the volume, all renderers: "
            "ours step_mm = max chord / (N - 0.5) (midpoints, N per ray);"
        )
        print(
            "  nanodrr n_samples = N (midpoints of its per-ray clip); diffdrr n_points = N (linspace over per-ray chord)"
        )
        for view, (mx, step) in chords.items():
            print(f"  view {view}: longest chord {mx:.1f} mm -> our step_mm = {step:.4f}")
        print(
            f"  time: median (and min) of {args.repeats} calls after 1 warm-up round; per view all renderers "
            "share one subprocess and are called in turn (rotating order)"
        )
        print(
            "  memory: peak RSS growth over 2 calls, each renderer alone in a fresh subprocess "
            "(VmHWM = ru_maxrss, reset via clear_refs after set-up)"
        )
        print(
            f"  ours-render_drr: render_drr from HU (HU->mu each call, crop to mu > 0 support {crop_shape} "
            "(K, J, I), same step_mm)"
        )
        print(f"  set-up {time.perf_counter() - t0:.1f} s\n")

        load0 = os.getloadavg()[0]
        records: dict[tuple[str, str], dict] = {}
        for view in views:
            err = _run_worker(args, "time", renderers, view, work)
            for r in renderers:
                rec_file = work / f"rec_{view}_{r}.json"
                records[view, r] = json.loads(rec_file.read_text()) if err is None else {"error": err}
        for view in views:
            for r in renderers:
                if "error" in records[view, r]:
                    continue
                err = _run_worker(args, "memory", [r], view, work)
                mem = (
                    {"peak_mb": float("nan")}
                    if err
                    else json.loads((work / f"mem_{view}_{r}.json").read_text())
                )
                records[view, r].update(mem)
        load1 = os.getloadavg()[0]
        if args.save_dir:
            out = Path(args.save_dir)
            out.mkdir(parents=True, exist_ok=True)
            for f in work.glob("img_*.npy"):
                (out / f.name).write_bytes(f.read_bytes())
        _print_table(args, views, renderers, records, work, n_used)
        print(
            f"\n1-min load average before / after the runs: {load0:.2f} / {load1:.2f} on {os.cpu_count()} CPUs "
            "(one renderer at a time adds ~1; more means other work shared the machine)"
        )
    return 0


def _print_table(
    args: argparse.Namespace,
    views: list[str],
    renderers: list[str],
    records: dict[tuple[str, str], dict],
    work: Path,
    n_used: dict[str, dict[str, int]],
) -> None:
    """The side-by-side table, the APIs used, the geometry checks and the verdict."""
    header = (
        f"{'view':<11} {'renderer':<16} {'image':>9} {'samples/ray':>11} {'median s':>9} {'min s':>7} "
        f"{'peak MB':>8} {'NCC w/ ours':>11} {'t(ours)/t':>9}"
    )
    print(header)
    print("-" * len(header))
    imgs: dict[tuple[str, str], np.ndarray] = {}
    med: dict[tuple[str, str], float] = {}
    for view in views:
        for r in renderers:
            rec = records[view, r]
            if "error" in rec:
                print(f"{view:<11} {r:<16} FAILED: {rec['error']}")
                continue
            imgs[view, r] = np.load(work / f"img_{view}_{r}.npy")
            med[view, r] = statistics.median(rec["times_s"])
        for r in renderers:
            if (view, r) not in med:
                continue
            ours_img, ours_t = imgs.get((view, "ours")), med.get((view, "ours"))
            c = ncc(ours_img, imgs[view, r]) if ours_img is not None else float("nan")
            ratio = ours_t / med[view, r] if ours_t is not None else float("nan")
            print(
                f"{view:<11} {r:<16} {f'{args.size}x{args.size}':>9} {n_used[view][r]:>11} {med[view, r]:>9.3f} "
                f"{min(records[view, r]['times_s']):>7.3f} {records[view, r]['peak_mb']:>8.0f} {c:>11.5f} {ratio:>9.2f}"
            )
    print("\nAPIs and checks of the geometry mapping:")
    for r in renderers:
        rec = next((records[v, r] for v in views if "error" not in records[v, r]), None)
        if rec is not None:
            print(f"  {r}: {rec['api']}")
    for view in views:
        for r in PEERS:
            rec = records.get((view, r), {})
            if "pose_api" not in rec:
                continue
            line = f"  {view} {r} pose API [{rec['pose_api']}]: rays differ from ours by <= {rec['pose_ray_err_mm']:.2e} mm"
            for key in ("pose_api_image", "default_clip_image"):
                f = work / f"img_{view}_{r}_{key}.npy"
                if f.exists() and (view, "ours") in imgs:
                    what = "pose-API image" if key == "pose_api_image" else "diffdrr default (global) clip"
                    line += f"; NCC({what}, ours) = {ncc(np.load(f), imgs[view, 'ours']):.5f}"
            print(line)
    print("\nVerdict (target: ours at least as fast as the fastest peer, NCC >= 0.99 with it):")
    for view in views:
        peers = [r for r in PEERS if (view, r) in med]
        if (view, "ours") not in med or not peers:
            print(f"  {view}: incomplete (ours or every peer failed)")
            continue
        fastest = min(peers, key=lambda r: med[view, r])
        c = ncc(imgs[view, "ours"], imgs[view, fastest])
        for r in ("ours", "ours-render_drr"):
            if (view, r) not in med:
                continue
            ok = med[view, r] <= med[view, fastest] and c >= 0.99
            print(
                f"  {view}: {r} {med[view, r]:.3f} s vs fastest peer {fastest} {med[view, fastest]:.3f} s "
                f"(x{med[view, r] / med[view, fastest]:.2f} its time), NCC {c:.5f} -> {'MET' if ok else 'NOT MET'}"
            )


if __name__ == "__main__":
    sys.exit(main())
