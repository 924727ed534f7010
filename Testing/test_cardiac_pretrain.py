"""`xraycardiac cardiac pretrain`: the three arms train, evaluate and differ where they should."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xraycardiac.cardiac.pretrain import compare_pretraining, read_cases
from xraycardiac.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ["--grid", "32", "--spacing-mm", "5"]
TINY = ["channels=[8,16]", "num_res_units=0", "steps=2", "finetune_steps=2", "batch_size=1", "device=cpu"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    runner = CliRunner()
    for name, seed in (("tune", 300), ("test", 400)):
        r = runner.invoke(
            app, ["cardiac", "phantoms", "--out", str(root / name), "--n", "1", "--seed", str(seed), *SMALL]
        )
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cardiac", "synth", "--out", str(root / "synth"), "--n", "2", "--phantom-grid", "32",
                            "--phantom-spacing-mm", "5"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return root


def test_read_cases_both_layouts(folders):
    img, lab, conf, spacing = read_cases(folders / "synth")
    assert len(img) == 2 and conf is not None and img[0].shape == (32, 32, 32)
    assert -1.0 <= img[0].min() and img[0].max() <= 1.0 and lab[0].max() >= 8
    img2, lab2, conf2, spacing2 = read_cases(folders / "test", grid=(16, 16, 16))
    assert conf2 is None and img2[0].shape == (16, 16, 16)
    assert spacing2[0] == pytest.approx((10.0, 10.0, 10.0))  # 32 x 5 mm on 16 voxels
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        read_cases(folders)


def test_arms_and_cli(folders, tmp_path):
    from xraycardiac.cardiac.cal import CALConfig

    cfg = CALConfig(channels=(8, 16), num_res_units=0, steps=2, finetune_steps=2, batch_size=1, device="cpu")
    rows = compare_pretraining(folders / "synth", folders / "tune", folders / "test", cfg)
    assert [r["arm"] for r in rows] == ["none", "synthetic", "cal"]
    for r in rows:
        assert set(r["dice"]) >= {1, 2, 5} and all(0.0 <= d <= 1.0 for d in r["dice"].values())
        assert np.isfinite(r["mean_hd95_mm"])
    # the synth set has confidence 1 (warp renderer), so plain and CAL pretraining are the same run
    assert rows[1]["dice"] == rows[2]["dice"]
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["cardiac", "pretrain", "--synthetic", str(folders / "synth"), "--finetune",
                                 str(folders / "tune"), "--test", str(folders / "test"), "--out", str(out),
                                 "--arm", "none", *TINY])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        "| none |" in r.output and json.loads((out / "results.json").read_text())["rows"][0]["arm"] == "none"
    )
    bad = CliRunner().invoke(app, ["cardiac", "pretrain", "--synthetic", str(folders / "tune"), "--finetune",
                                   str(folders / "tune"), "--test", str(folders / "test"), *TINY])  # fmt: skip
    assert bad.exit_code == 1 and "confidence" in bad.output
    bad = CliRunner().invoke(app, ["cardiac", "pretrain", "--synthetic", str(folders / "synth"), "--finetune",
                                   str(folders / "tune"), "--test", str(folders / "test"), "--arm", "gan", *TINY])  # fmt: skip
    assert bad.exit_code == 1 and "arms" in bad.output
