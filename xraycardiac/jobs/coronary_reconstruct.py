"""Pipeline ``coronary-reconstruct``: two (or N) angiograms -> matches, refined views, 3D centreline.

Reads the inputs, builds a :class:`~xraycardiac.coronary.recon.pipeline.PairConfig` from ``params``
and runs :func:`~xraycardiac.coronary.recon.pipeline.reconstruct_pair` (the steps -- vessel masks,
match, refine view 2, reconstruct -- are described there), then writes the outputs.

Geometry: the images are 2D volume files (NRRD etc., K = 1 slice, values with vessels dark; images
outside [0, 1] are mapped to [0, 1] by their 0.5 / 99.5 percentiles); their C-arm geometry is not
read from the files but given as JSON files ``geometry1`` / ``geometry2`` (``CArmGeometry.to_dict()``,
e.g. ``XRayCardiac.Geometry`` of a Slicer node, or ``geometry_from_dicom`` of a DICOM XA header), so
that a frame's geometry never depends on how a writer stored the detector plane. Both are required
(the 3D reconstruction needs them); each must describe a detector of its own image's size. The two
images may therefore differ in size: each has its own geometry. Masks: same size as their image,
any value > 0 is vessel; without them the images are segmented (``segmentation``: "network", the
learned ``coronary-vessel-seg-demo``, or "frangi"), and the result is checked for plausibility
(``status`` "warning" with the reasons in ``plausibility.warnings``).

Cine runs: ``image1`` / ``image2`` may each be a multi-frame DICOM XA run (any file with the DICOM
preamble): the frame ``frame1`` / ``frame2`` is taken ("auto", the default: end-diastole, or R +
``ecg_offset_ms`` ms, by :func:`xraycardiac.coronary.recon.phase.frame_from_run`: the ECG of the file
when it has one, else the image-based phase; or a frame index), and its C-arm geometry comes from the
header unless ``geometry1`` / ``geometry2`` is given. ``report.json`` then says which frame and why
(``frames``).

N views: ``image3`` .. ``image8`` (with ``geometry<k>``, ``mask<k>``, ``frame<k>`` as for views 1 and 2)
make it an N-view job (:func:`~xraycardiac.coronary.recon.pipeline.reconstruct_views_pipeline`): the
matches of every view pair, one joint calibration of views 2..N (view 1 fixed) and a reconstruction
that uses every view; ``geometries_refined.json`` lists every view as used, ``matches.json`` has the
matches per pair ("1-2", "1-3", ...).

Job spec::

    {"pipeline": "coronary-reconstruct",
     "inputs": {"image1": "view1.nrrd", "image2": "view2.nrrd",
                "geometry1": "view1.geometry.json", "geometry2": "view2.geometry.json",
                "mask1": "mask1.nrrd", "mask2": "mask2.nrrd"},           # masks optional
     "params": {"method": "vessel+epipolar", "foundation": null, "refine_calibration": true,
                "epipolar_tolerance_px": 3.0, "device": "auto",
                "prior_sigma_deg": 1.5, "prior_sigma_mm": 3.0,                # calibration prior
                "segmentation": "network",                                    # views without a mask
                "frame1": "auto", "frame2": "auto", "ecg_offset_ms": 0.0},   # cine runs only
     "output_dir": "out/"}

Outputs: ``matches.json`` (method, x1, x2 (M, 2) pixels, scores (M,)), ``geometry2_refined.json``
(view 2 as used: refined, or the recorded one when not), ``geometries_refined.json`` (every view as used), ``calibration.json`` (``kept``: "refined" or
"recorded" and why, the reprojection error of the matches before / after, pixels, the corrections,
the rejected candidate, the ``evidence``, the ``outliers``, the calibration matches' band),
``vessel_probability1.nrrd`` / ``2`` (the network's vessel probability of each view it segmented, on
the image's grid),
``centreline.vtp`` (polylines with ``Radius``, RAS), ``tube.vtp`` (tube surface), ``tree.json``
(:class:`~xraycardiac.anatomy.coronary_tree.CoronaryTree`), ``report.json`` (the summary).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.pipeline import DEFAULT_METHOD, PairConfig
from xraycardiac.jobs.inputs import MAX_VIEWS, image_grid, read_views, view_count
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec
from xraycardiac.outputs import write_json_atomic

__all__ = ["DEFAULT_METHOD", "OUTPUTS", "PARAMS", "PIPELINE", "config_from_spec", "run_coronary_reconstruct"]

PIPELINE = "coronary-reconstruct"
PAIR_PARAMS = tuple(f.name for f in fields(PairConfig))
_KINDS = (str, (str, type(None)), bool, float, str, float, float, str)  # PAIR_PARAMS' JSON types
FRAME_PARAMS = tuple(f"frame{v}" for v in range(1, MAX_VIEWS + 1))
PARAMS = (*PAIR_PARAMS, *FRAME_PARAMS, "ecg_offset_ms")  # + which frame of each cine run
OUTPUTS = {
    "matches": "matches.json",
    "geometry2_refined": "geometry2_refined.json",
    "geometries_refined": "geometries_refined.json",
    "calibration": "calibration.json",
    "centreline": "centreline.vtp",
    "tube": "tube.vtp",
    "tree": "tree.json",
    "report": "report.json",
    "vessel_probability1": "vessel_probability1.nrrd",
    "vessel_probability2": "vessel_probability2.nrrd",
}


def _write_json(path: Path, data: Any) -> None:
    """Write strict JSON through a temporary sibling and a rename."""
    write_json_atomic(path, data, indent=2, allow_nan=False, default=None, fsync=False)


def config_from_spec(spec: JobSpec) -> PairConfig:
    """The job's ``params`` (names and JSON types checked here, values by :class:`PairConfig`)."""
    spec.check_param_names(PARAMS)
    defaults = PairConfig()
    return PairConfig(
        **{k: spec.param(k, getattr(defaults, k), t) for k, t in zip(PAIR_PARAMS, _KINDS, strict=True)}
    )


