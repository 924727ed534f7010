"""``xraycardiac demo`` end to end: every output the README promises, and nothing half-written."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from xraycardiac.demo import DEMO_VIEWS, run_demo
from xraycardiac.io import read_volume


def test_demo_writes_report_and_every_view(tmp_path):
    report = run_demo(tmp_path / "demo", device="cpu")
    html = report.read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert len(images) == 2 * (1 + len(DEMO_VIEWS)) + 7 + 5 + 11, f"report shows {len(images)} images"
    assert "coronary/learned_matches.png" in images, "the shipped matcher's matches are in the report"
    for rel in images:
        assert (report.parent / rel).is_file(), f"report links a missing image {rel}"
    for case in ("real_chest_ct", "chest_phantom"):
        for view in DEMO_VIEWS:
            drr = read_volume(report.parent / f"{case}_drr" / f"{view['name']}.nrrd")
            assert drr.array.std() > 0.1, f"{case} {view['name']}: flat DRR (std {drr.array.std():.3g})"
            lengths = read_volume(report.parent / f"{case}_drr" / f"{view['name']}.labels.nrrd")
            heart = lengths.meta["label_ids"].index(3)  # label 3 = heart in both label maps
            assert lengths.array[heart].max() > 50.0, (
                f"{case}: heart path length {lengths.array[heart].max()} mm"
            )
    # coronary section: a view pair whose stored geometry reproduces the tree's projection in the mask
    from xraycardiac.coronary import CoronaryTree
    from xraycardiac.geometry import CArmGeometry

    cor = report.parent / "coronary"
    tree = CoronaryTree.load_json(cor / "tree.json")
    for n in (1, 2):
        g = CArmGeometry.load_json(cor / f"view{n}.geometry.json")
        mask = np.asarray(Image.open(cor / f"mask{n}.png")) > 127
        uv = np.round(g.project(tree.points[tree.tree == 0])).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < g.detector_cols) & (uv[:, 1] >= 0) & (uv[:, 1] < g.detector_rows)
        hit = mask[uv[ok, 1], uv[ok, 0]].mean()
        assert ok.mean() > 0.5 and hit > 0.99, (
            f"view {n}: {ok.mean():.2f} of the tree in field, {hit:.3f} on the mask"
        )
    # cardiac section: the synthetic case keeps the template's labels, deformed, on the template's grid
    car = report.parent / "cardiac_synth"
    template = read_volume(car / "template_labels.nrrd")
    labels = read_volume(car / "labelsTr" / "case_00000.nii.gz")
    image = read_volume(car / "imagesTr" / "case_00000_0000.nii.gz")
    assert labels.array.shape == template.array.shape and np.allclose(
        labels.ijk_to_ras, template.ijk_to_ras, atol=1e-3
    )
    assert set(np.unique(labels.array)) == set(np.unique(template.array))
    lv, bg = image.array[labels.array == 1].mean(), image.array[labels.array == 0].mean()
    assert lv > bg + 150, f"synthetic LV blood pool {lv:.0f} HU vs background {bg:.0f} HU"
    # XRayToCT section: the CT generated from the real CT's two DRRs has its lungs where the truth has them
    from xraycardiac.metrics.chest_masks import dice, lung_mask

    x2ct = report.parent / "x2ct"
    generated = read_volume(x2ct / "generated" / "ct.nrrd")
    truth = read_volume(x2ct / "inputs" / "reference_ct.nrrd")
    assert np.allclose(generated.ijk_to_ras, truth.ijk_to_ras, atol=1e-3)
    lungs = dice(lung_mask(generated.array), lung_mask(truth.array))
    assert lungs > 0.5, f"lung Dice of the generated CT {lungs:.2f}"
    assert read_volume(x2ct / "generated" / "uncertainty.nrrd").array.max() > 0
    # the PA view is radiological: the heart (patient's left) projects right of the image centre
    pa = read_volume(report.parent / "real_chest_ct_drr" / "PA.labels.nrrd")
    heart = pa.array[pa.meta["label_ids"].index(3)]
    cols = np.nonzero(heart.sum(axis=0))[0]
    assert (heart.sum(axis=0)[cols] * cols).sum() / heart.sum() > heart.shape[1] / 2


def test_demo_refuses_nonempty_output_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(out)
    with pytest.raises(ValueError, match="device"):
        run_demo(tmp_path / "e", device="tpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "a failed demo left files behind"
    assert (out / "keep.txt").read_text() == "x"
