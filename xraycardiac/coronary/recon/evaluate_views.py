"""N-view calibration benchmark of issue 20 (item 4): what each added view buys.

A pair dataset made with ``pairs_per_tree = P`` holds 2 P views of each tree (the tree does not move
between its pairs; the 3D keypoints of a tree are the same in all of them), so the views of a tree
can be combined freely: :func:`tree_views` reads them (view ``k`` of a tree is view ``k % 2 + 1`` of
its pair ``k // 2``). For each tree, each N (the first N views), each perturbation model
(:data:`~xraycardiac.coronary.recon.evaluate_calibration.PERTURBATIONS`) and each match source,
views 2..N are perturbed independently (seeded; view 1 is the reference and stays exact, as in the
two-view benchmark) and :func:`~xraycardiac.coronary.recon.acceptance.calibrate_views` (the one
calibration path, with the vessel masks and the prior of the model) decides between the refined
and the recorded poses. The centreline is reconstructed with every view
(:func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_views`) under the recorded and the used
poses. Match sources: ``"gt"`` (the keypoints in the field of both views of a pair) or a
:func:`~xraycardiac.coronary.matching.evaluate.parse_method` name, run on every view pair unfiltered; a
``+epipolar`` method keeps the matches within the prior's band of the recorded poses
(:func:`~xraycardiac.coronary.recon.pipeline.calibration_matches`).

Per case: the mean over views 2..N of the rotation error (degrees) recorded -> used, the 3D mean /
p95 (mm) recorded -> used, the used poses' 3D mean after the oracle scale about view 1's source
("scale-fixed": the one scale N views cannot observe), accepted, and "worse" (the used poses' mean rotation error or 3D mean
larger than the recorded ones').
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.calibration import CalibrationConfig
from xraycardiac.coronary.recon.evaluate_calibration import (
    PERTURBATIONS,
    outcome_cells,
    outcome_row,
    perturb_view,
    prior_for,
    rotation_error_deg,
    scale_fixed,
    summarize_outcomes,
)
from xraycardiac.geometry import CArmGeometry

__all__ = [
    "evaluate_views",
    "format_views_table",
    "gt_view_matches",
    "summarize_view_cases",
    "tree_views",
]


def tree_views(data_dir: str | os.PathLike[str], tree_index: int) -> dict[str, Any]:
    """All views of one tree of a pair dataset.

    Returns:
        ``geometries``, ``images`` (float [0, 1]), ``masks`` (bool), ``uv`` (K, 2) keypoint pixels and
        ``in_field`` (K,) per view; ``gt`` (the tree, :class:`CoronaryTree`), ``trees`` (opacified ids),
        ``name``.

    Raises:
        ValueError: the tree has no complete sample, or its pairs disagree on the keypoints.
    """
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample, tree_dir

    folder = tree_dir(data_dir, tree_index)
    paths = [p for p in list_samples(data_dir) if p.parent == folder]
    if not paths:
        raise ValueError(f"{data_dir}: tree {tree_index} has no complete sample")
    out: dict[str, Any] = {k: [] for k in ("geometries", "images", "masks", "uv", "in_field")}
    points = None
    for path in paths:
        s = read_sample(path, load_thickness=False)
        kp = s["keypoints"]
        if points is not None and not np.array_equal(points, kp["points_ras_mm"]):
            raise ValueError(
                f"{path}: its keypoints differ from the tree's other pairs; cannot combine views"
            )
        points = kp["points_ras_mm"]
        for v in (1, 2):
            out["geometries"].append(CArmGeometry.from_dict(s["geometry"][f"view{v}"]))
            out["images"].append(s[f"image{v}"])
            out["masks"].append(s[f"mask{v}"])
            out["uv"].append(np.asarray(kp[f"uv{v}"], dtype=np.float64))
            out["in_field"].append(np.asarray(kp[f"in_field{v}"], dtype=bool))
        out["trees"] = tuple({"left": 0, "right": 1}[t] for t in s["meta"].get("opacified_trees", ["left"]))
    out["gt"] = CoronaryTree.load_json(Path(folder) / "tree.json")
    out["name"] = Path(folder).name
    return out


def gt_view_matches(views: dict[str, Any], n: int) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The true matches of every pair of the first ``n`` views: keypoints in the field of both."""
    out = {}
    for i in range(n):
        for j in range(i + 1, n):
            both = views["in_field"][i] & views["in_field"][j]
            out[(i, j)] = (views["uv"][i][both], views["uv"][j][both])
    return out


