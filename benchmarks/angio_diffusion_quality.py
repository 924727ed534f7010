"""How close are diffusion-rendered angiograms to the physics renderer's? Statistics and distances, one table.

Three image sets are compared with a reference set R of physics-renderer angiograms (seed A):

* "physics"   -- physics renderings of other trees (seed B): the floor, what two samples of the
                 same renderer differ by;
* "diffusion" -- the diffusion renderer (``--model``, DDIM ``--steps``) on the SAME masks and
                 path-length maps as "physics" (seed B, trees it was not trained on);
* "mask paint" -- a crude reference: a flat grey background with the vessels painted at a fixed
                 darkness through the same masks, blurred by 1 px (what "right masks, no texture"
                 scores).

Per set: vessel contrast (mean of the background ring 3-10 px from the mask minus the mean inside
the mask, grey levels of [0, 1]), the CNR of ``render_physics.contrast_to_noise``, background mean
and std (pixels > 10 px from any vessel); then the Fréchet distance and squared MMD to R on the
features of ``xraycardiac.metrics.FixedEncoder`` (random weights, seed 0: only ratios within this
table mean something), the Fréchet distance's ratio to the floor (the unbiased MMD^2 of the floor is ~0,
so it is given as is: the floor's is the noise level of the estimate).

    python benchmarks/angio_diffusion_quality.py [--pairs 32] [--model angio-diffusion-demo] [--steps 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def _physics_set(out: Path, seed: int, pairs: int, size: int) -> list[dict]:
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth import dataset as ds

    synthesize(SynthConfig(trees=pairs, pairs_per_tree=1, seed=seed, image_size=size), out, resume=False)
    items = []
    for path in ds.list_samples(out):
        s = ds.read_sample(path)
        for v in (1, 2):
            items.append({"image": s[f"image{v}"], "mask": s[f"mask{v}"], "thickness": s[f"thickness{v}"]})
    return items


def _stats(images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    from xraycardiac.coronary.synth.render_physics import contrast_to_noise

    contrast, cnr, bg_mean, bg_std = [], [], [], []
    for img, m in zip(images, masks, strict=True):
        dist = ndimage.distance_transform_edt(~m)
        ring, far = (dist > 3) & (dist <= 10), dist > 10
        contrast.append(float(img[ring].mean() - img[m].mean()))
        cnr.append(contrast_to_noise(img, m))
        bg_mean.append(float(img[far].mean()))
        bg_std.append(float(img[far].std()))
    return {
        "contrast": np.mean(contrast),
        "cnr": np.median(cnr),
        "bg_mean": np.mean(bg_mean),
        "bg_std": np.mean(bg_std),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the quality table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="view pairs per set (2 images each)")
    parser.add_argument("--model", default="angio-diffusion-demo", help="model name, folder or weights file")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--seed-reference", type=int, default=7000)
    parser.add_argument("--seed-test", type=int, default=9000)
    args = parser.parse_args(argv)

    from xraycardiac.coronary.synth.render_diffusion import AngioDiffusionRenderer
    from xraycardiac.metrics import FixedEncoder, frechet_distance, mmd2_rbf

    renderer = AngioDiffusionRenderer.load(args.model)
    size = renderer.config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        reference = _physics_set(Path(tmp) / "ref", args.seed_reference, args.pairs, size)
        test = _physics_set(Path(tmp) / "test", args.seed_test, args.pairs, size)
        physics_s = (time.perf_counter() - t0) / (2 * args.pairs)
    masks = [it["mask"] for it in test]
    t0 = time.perf_counter()
    diffusion = []
    for i in range(0, len(test), 2):
        pair = test[i : i + 2]
        diffusion += list(
            renderer.render(
                np.stack([p["mask"] for p in pair]), np.stack([p["thickness"] for p in pair]),
                seed=i, steps=args.steps,
            )
        )  # fmt: skip
    diffusion_s = (time.perf_counter() - t0) / (len(test) / 2)
    paint = [ndimage.gaussian_filter(np.where(m, 0.35, 0.6), 1.0).astype(np.float32) for m in masks]

    enc = FixedEncoder()
    f_ref = enc(np.stack([it["image"] for it in reference]))
    sets = {
        "physics": [it["image"] for it in test],
        "diffusion": diffusion,
        "mask paint": paint,
    }
    print(f"angiogram realism at {size}x{size}: reference = {len(reference)} physics images (seed "
          f"{args.seed_reference}); each set = {len(test)} images on the masks of seed {args.seed_test}; "
          f"diffusion model {renderer.source['model']} sha256 {renderer.source['sha256'][:12]}, DDIM {args.steps}")  # fmt: skip
    print(f"render time per pair on this machine: physics {physics_s:.2f} s (incl. projection), "
          f"diffusion {diffusion_s:.2f} s (sampling only)")  # fmt: skip
    ref_stats = _stats([it["image"] for it in reference], [it["mask"] for it in reference])
    header = f"{'set':<12} {'contrast':>9} {'CNR':>6} {'bg mean':>8} {'bg std':>7} {'FD':>9} {'FD/floor':>9} {'MMD^2':>8}"
    print(header)
    print("-" * len(header))
    r = ref_stats
    print(
        f"{'reference':<12} {r['contrast']:>9.3f} {r['cnr']:>6.2f} {r['bg_mean']:>8.3f} {r['bg_std']:>7.3f}"
    )
    floor_fd = None
    for name, images in sets.items():
        st = _stats(images, masks)
        f = enc(np.stack(images))
        fd, mmd = frechet_distance(f_ref, f), mmd2_rbf(f_ref, f)
        if floor_fd is None:
            floor_fd = fd
        print(f"{name:<12} {st['contrast']:>9.3f} {st['cnr']:>6.2f} {st['bg_mean']:>8.3f} {st['bg_std']:>7.3f} "
              f"{fd:>9.4g} {fd / floor_fd:>9.2f} {mmd:>8.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
