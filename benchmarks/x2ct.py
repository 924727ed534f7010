"""XRayToCT (CLS-DM) against its baselines: image quality, structure Dice, time and memory per volume.

Runs :func:`xraycardiac.xray2ct.evaluate.evaluate_x2ct` (the code behind ``xraycardiac x2ct
evaluate``) on a cache split and the real chest CT, and prints its Markdown table plus the cost of
each method per volume. Every ``--bundle`` adds two rows, ``cls-dm:`` (the mean of K diffusion
samples) and ``direct:`` (the encoder's direct regression, X2CT-CNN-like); every ``--ablation``
bundle (e.g. trained with ``contrastive_weight=0``) adds its ``cls-dm:`` row; then SART, CGLS (our
projector, the same two views) and the mean of the train split's CTs. The metric definitions (HU
window, true data range, the threshold rules behind the Dice, the TotalSegmentator Dice on the real
CT) are in the module docstring of :mod:`xraycardiac.xray2ct.evaluate`. There is no peer
implementation in the bench venv; the baselines are the rows.

    python benchmarks/x2ct.py --data CACHE --bundle x2ct-demo [--ablation runs/x2ct-nocontrastive]
    python benchmarks/x2ct.py --tiny /tmp/x2ct-tiny          # 6 phantoms at 16³ and 3-step bundles, ~15 s
    python benchmarks/x2ct.py --bundle x2ct-demo --time-grid 64 --steps 25 --threads 2   # the 64³ cost

``--tiny DIR`` builds (or reuses) the test suite's setup in DIR: a 16³ x 16 mm cache of phantoms 0-5
(test split: phantom 2; val: 3, 4; train: 0, 1, 5) and two 3-step bundles (the model and its
no-contrastive ablation); its numbers check the plumbing, not the method.

Time: wall time of each method's call per volume (``torch.set_num_threads(--threads)``, bundle
loading excluded, no warm-up). Memory: the process's peak RSS during the call (Linux VmHWM, reset via
``/proc/self/clear_refs`` before each call) and its growth over the RSS before the call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from xraycardiac.runtime import peak_rss_mb, reset_peak_rss


def _tiny(root: Path) -> tuple[Path, Path, Path]:
    """The test suite's tiny cache and two 3-step bundles in ``root`` (reused when present)."""
    from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
    from xraycardiac.xray2ct.bundle import write_bundle
    from xraycardiac.xray2ct.data import X2CTDataConfig, build_cache
    from xraycardiac.xray2ct.train import train_x2ct_encoder, train_x2ct_ldm

    cache, model, ablation = root / "cache", root / "model", root / "ablation"
    if (model / "model.json").is_file() and (ablation / "model.json").is_file():
        return cache, model, ablation
    t0 = time.perf_counter()
    fast = ["batch_size=2", "device=cpu", "log_every=1", "warmup_steps=1", "steps=3"]
    enc = ["cnn_channels=[8,8]", "unet_channels=[8,8]", "feature_channels=4"]
    ldm = ["channels=[8,16]", "attention_levels=[false,false]", "num_train_timesteps=10", "inference_steps=5"]
    build_cache(["phantom:0-5"], cache, X2CTDataConfig(grid=16, spacing_mm=16.0))
    ae_args = ["grid=16", "channels=[8,8,8]", "norm_num_groups=4", *fast]
    train_x2ct_autoencoder(
        cache, root / "ae", overrides=ae_args, split="all", command="benchmarks/x2ct.py --tiny"
    )
    for out, extra in ((model, []), (ablation, ["contrastive_weight=0"])):
        kw = dict(split="all", command="benchmarks/x2ct.py --tiny")
        train_x2ct_encoder(
            cache, root / f"enc_{out.name}", root / "ae", overrides=[*enc, *fast, *extra], **kw
        )
        train_x2ct_ldm(cache, root / f"ldm_{out.name}", root / "ae", root / f"enc_{out.name}",
                       overrides=[*ldm, *fast], **kw)  # fmt: skip
        write_bundle(out, root / "ae", root / f"enc_{out.name}", root / f"ldm_{out.name}",
                     name=f"x2ct-tiny-{out.name}", overwrite=True)  # fmt: skip
    print(f"built the tiny setup in {root} in {time.perf_counter() - t0:.1f} s")
    return cache, model, ablation


