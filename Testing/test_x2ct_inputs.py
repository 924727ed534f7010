"""Radiographs as they come (issue 21): DICOM DX/CR, PNG/JPEG, drr NRRDs; intensity model; input check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner
from x2ct_helpers import AE, CONFIG, ENC, FAST, LDM, G

from xraycardiac.cli import app
from xraycardiac.geometry import CArmGeometry, geometry_from_dicom
from xraycardiac.io import write_volume
from xraycardiac.projection import MU_WATER_PER_MM, DRRConfig, render_drr
from xraycardiac.radiograph import read_radiograph
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.input_stats import InputStats, check_not_blank, compute_input_stats, score_views
from xraycardiac.xray2ct.intensity import IntensityOptions, fit_to_reference, relative_attenuation

# ------------------------------------------------------------------------------------------ DICOM DX


def _dx(path: Path, pixels: np.ndarray | None = None, drop: tuple[str, ...] = (), **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1800.0, 1650.0
    ds.ImagerPixelSpacing = [0.5, 0.4]
    pixels = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) if pixels is None else pixels
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    for k in drop:
        delattr(ds, k)
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("view", "primary"), [("PA", 0.0), ("AP", 180.0), ("LL", 90.0), ("RL", -90.0)])
def test_dx_geometry_from_view_position_distances_and_spacing(
    tmp_path: Path, view: str, primary: float
) -> None:
    g = geometry_from_dicom(_dx(tmp_path / "dx.dcm", ViewPosition=view))
    assert (g.primary_angle_deg, g.secondary_angle_deg, g.sid_mm, g.sod_mm) == (primary, 0.0, 1800.0, 1650.0)
    assert (g.detector_rows, g.detector_cols, g.pixel_spacing_mm) == (24, 20, (0.5, 0.4))
    assert g.extra["sources"]["sid_mm"].startswith("DistanceSourceToDetector")
    # the beam runs from the source through the isocentre toward the detector: PA = posterior -> anterior
    expected = {"PA": [0, 1, 0], "AP": [0, -1, 0], "LL": [-1, 0, 0], "RL": [1, 0, 0]}[view]
    np.testing.assert_allclose(g.beam_direction, expected, atol=1e-12)


def test_dx_fallbacks_overrides_and_missing_tags(tmp_path: Path) -> None:
    # PixelSpacing (at the patient) scaled by SID / SOD; SOD from the magnification factor
    g = geometry_from_dicom(_dx(tmp_path / "a.dcm", drop=("ImagerPixelSpacing", "DistanceSourceToPatient"),
                                PixelSpacing=[0.3, 0.3], EstimatedRadiographicMagnificationFactor=1.2))  # fmt: skip
    assert g.sod_mm == pytest.approx(1500.0) and g.pixel_spacing_mm == pytest.approx((0.36, 0.36))
    assert "EstimatedRadiographicMagnificationFactor" in g.extra["sources"]["sod_mm"]
    path = _dx(tmp_path / "b.dcm", drop=("DistanceSourceToDetector", "ViewPosition"))
    with pytest.raises(ValueError, match=r"ViewPosition \(0018,5101\).*--view-pa"):
        geometry_from_dicom(path)
    with pytest.raises(ValueError, match=r"DistanceSourceToDetector \(0018,1110\).*--sid-mm"):
        geometry_from_dicom(path, overrides={"view": "PA"})
    g = geometry_from_dicom(path, overrides={"view": "LL", "sid_mm": 2000.0})
    assert (g.primary_angle_deg, g.sid_mm, g.extra["sources"]["sid_mm"]) == (90.0, 2000.0, "given")
    with pytest.raises(ValueError, match="'LLD'"):
        geometry_from_dicom(_dx(tmp_path / "c.dcm", ViewPosition="LLD"))


def test_geometry_command_accepts_dx(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["geometry", str(_dx(tmp_path / "dx.dcm", ViewPosition="LL"))])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["primary_angle_deg"] == 90.0 and d["sid_mm"] == 1800.0 and d["pixel_spacing_mm"] == [0.5, 0.4]


def test_dx_pixels_polarity_rescale_window_and_relationship(tmp_path: Path) -> None:
    stored = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20)
    r = read_radiograph(_dx(tmp_path / "p.dcm", stored, PhotometricInterpretation="MONOCHROME1", RescaleSlope=2,
                            RescaleIntercept=-100, WindowCenter=400, WindowWidth=600), "pa")  # fmt: skip
    np.testing.assert_array_equal(r.pixels, stored * 2.0 - 100.0)
    assert (r.encoding, r.inverted, r.display_range) == ("display", True, (100.0, 700.0))
    assert r.geometry is not None and r.geometry.sid_mm == 1800.0 and "DICOM DX header" in r.geometry_source
    lin = read_radiograph(_dx(tmp_path / "lin.dcm", PixelIntensityRelationship="LIN",
                              PixelIntensityRelationshipSign=1), "pa")  # fmt: skip
    assert (lin.encoding, lin.inverted) == ("linear", True)
    log = read_radiograph(_dx(tmp_path / "log.dcm", PixelIntensityRelationship="LOG",
                              PixelIntensityRelationshipSign=-1), "pa")  # fmt: skip
    assert (log.encoding, log.inverted) == ("log", False)
    nogeo = read_radiograph(_dx(tmp_path / "n.dcm", drop=("DistanceSourceToPatient",)), "pa")
    assert nogeo.geometry is None and "DistanceSourceToPatient" in nogeo.geometry_source
    given = read_radiograph(tmp_path / "n.dcm", "pa", {"sod_mm": 1500.0})
    assert given.geometry.sod_mm == 1500.0 and "sod_mm: given" in given.geometry_source


# ------------------------------------------------------------------------------------------ pictures


def test_pictures_grey_rgb_and_colour(tmp_path: Path) -> None:
    grey = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    r = read_radiograph(tmp_path / "g8.png", "pa")
    assert (r.encoding, r.display_range, r.geometry) == ("display", (0.0, 255.0), None)
    assert "carries no geometry" in r.geometry_source
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert read_radiograph(tmp_path / "g16.png", "pa").display_range == (0.0, 65535.0)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb_grey.png")
    r = read_radiograph(tmp_path / "rgb_grey.png", "pa")
    assert any("RGB picture read as grey" in n for n in r.notes)
    np.testing.assert_allclose(r.pixels, grey, atol=0.5)
    colour = np.stack([grey, 255 - grey, grey // 2], axis=-1).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"inputs\.pa: colour\.png is a colour picture"):
        read_radiograph(tmp_path / "colour.png", "pa")
    # geometry flags make a geometry, all three or none
    g = read_radiograph(
        tmp_path / "g8.png", "lateral", {"sid_mm": 1800, "sod_mm": 1600, "pixel_spacing_mm": 1.5}
    )
    assert g.geometry.primary_angle_deg == 90.0 and g.geometry.detector_rows == 32
    assert g.geometry_source.startswith("given by the user")
    with pytest.raises(ValueError, match="missing: --sod-mm, --pixel-mm"):
        read_radiograph(tmp_path / "g8.png", "pa", {"sid_mm": 1800})


# -------------------------------------------------------------------------------- drr NRRD header


def _ct() -> Volume:
    a = np.full((16, 16, 16), -1000.0, np.float32)
    a[4:12, 5:11, 3:13] = 300.0
    return Volume(a, np.diag([8.0, 8.0, 8.0, 1.0]))


def test_drr_nrrd_header_geometry_is_read_back(tmp_path: Path) -> None:
    geometry = CArmGeometry.preset("lateral", detector_rows=24, detector_cols=20, pixel_spacing_mm=(4.0, 4.0),
                                   isocenter_ras_mm=(60.0, 55.0, 70.0))  # fmt: skip
    write_volume(render_drr(_ct(), geometry, DRRConfig(), "cpu"), tmp_path / "lat.nrrd")
    r = read_radiograph(tmp_path / "lat.nrrd", "lateral")
    assert r.geometry == geometry, r.geometry_source
    np.testing.assert_allclose(r.geometry.projection_matrix(), geometry.projection_matrix())
    assert r.encoding == "line-integral" and r.geometry_source.startswith("file header")
    text = (tmp_path / "lat.nrrd").read_bytes()
    assert b"xraycardiac_geometry" in text


def test_drr_command_isocenter(tmp_path: Path) -> None:
    write_volume(_ct(), tmp_path / "ct.nrrd")
    result = CliRunner().invoke(app, ["drr", str(tmp_path / "ct.nrrd"), "--out", str(tmp_path / "d"), "--view", "pa",
                                      "--isocenter", "10,-20,30", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "PA.geometry.json").read_text())["isocenter_ras_mm"] == [
        10.0,
        -20.0,
        30.0,
    ]
    assert read_radiograph(tmp_path / "d" / "PA.nrrd", "pa").geometry.isocenter_ras_mm == (10.0, -20.0, 30.0)
    bad = CliRunner().invoke(app, ["drr", str(tmp_path / "ct.nrrd"), "--out", str(tmp_path / "e"),
                                   "--isocenter", "1,2"])  # fmt: skip
    assert bad.exit_code != 0 and "R,A,S" in bad.output


# ------------------------------------------------------------------------------------ intensity model


def _lines() -> np.ndarray:
    """A smooth chest-like (64, 64) image of line integrals (0 = air at the sides, 5 at the spine)."""
    u, v = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64))
    body = np.clip(1.0 - (u / 0.8) ** 2, 0, None) * 3.0
    inside = body > 0
    return np.clip(body + 2.0 * np.exp(-((u / 0.12) ** 2)) * inside + 0.3 * np.sin(5 * v) * inside, 0, None)


def _png8(lines: np.ndarray, gamma: float = 0.7, gain: float = 1.2) -> np.ndarray:
    lo, hi = np.percentile(lines, [1.0, 99.8])
    return np.round(255 * (1 - np.clip(gain * (lines - lo) / (hi - lo), 0, 1) ** gamma)).astype(np.uint8)


def test_png_export_maps_back_to_line_integrals(tmp_path: Path) -> None:
    lines = _lines()
    Image.fromarray(_png8(lines)).save(tmp_path / "v.png")
    r = read_radiograph(tmp_path / "v.png", "pa")
    x, rec = relative_attenuation(r, IntensityOptions(invert=True, gamma=0.7))
    ok = (x > 0.01) & (x < 0.99)  # neither clipped by the 1.2 gain nor at the air floor
    corr = np.corrcoef(x[ok], lines[ok])[0, 1]
    print(
        f"PNG (gamma 0.7, x1.2, MONOCHROME1) vs line integrals: r = {corr:.5f}, saturated {rec['saturated']}"
    )
    assert corr > 0.999 and rec["saturated"][1] > 0.01
    # without --invert the values fall with attenuation
    wrong, _ = relative_attenuation(r, IntensityOptions(invert=False, gamma=0.7))
    assert np.corrcoef(wrong[ok], lines[ok])[0, 1] < -0.95
    # the scale fit recovers the line integrals from the quantiles alone; gamma "auto" finds 0.7
    ref = np.quantile(lines, np.linspace(0, 1, 101))
    view, rec = fit_to_reference(x, ref, rec | {"gamma": 1.0})
    err = np.abs(view - lines)[ok]
    x_auto, rec_auto = relative_attenuation(r, IntensityOptions(invert=True))
    view_auto, rec_auto = fit_to_reference(x_auto, ref, rec_auto)
    print(
        f"scale fit: max |err| {err.max():.3f} (of {lines.max():.2f}); gamma estimate {rec_auto['gamma_estimate']}"
    )
    assert err.max() < 0.06 and rec_auto["gamma_estimate"] == pytest.approx(0.7, rel=0.08)
    assert np.abs(view_auto - lines)[ok].max() < 0.12


def test_transmission_dicom_gives_line_integrals(tmp_path: Path) -> None:
    lines = _lines()
    r = read_radiograph(_dx(tmp_path / "t.dcm", np.round(4095 * np.exp(-lines)), PixelIntensityRelationship="LIN",
                            PixelIntensityRelationshipSign=1, PhotometricInterpretation="MONOCHROME1"), "pa")  # fmt: skip
    x, rec = relative_attenuation(r, IntensityOptions())
    assert rec["absolute"] and r.encoding == "linear"
    keep = lines < 4  # 12-bit quantisation of exp(-L) leaves little above L = 4
    print(f"LIN DX: max |L - L_true| {np.abs(x - lines)[keep].max():.4f}")
    assert np.abs(x - lines)[keep].max() < 0.02


# ---------------------------------------------------------------------------- out-of-distribution


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-phantom 16³ cache, a 3-step biplanar bundle with its input statistics, and a view pair."""
    from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
    from xraycardiac.xray2ct.bundle import write_bundle
    from xraycardiac.xray2ct.data import build_cache, view_geometries
    from xraycardiac.xray2ct.train import train_x2ct_encoder, train_x2ct_ldm

    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("x2ct_inputs")
    cache = root / "cache"
    build_cache(["phantom:0-5"], cache, CONFIG)
    train_x2ct_autoencoder(cache, root / "ae", overrides=[*AE, *FAST], split="all")
    train_x2ct_encoder(cache, root / "enc", root / "ae", overrides=[*ENC, *FAST], split="all")
    train_x2ct_ldm(cache, root / "ldm", root / "ae", root / "enc", overrides=[*LDM, *FAST], split="all")
    write_bundle(root / "model", root / "ae", root / "enc", root / "ldm", name="x2ct-in")
    compute_input_stats(cache, "all").save(root / "model" / "input_stats.json")
    with np.load(cache / "cases" / "phantom_00000.npz") as z:
        views = z["views"].astype(np.float64) * MU_WATER_PER_MM * CONFIG.drr_water_mm
    geoms = view_geometries(CONFIG, (0.0, 0.0, 0.0))
    files = {"root": root, "model": root / "model", "cache": cache}
    for k, name in enumerate(("pa", "lateral")):
        files[name] = root / f"{name}.nrrd"
        meta = {"kind": "drr", "geometry": {k2: v for k2, v in geoms[name].to_dict().items() if k2 != "extra"},
                "projection_matrix": geoms[name].projection_matrix().ravel().tolist()}  # fmt: skip
        write_volume(
            Volume(views[k][None].astype(np.float32), geoms[name].detector_ijk_to_ras(), meta), files[name]
        )
        np.save(root / f"{name}.npy", views[k])
        Image.fromarray(_png8(views[k], gamma=1.0, gain=1.0)).save(root / f"{name}.png")
    print(f"fixture: cache, bundle, statistics in {time.perf_counter() - t0:.1f} s")
    return files


