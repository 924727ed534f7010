"""XRayToCT's "Generate CT" logic on a real ``vtkMRMLScene`` (slicer-core), end to end through the real
``x2ct-generate`` job in a child process.

The model is a tiny biplanar bundle trained here for 3 steps on a 2-phantom 16³ cache (16 mm voxels),
made as ``test_x2ct_generate.py`` makes its bundles; its output is noise-like, so the tests check
geometry, bookkeeping and failure handling, not image quality. The PA and lateral nodes are made by
"Simulate radiographs" (``SimulateRadiographsLogic``) from a chest phantom node centred off the origin,
so they carry ``XRayCardiac.Geometry`` / ``ProjectionMatrix`` exactly as the panel's nodes do.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
import vtk
from x2ct_helpers import AE, CONFIG, ENC, FAST, LDM, G
from XRayCardiacCommonLib.jobs import JobCancelled, JobError
from XRayCardiacCommonLib.mrml_io import GEOMETRY_ATTRIBUTE, node_from_volume, read_attributes
from XRayToCTLib import (
    X2CT_DEFAULT_SAMPLES,
    X2CT_DEFAULT_STEPS,
    X2CT_MAX_SAMPLES,
    X2CT_MAX_STEPS,
)
from XRayToCTLib.generate import (
    GEOMETRY_DEFAULT,
    GEOMETRY_FROM_NODE,
    METRIC_ROWS,
    GenerateCTLogic,
    describe_result,
    installed_x2ct_models,
    resolve_model,
)
from XRayToCTLib.simulate import SimulateRadiographsLogic, build_views

import xraycardiac.jobs.x2ct_generate as job_module
from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
from xraycardiac.xray2ct.bundle import import_bundle, write_bundle
from xraycardiac.xray2ct.data import build_cache, cube_ijk_to_ras
from xraycardiac.xray2ct.train import train_x2ct_encoder, train_x2ct_ldm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CENTRE = np.array([12.0, -20.0, 30.0])  # the phantom's centre in RAS: the DRRs' (and the CT cube's) isocentre
PIXELS, PIXEL_MM = 32, 18.4  # a 589 mm detector: holds the 256 mm cube magnified by SID / SOD


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _remove(scene, nodes) -> None:
    for node in nodes:
        if node is None:
            continue
        display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(node)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A biplanar 3-step x2ct bundle on a 2-phantom 16³ cache."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("xraytoct_generate")
    cache = root / "cache"
    build_cache(["phantom:0-1"], cache, CONFIG)
    train_x2ct_autoencoder(cache, root / "ae", overrides=[*AE, *FAST],
                           split="all")  # fmt: skip
    train_x2ct_encoder(cache, root / "enc", root / "ae", overrides=[*ENC, *FAST], split="all")
    train_x2ct_ldm(cache, root / "ldm", root / "ae", root / "enc", overrides=[*LDM, *FAST], split="all")
    write_bundle(root / "model", root / "ae", root / "enc", root / "ldm", name="x2ct-tiny")
    print(f"\nfixture: cache + tiny bundle in {time.perf_counter() - t0:.1f} s")
    return root / "model"


@pytest.fixture(scope="module")
def scene_views():
    """(scene, {"ct", "pa", "lateral"}): a chest phantom at CENTRE and its simulated PA + lateral DRRs."""
    ct, _ = make_chest_phantom(ChestPhantomConfig(shape_ijk=(48, 48, 48), spacing_mm=8.0, seed=5))
    a = ct.ijk_to_ras.copy()
    a[:3, 3] += CENTRE  # make_chest_phantom centres the grid on RAS (0, 0, 0)
    scene = slicer.vtkMRMLScene()
    ct_node = node_from_volume(scene, Volume(ct.array, a), "phantom")
    t0 = time.perf_counter()
    views = build_views("PA + lateral", detector_rows=PIXELS, detector_cols=PIXELS, pixel_spacing_mm=PIXEL_MM)
    pa, lateral = SimulateRadiographsLogic(scene).run(ct_node, views, device="cpu", timeout_s=240)
    print(f"\nsimulated PA + lateral {PIXELS} px in {time.perf_counter() - t0:.1f} s")
    return scene, {"ct": ct_node, "pa": pa, "lateral": lateral}


def _plain_copy(scene, node, name: str):
    """A copy of a radiograph node without its C-arm geometry attributes."""
    m = _matrix(node)
    return node_from_volume(scene, Volume(slicer.util.arrayFromVolume(node).copy(), m), name)


def test_constants_match_the_job() -> None:
    assert (X2CT_DEFAULT_STEPS, X2CT_MAX_STEPS) == (job_module.DEFAULT_STEPS, job_module.MAX_STEPS)
    assert (X2CT_DEFAULT_SAMPLES, X2CT_MAX_SAMPLES) == (job_module.DEFAULT_SAMPLES, job_module.MAX_SAMPLES)


def test_generate_from_simulated_views(bundle, scene_views) -> None:
    scene, nodes = scene_views
    before = scene.GetNumberOfNodes()
    logic = GenerateCTLogic(scene)
    t0 = time.perf_counter()
    run = logic.start(nodes["pa"], nodes["lateral"], model=str(bundle), steps=3, samples=2, seed=7,
                      device="cpu", reference_node=nodes["ct"], add_direct=True)  # fmt: skip
    assert scene.GetNumberOfNodes() == before, "start changed the scene"
    assert run.geometry == {"pa": GEOMETRY_FROM_NODE, "lateral": GEOMETRY_FROM_NODE}, run.geometry
    work_dir = run.work_dir
    logic.wait(run, timeout_s=240)
    result = logic.import_results(run)
    took = time.perf_counter() - t0
    print(f"\ngenerate K=2, 3 steps, with reference: {took:.1f} s; {result.text}")
    try:
        assert not work_dir.exists(), f"{work_dir} left behind"
        assert [n.GetName() for n in result.nodes] == [
            "phantom DRR PA CT", "phantom DRR PA CT uncertainty", "phantom DRR PA CT direct",
            "phantom DRR PA CT metrics",
        ]  # fmt: skip
        # 3 volumes with their display nodes, and the table
        assert scene.GetNumberOfNodes() == before + 7, scene.GetNumberOfNodes() - before
        expected = cube_ijk_to_ras(CONFIG, CENTRE)
        for node in (result.ct, result.uncertainty, result.direct):
            array = slicer.util.arrayFromVolume(node)
            assert array.shape == (G, G, G), (node.GetName(), array.shape)
            assert np.allclose(node.GetSpacing(), (16.0, 16.0, 16.0)), node.GetSpacing()
            assert np.allclose(_matrix(node), expected, atol=1e-3), (node.GetName(), _matrix(node))
            # the cube's centre voxel (7.5, 7.5, 7.5) is the PA isocentre, the phantom's centre
            centre = (_matrix(node) @ np.array([7.5, 7.5, 7.5, 1.0]))[:3]
            assert np.allclose(centre, CENTRE, atol=1e-3), centre
        ct = slicer.util.arrayFromVolume(result.ct)
        std = slicer.util.arrayFromVolume(result.uncertainty)
        assert -1000.0 <= ct.min() and ct.max() <= 1000.0, (ct.min(), ct.max())
        assert std.min() >= 0.0 and std.max() > 0.0, (std.min(), std.max())
        # the node says what the map is, as the report does (this bundle has no calibration: the std)
        content = read_attributes(result.uncertainty)["Content"]
        assert content == result.report["uncertainty"] and "NOT calibrated" in content, content
        assert f"Uncertainty: {content}" in result.text, result.text
        table = result.table
        assert table.GetNumberOfRows() == len(METRIC_ROWS) and table.GetNumberOfColumns() == 4
        assert [table.GetCellText(r, 0) for r in range(4)] == ["PSNR", "SSIM 3D", "SSIM slice-wise", "MAE"]
        metrics = result.report["metrics"]
        assert float(table.GetCellText(0, 1)) == pytest.approx(metrics["ct"]["psnr_db"], rel=1e-5)
        assert float(table.GetCellText(3, 2)) == pytest.approx(metrics["direct"]["mae_hu"], rel=1e-5)
        assert 0.0 < metrics["ct"]["psnr_db"] < 100.0 and metrics["reference"] == "resampled", metrics["ct"]
        assert "PSNR" in result.text and "from the node" in result.text, result.text
        bundle_info = json.loads((bundle / "model.json").read_text())
        for node in result.nodes:
            attrs = read_attributes(node)
            assert attrs["Pipeline"] == "x2ct-generate", (node.GetName(), attrs)
            assert attrs["ModelName"] == "x2ct-tiny" and attrs["ModelSha256"] == bundle_info["sha256"], attrs
            assert set(attrs["ModelFilesSha256"]) == {"autoencoder", "encoder", "ldm"}, attrs
            assert (attrs["Seed"], attrs["Steps"], attrs["Samples"], attrs["Device"]) == (7, 3, 2, "cpu"), (
                attrs
            )
            assert attrs["SourceNodes"] == {"pa": nodes["pa"].GetID(), "lateral": nodes["lateral"].GetID(),
                                            "reference": nodes["ct"].GetID()}  # fmt: skip
            assert attrs["GeometrySource"] == run.geometry and attrs["PackageVersion"], attrs
    finally:
        _remove(scene, result.nodes)


def test_one_sample_and_default_geometry(bundle, scene_views) -> None:
    """Nodes without XRayCardiac.Geometry: the model's default views about RAS (0, 0, 0); K = 1: no std."""
    scene, nodes = scene_views
    pa, lateral = (
        _plain_copy(scene, nodes["pa"], "plain PA"),
        _plain_copy(scene, nodes["lateral"], "plain lat"),
    )
    before = scene.GetNumberOfNodes()
    try:
        t0 = time.perf_counter()
        result = GenerateCTLogic(scene).run(pa, lateral, model=str(bundle), steps=2, samples=1, device="cpu",
                                            timeout_s=240)  # fmt: skip
        print(f"\ngenerate K=1, 2 steps, default geometry: {time.perf_counter() - t0:.1f} s; {result.text}")
        assert result.geometry == {"pa": GEOMETRY_DEFAULT, "lateral": GEOMETRY_DEFAULT}, result.geometry
        assert result.uncertainty is None and result.direct is None and result.table is None
        assert "ASSUMED: the model's training view" in result.text and "needs 2 samples" in result.text, (
            result.text
        )
        assert np.allclose(_matrix(result.ct), cube_ijk_to_ras(CONFIG, (0.0, 0.0, 0.0)), atol=1e-3)
        assert scene.GetNumberOfNodes() == before + 2  # the CT and its display node
        assert read_attributes(result.ct)["GeometrySource"] == result.geometry
        _remove(scene, result.nodes)
    finally:
        _remove(scene, [pa, lateral])


