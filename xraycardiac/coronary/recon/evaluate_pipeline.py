"""Pipeline evaluation of issue 4: matches -> calibration refinement -> 3D centreline, per method.

For every held-out view pair of a coronary pair dataset (``xraycardiac coronary synth``) and every
matching method (:func:`xraycardiac.coronary.matching.evaluate.parse_method`), the pipeline of the
``coronary-reconstruct`` job runs twice:

* **exact**: with the true geometry of both views; the matches seed the curve matching of
  :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_tree` (no refinement);
* **perturbed**: view 2's recorded geometry is off by a seeded random error, uniform in
  ``±perturb_deg`` on both C-arm angles and ``±perturb_mm`` on each RAS component of the isocentre
  (drawn per pair from ``numpy.random.default_rng([seed, pair index])``, the same for every method).
  The method matches under that geometry (an ``+epipolar`` filter uses the wrong epipolar lines, as
  it would in practice; for the calibration it is widened to the band the prior allows, as in the
  job), :func:`~xraycardiac.coronary.recon.acceptance.calibrate_from_matches` refines view 2 with the
  prior of the perturbation (sigma = bound / sqrt(3)) and keeps the refinement only on held-out
  evidence, and the centreline is reconstructed with the refined view 2 ("refined") and, for
  reference, with the perturbed one ("unrefined").

3D error: :func:`~xraycardiac.coronary.recon.reconstruct.centreline_error_mm` of the reconstructed points
to the GT centreline of the opacified tree (mean and 95th percentile, mm; coverage of the GT
centreline visible in both views); a reconstruction that matches no centreline at all counts in
"failed" (mean number of the three per pair) and has no error. Two views cannot see the component of an isocentre error along
the baseline (it scales the reconstruction about view 1's source; see
:mod:`xraycardiac.coronary.recon.calibration`), so the perturbed rows also give the error after the
oracle scale about view 1's source that best fits the truth ("refined, scale-fixed"): an upper bound
of what a known length (a catheter, a calibrated SID) would give, labelled as such.

Vessels come from the dataset's masks (``use_masks=True``: the accurate path, what a segmentation
or the user's masks give) or from the Frangi segmentation of the images (``use_masks=False``).
Time per pair is the wall time of detection + matching + reconstruction on the exact geometry.
Robustness figures are per pair (``per_pair``: view separation, photons per pixel, error), so a
caller can bin them by angle gap or noise level.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.evaluate_calibration import (
    centreline_points,
    perturb_view,
    prior_for,
    scale_fixed,
)

__all__ = ["PIPELINE_FIELDS", "evaluate_pipeline", "format_pipeline_table", "perturb_view", "scale_fixed"]

PIPELINE_FIELDS = (
    ("matches", "matches", ".0f"),
    ("exact_mean_mm", "exact mean", ".2f"),
    ("exact_p95_mm", "exact p95", ".2f"),
    ("exact_coverage", "coverage", ".0%"),
    ("unrefined_mean_mm", "perturbed mean", ".2f"),
    ("refined_mean_mm", "refined mean", ".2f"),
    ("refined_p95_mm", "refined p95", ".2f"),
    ("refined_scaled_mean_mm", "refined scale-fixed mean", ".2f"),
    ("refined_fraction", "refined", ".0%"),
    ("failed", "failed", ".2f"),
    ("seconds", "s/pair", ".2f"),
)
"""(key, column title, format) of :func:`format_pipeline_table`."""

_TREE_IDS = {"left": 0, "right": 1}


def _error(
    points: np.ndarray, gt: Any, trees: tuple[int, ...], geometries: tuple[Any, ...]
) -> dict[str, float]:
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm

    if len(points) == 0:
        return {"mean": float("nan"), "p95": float("nan"), "coverage": 0.0}
    return centreline_error_mm(points, gt, tree_ids=trees, geometries=geometries)


def _gt_matches(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pair's ground-truth correspondences (in-field keypoints of both views), pixels."""
    kp = sample["keypoints"]
    i1, i2 = np.flatnonzero(kp["in_field1"]), np.flatnonzero(kp["in_field2"])
    m = np.asarray(kp["matches"], dtype=np.int64).reshape(-1, 2)
    return kp["uv1"][i1[m[:, 0]]].astype(np.float64), kp["uv2"][i2[m[:, 1]]].astype(np.float64)


