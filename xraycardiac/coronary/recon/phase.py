"""Cardiac phase selection in an angiography run: the same phase (end-diastole by default) in every view.

Two views of a moving heart only triangulate where both frames show the heart in the same phase.
:func:`select_frame` picks that frame in one run:

* **with an ECG** (``method "ecg"``): R peaks by :func:`detect_r_peaks`, then in each cardiac cycle the
  frame nearest to R + ``ecg_offset_ms`` (0 = end-diastole, which the R wave marks; a positive offset
  walks into systole). Of these, the one in the best-opacified part of the run (largest vessel signal,
  :func:`vessel_signal`; ties by the distance to the run's middle).
* **without one** (``method "image"``): end-diastole closes the slow part of the beat (diastasis and
  the atrial kick, when the ventricles are largest) just before the fast systolic motion. Motion
  between consecutive frames (:func:`motion_energy`: mean squared difference of the blurred frames, so
  what does not move cancels); the cycle length as the first lag at which whole frames repeat
  (:func:`cycle_length_frames`); in each cycle the still frame just before the strongest turn from
  quiet to fast motion (:func:`end_diastoles_from_motion`); of these, the strongest. Frames with a
  vessel signal below ``opacified_fraction`` of the run's best (the contrast wash-in) are left out.
  Measured on synthetic beating runs (``benchmarks/coronary_cine_phase.py``; see the benchmark README).
* **by the user**: an integer ``frame`` is taken as it is (checked against the run's length).

R-peak detector (Pan & Tompkins, IEEE TBME 1985, simplified): 5-15 Hz Butterworth band-pass (zero
phase), derivative, square, 120 ms moving integration; peaks of that envelope at least
``refractory_ms`` apart whose height exceeds ``threshold`` x the 90th percentile of the envelope's peaks
(adaptive to the recording's amplitude); each then moved to the extreme of the band-passed ECG within
+-75 ms in the QRS's dominant polarity (leads with a negative R wave work too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, signal

from xraycardiac.geometry.carm import CArmGeometry
from xraycardiac.geometry.dicom_cine import ECGWaveform, read_xa_cine

__all__ = [
    "PhaseSelection",
    "RunFrame",
    "cycle_length_frames",
    "detect_r_peaks",
    "end_diastoles_from_motion",
    "frame_from_run",
    "motion_energy",
    "parse_frame",
    "select_frame",
    "vessel_signal",
]

METHODS = ("auto", "ecg", "image")


@dataclass
class PhaseSelection:
    """The chosen frame of a run and the evidence for it.

    Attributes:
        frame: the chosen frame index (0-based).
        method: "ecg", "image" or "user".
        candidates: the end-diastole (or R + offset) frame of each cycle found, in order.
        r_peaks_ms: R-peak times on the run's clock (ms) (ECG method).
        heart_rate_bpm: from the R-R intervals, or from the image period and the frame times; None if
            unknown.
        ecg_offset_ms: the offset after the R peak used (ECG method).
        motion: image method: motion between frames i and i + 1 (:func:`motion_energy`; None while the
            contrast washes in); signal: per-frame vessel signal (:func:`vessel_signal`).
        reason: one sentence for the report.
    """

    frame: int
    method: str
    candidates: list[int] = field(default_factory=list)
    r_peaks_ms: list[float] = field(default_factory=list)
    heart_rate_bpm: float | None = None
    ecg_offset_ms: float = 0.0
    motion: list[float | None] = field(default_factory=list)
    signal: list[float] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def parse_frame(value: Any, name: str = "frame") -> int | str:
    """``"auto"`` or a frame index >= 0 from a parameter (int, or its text); a ValueError naming ``name``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.lstrip("+").isdigit():
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{name}: expected 'auto' or a frame index >= 0, got {value!r}")


