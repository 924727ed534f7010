"""Classical keypoint-matching baselines on held-out synthetic coronary view pairs (issue 4).

Makes a small synthetic set with ``xraycardiac.jobs.coronary_synth.synthesize`` (physics renderer,
seed 1000 so that no tree is shared with the seed-0 training sets), or reads one with ``--data``,
runs every baseline on every pair and prints one table. Metrics are those of
:mod:`xraycardiac.metrics.matching`, computed per pair and averaged over pairs (NaN-aware: a pair
with no match has no precision); "kp/img" and "matches" are means per pair, "s/pair" the matcher's
own wall time (detection to filtering, 2 CPU threads). The learned matcher of the paper will join
this table; there is no peer implementation of these angiography baselines to compare with.

    python benchmarks/coronary_match.py [--trees 6] [--pairs 2] [--size 256] [--seed 1000]
    python benchmarks/coronary_match.py --data DIR       # an existing `xraycardiac coronary synth` folder
    python benchmarks/coronary_match.py --keep DIR       # make the set in DIR and keep it
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _methods(tolerance_px: float, ransac_px: float) -> dict:
    from xraycardiac.coronary.baselines import MatcherConfig, match_orb, match_sift
    from xraycardiac.coronary.vessel_keypoints import match_vessel_keypoints

    ransac = MatcherConfig(filter="ransac", ransac_threshold_px=ransac_px)
    epipolar = MatcherConfig(filter="epipolar", epipolar_tolerance_px=tolerance_px)
    none = MatcherConfig(filter="none")
    return {
        "SIFT + RANSAC": (match_sift, ransac),
        "ORB + RANSAC": (match_orb, ransac),
        f"SIFT + epipolar {tolerance_px:g}px": (match_sift, epipolar),
        "vessel kp + NN": (match_vessel_keypoints, none),
        f"vessel kp + NN + epipolar {tolerance_px:g}px": (match_vessel_keypoints, epipolar),
    }


def _make(out: Path, trees: int, pairs: int, size: int, seed: int) -> None:
    from xraycardiac.jobs.coronary_synth import SynthConfig, synthesize

    t0 = time.perf_counter()
    summary = synthesize(SynthConfig(trees=trees, pairs_per_tree=pairs, image_size=size, seed=seed), out)
    print(
        f"made {summary['written']} pairs ({summary['skipped']} skipped: outside the field of view) "
        f"in {time.perf_counter() - t0:.0f} s -> {out}"
    )


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Make or read the set, run the baselines, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="read this synthetic pair dataset instead of making one")
    parser.add_argument("--keep", type=Path, help="make the set in this folder and keep it")
    parser.add_argument("--trees", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2, help="view pairs per tree")
    parser.add_argument("--size", type=int, default=256, help="detector size in pixels")
    parser.add_argument("--seed", type=int, default=1000, help="base seed of the set (training sets use 0)")
    parser.add_argument("--epipolar-tolerance", type=float, default=3.0, help="epipolar filter tolerance, px")
    parser.add_argument("--ransac-threshold", type=float, default=2.0, help="RANSAC inlier threshold, px")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from xraycardiac.coronary.dataset import list_samples, read_sample
    from xraycardiac.metrics.matching import sample_matching_metrics

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = args.keep or Path(tmp) / "pairs"
            _make(root, args.trees, args.pairs, args.size, args.seed)
        samples = [read_sample(p, load_thickness=False) for p in list_samples(root)]
    if not samples:
        print(f"no samples in {root}")
        return 1
    gt = np.mean([s["keypoints"]["in_field1"].sum() for s in samples])
    print(
        f"{len(samples)} pairs of {samples[0]['image1'].shape[1]} x {samples[0]['image1'].shape[0]} px, "
        f"{gt:.0f} GT keypoints per view on average; OpenCV {cv2.__version__}"
    )
    methods = _methods(args.epipolar_tolerance, args.ransac_threshold)
    methods[next(iter(methods))][0](samples[0]["image1"], samples[0]["image2"])  # warm-up (imports)
    cols = [
        ("method", 34), ("kp/img", 7), ("matches", 8), ("n>0", 4), ("P@3", 6), ("P@5", 6), ("R@3", 6), ("R@5", 6),
        ("epiP@3", 7), ("epiP@5", 7), ("AUC@5", 6), ("AUC@10", 7), ("AUC@20", 7), ("epi err", 8), ("s/pair", 7),
    ]  # fmt: skip
    print(" ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(cols)))
    for name, (fn, config) in methods.items():
        rows = []
        for s in samples:
            r = fn(s["image1"], s["image2"], s["projection_matrices"], config)
            m = sample_matching_metrics(r.x1, r.x2, s, keypoints1=r.keypoints1).as_dict()
            m["kp"] = (len(r.keypoints1) + len(r.keypoints2)) / 2
            m["seconds"] = r.seconds
            rows.append(m)

        def mean(key: str, rows: list[dict] = rows) -> float:
            vals = np.array([r[key] for r in rows], dtype=np.float64)
            return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")

        values = [
            f"{mean('kp'):.0f}", f"{mean('num_matches'):.1f}", f"{sum(r['num_matches'] > 0 for r in rows)}",
            _fmt(mean("precision@3px")), _fmt(mean("precision@5px")),
            _fmt(mean("recall@3px")), _fmt(mean("recall@5px")),
            _fmt(mean("epipolar_precision@3px")), _fmt(mean("epipolar_precision@5px")),
            _fmt(mean("auc@5px")), _fmt(mean("auc@10px")), _fmt(mean("auc@20px")),
            _fmt(mean("mean_epipolar_error_px"), 1), f"{mean('seconds'):.3f}",
        ]  # fmt: skip
        print(
            f"{name:<{cols[0][1]}} "
            + " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, cols[1:], strict=True))
        )
    print(
        "P@t: keypoint-correct precision (both ends within t px of one GT keypoint's projections); "
        "R@t: GT matches recovered; epiP@t: symmetric epipolar distance <= t px under the true geometry; "
        "AUC@T: cumulative per-GT-match transfer-error AUC; epi err: mean symmetric epipolar distance, px. "
        "Means over pairs; precision and epi err over the n>0 pairs that have a match ('-': none had)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
