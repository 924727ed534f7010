"""Pipeline ``coronary-reconstruct``: two angiograms -> matched keypoints, refined view 2, 3D centreline.

Steps (Zhao et al. 2025, the downstream use of the matcher; pixels (u = column, v = row), RAS mm):

1. **match**: :func:`xraycardiac.coronary.matching.evaluate.parse_method` of ``method`` (``vessel+epipolar``
   by default; ``sift``, ``orb``, ``vessel`` with ``+ransac`` / ``+epipolar`` / ``+none``,
   ``matcher:<model>``, ``matcher-nofm:<model>``) on the two images, ``foundation`` (``family:/path``)
   for the learned matcher's foundation model.
2. **refine** (``refine_calibration``): :func:`~xraycardiac.coronary.recon.reconstruct.calibrate_from_matches`
   from the matches, view 1 fixed. With fewer matches than the refinement needs
   (``CalibrationConfig.min_matches``) it is skipped, logged and recorded in ``calibration.json``
   (``refined: false`` with the reason): the recorded geometry is then used as it is.
3. **reconstruct**: :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_tree` on the vessel masks
   (``mask1`` / ``mask2``) when given, else on the images' segmentation
   (:func:`xraycardiac.coronary.segment.vessel_seg.segment_image`: ``segmentation`` "network", the
   learned ``coronary-vessel-seg-demo`` with its probability maps as outputs, or "frangi", the
   classical baseline). Given masks are the accurate path.
4. **plausibility** (:mod:`xraycardiac.coronary.recon.plausibility`): the fractions of points off the
   2D centrelines and outside the vessels (probability / mask) of either view; over their limits the
   report's ``plausibility.warnings`` say so, each is logged as a warning and ``status`` is
   ``"warning"`` instead of ``"ok"``.

Geometry: the images are 2D volume files (NRRD etc., K = 1 slice, values with vessels dark; images
outside [0, 1] are mapped to [0, 1] by their 0.5 / 99.5 percentiles); their C-arm geometry is not
read from the files but given as JSON files ``geometry1`` / ``geometry2`` (``CArmGeometry.to_dict()``,
e.g. ``XRayCardiac.Geometry`` of a Slicer node, or ``geometry_from_dicom`` of a DICOM XA header), so
that a frame's geometry never depends on how a writer stored the detector plane. Both are required
(the 3D reconstruction needs them); each must describe a detector of its own image's size. The two
images may therefore differ in size: each has its own geometry. Masks: same size as their image,
any value > 0 is vessel.

Job spec::

    {"pipeline": "coronary-reconstruct",
     "inputs": {"image1": "view1.nrrd", "image2": "view2.nrrd",
                "geometry1": "view1.geometry.json", "geometry2": "view2.geometry.json",
                "mask1": "mask1.nrrd", "mask2": "mask2.nrrd"},           # masks optional
     "params": {"method": "vessel+epipolar", "foundation": null, "refine_calibration": true,
                "epipolar_tolerance_px": 3.0, "device": "auto", "segmentation": "network"},
     "output_dir": "out/"}

Outputs: ``matches.json`` (method, x1, x2 (M, 2) pixels, scores (M,)), ``geometry2_refined.json``
(view 2 as used: refined, or the recorded one when not), ``calibration.json`` (refined or not and
why, the reprojection error of the matches before / after, pixels, the corrections),
``vessel_probability1.nrrd`` / ``2`` (the network's vessel probability of each segmented view, on the
image's grid), ``centreline.vtp`` (polylines with ``Radius``, RAS), ``tube.vtp`` (tube surface), ``tree.json``
(:class:`~xraycardiac.anatomy.coronary_tree.CoronaryTree`), ``report.json`` (the summary).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.segment.vessel_seg import SEGMENTATIONS
from xraycardiac.jobs.inputs import read_geometry_input, read_view
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec
from xraycardiac.outputs import write_json_atomic

__all__ = ["DEFAULT_METHOD", "OUTPUTS", "PARAMS", "PIPELINE", "run_coronary_reconstruct"]

PIPELINE = "coronary-reconstruct"
DEFAULT_METHOD = "vessel+epipolar"
PARAMS = ("method", "foundation", "refine_calibration", "epipolar_tolerance_px", "device", "segmentation")
OUTPUTS = {
    "matches": "matches.json",
    "geometry2_refined": "geometry2_refined.json",
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


def _vessel_mask(
    spec: JobSpec, view: int, image: np.ndarray, method: str, device: str
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(bool vessel mask, source "mask" / "network" / "frangi", probability or None) of view ``view``;
    a ValueError when the mask is empty."""
    key = f"mask{view}"
    if key in spec.inputs:
        mask = read_view(spec.input_path(key), key) > 0
        if mask.shape != image.shape:
            raise ValueError(
                f"inputs.{key}: {mask.shape[0]} x {mask.shape[1]} pixels, but inputs.image{view} is "
                f"{image.shape[0]} x {image.shape[1]}; a mask must be the size of its image"
            )
        if not mask.any():
            raise ValueError(f"no vessel found in image {view}: inputs.{key} is empty (no pixel > 0)")
        return mask, "mask", None
    from xraycardiac.coronary.segment.vessel_seg import segment_image

    seg = segment_image(image, method, device=device)
    if not seg.mask.any():
        raise ValueError(
            f"no vessel found in image {view}: the {method} segmentation is empty; check that "
            f"inputs.image{view} is an angiogram with contrast (vessels dark), or give inputs.mask{view}"
        )
    return seg.mask, method, seg.probability