def _time_grid(args: argparse.Namespace) -> int:
    """Seconds and peak RSS of one generation (K samples) at ``--time-grid``^3 x 4 mm with the first
    ``--bundle``'s architecture (x2ct-demo by default) and untrained weights: the cost does not depend on them."""
    import json

    import numpy as np
    import torch

    from xraycardiac.xray2ct.autoencoder import X2CTAutoencoderConfig, build_autoencoder
    from xraycardiac.xray2ct.bundle import load_bundle
    from xraycardiac.xray2ct.data import X2CTDataConfig, cube_ijk_to_ras, view_geometries
    from xraycardiac.xray2ct.encoder import XRayEncoder, XRayEncoderConfig
    from xraycardiac.xray2ct.ldm import X2CTLDMConfig, build_ldm, generate

    g = args.time_grid
    cfgs = load_bundle(args.bundle[0] if args.bundle else "x2ct-demo").info["configs"]
    data = X2CTDataConfig(grid=g, spacing_mm=4.0, views=("pa", "lateral")[: cfgs["encoder"]["n_views"]])
    ae = build_autoencoder(X2CTAutoencoderConfig.from_dict({**cfgs["autoencoder"], "grid": g})).eval()
    enc_cfg = {**cfgs["encoder"], "grid": g, "view_size": data.image_size}
    encoder = XRayEncoder(XRayEncoderConfig.from_dict(enc_cfg)).eval()
    ldm = build_ldm(X2CTLDMConfig.from_dict(cfgs["ldm"]))[0].eval()
    geoms = view_geometries(data, (0.0, 0.0, 0.0))
    p = np.stack([geoms[v].projection_matrix() for v in data.views])
    views = torch.rand(1, len(data.views), data.image_size, data.image_size)
    steps = args.steps or 20
    print(
        f"| {g}^3 x 4 mm, {len(data.views)} view(s) | K | DDIM steps | s / volume | peak RSS MB |\n|---|---|---|---|---|"
    )
    reset_peak_rss()
    t0 = time.perf_counter()
    with torch.inference_mode():
        generate(encoder, ae.decode, ldm, views, p, cube_ijk_to_ras(data, (0, 0, 0)), 1.0, n_samples=args.samples,
                 steps=steps)  # fmt: skip
    print(f"| untrained, {json.dumps(cfgs['ldm']['channels'])} LDM | {args.samples} | {steps} | "
          f"{time.perf_counter() - t0:.1f} | {peak_rss_mb():.0f} |")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the evaluation, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="XRayToCT cache folder (xraycardiac x2ct cache)")
    parser.add_argument("--bundle", action="append", default=[], help="x2ct model: cls-dm and direct rows")
    parser.add_argument("--ablation", action="append", default=[], help="another bundle: its cls-dm row")
    parser.add_argument("--tiny", type=Path, help="build / reuse the test suite's tiny setup in this folder")
    parser.add_argument("--split", default="test", help="cache split: test | val | train | all")
    parser.add_argument("--baselines", default="sart,cgls,mean-prior", help="comma list ('' for none)")
    parser.add_argument("--no-real-ct", action="store_true", help="leave the real chest CT out")
    parser.add_argument("--steps", type=int, default=None, help="CLS-DM sampler steps (20; --tiny: 5)")
    parser.add_argument("--samples", type=int, default=4, help="CLS-DM samples K per volume")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cases", type=int, default=None, help="first N held-out cases only")
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, help="also write every case's numbers as JSON here")
    parser.add_argument(
        "--time-grid", type=int, help="only time one generation at this cube side: the --bundle's architecture, "
        "untrained weights, 4 mm voxels"
    )  # fmt: skip
    args = parser.parse_args(argv)

    import torch

    from xraycardiac.xray2ct.data import X2CTDataset
    from xraycardiac.xray2ct.evaluate import evaluate_x2ct, format_x2ct_table, write_x2ct_results

    torch.set_num_threads(args.threads)
    if args.time_grid:
        return _time_grid(args)
    bundles, ablations = list(args.bundle), list(args.ablation)
    if args.tiny is not None:
        args.data, model, ablation = _tiny(args.tiny)
        bundles, ablations = bundles or [str(model)], ablations or [str(ablation)]
    if args.data is None:
        parser.error("give --data CACHE (with --bundle ...) or --tiny DIR")
    if args.steps is None:
        args.steps = 5 if args.tiny is not None else 20  # the tiny LDM has 10 training timesteps
    methods = [f"{kind}:{b}" for b in bundles for kind in ("cls-dm", "direct")]
    methods += [f"cls-dm:{b}" for b in ablations] + [m for m in args.baselines.split(",") if m]
    ds = X2CTDataset(args.data, args.split)
    c = ds.config
    first = f"first {args.max_cases}" if args.max_cases else "all"
    print(f"XRayToCT evaluation: {args.data} split {args.split!r} ({len(ds)} cases, {first} evaluated)")
    print(f"  cube {c.grid}^3 x {c.spacing_mm:g} mm, views {list(c.views)} of {c.image_size} px, "
          f"HU window {list(c.hu_window)}")  # fmt: skip
    print(f"  CLS-DM: K = {args.samples} samples, {args.steps} steps, seed {args.seed}; device {args.device}")
    print(f"  torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = evaluate_x2ct(
        args.data, methods, args.split, real_ct=not args.no_real_ct, steps=args.steps, samples=args.samples,
        seed=args.seed, device=args.device, max_cases=args.max_cases,
        progress=lambda stage, fraction: print(f"  {100 * fraction:5.1f}%  {stage}", file=sys.stderr),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    print()
    print(format_x2ct_table(rows))
    print("\nCost per volume (wall time of the method's call; memory: " + rows[0]["memory"] + "):")
    print(f"{'data':<8} {'method':<44} {'s/volume':>17} {'peak RSS MB':>12} {'growth MB (mean, max)':>22}")
    for r in rows:
        s, g = r["seconds_per_volume"], r["rss_growth_mb"]
        sec = f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")
        growth = f"{g['mean']:.0f}, {max(p['rss_growth_mb'] for p in r['per_case']):.0f}"
        print(f"{r['data']:<8} {r['name'][:44]:<44} {sec:>17} {r['peak_rss_mb']:>12.0f} {growth:>22}")
    print(f"\n{wall:.1f} s in all; 1-min load average before / after: {load0:.2f} / {os.getloadavg()[0]:.2f}")
    if args.out is not None:
        write_x2ct_results(
            rows, args.out, {"argv": sys.argv[1:] if argv is None else argv, "methods": methods}
        )
        print(f"results -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