def _case(
    views: dict[str, Any], n: int, matches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    banded: bool, recorded: list[CArmGeometry], config: CalibrationConfig,
) -> dict[str, Any]:  # fmt: skip
    """The figures of one match source on the first ``n`` views of one tree under one perturbation."""
    from xraycardiac.coronary.recon.acceptance import calibrate_views
    from xraycardiac.coronary.recon.pipeline import calibration_matches
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm, reconstruct_views

    true = views["geometries"][:n]
    masks = views["masks"][:n]
    if banded:
        matches = {
            (i, j): (a[k], b[k])
            for (i, j), (a, b) in matches.items()
            for k in [calibration_matches(a, b, recorded[i], recorded[j], config, first_fixed=i == 0)[0]]
        }
    used, record, inliers = calibrate_views(recorded, matches, config=config, vessels=masks)[:3]

    def error(gs: list[CArmGeometry], seeds: dict, confirmed: bool) -> dict[str, float]:
        try:  # as the pipeline: views no calibration confirmed drop no points
            pts = reconstruct_views(masks, gs, seeds, veto_tol_px=None if confirmed else np.inf).points3d
        except ValueError as exc:
            if "no centreline" not in str(exc) and "contradicted" not in str(exc):
                raise
            return {"mean": float("nan"), "p95": float("nan"), "scaled": float("nan")}
        e = centreline_error_mm(pts, views["gt"], tree_ids=views["trees"], geometries=tuple(true))
        scaled = scale_fixed(
            pts, views["gt"], views["trees"], gs[0]
        )  # the oracle scale about view 1's source
        s = centreline_error_mm(scaled, views["gt"], tree_ids=views["trees"], geometries=tuple(true))
        return {"mean": e["mean"], "p95": e["p95"], "scaled": s["mean"]}

    before = error(recorded, matches, False)
    after = dict(before)
    if record["refined"]:
        cuts = np.cumsum([len(a) for a, _ in matches.values()])[:-1]
        seeds = {
            k: (a[m], b[m]) for (k, (a, b)), m in zip(matches.items(), np.split(inliers, cuts), strict=True)
        }
        after = error(used, seeds, True)
    rot = [float(np.mean([rotation_error_deg(g, t) for g, t in zip(gs[1:], true[1:], strict=True)]))
           for gs in (recorded, used)]  # fmt: skip
    return {"name": views["name"], "views": n, "matches": int(sum(len(a) for a, _ in matches.values())),
            **outcome_row(record, rot, before, after)}  # fmt: skip