def detect_r_peaks(
    ecg: np.ndarray, sampling_hz: float, refractory_ms: float = 250.0, threshold: float = 0.35
) -> np.ndarray:
    """R-peak sample indices of an ECG (module docstring).

    Args:
        ecg: (S,) samples, any unit, either polarity.
        sampling_hz: samples per second (>= 50: the band-pass needs 15 Hz below Nyquist).
        refractory_ms: least R-R interval (250 ms = 240 bpm).
        threshold: share of the envelope's high peaks (90th percentile) a QRS must reach.

    Returns:
        (P,) int64 sample indices, increasing.

    Raises:
        ValueError: a sampling rate below 50 Hz, or a recording shorter than one second.
    """
    x = np.asarray(ecg, dtype=np.float64).reshape(-1)
    if not (math.isfinite(sampling_hz) and sampling_hz >= 50.0):
        raise ValueError(f"sampling_hz: the R-peak detector needs >= 50 samples/s, got {sampling_hz!r}")
    if len(x) < sampling_hz:
        raise ValueError(f"ecg: {len(x)} samples at {sampling_hz:g} Hz is shorter than one second")
    sos = signal.butter(2, [5.0, 15.0], btype="bandpass", fs=sampling_hz, output="sos")
    band = signal.sosfiltfilt(sos, x - np.median(x))
    envelope = np.gradient(band) ** 2
    envelope = ndimage.uniform_filter1d(envelope, max(1, round(0.12 * sampling_hz)))
    distance = max(1, round(refractory_ms * sampling_hz / 1000.0))
    peaks, props = signal.find_peaks(envelope, distance=distance)
    if len(peaks) == 0:
        return peaks.astype(np.int64)
    level = threshold * np.percentile(envelope[peaks], 90)
    peaks = peaks[envelope[peaks] >= level]
    polarity = 1.0 if np.percentile(band, 99.5) >= -np.percentile(band, 0.5) else -1.0
    half = round(0.075 * sampling_hz)
    refined = []
    for p in peaks:
        lo, hi = max(0, p - half), min(len(x), p + half + 1)
        refined.append(lo + int(np.argmax(polarity * band[lo:hi])))
    refined = np.unique(refined)
    keep = [refined[0]] if len(refined) else []  # the refinement may bring two peaks too close again
    for p in refined[1:]:
        if p - keep[-1] >= distance:
            keep.append(p)
        elif polarity * band[p] > polarity * band[keep[-1]]:
            keep[-1] = p
    return np.asarray(keep, dtype=np.int64)