def _run(matcher: Any, sample: dict[str, Any], g1: Any, g2: Any):
    """(matches x1, x2, seconds of matching) of one method (None = GT) on one pair under g1, g2."""
    if matcher is None:
        return (*_gt_matches(sample), 0.0)
    inputs = {
        "image1": sample["image1"],
        "image2": sample["image2"],
        "projection_matrices": np.stack([g1.projection_matrix(), g2.projection_matrix()]),
    }
    t0 = time.perf_counter()
    match = matcher.run(inputs)
    seconds = time.perf_counter() - t0
    x1 = np.asarray(match.x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(match.x2, dtype=np.float64).reshape(-1, 2)
    return x1, x2, seconds


def _pair(
    matcher: Any, sample: dict[str, Any], gt: Any, index: int, perturb: tuple[float, float], seed: int,
    use_masks: bool, wide: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The figures of one method on one pair (module docstring); ``wide``: the unfiltered matcher of an
    ``+epipolar`` method, whose matches within the prior's band calibrate the perturbed view."""
    from xraycardiac.coronary.recon.acceptance import calibrate_from_matches
    from xraycardiac.coronary.recon.pipeline import calibration_matches
    from xraycardiac.geometry import CArmGeometry

    g1, g2 = (CArmGeometry.from_dict(sample["geometry"][f"view{v}"]) for v in (1, 2))
    meta = sample["meta"]
    trees = tuple(_TREE_IDS[t] for t in meta.get("opacified_trees", ["left"]))
    vessels = (sample["mask1"], sample["mask2"]) if use_masks else (sample["image1"], sample["image2"])

    x1, x2, t_match = _run(matcher, sample, g1, g2)
    t0 = time.perf_counter()
    exact = centreline_points(vessels, g1, g2, x1, x2)
    t_recon = time.perf_counter() - t0
    row: dict[str, Any] = {"name": sample["name"], "matches": len(x1), "seconds": t_match + t_recon}
    row |= {f"exact_{k}": v for k, v in _error(exact, gt, trees, (g1, g2)).items()}

    g2p, params = perturb_view(g2, np.random.default_rng([seed, index]), *perturb)
    y1, y2, _ = _run(matcher, sample, g1, g2p)
    unrefined = centreline_points(vessels, g1, g2p, y1, y2)
    config = prior_for(*perturb) if min(perturb) > 0 else None
    if wide is not None:  # the 3 px filter trusts the wrong geometry: calibrate from the prior's band
        y1, y2, _ = _run(wide, sample, g1, g2p)
        keep, _ = calibration_matches(y1, y2, g1, g2p, config)
        y1, y2 = y1[keep], y2[keep]
    g2r, record, inliers = calibrate_from_matches(g1, g2p, y1, y2, config=config, vessels=vessels)
    if inliers is not None:
        y1, y2 = y1[inliers], y2[inliers]
    refined = centreline_points(vessels, g1, g2r, y1, y2)
    row |= {f"unrefined_{k}": v for k, v in _error(unrefined, gt, trees, (g1, g2)).items()}
    row |= {f"refined_{k}": v for k, v in _error(refined, gt, trees, (g1, g2)).items()}
    row["refined_scaled_mean"] = _error(scale_fixed(refined, gt, trees, g1), gt, trees, (g1, g2))["mean"]
    row.update(
        refined=bool(record["refined"]),
        failed=sum(len(p) == 0 for p in (exact, unrefined, refined)),
        perturbation=params,
        separation_deg=float(meta.get("separation_deg", float("nan"))),
        photons_per_pixel=[float(d.get("photons_per_pixel", float("nan"))) for d in meta.get("render_draws", [])],
    )  # fmt: skip
    return row


def evaluate_pipeline(
    data_dir: str | os.PathLike[str],
    methods: Sequence[str],
    split: str = "test",
    *,
    perturb_deg: float = 5.0,
    perturb_mm: float = 10.0,
    use_masks: bool = True,
    seed: int = 0,
    epipolar_tolerance_px: float = 3.0,
    device: str = "cpu",
    foundation: str | None = None,
    max_pairs: int | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Run matching + refinement + 3D reconstruction of each method on every pair of a split.

    Args:
        data_dir: a coronary pair dataset (``xraycardiac coronary synth``) with its tree folders.
        methods: method names (:func:`~xraycardiac.coronary.matching.evaluate.parse_method`), or ``"gt"``: the
            ground-truth correspondences (the pipeline's upper bound; no matching time).
        split: "train", "val", "test" or "all".
        perturb_deg, perturb_mm: bounds of view 2's geometry error (module docstring), degrees / mm.
        use_masks: reconstruct from the dataset's vessel masks (True) or Frangi on the images.
        seed: seed of the perturbations.
        epipolar_tolerance_px, device, foundation: see ``parse_method``.
        max_pairs: the first N pairs only (None = all).
        progress: ``progress(stage, fraction)``.

    Returns:
        One row per method: ``method``, ``pairs``, the means over pairs of every key of
        :data:`PIPELINE_FIELDS` (``*_mm`` in mm; NaN-aware) and ``per_pair`` (one dict per pair).
    """
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.matching.evaluate import (
        foundation_per_method,
        nanmean,
        parse_method,
        split_samples,
    )
    from xraycardiac.coronary.synth.dataset import read_sample

    for name, value in (("perturb_deg", perturb_deg), ("perturb_mm", perturb_mm)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: expected a non-empty list of method names, got {methods!r}")
    paths = split_samples(data_dir, split)[:max_pairs]
    parsed = [
        None
        if m == "gt"
        else parse_method(m, epipolar_tolerance_px=epipolar_tolerance_px, device=device, foundation=fm)
        for m, fm in zip(methods, foundation_per_method(methods, foundation), strict=True)
    ]
    wide = [
        parse_method(m.removesuffix("+epipolar") + "+none", device=device, foundation=foundation)
        if m != "gt" and m.endswith("+epipolar")
        else None
        for m in methods
    ]
    per_method: list[list[dict[str, Any]]] = [[] for _ in methods]
    for i, path in enumerate(paths):
        sample = read_sample(path, load_thickness=False)
        gt = CoronaryTree.load_json(Path(path).parent / "tree.json")
        for k, matcher in enumerate(parsed):
            if progress is not None:
                progress(
                    f"{methods[k]}: {sample['name']}", (i * len(parsed) + k) / (len(paths) * len(parsed))
                )
            per_method[k].append(
                _pair(matcher, sample, gt, i, (perturb_deg, perturb_mm), seed, use_masks, wide[k])
            )
    rows = []
    for method, pairs in zip(methods, per_method, strict=True):
        row: dict[str, Any] = {"method": method, "pairs": len(pairs), "per_pair": pairs}
        for key, _, _ in PIPELINE_FIELDS:
            src = "refined" if key == "refined_fraction" else key.removesuffix("_mm")
            row[key] = nanmean([float(p[src]) for p in pairs])
        rows.append(row)
    return rows


def format_pipeline_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`evaluate_pipeline` rows (errors in mm)."""
    head = ["method", *(title for _, title, _ in PIPELINE_FIELDS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"]]
        for key, _, fmt in PIPELINE_FIELDS:
            v = row[key]
            cells.append(
                "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
