"""Calibration benchmark of issue 20: is the accepted view 2 ever worse than the recorded one?

For every pair of a coronary pair dataset, every perturbation model (view 2's recorded geometry off
by a seeded error, uniform in ``+-deg`` on both C-arm angles and ``+-mm`` on each RAS component of
the isocentre, :func:`perturb_view`; the same draw for
every method) and every match source, the one calibration path
(:func:`~xraycardiac.coronary.recon.acceptance.calibrate_from_matches`, with the vessel masks)
decides between the refined and the recorded pose, with the prior of the model: each sigma is the
standard deviation of the uniform error (``bound / sqrt(3)``), as a user who knows their C-arm's
tolerance would set it. Match sources: ``"gt"`` (the true correspondences) or a
:func:`~xraycardiac.coronary.matching.evaluate.parse_method` name; the matches are made once per pair
without a filter, and a ``+epipolar`` method keeps those within the prior's epipolar band of the
recorded geometry (:func:`~xraycardiac.coronary.recon.pipeline.calibration_matches`), as the job does.

Per pair: the rotation error of view 2 (angle of ``R_used R_true^T``, degrees) with the recorded and
the used pose, the 3D centreline error (:func:`~xraycardiac.coronary.recon.reconstruct.centreline_error_mm`,
mean and 95th percentile, mm) of the reconstruction with each, the mean error of the used pose's
reconstruction after the oracle scale about view 1's source (the two-view gauge, "scale-fixed":
what a known length would give, :func:`scale_fixed`),
whether the refinement was accepted, and "worse": the used pose has a larger rotation error, or its reconstruction a larger
mean 3D error, than the recorded one. A reconstruction that matches no centreline counts as failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.calibration import CalibrationConfig
from xraycardiac.geometry import CArmGeometry

__all__ = [
    "PERTURBATIONS",
    "centreline_points",
    "evaluate_calibration",
    "format_calibration_table",
    "outcome_cells",
    "outcome_row",
    "perturb_view",
    "prior_for",
    "rotation_error_deg",
    "summarize_outcomes",
]

PERTURBATIONS = {"realistic": (2.0, 3.0), "pessimistic": (5.0, 10.0)}
"""Perturbation models of issue 20: name -> (+- degrees per angle, +- mm per isocentre axis)."""

_TREE_IDS = {"left": 0, "right": 1}


def perturb_view(
    g2: Any, rng: np.random.Generator, max_deg: float, max_mm: float
) -> tuple[Any, dict[str, float]]:
    """View 2 with a uniform random error in ±max_deg on both angles and ±max_mm per isocentre axis."""
    from xraycardiac.coronary.recon.calibration import apply_corrections

    d = rng.uniform(-1.0, 1.0, size=5)
    params = {
        "primary_offset_deg": float(max_deg * d[0]),
        "secondary_offset_deg": float(max_deg * d[1]),
        "isocenter_shift_r_mm": float(max_mm * d[2]),
        "isocenter_shift_a_mm": float(max_mm * d[3]),
        "isocenter_shift_s_mm": float(max_mm * d[4]),
    }
    return apply_corrections(g2, params), params


def scale_fixed(points: np.ndarray, gt: Any, trees: tuple[int, ...], g1: Any) -> np.ndarray:
    """Points scaled about view 1's source to best fit their nearest GT points (the oracle gauge)."""
    from scipy.spatial import cKDTree

    from xraycardiac.coronary.recon.calibration import scale_about_source

    if len(points) == 0:
        return points
    dense = gt.resampled(0.25)
    ref = dense.points[np.isin(dense.tree, trees)]
    src = np.asarray(g1.source_position, dtype=np.float64)
    out = points
    for _ in range(3):  # nearest points move with the scale: a few fixed-point rounds
        k = scale_about_source(out, ref[cKDTree(ref).query(out)[1]], src)
        out = src + k * (out - src)
    return out


