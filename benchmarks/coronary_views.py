"""N-view calibration and reconstruction (issue 20 item 4): what each added view buys.

Makes (or reads with ``--data``) a synthetic pair dataset with two pairs per tree (four views of each
tree) from tree seeds the learned matcher never saw (``coronary-matcher-demo`` trained on seeds
1000-1239 and 20000-20119; the default here is 50000, 50001, ...). For 2, 3 and 4 views, views 2..N
are perturbed under the realistic (+-2 deg, +-3 mm) and pessimistic (+-5 deg, +-10 mm) models and
calibrated jointly through the one calibration path (:mod:`xraycardiac.coronary.recon.evaluate_views`):
rotation error (mean over views 2..N), 3D centreline mean / p95 recorded -> used, accepted, worse
than recorded (the target is 0).

    python benchmarks/coronary_views.py [--trees 8] [--size 256] [--seed 50000] [--methods gt]
    python benchmarks/coronary_views.py --data DIR --methods gt,vessel+epipolar,matcher:coronary-matcher-demo
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Make or read the set, run the N-view benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="read this pair dataset (>= 2 pairs per tree) instead")
    parser.add_argument("--keep-data", type=Path, help="make the dataset here and keep it")
    parser.add_argument("--trees", type=int, default=8, help="trees (two view pairs each) to make")
    parser.add_argument("--size", type=int, default=256, help="detector size in pixels")
    parser.add_argument(
        "--seed", type=int, default=50000, help="base tree seed (matcher training: 1000, 20000)"
    )
    parser.add_argument("--perturb-seed", type=int, default=0, help="seed of the perturbations")
    parser.add_argument("--methods", default="gt", help="comma-separated: gt or parse_method names")
    parser.add_argument("--views", default="2,3,4", help="comma-separated numbers of views")
    parser.add_argument("--max-trees", type=int, help="the first N trees only")
    parser.add_argument("--first-tree", type=int, default=0, help="skip the trees before this index")
    parser.add_argument("--cases", type=Path, help="append each case's figures to this JSON-lines file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--table-from", type=Path, help="only print the table of a --cases file (a partial run)"
    )
    args = parser.parse_args(argv)

    import torch

    from xraycardiac.coronary.recon.evaluate_views import (
        evaluate_views,
        format_views_table,
        summarize_view_cases,
    )

    torch.set_num_threads(args.threads)
    if args.table_from is not None:
        cases: dict = {}
        for line in args.table_from.read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            cases.setdefault((case["model"], case["method"], case["views"]), []).append(case)
        rows = summarize_view_cases(dict(sorted(cases.items(), key=lambda kv: (kv[0][1], kv[0][2]))))
        print(f"{max(r['cases'] for r in rows)} trees")
        print(format_views_table(rows))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    counts = [int(v) for v in args.views.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from xraycardiac.coronary.synth import SynthConfig, synthesize

            root = args.keep_data or Path(tmp) / "views"
            config = SynthConfig(
                trees=args.trees, pairs_per_tree=2, image_size=args.size, seed=args.seed, voxel_mm=0.3
            )
            synthesize(config, root)
        t0 = time.perf_counter()
        sink = None if args.cases is None else args.cases.open("a", encoding="utf-8")

        def on_case(case: dict) -> None:
            print(f"{case['model']} {case['method']} {case['name']} N={case['views']}: accepted "
                  f"{case['accepted']}, worse {case['worse']}", flush=True)  # fmt: skip
            if sink is not None:
                sink.write(json.dumps(case, default=float) + "\n")
                sink.flush()

        try:
            rows = evaluate_views(root, methods, counts, seed=args.perturb_seed, max_trees=args.max_trees, first_tree=args.first_tree,
                                  on_case=on_case)  # fmt: skip
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}")
            return 1
        print(f"{rows[0]['cases']} trees from {root}; {time.perf_counter() - t0:.0f} s")
        print(format_views_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