def test_bad_inputs_name_the_parameter_and_leave_the_scene(bundle, scene_views) -> None:
    scene, nodes = scene_views
    pa, lat, ct = nodes["pa"], nodes["lateral"], nodes["ct"]
    small = node_from_volume(scene, Volume(np.zeros((1, 24, 24), np.float32), np.eye(4)), "small")
    labels = node_from_volume(scene, Volume(np.zeros((1, 32, 32), np.uint8), np.eye(4)), "labels",
                              node_class="vtkMRMLLabelMapVolumeNode")  # fmt: skip
    wrong = _plain_copy(scene, lat, "wrong geometry")
    geometry = json.loads(lat.GetAttribute(GEOMETRY_ATTRIBUTE))
    wrong.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps({**geometry, "detector_rows": 64, "detector_cols": 64}))
    before = scene.GetNumberOfNodes()
    logic = GenerateCTLogic(scene)
    model = str(bundle)
    cases = [
        ((ct, lat), {}, r"pa_node: 'phantom' is a 3D volume of 48 slices"),
        ((pa, ct), {}, r"lateral_node: 'phantom' is a 3D volume"),
        ((pa, small), {}, r"lateral_node: 'small' is 24 x 24 pixels but pa_node 'phantom DRR PA' is 32 x 32"),
        ((labels, lat), {}, r"pa_node: 'labels' is a label map"),
        ((pa, pa), {}, r"lateral_node: .* is also the PA view"),
        (
            (pa, wrong),
            {},
            r"lateral_node: 'wrong geometry' is 32 x 32 pixels but its geometry's detector is 64",
        ),
        ((None, lat), {}, r"pa_node: expected a scalar volume node"),
        ((pa, lat), {"model": "no-such-x2ct-model"}, r"model: model 'no-such-x2ct-model' is not known"),
        ((pa, lat), {"model": "/nowhere/model"}, r"model: /nowhere/model is not a bundle folder"),
        ((pa, lat), {"model": "angio-diffusion-demo"}, r"model: 'angio-diffusion-demo' is not an x2ct model"),
        ((pa, None), {}, r"lateral_node: model 'x2ct-tiny' is biplanar"),
        ((pa, lat), {"steps": 26}, r"steps: expected an integer in 1\.\.25"),
        ((pa, lat), {"samples": 0}, r"samples: expected an integer in 1\.\.64"),
        ((pa, lat), {"seed": -1}, r"seed: expected an integer in >= 0"),
        ((pa, lat), {"device": "gpu"}, r"device: expected one of"),
        ((pa, lat), {"reference_node": small}, r"reference_node: expected a 3D volume"),
    ]
    try:
        for (pa_node, lateral_node), options, message in cases:
            with pytest.raises(ValueError, match=message):
                logic.start(pa_node, lateral_node, **{"model": model, "device": "cpu", **options})
            assert scene.GetNumberOfNodes() == before, message
    finally:
        _remove(scene, [small, labels, wrong])