def frames_from_spec(spec: JobSpec, n_views: int = 2) -> tuple[dict[str, int | str], float]:
    """``frame<k>`` ("auto" or an index) of each of the ``n_views`` cine-run inputs, and ``ecg_offset_ms``."""
    from xraycardiac.coronary.recon.phase import parse_frame

    offset = spec.param("ecg_offset_ms", 0.0, float)
    if not math.isfinite(offset):
        raise ValueError(f"params.ecg_offset_ms: expected a time in ms after the R peak, got {offset!r}")
    extra = [k for k in FRAME_PARAMS[n_views:] if k in spec.params]
    if extra:
        raise ValueError(
            f"params.{extra[0]}: there are only {n_views} views (inputs.image1 .. image{n_views})"
        )
    frames = {
        f"frame{v}": parse_frame(spec.param(f"frame{v}", "auto", (str, int)), f"params.frame{v}")
        for v in range(1, n_views + 1)
    }
    return frames, offset


@register(PIPELINE)
def run_coronary_reconstruct(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Match, refine view 2 and reconstruct the 3D centreline of two angiograms (module docstring)."""
    from xraycardiac import __version__
    from xraycardiac.coronary.recon.pipeline import reconstruct_pair, reconstruct_views_pipeline
    from xraycardiac.coronary.recon.reconstruct import save_tube_vtp
    from xraycardiac.io import write_volume
    from xraycardiac.runtime import select_device
    from xraycardiac.volume import Volume

    config = config_from_spec(spec)
    progress("reading inputs", 0.0)
    frames, offset = frames_from_spec(spec, view_count(spec))
    why = (
        f"method {config.method!r} filters matches by the epipolar lines of the known geometry"
        if config.method.endswith("+epipolar")
        else "the 3D reconstruction triangulates through both views"
    )
    images, geometries, masks, phases = read_views(spec, frames, offset, why)
    device, warn = str(select_device(config.device)), (lambda m: progress.log(m, level="warning"))
    if len(images) > 2:  # N views: one joint calibration, a reconstruction from every view
        pair = reconstruct_views_pipeline(images, geometries, masks, config, device, progress, warn)
    else:
        pair = reconstruct_pair(
            (images[0], images[1]), (geometries[0], geometries[1]), (masks[0], masks[1]), config, device,
            progress=progress, log=warn,
        )  # fmt: skip

    progress("writing outputs", 0.9)
    tree = pair.result.tree
    _write_json(work_dir / OUTPUTS["matches"], pair.matches_record())
    used = getattr(pair, "geometries", None) or [geometries[0], pair.geometry2]
    _write_json(work_dir / OUTPUTS["geometry2_refined"], used[1].to_dict())
    _write_json(work_dir / OUTPUTS["geometries_refined"], [g.to_dict() for g in used])
    _write_json(work_dir / OUTPUTS["calibration"], pair.calibration)
    tree.save_vtp(work_dir / OUTPUTS["centreline"])
    save_tube_vtp(tree, work_dir / OUTPUTS["tube"])
    tree.save_json(work_dir / OUTPUTS["tree"])
    outputs = {k: v for k, v in OUTPUTS.items() if not k.startswith("vessel_probability")}
    for v, probability in enumerate(pair.probabilities, start=1):
        key = f"vessel_probability{v}"
        if probability is None:  # a given mask, or Frangi
            continue
        outputs[key] = f"{key}.nrrd"
        write_volume(Volume(probability[None].astype(np.float32), image_grid(spec, f"image{v}"),
                            meta={"quantity": "vessel probability"}), work_dir / outputs[key])  # fmt: skip
    summary = {"pipeline": PIPELINE, "xraycardiac_version": __version__, **pair.summary(), "outputs": outputs}
    if any(phases):  # a view given as a multi-frame run: which frame, and why
        summary["frames"] = {f"view{v}": p for v, p in enumerate(phases, start=1) if p}
    _write_json(work_dir / OUTPUTS["report"], summary)
    progress("done", 1.0)
    return summary
