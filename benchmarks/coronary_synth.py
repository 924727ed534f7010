"""Synthetic coronary angiography throughput: pairs per second and peak memory per renderer.

Runs ``xraycardiac.coronary.synth.synthesize`` (the code behind ``xraycardiac coronary synth``)
in a fresh subprocess per (renderer, image size) so that peak memory is that run's alone, and
prints one table. The diffusion renderer (``angio-diffusion-demo``, DDIM 50 steps) samples at its
model's grid (128 px; other sizes are resampled to it, so they cost about the same); the physics
renderer renders at the detector size. There is no peer implementation of this data engine to
compare with.

    python benchmarks/coronary_synth.py [--trees 2] [--pairs 2] [--sizes 128,256,512] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, resource, sys, time
from xraycardiac.coronary.synth import SynthConfig, synthesize
cfg = SynthConfig(trees={trees}, pairs_per_tree={pairs}, renderer={renderer!r}, image_size={size},
                  device={device!r}, seed=0)
t0 = time.perf_counter()
try:
    summary = synthesize(cfg, {out!r}, resume=False)
    error = None
except ValueError as e:
    summary, error = {{}}, str(e)
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_mb": peak_mb, "summary": summary, "error": error}}))
"""


def _run(renderer: str, size: int, trees: int, pairs: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        code = _CHILD.format(
            trees=trees, pairs=pairs, renderer=renderer, size=size, device=device, out=tmp + "/ds"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per tree")
    parser.add_argument("--sizes", default="128,256,512", help="detector sizes in pixels, comma separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    print(f"coronary synth throughput: {args.trees} trees x {args.pairs} pairs, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak = max RSS of the run's process")  # fmt: skip
    header = f"{'renderer':<10} {'image':>9} {'pairs':>6} {'skipped':>8} {'seconds':>8} {'pairs/s':>8} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for renderer in ("physics", "diffusion"):
        for size in (int(s) for s in args.sizes.split(",")):
            r = _run(renderer, size, args.trees, args.pairs, args.device)
            if r.get("error"):
                print(
                    f"{renderer:<10} {size:>4}x{size:<4} {'-':>6} {'-':>8} {'-':>8} {'-':>8} {'-':>8}  ({r['error']})"
                )
                continue
            s = r["summary"]
            n = int(s.get("written", 0))
            print(f"{renderer:<10} {size:>4}x{size:<4} {n:>6} {int(s.get('skipped', 0)):>8} {r['seconds']:>8.1f} "
                  f"{n / r['seconds']:>8.3f} {r['peak_mb']:>8.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
