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

    python benchmarks/coronary_vessel_seg.py [--n 8] [--size 512] [--model coronary-vessel-seg-demo]
        [--cache scenes.npz] [--no-diffusion] [--threads 2]
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
    args = parser.parse_args(argv)

    import torch

    from xraycardiac.coronary.matching.vessel_keypoints import detect_vessel_keypoints
    from xraycardiac.coronary.segment.vessel_seg import load_segmenter
    from xraycardiac.coronary.synth.appearance import AppearanceConfig, render_randomised
    from xraycardiac.metrics.vessel_seg import vessel_segmentation_scores

    torch.set_num_threads(args.threads)
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