def prior_for(max_deg: float, max_mm: float) -> CalibrationConfig:
    """The calibration prior of a uniform error in +-max_deg / +-max_mm: sigma = bound / sqrt(3)."""
    return CalibrationConfig(prior_sigma_deg=max_deg / np.sqrt(3.0), prior_sigma_mm=max_mm / np.sqrt(3.0))


def rotation_error_deg(g: CArmGeometry, g_true: CArmGeometry) -> float:
    """Angle (degrees) of the rotation between two C-arm orientations, ``R_g R_true^T``."""
    r = g.rotation @ g_true.rotation.T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def centreline_points(
    vessels: tuple[np.ndarray, np.ndarray], g1: Any, g2: Any, x1: np.ndarray, x2: np.ndarray
) -> np.ndarray:
    """3D centreline points (N, 3) of ``reconstruct_tree`` seeded by (x1, x2); (0, 3) when no centreline
    can be matched (a failure the evaluations count)."""
    from xraycardiac.coronary.recon.reconstruct import reconstruct_tree

    try:
        return reconstruct_tree(*vessels, g1, g2, *((x1, x2) if len(x1) else (None, None))).points3d
    except ValueError as exc:
        if "no centreline" not in str(exc):
            raise
        return np.zeros((0, 3))


def _error(
    points: np.ndarray, gt: Any, trees: tuple[int, ...], geometries: tuple[Any, ...]
) -> dict[str, float]:
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm

    if len(points) == 0:
        return {"mean": float("nan"), "p95": float("nan")}
    e = centreline_error_mm(points, gt, tree_ids=trees, geometries=geometries)
    return {"mean": e["mean"], "p95": e["p95"]}


def _case(
    sample: dict[str, Any], gt: Any, matches: tuple[np.ndarray, np.ndarray], banded: bool,
    g2p: CArmGeometry, config: CalibrationConfig,
) -> dict[str, Any]:  # fmt: skip
    """The figures of one match source on one pair under one perturbed view 2 (module docstring)."""
    from xraycardiac.coronary.recon.acceptance import calibrate_from_matches
    from xraycardiac.coronary.recon.pipeline import calibration_matches

    g1, g2 = (CArmGeometry.from_dict(sample["geometry"][f"view{v}"]) for v in (1, 2))
    trees = tuple(_TREE_IDS[t] for t in sample["meta"].get("opacified_trees", ["left"]))
    vessels = (sample["mask1"], sample["mask2"])
    x1, x2 = matches
    band = None
    if banded:
        keep, band = calibration_matches(x1, x2, g1, g2p, config)
        x1, x2 = x1[keep], x2[keep]
    t0 = time.perf_counter()
    g2a, record, inliers = calibrate_from_matches(g1, g2p, x1, x2, config=config, vessels=vessels)
    seconds = time.perf_counter() - t0
    points = centreline_points(vessels, g1, g2p, x1, x2)
    before = _error(points, gt, trees, (g1, g2))
    after = dict(before)
    if record["refined"]:
        y1, y2 = (x1, x2) if inliers is None else (x1[inliers], x2[inliers])
        points = centreline_points(vessels, g1, g2a, y1, y2)
        after = _error(points, gt, trees, (g1, g2))
    rot = (rotation_error_deg(g2p, g2), rotation_error_deg(g2a, g2))
    after["scaled"] = _error(scale_fixed(points, gt, trees, g1), gt, trees, (g1, g2))["mean"]
    return {"name": sample["name"], "matches": len(x1), "band_px": band,
            **outcome_row(record, rot, before, after), "calibration_seconds": seconds}  # fmt: skip