def _unit(frames: np.ndarray) -> np.ndarray:
    """(N, rows, cols) frames mapped to [0, 1] by the run's 0.5 / 99.5 percentiles (one window for all)."""
    lo, hi = np.percentile(frames, [0.5, 99.5])
    return np.clip((frames - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _tophat(frame: np.ndarray, width_px: int) -> np.ndarray:
    """Black top-hat: dark structures narrower than ``width_px`` (the vessels), background removed."""
    return ndimage.grey_closing(frame, size=(width_px, width_px)) - frame


def _width(shape: tuple[int, ...], vessel_width_px: int | None) -> int:
    """The top-hat size: given, or ~4 % of the image side (>= 5 px, odd)."""
    w = vessel_width_px if vessel_width_px is not None else max(5, round(0.04 * min(shape[-2:])))
    return int(w) | 1


def vessel_signal(frames: np.ndarray, vessel_width_px: int | None = None) -> np.ndarray:
    """(N,) opacification of each frame: the mean black top-hat of its darkest 2 % (contrast filling)."""
    unit = _unit(np.asarray(frames, dtype=np.float64))
    width = _width(unit.shape, vessel_width_px)
    out = []
    for frame in unit:
        hat = _tophat(frame, width).ravel()
        k = max(1, int(0.02 * hat.size))
        out.append(float(np.mean(np.partition(hat, hat.size - k)[-k:])))
    return np.asarray(out)


def _blurred(frames: np.ndarray, blur_px: float) -> np.ndarray:
    """(N, r, c) frames in one [0, 1] window, Gaussian-blurred by ``blur_px`` and, above 128 px, sampled
    down to about 128 px a side (the motion analysis needs the vessels' displacement, not their detail)."""
    unit = _unit(np.asarray(frames, dtype=np.float64))
    step = max(1, int(math.ceil(min(unit.shape[1:]) / 128)))
    sigma = max(float(blur_px), 0.5 * step)
    return np.stack([ndimage.gaussian_filter(f, sigma)[::step, ::step] for f in unit])


def motion_energy(frames: np.ndarray, blur_px: float = 1.5) -> np.ndarray:
    """(N - 1,) motion between consecutive frames: the mean squared difference of the blurred frames.

    What does not move (bone, lung, the heart shadow at rest) cancels; quantum noise adds a floor. The
    blur (``blur_px`` pixels, Gaussian sigma) keeps the measure growing with the displacement of a thin
    vessel beyond its own width.

    Args:
        frames: (N, rows, cols), vessels dark.
        blur_px: Gaussian sigma in pixels.
    """
    b = _blurred(frames, blur_px)
    return (np.diff(b, axis=0) ** 2).mean(axis=(1, 2))


def cycle_length_frames(
    frames: np.ndarray, usable: np.ndarray | None = None, blur_px: float = 1.5, depth: float = 0.5
) -> float | None:
    """The cardiac period (frames) of a run: the first lag at which the frames repeat.

    For each lag t, the mean squared difference between frame i and frame i + t over the usable pairs;
    the period is its first local minimum that reaches within ``depth`` of the way from its lowest value
    to its median and below 0.6 x the median (frames that merely decorrelate have no deep minimum; on the
    synthetic runs the period's lag is at 0.05-0.33 x the median), with parabolic sub-frame refinement. Whole frames are compared, so the two motion bursts
    of one beat (ejection, rapid filling) do not pass for two beats. Lags up to 2/3 of the run.

    Args:
        frames: (N, rows, cols).
        usable: (N,) bool, the frames to compare (e.g. opacified); None = all.
        blur_px: Gaussian sigma in pixels.
        depth: how deep (share of median minus lowest) a minimum must be to count.

    Returns:
        The period in frames, or None when no lag repeats the frames (fewer than ~1.5 cycles seen).
    """
    b = _blurred(frames, blur_px)
    n = len(b)
    ok = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    e = np.full(2 * n // 3 + 1, np.nan)
    for t in range(2, len(e)):
        valid = ok[: n - t] & ok[t:]
        if valid.sum() >= 2:
            e[t] = float(((b[: n - t][valid] - b[t:][valid]) ** 2).mean())
    if np.isfinite(e).sum() < 3:
        return None
    lo, med = np.nanmin(e), np.nanmedian(e)
    if not med > 0:  # frames that do not change have no period
        return None
    for t in range(3, len(e) - 1):
        a, m, c = e[t - 1], e[t], e[t + 1]
        deep = m <= lo + depth * (med - lo) and m <= 0.6 * med
        if np.isfinite([a, m, c]).all() and m <= a and m <= c and deep:
            d = a - 2 * m + c
            return float(t + (0.5 * (a - c) / d if d > 0 else 0.0))
    return None


def end_diastoles_from_motion(
    motion: np.ndarray, period: float, onset_cycle: float = 0.2, before_cycle: float = 0.35
) -> list[tuple[float, int]]:
    """(onset strength, frame) of each cycle's end-diastole in a motion signal, strongest onset first.

    End-diastole closes the slow part of the beat (diastasis, atrial kick) just before the fast
    systolic motion. For each frame j the onset strength is the mean motion over the next
    ``onset_cycle`` of a cycle minus that over the ``before_cycle`` before it (high where a quiet
    stretch turns into fast motion; about zero at end-systole, between ejection and rapid filling);
    its peaks at least 0.6 cycle apart and at least half the strongest (a weaker one is the turn from
    end-systole into rapid filling); in each, the stillest frame (least motion to both neighbours)
    within 0.12 cycle up to the onset.

    Args:
        motion: (N - 1,) motion between frames i and i + 1 (:func:`motion_energy`); NaN where unusable.
        period: cycle length in frames.
        onset_cycle, before_cycle: window lengths (shares of a cycle).
    """
    m = np.asarray(motion, dtype=np.float64)
    n = len(m) + 1
    ahead, behind = max(1, round(onset_cycle * period)), max(1, round(before_cycle * period))
    onset = np.full(n, np.nan)
    for j in range(behind, n - ahead):
        onset[j] = m[j : j + ahead].mean() - m[j - behind : j].mean()  # NaN if a window holds a NaN
    if not np.isfinite(onset).any():
        return []
    padded = np.concatenate([[-np.inf], np.where(np.isfinite(onset), onset, -np.inf), [-np.inf]])
    peaks, _ = signal.find_peaks(padded, distance=max(1, int(0.6 * period)))
    still = np.full(n, np.inf)
    still[1:-1] = m[:-1] + m[1:]
    still[~np.isfinite(still)] = np.inf
    found = []
    for j in peaks - 1:
        if not onset[j] > 0:
            continue
        lo = max(1, int(round(j - 0.12 * period)))
        i = lo + int(np.argmin(still[lo : j + 1])) if np.isfinite(still[lo : j + 1]).any() else int(j)
        found.append((float(onset[j]), i))
    found.sort(reverse=True)
    return [f for f in found if f[0] >= 0.5 * found[0][0]] if found else []


def _best(candidates: list[int], strength: np.ndarray, n: int) -> int:
    """The candidate of the strongest opacification (within 5 %), then nearest the middle of the run."""
    best = max(strength[c] for c in candidates)
    good = [c for c in candidates if strength[c] >= 0.95 * best]
    return min(good, key=lambda c: abs(c - (n - 1) / 2))


def select_frame(
    frames: np.ndarray,
    frame_times_ms: np.ndarray | None = None,
    ecg: ECGWaveform | None = None,
    frame: int | str = "auto",
    ecg_offset_ms: float = 0.0,
    method: str = "auto",
    vessel_width_px: int | None = None,
    opacified_fraction: float = 0.7,
) -> PhaseSelection:
    """Choose the frame of one run at the wanted cardiac phase (module docstring).

    Args:
        frames: (N, rows, cols) the run, vessels dark.
        frame_times_ms: (N,) frame times on the ECG's clock (ms); needed by the ECG method.
        ecg: the run's ECG, or None.
        frame: "auto", or the frame index the user chose (returned as it is).
        ecg_offset_ms: time after the R peak of the wanted phase (ms; 0 = end-diastole).
        method: "auto" (the ECG when there is one and it shows >= 2 R peaks during the run, else the
            image), "ecg" (an error without a usable ECG) or "image".
        vessel_width_px: top-hat size of the image method (pixels); None = ~4 % of the image side.
        opacified_fraction: the image method only takes frames whose vessel signal is at least this
            share of the run's best.

    Raises:
        ValueError: naming the parameter: a frame outside the run, an unknown method, "ecg" without a
            usable ECG or frame times, too few frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames: expected (N, rows, cols), got shape {frames.shape}")
    n = frames.shape[0]
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if not math.isfinite(ecg_offset_ms):
        raise ValueError(f"ecg_offset_ms: expected a finite time in ms, got {ecg_offset_ms!r}")
    choice = parse_frame(frame)
    if choice != "auto":
        if not 0 <= int(choice) < n:
            raise ValueError(f"frame: {choice} is outside the run's frames 0..{n - 1}")
        return PhaseSelection(frame=int(choice), method="user", reason=f"frame {choice} chosen by the user")
    times = None if frame_times_ms is None else np.asarray(frame_times_ms, dtype=np.float64).reshape(-1)
    if times is not None and len(times) != n:
        raise ValueError(f"frame_times_ms: {len(times)} times for {n} frames")
    strength = vessel_signal(frames, vessel_width_px)
    why_not_ecg = ""
    if method in ("auto", "ecg"):
        if ecg is None:
            why_not_ecg = "the run has no ECG"
        elif times is None:
            why_not_ecg = "the run has no frame times to place the ECG on"
        else:
            try:
                peaks = detect_r_peaks(ecg.samples, ecg.sampling_hz)
            except ValueError as e:  # too short or too coarse a recording: the image decides
                peaks, why_not_ecg = np.zeros(0, dtype=np.int64), f"its ECG is unusable ({e})"
            r_ms = ecg.times_ms[peaks]
            targets = r_ms + ecg_offset_ms
            inside = targets[
                (targets >= times[0] - 0.5 * _step(times)) & (targets <= times[-1] + 0.5 * _step(times))
            ]
            if len(inside) >= 1 and len(r_ms) >= 2:
                candidates = sorted({int(np.argmin(np.abs(times - t))) for t in inside})
                chosen = _best(candidates, strength, n)
                rate = 60000.0 / float(np.median(np.diff(r_ms)))
                return PhaseSelection(
                    frame=chosen, method="ecg", candidates=candidates, r_peaks_ms=r_ms.tolist(),
                    heart_rate_bpm=rate, ecg_offset_ms=float(ecg_offset_ms), signal=strength.tolist(),
                    reason=f"ECG: {len(r_ms)} R peaks ({rate:.0f} bpm); frame nearest R + {ecg_offset_ms:g} ms "
                    f"in the best-opacified cycle",
                )  # fmt: skip
            why_not_ecg = why_not_ecg or f"the ECG shows {len(r_ms)} R peak(s), none usable within the run"
        if method == "ecg":
            raise ValueError(f"method: 'ecg' asked for, but {why_not_ecg}; use 'image' or 'auto'")
    if n < 3:
        raise ValueError(f"frames: the image-based phase needs >= 3 frames, the run has {n}")
    ok = strength >= opacified_fraction * strength.max()
    motion = motion_energy(frames)
    motion[~(ok[:-1] & ok[1:])] = np.nan  # the contrast wash-in is not motion
    period = cycle_length_frames(frames, ok)
    found = end_diastoles_from_motion(motion, period or n / 2.0)
    candidates = sorted(i for _, i in found) or [int(np.argmax(np.where(ok, strength, -np.inf)))]
    chosen = found[0][1] if found else candidates[0]
    rate = None
    if period and times is not None and n > 1:
        rate = 60000.0 / (period * _step(times))
    note = f"; not the ECG: {why_not_ecg}" if why_not_ecg and ecg is not None else ""
    return PhaseSelection(
        frame=int(chosen), method="image", candidates=candidates, heart_rate_bpm=rate,
        motion=[float(x) if math.isfinite(x) else None for x in motion], signal=strength.tolist(),
        reason=(f"image: the still frame before the strongest onset of systolic motion, of {len(candidates)} cycle(s)"
                if found else "image: no onset of systolic motion found; the best-opacified frame")
        + (f", period {period:.1f} frames" if period else ", no period found (half the run assumed)") + note,
    )  # fmt: skip


def _step(times: np.ndarray) -> float:
    """The median frame interval (ms); 1 for a single frame."""
    return float(np.median(np.diff(times))) if len(times) > 1 else 1.0


@dataclass
class RunFrame:
    """One frame taken out of a multi-frame XA run by :func:`frame_from_run`.

    Attributes:
        image: (rows, cols) float64 stored values of the chosen frame (vessels dark).
        geometry: the C-arm pose of that frame from the header, or None when the header has no C-arm tags.
        selection: how the frame was chosen.
        frames: the run's number of frames; has_ecg: whether it holds an ECG; time_source: the timing tag.
    """

    image: np.ndarray
    geometry: CArmGeometry | None
    selection: PhaseSelection
    frames: int
    has_ecg: bool
    time_source: str

    def summary(self) -> dict[str, Any]:
        """The JSON record of the choice (without the per-frame signals)."""
        record = {k: v for k, v in self.selection.to_dict().items() if k not in ("motion", "signal")}
        return {**record, "frames": self.frames, "has_ecg": self.has_ecg, "time_source": self.time_source}


def frame_from_run(
    path: str | Any, frame: int | str = "auto", ecg_offset_ms: float = 0.0, method: str = "auto"
) -> RunFrame:
    """Read a multi-frame XA run and take the frame at the wanted phase (or the user's frame).

    Args:
        path: the DICOM XA file (:func:`xraycardiac.geometry.dicom_cine.read_xa_cine`).
        frame, ecg_offset_ms, method: as :func:`select_frame`.

    Raises:
        ValueError: from :func:`read_xa_cine` (naming the file) and :func:`select_frame` (naming the parameter).
    """
    cine = read_xa_cine(path, require_geometry=False)
    choice = select_frame(cine.frames, cine.frame_times_ms, cine.ecg, frame, ecg_offset_ms, method)
    geometry = cine.geometries[choice.frame] if cine.geometries is not None else None
    return RunFrame(
        cine.frames[choice.frame].astype(np.float64), geometry, choice, cine.num_frames, cine.ecg is not None,
        cine.meta.get("time_source", "none"),
    )  # fmt: skip