def evaluate_views(
    data_dir: str | os.PathLike[str],
    methods: Sequence[str],
    view_counts: Sequence[int] = (2, 3, 4),
    *,
    models: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_trees: int | None = None,
    first_tree: int = 0,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the N-view calibration of each match source, view count and perturbation model on every tree.

    Args:
        data_dir: a coronary pair dataset with at least ``max(view_counts) / 2`` pairs per tree.
        methods: ``"gt"`` or ``parse_method`` names (``+epipolar``: run unfiltered, then the prior's band).
        view_counts: the N to evaluate (each >= 2).
        models: name -> (+- degrees, +- mm) (default :data:`PERTURBATIONS`).
        seed: perturbation seed (tree t, view k draws from ``default_rng([seed, t, k])``: the same error
            of view k whatever N).
        device: of a learned matcher.
        max_trees: the first N trees only (from ``first_tree``, an index into the dataset's sorted trees).
        on_case: called with each case's figures (plus ``model`` and ``method``) when done.

    Returns:
        One row per (model, method, views): means of the per-case figures, ``accepted`` / ``worse`` counts,
        ``cases``, ``per_case``.

    Raises:
        ValueError: an empty method list, a view count < 2, or a tree with fewer views than asked.
    """
    from xraycardiac.coronary.matching.evaluate import parse_method
    from xraycardiac.coronary.synth.dataset import list_samples

    models = dict(PERTURBATIONS if models is None else models)
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: expected a non-empty list of method names, got {methods!r}")
    if not view_counts or min(view_counts) < 2:
        raise ValueError(f"view_counts: expected numbers of views >= 2, got {list(view_counts)!r}")
    banded = [m != "gt" and m.endswith("+epipolar") for m in methods]
    parsed = [None if m == "gt" else parse_method(m.removesuffix("+epipolar") + "+none" if b else m, device=device)
              for m, b in zip(methods, banded, strict=True)]  # fmt: skip
    trees = sorted({int(p.parent.name.split("_")[1]) for p in list_samples(data_dir)})[first_tree:]
    trees = trees[:max_trees]
    cases: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    n_max = max(view_counts)
    for t in trees:
        views = tree_views(data_dir, t)
        if len(views["geometries"]) < n_max:
            raise ValueError(
                f"{data_dir}: tree {t} has {len(views['geometries'])} views, {n_max} asked (make the set with "
                f"pairs_per_tree >= {(n_max + 1) // 2})"
            )
        for k, matcher in enumerate(parsed):
            if matcher is None:
                all_matches = gt_view_matches(views, n_max)
            else:
                all_matches = {}
                for i in range(n_max):
                    for j in range(i + 1, n_max):
                        r = matcher.run({"image1": views["images"][i], "image2": views["images"][j],
                                         "projection_matrices": None})  # fmt: skip
                        all_matches[(i, j)] = tuple(
                            np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in (r.x1, r.x2)
                        )
            for model, (deg, mm) in models.items():
                recorded_all = [views["geometries"][0]] + [
                    perturb_view(g, np.random.default_rng([seed, t, v]), deg, mm)[0]
                    for v, g in enumerate(views["geometries"][1:n_max], start=1)
                ]
                for n in view_counts:
                    sub = {key: xy for key, xy in all_matches.items() if key[1] < n}
                    case = _case(views, n, sub, banded[k], recorded_all[:n], prior_for(deg, mm))
                    cases.setdefault((model, methods[k], n), []).append(case)
                    if on_case is not None:
                        on_case({"model": model, "method": methods[k], **case})
    return summarize_view_cases(cases)


def summarize_view_cases(cases: dict[tuple[str, str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of :func:`evaluate_views` from its cases, keyed by (model, method, views)."""
    rows = []
    for (model, method, n), per in cases.items():
        row: dict[str, Any] = {
            "model": model,
            "method": method,
            "views": n,
            "cases": len(per),
            "per_case": per,
        }
        row.update(summarize_outcomes(per))
        rows.append(row)
    return rows


def format_views_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`evaluate_views` rows: one line per (matches, views), the models side by side."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["method"], r["views"]) for r in rows))
    by = {(r["model"], r["method"], r["views"]): r for r in rows}
    cols = ["rot deg", "3D mean mm", "3D p95 mm", "scale-fixed mm", "accepted", "worse"]
    head = ["matches", "views"] + [f"{m}: {c}" for m in models for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    for method, n in keys:
        cells = [method, str(n)]
        for model in models:
            r = by.get((model, method, n))
            if r is None:
                cells += ["–"] * len(cols)
                continue
            cells += [*outcome_cells(r, r["cases"]), f"{r['worse']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