def outcome_row(
    record: dict[str, Any], rotation_deg: Sequence[float], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    """The benchmark row of one calibration: kept or not, and the errors before -> after.

    Args:
        record: the acceptance record (``refined``, ``reason``).
        rotation_deg: mean rotation error of the refined views (deg), recorded then used.
        before, after: 3D centreline error (mm): ``mean``, ``p95``; ``after`` also ``scaled`` (the scale
            fixed).

    Returns:
        dict with ``worse``: the rotation error grew, or an accepted pose has a larger 3D mean error.
    """
    worse_3d = bool(record["refined"] and not after["mean"] <= before["mean"])
    return {
        "accepted": bool(record["refined"]),
        "reason": record["reason"],
        "rotation_before_deg": rotation_deg[0],
        "rotation_after_deg": rotation_deg[1],
        "mean_before_mm": before["mean"],
        "mean_after_mm": after["mean"],
        "p95_before_mm": before["p95"],
        "p95_after_mm": after["p95"],
        "scaled_after_mm": after["scaled"],
        "worse": bool(rotation_deg[1] > rotation_deg[0] + 1e-9) or worse_3d,
    }


def _gt_matches(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pair's ground-truth correspondences (in-field keypoints of both views), pixels."""
    kp = sample["keypoints"]
    i1, i2 = np.flatnonzero(kp["in_field1"]), np.flatnonzero(kp["in_field2"])
    m = np.asarray(kp["matches"], dtype=np.int64).reshape(-1, 2)
    return kp["uv1"][i1[m[:, 0]]].astype(np.float64), kp["uv2"][i2[m[:, 1]]].astype(np.float64)


def evaluate_calibration(
    data_dir: str | os.PathLike[str],
    methods: Sequence[str],
    split: str = "all",
    *,
    models: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    device: str = "cpu",
    foundation: str | None = None,
    max_pairs: int | None = None,
    progress: Callable[[str, float], None] | None = None,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the calibration of each match source under each perturbation model on every pair of a split.

    Args:
        data_dir: a coronary pair dataset (``xraycardiac coronary synth``) with its tree folders.
        methods: ``"gt"`` or method names of ``parse_method`` (an ``+epipolar`` one is run unfiltered
            and then filtered by the prior's band of the recorded geometry).
        split: "train", "val", "test" or "all".
        models: name -> (+- degrees, +- mm) (default :data:`PERTURBATIONS`).
        seed: seed of the perturbations (pair i draws from ``default_rng([seed, i])``).
        device, foundation: of a learned matcher (``parse_method``).
        max_pairs: the first N pairs only (None = all).
        progress: ``progress(stage, fraction)``.
        on_case: called with each case's figures (with ``model`` and ``method``) as soon as it is done.

    Returns:
        One row per (model, method): ``model``, ``method``, ``pairs``, means over pairs of
        ``rotation_before_deg`` / ``rotation_after_deg`` / ``mean_before_mm`` / ``mean_after_mm`` /
        ``p95_before_mm`` / ``p95_after_mm`` / ``scaled_after_mm`` / ``matches``, counts ``accepted`` / ``worse``, and
        ``per_pair``.
    """
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.matching.evaluate import parse_method, split_samples
    from xraycardiac.coronary.synth.dataset import read_sample

    models = dict(PERTURBATIONS if models is None else models)
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: expected a non-empty list of method names, got {methods!r}")
    for name, (deg, mm) in models.items():
        if not (np.isfinite(deg) and deg > 0 and np.isfinite(mm) and mm > 0):
            raise ValueError(f"models[{name!r}]: expected (+-degrees > 0, +-mm > 0), got {(deg, mm)!r}")
    banded = [m != "gt" and m.endswith("+epipolar") for m in methods]
    parsed = [
        None
        if m == "gt"
        else parse_method(
            m.removesuffix("+epipolar") + "+none" if b else m, device=device, foundation=foundation
        )
        for m, b in zip(methods, banded, strict=True)
    ]
    paths = split_samples(data_dir, split)[:max_pairs]
    cases: dict[tuple[str, str], list[dict[str, Any]]] = {(mo, me): [] for mo in models for me in methods}
    for i, path in enumerate(paths):
        sample = read_sample(path, load_thickness=False)
        gt = CoronaryTree.load_json(Path(path).parent / "tree.json")
        g2 = CArmGeometry.from_dict(sample["geometry"]["view2"])
        for k, matcher in enumerate(parsed):
            if progress is not None:
                progress(
                    f"{methods[k]}: {sample['name']}", (i * len(parsed) + k) / (len(paths) * len(parsed))
                )
            if matcher is None:
                matches = _gt_matches(sample)
            else:
                r = matcher.run(
                    {"image1": sample["image1"], "image2": sample["image2"], "projection_matrices": None}
                )
                matches = tuple(np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in (r.x1, r.x2))
            for model, (deg, mm) in models.items():
                g2p, _ = perturb_view(g2, np.random.default_rng([seed, i]), deg, mm)
                case = _case(sample, gt, matches, banded[k], g2p, prior_for(deg, mm))
                cases[(model, methods[k])].append(case)
                if on_case is not None:
                    on_case({"model": model, "method": methods[k], **case})
    return summarize_cases(cases)


def summarize_cases(cases: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of :func:`evaluate_calibration` from its cases, keyed by (model, method)."""
    rows = []
    for (model, method), pairs in cases.items():
        row: dict[str, Any] = {"model": model, "method": method, "pairs": len(pairs), "per_pair": pairs}
        row.update(summarize_outcomes(pairs))
        row["worse_rotation"] = sum(p["rotation_after_deg"] > p["rotation_before_deg"] + 1e-9 for p in pairs)
        row["worse_3d"] = sum(
            bool(p["accepted"] and not p["mean_after_mm"] <= p["mean_before_mm"]) for p in pairs
        )
        rows.append(row)
    return rows


def format_calibration_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`evaluate_calibration` rows, the perturbation models side by side."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["model"], r["method"]): r for r in rows}
    cols = ["rot deg", "3D mean mm", "3D p95 mm", "scale-fixed mm", "accepted", "worse (rot / 3D)"]
    head = ["matches"] + [f"{m}: {c}" for m in models for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    for method in methods:
        cells = [method]
        for model in models:
            r = by[(model, method)]
            cells += [
                *outcome_cells(r, r["pairs"]),
                f"{r['worse']} ({r['worse_rotation']} / {r['worse_3d']})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_OUTCOME_MEANS = ("matches", "rotation_before_deg", "rotation_after_deg", "mean_before_mm", "mean_after_mm",
                  "p95_before_mm", "p95_after_mm", "scaled_after_mm")  # fmt: skip


def summarize_outcomes(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of :func:`outcome_row` figures over cases (NaN-aware), and the accepted / worse counts."""
    from xraycardiac.coronary.matching.evaluate import nanmean

    out: dict[str, Any] = {key: nanmean([float(r.get(key, "nan")) for r in rows]) for key in _OUTCOME_MEANS}
    out["accepted"] = sum(r["accepted"] for r in rows)
    out["worse"] = sum(r["worse"] for r in rows)
    return out


def outcome_cells(row: dict[str, Any], cases: int) -> list[str]:
    """Table cells of a :func:`summarize_outcomes` row: rotation, 3D mean, p95 (before → after), the
    scale-fixed mean and accepted / cases."""

    def arrow(a: float, b: float) -> str:
        return "–" if not (np.isfinite(a) and np.isfinite(b)) else f"{a:.2f} → {b:.2f}"

    scaled = row["scaled_after_mm"]
    return [arrow(row["rotation_before_deg"], row["rotation_after_deg"]),
            arrow(row["mean_before_mm"], row["mean_after_mm"]), arrow(row["p95_before_mm"], row["p95_after_mm"]),
            "–" if not np.isfinite(scaled) else f"{scaled:.2f}", f"{row['accepted']}/{cases}"]  # fmt: skip