def test_input_statistics_score_flags_inverted_and_noise_not_held_cases(setup) -> None:
    from xraycardiac.xray2ct.data import X2CTDataset

    stats = InputStats.load(setup["model"] / "input_stats.json")
    assert stats.threshold >= 8.0 and (setup["model"] / "input_stats.json").stat().st_size < 20_000
    data = X2CTDataset(setup["cache"], "all")
    rng = np.random.default_rng(0)
    for i in range(len(data)):
        v = {n: data[i]["views"][k].numpy().astype(np.float64) for k, n in enumerate(stats.views)}
        assert not score_views(v, stats)["flagged"]
        inverted = score_views({n: x.max() - x for n, x in v.items()}, stats)
        noise = score_views({n: rng.uniform(0, x.max(), x.shape) for n, x in v.items()}, stats)
        assert inverted["flagged"] and noise["flagged"], (inverted["score"], noise["score"])
    for image in (np.zeros((G, G)), np.full((G, G), 3.5)):
        with pytest.raises(ValueError, match=r"inputs\.pa: .* (constant|blank)"):
            check_not_blank(image, "pa")


def _generate(setup, out: Path, *args: str) -> object:
    base = ["x2ct", "generate", "--model", str(setup["model"]), "--steps", "2", "--samples", "2", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    return CliRunner().invoke(app, [*base, *args])


def test_generate_reads_the_header_geometry_and_says_so(setup, tmp_path: Path) -> None:
    ok = _generate(setup, tmp_path / "ok", "--pa", str(setup["pa"]), "--lateral", str(setup["lateral"]))
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["views"]["pa"]["geometry"].startswith("file header"), report["views"]["pa"]
    assert "pa geometry: file header" in ok.output and "input check: in range" in ok.output
    assert report["input_check"]["flagged"] is False
    # a picture without geometry: the training view is ASSUMED and the console, report say so
    png = _generate(setup, tmp_path / "png", "--pa", str(setup["root"] / "pa.png"), "--lateral",
                    str(setup["root"] / "lateral.png"), "--gamma", "1")  # fmt: skip
    assert png.exit_code == 0, png.output
    assert "ASSUMED" in png.output and "--geometry-pa" in png.output
    assert json.loads((tmp_path / "png" / "report.json").read_text())["views"]["lateral"][
        "geometry"
    ].startswith("ASSUMED")


def test_generate_warns_on_inverted_and_refuses_blank(setup, tmp_path: Path) -> None:
    for name in ("pa", "lateral"):
        x = np.load(setup["root"] / f"{name}.npy")
        np.save(tmp_path / f"{name}_inv.npy", x.max() - x)
        np.save(tmp_path / f"{name}_blank.npy", np.zeros_like(x))
    inv = _generate(setup, tmp_path / "inv", "--pa", str(tmp_path / "pa_inv.npy"), "--lateral",
                    str(tmp_path / "lateral_inv.npy"))  # fmt: skip
    assert inv.exit_code == 0, inv.output
    assert "WARNING: input unlike the training data" in inv.output and "--invert" in inv.output
    assert json.loads((tmp_path / "inv" / "report.json").read_text())["input_check"]["flagged"] is True
    blank = _generate(setup, tmp_path / "blank", "--pa", str(tmp_path / "pa_blank.npy"), "--lateral",
                      str(tmp_path / "lateral_blank.npy"))  # fmt: skip
    assert blank.exit_code == 1 and "inputs.pa" in blank.output and "constant" in blank.output, blank.output
    assert not (tmp_path / "blank").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".blank.")]
    # the overwrite rule: an existing output is refused without --overwrite
    again = _generate(setup, tmp_path / "inv", "--pa", str(tmp_path / "pa_inv.npy"), "--lateral",
                      str(tmp_path / "lateral_inv.npy"))  # fmt: skip
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_panel_intensity_choices_are_the_readers() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
    from XRayToCTLib.choices import INTENSITY_CHOICES

    from xraycardiac.radiograph import ENCODINGS

    assert INTENSITY_CHOICES == ("auto", *ENCODINGS)


def test_installed_bundle_keeps_its_input_statistics(setup, xraycardiac_home) -> None:
    from xraycardiac.xray2ct.bundle import import_bundle, load_bundle
    from xraycardiac.xray2ct.input_stats import find_input_stats

    entry = import_bundle(setup["model"])
    bundle = load_bundle(entry.name)
    stats, where = find_input_stats(bundle.source["folder"], bundle.source["model"], bundle.data_config)
    assert stats is not None and where.endswith("input_stats.json"), where
    assert Path(where).parent != setup["model"]  # the installed copy, not the source folder
