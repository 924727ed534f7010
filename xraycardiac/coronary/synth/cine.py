"""Synthetic angiography cine runs with cardiac motion and a known end-diastole, saved as multi-frame XA.

A procedural coronary tree (:func:`xraycardiac.phantoms.coronary.make_coronary_tree`) beats: every
centreline point moves toward the heart ellipsoid's centre by ``contraction`` x c(phase) of its
distance (radii unchanged), where c is a left-ventricular volume curve over the R-R interval
(phase 0 = R peak = end-diastole):

* 0-0.05 isovolumetric contraction (c = 0), 0.05-0.38 ejection (c rises to 1 at end-systole, cosine);
* 0.38-0.60 rapid filling (c falls to 0.25), 0.60-0.85 diastasis (to 0.15, linear), 0.85-1.0 atrial
  contraction (to 0 at the next R).

Shape from the textbook Wiggers diagram (ejection ~1/3 of the cycle at 60-80 bpm, the atrial kick ~15-25 %
of filling); a 10-20 % shortening of the arteries' distance to the heart centre gives the ~5-10 mm
coronary excursions reported for the left coronary tree. Each frame is projected
(:func:`~xraycardiac.coronary.synth.projection.project_vessels`) and rendered by the physics renderer
(:func:`~xraycardiac.coronary.synth.render_physics.render_angiogram`) on one background and with one
set of renderer parameters for the whole run (fresh quantum noise per frame); the contrast washes in
over ``wash_in_s`` (the iodine path length scaled from 0 to 1).

R-R intervals vary by ``rr_jitter`` (relative std); the run starts at a random phase. The ECG (Lead II
shaped: Gaussian P, Q, R, S, T waves, Pan-Tompkins-style test signals) has baseline wander, 50 Hz mains
and white noise, starts ``ecg_lead_ms`` before the first frame, and is saved in the file's
WaveformSequence when ``with_ecg``. Truth: the R-peak times and, for each R peak inside the run, the
frame nearest to it (``ed_frames``).

The geometry written to the file puts the isocentre at RAS 0 (what a DICOM reader assumes); the
returned ``tree_ed`` is therefore the end-diastolic tree translated by minus the isocentre used.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.synth.projection import project_vessels
from xraycardiac.coronary.synth.render_physics import (
    PhysicsRendererConfig,
    RenderDraw,
    background_line_integral,
    render_angiogram,
)
from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.dicom_cine import ECGWaveform, write_xa_cine

__all__ = ["CineConfig", "SyntheticCine", "contraction_curve", "make_cine", "synthetic_ecg"]


@dataclass(frozen=True)
class CineConfig:
    """One synthetic run (module docstring). Lengths mm, angles degrees, times s unless named ms.

    Attributes:
        heart_rate_bpm: mean heart rate; rr_jitter: relative std of the R-R intervals.
        frame_rate_fps: frames per second (clinical cine: 7.5, 12.5, 15 or 30).
        duration_s: length of the run.
        start_phase: cardiac phase (0-1 of R-R) of the first frame; None = random.
        contraction: largest shortening of a point's distance to the heart centre (end-systole).
        wash_in_s: time for the contrast to reach full opacity (0 = opaque from the first frame).
        primary_deg, secondary_deg: the view (DICOM signs); sid_mm, sod_mm: distances.
        size_px: detector rows = columns; pixel_mm: detector pixel size.
        voxel_mm: voxel size of the projected tube.
        tree_seed: seed of the procedural tree; tree: 0 = left (LCA), 1 = right (RCA) injection.
        photons_per_pixel: quantum noise level (detected photons behind the median background).
        with_ecg: store the ECG in the file; ecg_hz: its sampling rate; ecg_noise_mv: white noise std.
        ecg_lead_ms: the ECG starts this long before the first frame.
    """

    heart_rate_bpm: float = 75.0
    rr_jitter: float = 0.03
    frame_rate_fps: float = 15.0
    duration_s: float = 3.0
    start_phase: float | None = None
    contraction: float = 0.15
    wash_in_s: float = 0.4
    primary_deg: float = -30.0
    secondary_deg: float = -20.0
    sid_mm: float = 1000.0
    sod_mm: float = 700.0
    size_px: int = 128
    pixel_mm: float = 1.2
    voxel_mm: float = 0.8
    tree_seed: int = 0
    tree: int = 0
    photons_per_pixel: float = 800.0
    with_ecg: bool = True
    ecg_hz: float = 500.0
    ecg_noise_mv: float = 0.03
    ecg_lead_ms: float = 300.0

    def __post_init__(self) -> None:
        checks = (
            ("heart_rate_bpm", 30.0, 200.0), ("rr_jitter", 0.0, 0.2), ("frame_rate_fps", 1.0, 60.0),
            ("duration_s", 0.5, 20.0), ("contraction", 0.0, 0.5), ("wash_in_s", 0.0, 10.0),
            ("pixel_mm", 0.05, 5.0), ("voxel_mm", 0.1, 5.0), ("photons_per_pixel", 1.0, 1e7),
            ("ecg_hz", 50.0, 10000.0), ("ecg_noise_mv", 0.0, 5.0), ("ecg_lead_ms", 0.0, 5000.0),
        )  # fmt: skip
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"CineConfig.{name}: expected a number in [{lo:g}, {hi:g}], got {v!r}")
        if self.start_phase is not None and not 0.0 <= self.start_phase < 1.0:
            raise ValueError(
                f"CineConfig.start_phase: expected None or a phase in [0, 1), got {self.start_phase!r}"
            )
        if self.tree not in (0, 1):
            raise ValueError(f"CineConfig.tree: expected 0 (left) or 1 (right), got {self.tree!r}")
        if not (isinstance(self.size_px, int) and 16 <= self.size_px <= 2048):
            raise ValueError(f"CineConfig.size_px: expected an integer in [16, 2048], got {self.size_px!r}")


@dataclass
class SyntheticCine:
    """A rendered run and its truth.

    Attributes:
        frames: (N, size, size) float32 in [0, 1], vessels dark.
        frame_times_ms: (N,) ms, first frame at 0.
        geometry: the view (isocentre at RAS 0, as a DICOM reader returns it).
        ecg: the ECG on the frames' clock.
        r_peaks_ms: true R-peak times (ms).
        ed_frames: for each R peak within the run, the frame nearest to it (the true end-diastoles).
        phases: (N,) cardiac phase (0-1 of R-R) of each frame.
        tree_ed: the end-diastolic tree in the written geometry's frame.
        config: the settings.
    """

    frames: np.ndarray
    frame_times_ms: np.ndarray
    geometry: CArmGeometry
    ecg: ECGWaveform
    r_peaks_ms: np.ndarray
    ed_frames: list[int]
    phases: np.ndarray
    tree_ed: CoronaryTree
    config: CineConfig

    def save(self, path: str | os.PathLike[str], with_ecg: bool | None = None) -> Path:
        """Write the run as a multi-frame XA file (with its ECG unless ``with_ecg`` is False)."""
        keep = self.config.with_ecg if with_ecg is None else with_ecg
        return write_xa_cine(
            path, self.frames, self.geometry, 1000.0 / self.config.frame_rate_fps,
            ecg=self.ecg if keep else None, heart_rate_bpm=self.config.heart_rate_bpm,
        )  # fmt: skip

    def truth(self) -> dict[str, Any]:
        """JSON-able truth: R peaks, end-diastolic frames, phases, settings."""
        return {"r_peaks_ms": self.r_peaks_ms.tolist(), "ed_frames": list(self.ed_frames),
                "phases": self.phases.tolist(), "config": asdict(self.config)}  # fmt: skip


def contraction_curve(phase: np.ndarray) -> np.ndarray:
    """c(phase) in [0, 1] (module docstring): 0 at end-diastole (phase 0), 1 at end-systole (0.38)."""
    p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    c = np.zeros_like(p)
    cos_step = lambda x: 0.5 * (1.0 - np.cos(np.pi * np.clip(x, 0.0, 1.0)))  # noqa: E731
    c = np.where((p >= 0.05) & (p < 0.38), cos_step((p - 0.05) / 0.33), c)
    c = np.where((p >= 0.38) & (p < 0.60), 1.0 - 0.75 * cos_step((p - 0.38) / 0.22), c)
    c = np.where((p >= 0.60) & (p < 0.85), 0.25 - 0.10 * (p - 0.60) / 0.25, c)
    return np.where(p >= 0.85, 0.15 * (1.0 - cos_step((p - 0.85) / 0.15)), c)


def _beats(config: CineConfig, rng: np.random.Generator, t_end_ms: float) -> np.ndarray:
    """R-peak times (ms) covering [-ecg_lead_ms - one beat, t_end_ms + one beat]."""
    rr = 60000.0 / config.heart_rate_bpm
    start = config.start_phase if config.start_phase is not None else float(rng.uniform(0.0, 1.0))
    t = -start * rr  # the R peak before the first frame
    peaks = [t]
    while peaks[0] > -config.ecg_lead_ms - 2 * rr:
        peaks.insert(0, peaks[0] - rr * (1.0 + config.rr_jitter * float(rng.standard_normal())))
    while peaks[-1] < t_end_ms + 2 * rr:
        peaks.append(peaks[-1] + rr * (1.0 + config.rr_jitter * float(rng.standard_normal())))
    return np.asarray(peaks)


def _phase_at(times_ms: np.ndarray, r_peaks_ms: np.ndarray) -> np.ndarray:
    """(N,) phase in [0, 1) of each time: the share of its R-R interval elapsed."""
    i = np.clip(np.searchsorted(r_peaks_ms, times_ms, side="right") - 1, 0, len(r_peaks_ms) - 2)
    return (times_ms - r_peaks_ms[i]) / (r_peaks_ms[i + 1] - r_peaks_ms[i])


def synthetic_ecg(
    times_ms: np.ndarray, r_peaks_ms: np.ndarray, rng: np.random.Generator, noise_mv: float = 0.03
) -> np.ndarray:
    """(S,) Lead-II-like ECG in mV at ``times_ms``: P, Q, R, S, T Gaussians per beat, wander, mains, noise."""
    ecg = np.zeros_like(times_ms, dtype=np.float64)
    waves = ((-160.0, 0.15, 22.0), (-25.0, -0.12, 8.0), (0.0, 1.2, 9.0), (28.0, -0.25, 9.0))  # ms, mV, ms
    for k, r in enumerate(r_peaks_ms):
        rr = (r_peaks_ms[k + 1] - r) if k + 1 < len(r_peaks_ms) else (r - r_peaks_ms[k - 1])
        for dt, amp, width in (*waves, (300.0 * math.sqrt(rr / 1000.0), 0.35, 45.0)):
            ecg += amp * np.exp(-0.5 * ((times_ms - r - dt) / width) ** 2)
    t_s = times_ms / 1000.0
    ecg += 0.15 * np.sin(2 * np.pi * 0.3 * t_s + rng.uniform(0, 2 * np.pi))  # respiration baseline wander
    ecg += 0.02 * np.sin(2 * np.pi * 50.0 * t_s + rng.uniform(0, 2 * np.pi))  # mains
    return ecg + rng.normal(0.0, noise_mv, size=ecg.shape)


def make_cine(config: CineConfig = CineConfig(), seed: int = 0, device: str = "cpu") -> SyntheticCine:
    """Render one beating run (module docstring); same config and seed -> same run.

    Args:
        config: the run's settings.
        seed: seeds the R-R intervals, the start phase, the renderer parameters, noise and the ECG.
        device: torch device of the vessel projection.
    """
    from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree
    from xraycardiac.phantoms.heart import HeartEllipsoid

    rng = np.random.default_rng(seed)
    rng_beats, rng_render, rng_ecg = rng.spawn(3)
    tree = make_coronary_tree(CoronaryPhantomConfig(seed=config.tree_seed))
    heart = HeartEllipsoid.from_dict(tree.meta["heart"]).center_ras_mm
    iso = tree.points[tree.tree == config.tree].mean(axis=0)
    geometry = CArmGeometry(
        primary_angle_deg=config.primary_deg, secondary_angle_deg=config.secondary_deg,
        sid_mm=config.sid_mm, sod_mm=config.sod_mm, detector_rows=config.size_px, detector_cols=config.size_px,
        pixel_spacing_mm=(config.pixel_mm, config.pixel_mm), isocenter_ras_mm=tuple(iso), name="cine",
    )  # fmt: skip
    n = max(3, round(config.duration_s * config.frame_rate_fps))
    times = np.arange(n) * (1000.0 / config.frame_rate_fps)
    peaks = _beats(config, rng_beats, float(times[-1]))
    phases = _phase_at(times, peaks)
    step = 1000.0 / config.frame_rate_fps
    inside = peaks[(peaks >= times[0] - 0.5 * step) & (peaks <= times[-1] + 0.5 * step)]
    ed_frames = sorted({int(np.argmin(np.abs(times - r))) for r in inside})

    base = PhysicsRendererConfig(photons_per_pixel=config.photons_per_pixel)
    rng_params, rng_bg, rng_noise = rng_render.spawn(3)
    draw = RenderDraw.sample(base, rng_params)
    fixed = replace(base, **{k: float(v) for k, v in draw.to_dict().items()})  # one look for the whole run
    background = background_line_integral(geometry, fixed, rng_bg)
    frames = np.empty((n, config.size_px, config.size_px), dtype=np.float32)
    scale = 1.0 - config.contraction * contraction_curve(phases)
    for i in range(n):
        moved = replace(tree, points=heart + (tree.points - heart) * scale[i])
        thickness = project_vessels(moved, geometry, voxel_mm=config.voxel_mm, trees=(config.tree,),
                                    device=device).thickness_mm  # fmt: skip
        fill = min(1.0, times[i] / (1000.0 * config.wash_in_s)) if config.wash_in_s > 0 else 1.0
        frames[i] = render_angiogram(thickness * fill, geometry, fixed, rng_noise, background_mu=background)
    ecg_times = np.arange(-config.ecg_lead_ms, times[-1] + config.ecg_lead_ms, 1000.0 / config.ecg_hz)
    ecg = ECGWaveform(
        synthetic_ecg(ecg_times, peaks, rng_ecg, config.ecg_noise_mv),
        config.ecg_hz,
        float(ecg_times[0]),
        "Lead II",
    )
    tree_ed = replace(tree, points=tree.points - iso)
    return SyntheticCine(
        frames, times, geometry.with_(isocenter_ras_mm=(0.0, 0.0, 0.0)), ecg, peaks, ed_frames, phases,
        tree_ed, config,
    )  # fmt: skip
