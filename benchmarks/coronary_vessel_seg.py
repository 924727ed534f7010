"""Vessel segmentation of angiograms on held-out appearance families: the network vs Frangi (issue 19).

Scenes: procedural coronary trees of seeds ``--seed ..`` (90000: no tree of the training bank,
which starts at 50000 and holds 16-32 scenes), one standard view each at ``--size`` px
(:func:`xraycardiac.coronary.synth.appearance.make_scene`). Each scene is shown in four appearance
families (vessels dark in all of them: clinical frames are):

* ``in-distribution``: the training families (chest-phantom / procedural / low-frequency
  backgrounds in turn, Beer-Lambert / flat / blurred-edge profiles, Poisson / Gaussian noise);
* ``(a) real-CT background``: DRRs of the REAL chest CT (``xraycardiac.data.fixtures``, never
  used in training) at the view's own angles, training profiles and noise;
* ``(b) held-out profile + noise``: the "halo" profile (unsharp-masked, bright rims) and the
  "correlated" noise (1/f noise times speckle), neither used in training, chest-phantom background;
* ``(c) diffusion renderer``: the ``angio-diffusion-demo`` IDDPM (DDIM 50 steps at its 128 px,
  upsampled to the scene), conditioned on the scene's mask and path lengths.

Per family and method: Dice (strict, pixelwise), centreline recall at 1 px (fraction of the
projected ground-truth centreline points with a predicted pixel within 1 px), precision at 1 px
(fraction of predicted pixels within 1 px of a true vessel pixel), s/image (the method alone).
Metrics: :func:`xraycardiac.metrics.vessel_seg.vessel_segmentation_scores`. Targets (issue 19,
unseen appearance): Dice >= 0.85, centreline recall >= 0.9.

3D from images alone (``--pairs N``): N view pairs of ``xraycardiac coronary synth`` (trees
``--pair-seed ..``, 50200 by default: outside the training bank, 50000 + at most 2 x ``n_scenes``)
go through the ``coronary-reconstruct`` job with the images and the exact geometry only (no masks),
once per segmentation (network, Frangi), and once with the true masks (the reference: what a
perfect segmentation would give with the same matching and reconstruction). Per pair and method: 3D mean / p95 / coverage of the
job's tree against the true centreline
(:func:`~xraycardiac.coronary.recon.reconstruct.centreline_error_mm`), the job's status and its
plausibility record. Targets (issue 19): mean <= 1.0 mm, p95 <= 4 mm, coverage >= 70 %.

    python benchmarks/coronary_vessel_seg.py [--n 8] [--size 512] [--model coronary-vessel-seg-demo]
        [--cache scenes.npz] [--no-diffusion] [--threads 2] [--pairs 4 --pair-size 512 --pair-seed 50200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

FAMILIES = (
    "in-distribution",
    "(a) real-CT background",
    "(b) held-out profile + noise",
    "(c) diffusion renderer",
)


def _scenes(n: int, size: int, seed: int, cache: Path | None) -> list:
    """``n`` scenes (thickness, mask, centreline, geometry) with their backgrounds per family."""
    from xraycardiac.coronary.synth.appearance import make_scene, with_background
    from xraycardiac.coronary.synth.projection import OutsideFieldOfViewError

    if cache is not None and cache.is_file():
        import pickle

        return pickle.loads(cache.read_bytes())
    out, s = [], seed
    train_bg = ("chest-phantom", "procedural", "lowfreq")
    while len(out) < n:
        try:
            scene = make_scene(s, size, background=train_bg[len(out) % 3])
        except OutsideFieldOfViewError:
            s += 1
            continue
        real = with_background(scene, "real-ct", s + 7)
        phantom = (
            scene if scene.background == "chest-phantom" else with_background(scene, "chest-phantom", s + 7)
        )
        out.append({"seed": s, "train": scene, "real": real, "phantom": phantom})
        print(f"  scene {len(out)}/{n} (seed {s})", flush=True)
        s += 1
    if cache is not None:
        import pickle

        cache.write_bytes(pickle.dumps(out))
    return out


def reconstruct_from_images(
    n: int, size: int, seed: int, root: Path, methods: tuple[str, ...] = ("network", "frangi", "true masks")
) -> list[dict]:
    """Run the reconstruct job on ``n`` synthetic pairs from their images and exact geometry (module docstring).

    ``methods``: "network", "frangi" (the job's ``segmentation``) and "true masks" (the pair's
    ground-truth masks given to the job: the reference that isolates the segmentation's share).

    Returns:
        One row per (pair, segmentation): name, method, mean / p95 / coverage (NaN / 0 without a tree),
        the job's status and plausibility fractions, seconds.
    """
    import json

    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import read_sample, sample_path
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.io import write_volume
    from xraycardiac.jobs import JobSpec, run_job
    from xraycardiac.volume import Volume

    data = root / "pairs"
    if not (data / "dataset.json").is_file():
        synthesize(SynthConfig(trees=n, pairs_per_tree=1, image_size=size, seed=seed), data)
    rows = []
    for t in range(n):
        path = sample_path(data, t, 0)
        s = read_sample(path, load_thickness=False)
        gt = CoronaryTree.load_json(Path(path).parent / "tree.json")
        trees = tuple({"left": 0, "right": 1}[x] for x in s["meta"].get("opacified_trees", ["left"]))
        gs = tuple(CArmGeometry.from_dict(s["geometry"][f"view{v}"]) for v in (1, 2))
        files, masks = {}, {}
        for v in (1, 2):
            image = Volume(s[f"image{v}"][None], gs[v - 1].detector_ijk_to_ras())
            files[f"image{v}"] = str(write_volume(image, root / f"p{t}_i{v}.nrrd"))
            (root / f"p{t}_g{v}.json").write_text(json.dumps(s["geometry"][f"view{v}"]))
            files[f"geometry{v}"] = str(root / f"p{t}_g{v}.json")
            mask = Volume(s[f"mask{v}"][None].astype(np.uint8), gs[v - 1].detector_ijk_to_ras())
            masks[f"mask{v}"] = str(write_volume(mask, root / f"p{t}_m{v}.nrrd"))
        for method in methods:
            out = root / f"p{t}_{method.replace(' ', '_')}"
            t0 = time.perf_counter()
            row = {"name": s["name"], "method": method, "mean": float("nan"), "p95": float("nan"),
                   "coverage": 0.0}  # fmt: skip
            try:
                inputs = {**files, **masks} if method == "true masks" else files
                params = {"device": "cpu", "segmentation": "network" if method == "true masks" else method}
                summary = run_job(JobSpec("coronary-reconstruct", inputs, params, str(out)))
            except (ValueError, RuntimeError) as exc:
                rows.append({**row, "status": f"error: {exc}"[:80], "seconds": time.perf_counter() - t0})
                continue
            report = json.loads((out / "report.json").read_text())
            pts = CoronaryTree.load_json(out / "tree.json").points
            if len(pts):
                e = centreline_error_mm(pts, gt, tree_ids=trees, geometries=gs)
                row.update(mean=e["mean"], p95=e["p95"], coverage=e["coverage"])
            plaus = report.get("plausibility", {})
            row.update(
                status=summary["status"], seconds=time.perf_counter() - t0,
                **{k: plaus.get(k) for k in ("reprojection_over_tol", "outside_vessels", "dropped")},
            )  # fmt: skip
            rows.append(row)
            print(f"  pair {t} {method}: {row}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Make the scenes, render each family, segment with both methods, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="scenes (images per family)")
    parser.add_argument("--size", type=int, default=512, help="detector size, pixels")
    parser.add_argument("--seed", type=int, default=90_000, help="first tree seed (training uses 50000..)")
    parser.add_argument("--model", default="coronary-vessel-seg-demo", help="segmentation model")
    parser.add_argument("--cache", type=Path, help="pickle of the scenes (made once, reused)")
    parser.add_argument("--no-diffusion", action="store_true", help="skip family (c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=0, help="3D from images: view pairs (0 = none)")
    parser.add_argument("--pair-size", type=int, default=512, help="3D from images: detector size, pixels")
    parser.add_argument("--pair-seed", type=int, default=50_200, help="3D from images: first tree seed")
    parser.add_argument(
        "--pair-dir", type=Path, help="3D from images: work folder (default: a temporary one)"
    )
    parser.add_argument("--no-2d", action="store_true", help="skip the 2D families (3D only)")
    args = parser.parse_args(argv)

    import torch

    from xraycardiac.coronary.matching.vessel_keypoints import detect_vessel_keypoints
    from xraycardiac.coronary.segment.vessel_seg import load_segmenter
    from xraycardiac.coronary.synth.appearance import AppearanceConfig, render_randomised
    from xraycardiac.metrics.vessel_seg import vessel_segmentation_scores

    torch.set_num_threads(args.threads)
    if args.pairs:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            root = args.pair_dir or Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            rows3d = reconstruct_from_images(args.pairs, args.pair_size, args.pair_seed, root)
        print(f"\n3D from images alone, {args.pairs} pairs at {args.pair_size} px (trees {args.pair_seed}..), "
              "exact geometry, the coronary-reconstruct job (targets: mean <= 1.0 mm, p95 <= 4 mm, coverage >= 70 %)")  # fmt: skip
        print("| segmentation | mean mm | p95 mm | coverage | status ok | points off centreline | outside vessels "
              "| s/pair |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        for method in ("network", "frangi", "true masks"):
            r = [x for x in rows3d if x["method"] == method]
            med = {k: float(np.nanmean([x[k] if x.get(k) is not None else np.nan for x in r]))
                   for k in ("mean", "p95", "coverage", "reprojection_over_tol", "outside_vessels", "seconds")}  # fmt: skip
            ok = sum(x["status"] == "ok" for x in r)
            print(f"| {method} | {med['mean']:.2f} | {med['p95']:.2f} | {med['coverage']:.0%} | {ok}/{len(r)} | "
                  f"{med['reprojection_over_tol']:.0%} | {med['outside_vessels']:.0%} | {med['seconds']:.1f} |")  # fmt: skip
        if args.no_2d:
            return 0
    t0 = time.perf_counter()
    scenes = _scenes(args.n, args.size, args.seed, args.cache)[: args.n]
    print(f"{len(scenes)} scenes at {args.size} px in {time.perf_counter() - t0:.0f} s")
    train_look = AppearanceConfig(p_invert=0.0)
    held_look = AppearanceConfig(profiles=("halo",), noises=("correlated",), p_invert=0.0)
    segmenter = load_segmenter(args.model)
    segmenter(np.zeros((64, 64), np.float32))  # warm-up
    renderer = None
    if not args.no_diffusion:
        from xraycardiac.coronary.synth.render_diffusion import load_renderer

        renderer = load_renderer()

    def frangi(image: np.ndarray) -> np.ndarray:
        return np.asarray(detect_vessel_keypoints(image).mask, dtype=bool)

    rows = {(f, m): [] for f in FAMILIES for m in ("network", "Frangi")}
    for k, item in enumerate(scenes):
        rng = np.random.default_rng([args.seed, k])
        images = {
            FAMILIES[0]: render_randomised(item["train"], train_look, rng),
            FAMILIES[1]: render_randomised(item["real"], train_look, rng),
            FAMILIES[2]: render_randomised(item["phantom"], held_look, rng),
        }
        if renderer is not None:
            sc = item["train"]
            img = renderer.render(sc.mask, sc.thickness_mm, seed=k)
            images[FAMILIES[3]] = (img, sc.mask, {})
        for family, (image, label, _) in images.items():
            on = label[np.clip(np.round(item["train"].centreline_px[:, 1]).astype(int), 0, args.size - 1),
                       np.clip(np.round(item["train"].centreline_px[:, 0]).astype(int), 0, args.size - 1)]  # fmt: skip
            centre = item["train"].centreline_px[on]
            for method, fn in (("network", lambda im: segmenter(im).mask), ("Frangi", frangi)):
                t = time.perf_counter()
                pred = fn(image)
                seconds = time.perf_counter() - t
                rows[family, method].append({**vessel_segmentation_scores(pred, label, centre), "s": seconds})
        print(f"  scene {k + 1}/{len(scenes)} scored", flush=True)

    print(
        f"\nVessel segmentation on {len(scenes)} held-out scenes per family at {args.size} px "
        f"(model {segmenter.provenance.get('model')}, {args.threads} threads; targets on unseen appearance: "
        "Dice >= 0.85, centreline recall >= 0.9)"
    )
    print("| family | method | Dice | centreline recall @1px | precision @1px | s/image |")
    print("|---|---|---|---|---|---|")
    for family in FAMILIES:
        for method in ("network", "Frangi"):
            r = rows[family, method]
            if not r:
                continue
            mean = {k: float(np.nanmean([x[k] for x in r])) for k in r[0]}
            print(
                f"| {family} | {method} | {mean['dice']:.3f} | {mean['centreline_recall']:.3f} | "
                f"{mean['precision']:.3f} | {mean['s']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