def _params(spec: JobSpec) -> dict[str, Any]:
    """The checked parameters with their defaults."""
    spec.check_param_names(PARAMS)
    method = spec.param("method", DEFAULT_METHOD, str).strip()
    if not method:
        raise ValueError(f"params.method: expected a method name such as {DEFAULT_METHOD!r}, got ''")
    foundation = spec.param("foundation", None, (str, type(None)))
    foundation = foundation.strip() or None if isinstance(foundation, str) else None
    if foundation is not None and not method.startswith("matcher:"):
        raise ValueError(
            f"params.foundation: a foundation model is used by the learned matcher only "
            f"(method 'matcher:<model>'), but method is {method!r}; leave foundation empty"
        )
    segmentation = spec.param("segmentation", "network", str)
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"params.segmentation: expected one of {SEGMENTATIONS}, got {segmentation!r}")
    tolerance = spec.param("epipolar_tolerance_px", 3.0, float)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"params.epipolar_tolerance_px: expected pixels > 0, got {tolerance!r}")
    return {
        "method": method,
        "foundation": foundation,
        "refine_calibration": spec.param("refine_calibration", True, bool),
        "epipolar_tolerance_px": tolerance,
        "device": spec.param("device", "auto", str),
        "segmentation": segmentation,
    }


def _uses_epipolar(method: str) -> bool:
    return method.endswith("+epipolar")


@register(PIPELINE)
def run_coronary_reconstruct(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Match, refine view 2 and reconstruct the 3D centreline of two angiograms (module docstring)."""
    from xraycardiac import __version__
    from xraycardiac.coronary.recon.pipeline import reconstruct_pair, unit_range
    from xraycardiac.coronary.recon.reconstruct import save_tube_vtp
    from xraycardiac.runtime import select_device

    params = _params(spec)
    method = params["method"]
    progress("reading inputs", 0.0)
    images = [read_view(spec.input_path(f"image{v}"), f"image{v}") for v in (1, 2)]
    for v in (1, 2):
        if f"geometry{v}" not in spec.inputs:
            why = (
                f"method {method!r} filters matches by the epipolar lines of the known geometry"
                if _uses_epipolar(method)
                else "the 3D reconstruction triangulates through both views"
            )
            raise ValueError(
                f"inputs.geometry{v}: missing; {why}: give the C-arm geometry of image {v} "
                "(a CArmGeometry JSON, e.g. read from its DICOM XA header)"
            )
    g1, g2 = (read_geometry_input(spec, f"geometry{v}", images[v - 1].shape, f"image{v}") for v in (1, 2))
    device = str(select_device(params["device"]))
    masks = [_vessel_mask(spec, v, unit_range(images[v - 1]), params["segmentation"], device) for v in (1, 2)]
    probs = [m[2] for m in masks]
    pair = reconstruct_pair(
        (images[0], images[1]), (g1, g2), (masks[0][0], masks[1][0]), method,
        refine_calibration=params["refine_calibration"], epipolar_tolerance_px=params["epipolar_tolerance_px"],
        device=device, foundation=params["foundation"], progress=progress,
        log=lambda m: progress.log(m, level="warning"),
        vessel_maps=(probs[0], probs[1]) if all(p is not None for p in probs) else None,
    )  # fmt: skip
    tree, calibration = pair.result.tree, pair.calibration
    tree.meta.update({"method": method, "refined": calibration["refined"]})

    progress("writing outputs", 0.9)
    _write_json(
        work_dir / OUTPUTS["matches"],
        {
            "method": method,
            "method_name": pair.matcher.name,
            "method_info": json.loads(json.dumps(pair.matcher.info, default=str)),
            "keypoints1": len(pair.match.keypoints1),
            "keypoints2": len(pair.match.keypoints2),
            "x1": pair.x1.tolist(),
            "x2": pair.x2.tolist(),
            "scores": pair.scores.tolist(),
            "seconds": float(pair.match.seconds),
        },
    )
    _write_json(work_dir / OUTPUTS["geometry2_refined"], pair.geometry2.to_dict())
    _write_json(work_dir / OUTPUTS["calibration"], calibration)
    tree.save_vtp(work_dir / OUTPUTS["centreline"])
    save_tube_vtp(tree, work_dir / OUTPUTS["tube"])
    tree.save_json(work_dir / OUTPUTS["tree"])
    outputs = dict(OUTPUTS)
    for v, prob in enumerate(probs, start=1):
        key = f"vessel_probability{v}"
        if prob is None:
            del outputs[key]
            continue
        from xraycardiac.io import read_volume, write_volume
        from xraycardiac.volume import Volume

        src = spec.input_path(f"image{v}")  # the probability lies on its image's grid
        affine = np.eye(4) if src.suffix.lower() == ".npy" else read_volume(src).ijk_to_ras
        volume = Volume(prob[None].astype(np.float32), affine, meta={"quantity": "vessel probability"})
        write_volume(volume, work_dir / OUTPUTS[key])
    summary = {
        "status": "ok" if pair.plausibility["plausible"] else "warning",
        "pipeline": PIPELINE,
        "xraycardiac_version": __version__,
        "params": params,
        "device": device,
        "vessels": {f"view{v}": masks[v - 1][1] for v in (1, 2)},
        "image_shapes": [list(im.shape) for im in images],
        "matches": len(pair.x1),
        "calibration": {
            k: calibration[k] for k in ("refined", "reason", "error_before_px", "error_after_px")
        },
        "reconstruction": {
            "points": int(tree.num_points),
            "branches": len(tree.branch_names),
            "seeds": len(pair.seeds[0]),
            **{k: v for k, v in pair.result.stats.items() if isinstance(v, int | float)},
        },
        "plausibility": pair.plausibility,
        "outputs": outputs,
    }
    _write_json(work_dir / OUTPUTS["report"], summary)
    progress("done", 1.0)
    return summary
