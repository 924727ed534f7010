"""Cardiac phase selection (xraycardiac.coronary.recon.phase) and the synthetic beating runs it is tested on.

The ECG cases use the synthetic Lead-II ECG with known R peaks (noise, baseline wander, mains,
inverted polarity). The run cases render a small beating tree (xraycardiac.coronary.synth.cine, 64 px)
once per module and check the frame chosen with and without the ECG against the true end-diastoles.
"""

from __future__ import annotations

import numpy as np
import pytest

from xraycardiac.coronary.recon.phase import (
    cycle_length_frames,
    detect_r_peaks,
    frame_from_run,
    parse_frame,
    select_frame,
)
from xraycardiac.coronary.synth.cine import CineConfig, contraction_curve, make_cine, synthetic_ecg
from xraycardiac.geometry.dicom_cine import ECGWaveform


def _beats(bpm: float, seconds: float, jitter: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr = 60000.0 / bpm
    peaks = [rng.uniform(100.0, rr)]
    while peaks[-1] < seconds * 1000.0 - rr:
        peaks.append(peaks[-1] + rr * (1 + jitter * rng.standard_normal()))
    return np.asarray(peaks)


@pytest.mark.parametrize(
    ("bpm", "noise_mv", "polarity", "hz"),
    [
        (60.0, 0.02, 1.0, 500.0),
        (110.0, 0.08, 1.0, 250.0),
        (75.0, 0.05, -1.0, 1000.0),
        (45.0, 0.1, 1.0, 500.0),
    ],
)
def test_r_peaks_found_within_8_ms(bpm, noise_mv, polarity, hz):
    peaks = _beats(bpm, 8.0, 0.05, seed=int(bpm))
    t = np.arange(0.0, 8000.0, 1000.0 / hz)
    ecg = polarity * synthetic_ecg(t, peaks, np.random.default_rng(1), noise_mv)
    found = t[detect_r_peaks(ecg, hz)]
    truth = peaks[(peaks > 50.0) & (peaks < t[-1] - 50.0)]
    assert len(found) == len(truth), f"{len(found)} R peaks found, {len(truth)} true: {found} vs {truth}"
    error = np.abs(found - truth)
    assert error.max() <= 8.0, f"R-peak error up to {error.max():.1f} ms ({bpm} bpm, noise {noise_mv} mV)"


def test_detector_refuses_too_slow_or_short_recordings():
    with pytest.raises(ValueError, match="sampling_hz"):
        detect_r_peaks(np.zeros(1000), 40.0)
    with pytest.raises(ValueError, match="shorter than one second"):
        detect_r_peaks(np.zeros(100), 500.0)


def test_contraction_curve_is_zero_at_end_diastole_and_one_at_end_systole():
    c = contraction_curve(np.linspace(0, 1, 101))
    assert c[0] == 0.0 and abs(c[38] - 1.0) < 1e-9 and np.argmax(c) == 38
    assert np.all(c[1:] >= -1e-12) and np.all(c <= 1.0) and c[100] < 1e-9


def _beating_line(period: float, n: int = 60, size: int = 32) -> np.ndarray:
    """(n, size, size) a dark vertical line moving with the phantom's volume curve (two bursts a beat)."""
    cols = np.arange(size)
    frames = np.ones((n, size, size))
    for i in range(n):
        x = 8.0 + 12.0 * contraction_curve(np.array([i / period]))[0]
        frames[i] -= 0.5 * np.exp(-0.5 * ((cols - x) / 1.0) ** 2)[None, :]
    return frames


def test_cycle_length_is_the_beat_not_its_two_motion_bursts():
    # ejection and rapid filling move the vessels equally fast: a period from the motion alone halves
    period = cycle_length_frames(_beating_line(9.5))
    assert period is not None and abs(period - 9.5) < 0.5, period
    assert cycle_length_frames(_beating_line(9.5, n=8)) is None  # less than a beat: no period
    texture = np.random.default_rng(0).random((48, 140))
    drifting = np.stack(
        [texture[:, 4 * i : 4 * i + 48] for i in range(20)]
    )  # a pan: decorrelates, never repeats
    assert cycle_length_frames(drifting) is None and cycle_length_frames(np.zeros((20, 16, 16))) is None


def test_end_diastole_is_the_still_frame_before_systole():
    frames = _beating_line(12.0)
    chosen = select_frame(frames, np.arange(len(frames)) * 80.0, None, method="image")
    assert chosen.method == "image" and chosen.frame % 12 in (11, 0, 1), chosen
    assert abs(chosen.heart_rate_bpm - 60000.0 / (12 * 80.0)) < 3.0, chosen.heart_rate_bpm
    assert all(c % 12 in (11, 0, 1) for c in chosen.candidates), chosen.candidates


def test_parse_frame_and_user_choice():
    assert parse_frame("auto") == "auto" and parse_frame(" AUTO ") == "auto"
    assert parse_frame("7") == 7 and parse_frame(3) == 3
    for bad in (-1, "x", 2.5, True, None):
        with pytest.raises(ValueError, match="frame: expected 'auto' or a frame index"):
            parse_frame(bad)
    frames = np.zeros((5, 8, 8))
    assert select_frame(frames, frame=4).method == "user"
    with pytest.raises(ValueError, match="frame: 5 is outside the run's frames 0..4"):
        select_frame(frames, frame=5)
    with pytest.raises(ValueError, match="method: 'ecg' asked for, but the run has no ECG"):
        select_frame(frames, np.arange(5) * 66.0, None, method="ecg")
    with pytest.raises(ValueError, match="method: expected one of"):
        select_frame(frames, method="ekg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small beating runs (64 px, 10 fps, 2.5 s) written as XA files with their ECG."""
    root = tmp_path_factory.mktemp("cine")
    out = []
    for seed, bpm in ((11, 62.0), (12, 88.0)):
        config = CineConfig(size_px=64, pixel_mm=2.4, voxel_mm=1.2, duration_s=2.5, frame_rate_fps=10.0,
                            heart_rate_bpm=bpm, tree_seed=seed, wash_in_s=0.2)  # fmt: skip
        run = make_cine(config, seed=seed)
        out.append((run, run.save(root / f"run{seed}.dcm")))
    return out


def test_synthetic_run_truth_is_consistent(runs):
    for run, _ in runs:
        assert run.frames.shape == (25, 64, 64) and 0.0 <= run.frames.min() and run.frames.max() <= 1.0
        for e in run.ed_frames:  # the true end-diastole: the frame nearest an R peak, phase near 0 / 1
            assert min(run.phases[e], 1.0 - run.phases[e]) <= 0.5 * (run.config.heart_rate_bpm / 60.0) / 10.0


def test_ecg_selection_within_half_a_frame_of_end_diastole(runs):
    for run, path in runs:
        chosen = frame_from_run(path)
        assert chosen.selection.method == "ecg" and chosen.has_ecg
        # an R peak half-way between two frames may round to either: within a frame, and the R peaks exact
        assert min(abs(chosen.selection.frame - e) for e in run.ed_frames) <= 1, (
            chosen.selection,
            run.ed_frames,
        )
        assert len(chosen.selection.candidates) == len(run.ed_frames)
        found = np.asarray(chosen.selection.r_peaks_ms)
        inside = run.r_peaks_ms[
            (run.r_peaks_ms > run.ecg.start_ms + 100) & (run.r_peaks_ms < run.ecg.times_ms[-1] - 100)
        ]
        assert len(found) == len(inside) and np.abs(found - inside).max() <= 8.0, (found, inside)
        assert (
            abs(chosen.selection.heart_rate_bpm - run.config.heart_rate_bpm) < 0.1 * run.config.heart_rate_bpm
        )
        assert chosen.geometry.primary_angle_deg == run.config.primary_deg and chosen.image.shape == (64, 64)


def test_ecg_offset_moves_into_systole(runs):
    run, path = runs[0]
    rr = 60000.0 / run.config.heart_rate_bpm
    chosen = frame_from_run(path, ecg_offset_ms=0.38 * rr)  # end-systole in the phantom's curve
    phase = run.phases[chosen.selection.frame]
    assert abs(phase - 0.38) <= 0.1, f"R + {0.38 * rr:.0f} ms gave phase {phase:.2f}"


def test_image_based_selection_within_one_frame_without_ecg(runs):
    for run, _ in runs:
        chosen = select_frame(run.frames, run.frame_times_ms, None)
        error = min(abs(chosen.frame - e) for e in run.ed_frames)
        assert chosen.method == "image"
        assert error <= 1, f"image phase chose frame {chosen.frame}; true end-diastoles {run.ed_frames}"


def test_ecg_outside_the_run_falls_back_to_the_image(runs):
    run, _ = runs[0]
    late = ECGWaveform(run.ecg.samples, run.ecg.sampling_hz, run.ecg.start_ms + 60000.0)
    chosen = select_frame(run.frames, run.frame_times_ms, late)
    assert chosen.method == "image" and "not the ECG" in chosen.reason


def test_a_too_short_ecg_falls_back_to_the_image(runs):
    run, _ = runs[0]
    short = ECGWaveform(run.ecg.samples[:200], run.ecg.sampling_hz, run.ecg.start_ms)
    chosen = select_frame(run.frames, run.frame_times_ms, short)
    assert chosen.method == "image" and "ECG is unusable" in chosen.reason
    with pytest.raises(ValueError, match="shorter than one second"):
        select_frame(run.frames, run.frame_times_ms, short, method="ecg")