def test_resolve_model_and_installed_names(bundle, xraycardiac_home) -> None:
    info = resolve_model(str(bundle))
    assert (info["name"], info["mode"], info["grid"]) == ("x2ct-tiny", "biplanar", G), info
    assert info["model"] == str(bundle.resolve())
    packaged = installed_x2ct_models()  # the shipped demo bundle(s)
    assert "x2ct-tiny" not in packaged and "x2ct-demo" in packaged, packaged
    import_bundle(bundle)
    assert installed_x2ct_models() == sorted([*packaged, "x2ct-tiny"])
    by_name = resolve_model(" x2ct-tiny ")
    assert by_name["model"] == "x2ct-tiny" and by_name["mode"] == "biplanar", by_name
    with pytest.raises(ValueError, match=r"model: expected an x2ct model name"):
        resolve_model("  ")


def test_failed_job_adds_nothing(bundle, scene_views, tmp_path: Path) -> None:
    """A bundle whose encoder was changed after bundling: the job refuses it (sha256); no node is added."""
    scene, nodes = scene_views
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with (broken / "encoder.pt").open("ab") as f:
        f.write(b"tampered")
    before = scene.GetNumberOfNodes()
    logic = GenerateCTLogic(scene)
    run = logic.start(nodes["pa"], nodes["lateral"], model=str(broken), steps=2, samples=2, device="cpu")
    work_dir = run.work_dir
    status = logic.wait(run, timeout_s=240)
    assert status.state == "error", (status.state, status.message)
    print(f"\nfailed job: {status.message}")
    with pytest.raises(JobError, match="sha256"):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == before
    assert not work_dir.exists(), f"{work_dir} left behind"


