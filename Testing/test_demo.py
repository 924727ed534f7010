"""``xraycardiac demo`` end to end: every output the README promises, and nothing half-written."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from xraycardiac.demo import DEMO_VIEWS, SECTIONS, DemoProgress, print_progress, run_demo
from xraycardiac.io import read_volume


def _check_step(event: dict) -> None:
    """Every progress event names its section, its step k of N and a non-empty stage."""
    if event.get("event") != "progress":
        return
    missing = [k for k in ("section", "step", "steps", "stage", "eta_s") if k not in event]
    assert not missing, f"progress event without {missing}: {event}"
    assert 1 <= event["step"] <= event["steps"] and event["section"] and event["stage"], event


def test_demo_writes_report_and_every_view(tmp_path):
    events: list[tuple[float, dict]] = []

    def log(event: dict) -> None:
        _check_step(event)  # raises inside the demo at the first unnamed step
        events.append((time.monotonic(), event))

    report = run_demo(tmp_path / "demo", device="cpu", log=log)
    progress = [(t, e) for t, e in events if e["event"] == "progress"]
    steps = [e["step"] for _, e in progress]
    assert steps == sorted(steps) and set(steps) == set(range(1, len(SECTIONS) + 1)), (
        f"steps {sorted(set(steps))}"
    )
    overall = [e["progress"] for _, e in progress]
    assert overall == sorted(overall) and overall[-1] == 1.0, "overall progress went back or did not end at 1"
    times = [t for t, _ in progress]
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    assert gap < 15.0, f"{gap:.0f} s without a progress event"
    assert any(e["eta_s"] is not None for _, e in progress[5:]), "no ETA after the first events"
    timings = json.loads((report.parent / "timings.json").read_text())
    assert [t["section"] for t in timings["sections"]] == [title for _, title, _ in SECTIONS]
    html = report.read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    # + 2: the CardiacSynth section from the real CT with its TotalSegmentator labels
    assert len(images) == 2 * (1 + len(DEMO_VIEWS)) + 7 + 3 + 11 + 2, f"report shows {len(images)} images"
    assert "coronary/learned_matches.png" in images, "the shipped matcher's matches are in the report"
    for rel in images:
        assert (report.parent / rel).is_file(), f"report links a missing image {rel}"
        assert f"<a href='{rel}'" in html, f"{rel} is not linked to its full-size file"
    widths = {rel: int(w) for w, rel in re.findall(r"<figure style='width:(\d+)px'><a href='([^']+)'", html)}
    assert widths["coronary/learned_matches.png"] >= 800, (
        f"match figure shown {widths['coronary/learned_matches.png']} px wide"
    )
    assert min(widths.values()) >= 300, f"an image is shown {min(widths.values())} px wide"
    for name in ("LV blood pool", "left coronary artery tree", "lungs", "spine", "ribs"):
        assert name in html, f"label name {name!r} is not in the report"
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
    # ... and from the real chest CT with its TotalSegmentator labels: consecutive file labels whose
    # table values (label_values) are the mapped template's, the SVC contrast above 1000 HU kept
    from xraycardiac.cardiac.synth import dataset_label_values

    real = report.parent / "cardiac_synth_real_ct"
    values = dataset_label_values(real)
    real_template = read_volume(real / "template_labels.nrrd").array
    real_labels = read_volume(real / "labelsTr" / "case_00000.nii.gz").array
    assert {values[int(v)] for v in np.unique(real_labels) if v} == set(np.unique(real_template).tolist()) - {
        0
    }
    assert read_volume(real / "imagesTr" / "case_00000_0000.nii.gz").array.max() > 1000.0
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


def test_demo_progress_names_sections_and_keeps_talking(capsys):
    """Unit check of the step naming: k/N, overall fraction never going back, heartbeats while busy."""
    events: list[dict] = []
    progress = DemoProgress([("first", 1.0), ("second", 3.0)], events.append, heartbeat_s=0.2)
    with progress.section("first"):
        progress.job_events("drr job (a.nrrd)")({"event": "progress", "stage": "reading CT", "progress": 0.0})
        progress.job_events("drr job (a.nrrd)")(
            {"event": "progress", "stage": "rendering PA", "progress": 0.5}
        )
    with progress.section("second"):
        time.sleep(0.9)  # a long call that sends nothing
    for e in events:
        _check_step(e)
    assert [(e["step"], e["steps"]) for e in events][0] == (1, 2) and events[-1]["step"] == 2
    assert any(e["stage"] == "drr job (a.nrrd): reading CT" for e in events), [e["stage"] for e in events]
    beats = [e for e in events if e["heartbeat"]]
    assert len(beats) >= 2 and all(e["section"] == "second" for e in beats), f"{len(beats)} heartbeats"
    overall = [e["progress"] for e in events]
    assert overall == sorted(overall) and overall[-1] == 1.0, overall
    assert set(progress.seconds) == {"first", "second"} and progress.seconds["second"] >= 0.9
    for e in events:
        print_progress(e)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(
        re.match(r"\[[12]/2 (first|second)\] .+ \| +\d+% \| eta ", line) for line in lines
    ), lines


def test_label_overlay_keeps_the_ct_beside_its_labels_and_names_them(tmp_path):
    from xraycardiac.figures import label_overlay_png

    ct = np.linspace(-1000.0, 600.0, 32 * 40).reshape(32, 40)
    labels = np.zeros((32, 40), dtype=np.uint8)
    labels[8:16, 10:20] = 3
    png = label_overlay_png(ct, labels, [(3, "heart", (220, 40, 40))], tmp_path / "o.png", min_side_px=64)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    top, pad, s = 26, 10, 2  # layout of label_overlay_png: title row, margin, upsampling factor 64 / 32
    left = img[top : top + 32 * s, pad : pad + 40 * s]
    right = img[top : top + 32 * s, 2 * pad + 40 * s : 2 * pad + 80 * s]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all(), (
        "the plain CT is grey"
    )
    changed = (left != right).any(axis=2)
    block = np.kron(labels == 3, np.ones((s, s), dtype=bool))
    assert (changed == block).all(), "the overlay changes exactly the labelled pixels"
    legend = img[:, 2 * pad + 80 * s :]
    assert ((legend == (220, 40, 40)).all(axis=2)).sum() > 100, (
        "the legend has no swatch in the label's colour"
    )
    with pytest.raises(ValueError, match="same 2D shape"):
        label_overlay_png(ct, labels[:, :30], [], tmp_path / "bad.png")