def test_broken_output_adds_nothing(bundle, scene_views) -> None:
    """The job succeeds but its uncertainty file is unreadable: the CT node already added is removed."""
    scene, nodes = scene_views
    before = scene.GetNumberOfNodes()
    logic = GenerateCTLogic(scene)
    run = logic.start(nodes["pa"], nodes["lateral"], model=str(bundle), steps=2, samples=2, device="cpu")
    status = logic.wait(run, timeout_s=240)
    assert status.state == "done", (status.state, status.message)
    (Path(status.output_dir) / "uncertainty.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    with pytest.raises(ValueError, match=r"uncertainty\.nrrd: unreadable"):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == before
    assert run.work_dir is None


def test_cancel_adds_nothing(bundle, scene_views) -> None:
    scene, nodes = scene_views
    before = scene.GetNumberOfNodes()
    logic = GenerateCTLogic(scene)
    run = logic.start(nodes["pa"], nodes["lateral"], model=str(bundle), steps=25, samples=64, device="cpu")
    work_dir = run.work_dir
    deadline = time.monotonic() + 120
    while logic.poll(run).stage == "starting":  # the job has begun once it reports its first stage
        assert not run.status.finished, (run.status.state, run.status.message)
        assert time.monotonic() < deadline, "the job never reported a stage"
        time.sleep(0.05)
    stage = run.status.stage
    logic.cancel(run)
    print(f"\ncancelled at stage {stage!r}")
    assert run.status.state == "cancelled", run.status.state
    with pytest.raises(JobCancelled):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == before
    assert not work_dir.exists(), f"{work_dir} left behind"


def test_describe_result_without_metrics() -> None:
    report = {"params": {"samples": 4, "steps": 20}, "cube": {"grid": 64, "spacing_mm": 4.0},
              "model": {"name": "x2ct-demo"}, "device": "cpu", "uncertainty": "std", "metrics": None,
              "timing_s": {"total": 12.34, "load": 1.0, "generate": 10.0, "per_step": 0.5}}  # fmt: skip
    text = describe_result(report, "PA geometry from the node")
    assert text.startswith(
        "CT 64³ voxels of 4.0 mm, model x2ct-demo: 4 sample(s) x 20 steps on cpu in 12.3 s"
    )
    assert "PA geometry from the node." in text and "PSNR" not in text, text


def test_shipped_single_view_model_takes_the_pa_only(xraycardiac_home) -> None:
    from xraycardiac.xray2ct.bundle import load_bundle

    info = resolve_model("x2ct-single-demo")
    assert (info["mode"], info["grid"]) == ("single", 64), info
    bundle = load_bundle("x2ct-single-demo")
    assert bundle.views == ("pa",) and bundle.ldm.config.global_embedding, bundle.views
    assert "x2ct-single-demo" in installed_x2ct_models()


def test_describe_result_leads_with_the_input_warning_and_names_the_geometry() -> None:
    report = {"params": {"samples": 4, "steps": 20}, "cube": {"grid": 64, "spacing_mm": 4.0},
              "model": {"name": "x2ct-demo"}, "device": "cpu", "uncertainty": "std", "metrics": None,
              "timing_s": {"total": 12.34, "load": 1.0, "generate": 10.0, "per_step": 0.5},
              "views": {"pa": {"geometry": "ASSUMED: the model's training view"}},
              "input_check": {"flagged": True},
              "input_check_text": "WARNING: input unlike the training data (score 99.0, threshold 8.0)"}  # fmt: skip
    text = describe_result(report)
    assert text.startswith("WARNING: input unlike the training data"), text
    assert "pa geometry used: ASSUMED: the model's training view." in text, text


def test_node_without_geometry_takes_the_users_geometry_and_reading(bundle, scene_views) -> None:
    """A plain node (e.g. loaded from a PNG) with SID / SOD / pixel given: the job uses them and says so."""
    scene, nodes = scene_views
    pa, lateral = _plain_copy(scene, nodes["pa"], "png PA"), _plain_copy(scene, nodes["lateral"], "png lat")
    given = json.loads(nodes["pa"].GetAttribute(GEOMETRY_ATTRIBUTE))
    reading = {"sid_mm": given["sid_mm"], "sod_mm": given["sod_mm"], "pixel_mm": given["pixel_spacing_mm"][0],
               "intensity": "line-integral", "invert": None}  # fmt: skip
    try:
        with pytest.raises(ValueError, match=r"reading: unknown option\(s\) \['window'\]"):
            GenerateCTLogic(scene).start(pa, lateral, model=str(bundle), reading={"window": 3})
        with pytest.raises(ValueError, match=r"reading: sid_mm: expected a number > 0"):
            GenerateCTLogic(scene).start(pa, lateral, model=str(bundle), reading={"sid_mm": -1.0})
        result = GenerateCTLogic(scene).run(pa, lateral, model=str(bundle), steps=2, samples=1, device="cpu",
                                            reading=reading, timeout_s=240)  # fmt: skip
        print(f"\nplain nodes, geometry given: {result.text}")
        assert result.report["views"]["pa"]["geometry"].startswith("given by the user"), result.report[
            "views"
        ]
        assert "pa geometry used: given by the user" in result.text, result.text
        assert "input check: not done" in result.text, result.text  # the tiny bundle ships no statistics
        assert read_attributes(result.ct)["InputCheck"].startswith("input check: not done")
        _remove(scene, result.nodes)
    finally:
        _remove(scene, [pa, lateral])
