"""The shared weights files and model locating of xraycardiac.models.weights, on a tiny network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from xraycardiac.models import (
    JsonConfig,
    ModelIntegrityError,
    WeightsFormat,
    import_model,
    load_model_file,
    load_state,
    locate_model,
    read_model_config,
    read_weights_file,
    read_weights_payload,
    sha256_file,
    state_digest,
    write_weights_file,
)
from xraycardiac.models.manifest import PACKAGED_WEIGHTS_DIR

PLAIN = "xraycardiac.test_tiny"
DIGESTED = WeightsFormat(PLAIN, "a tiny test model", digest_key="sha256", digest_config=True)


@dataclass(frozen=True)
class TinyConfig(JsonConfig):
    width: int = 4
    levels: tuple[int, ...] = (2, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))


class TinyNet(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(1, config.width, 3)
        self.norm = nn.BatchNorm2d(config.width)  # an int64 buffer (num_batches_tracked) besides floats


def _net(config: TinyConfig = TinyConfig(), seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(config)
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.num_batches_tracked.fill_(7)
    return net


def _same_state(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of the tensors that differ (empty: equal)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def _package(folder: Path, file: Path, name: str = "tiny-test") -> dict:
    """Write ``folder/model.json`` describing ``file`` (a model package)."""
    entry = {"name": name, "version": "0.1.0", "file": file.name, "sha256": sha256_file(file),
             "licence": "Apache-2.0", "training_data": "none (test)", "training_command": "pytest",
             "config": TinyConfig().to_dict(), "description": "tiny test net"}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(entry), encoding="utf-8")
    return entry


def test_config_round_trip_and_unknown_fields() -> None:
    cfg = TinyConfig(width=8, levels=(1, 2, 3))
    d = cfg.to_dict()
    assert d == {"width": 8, "levels": [1, 2, 3]} and json.loads(json.dumps(d)) == d
    assert TinyConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"here: unknown TinyConfig field\(s\) \['colour'\]"):
        TinyConfig.from_dict({**d, "colour": "red"}, where="here")
    with pytest.raises(ValueError, match="here: expected a JSON object, got list"):
        TinyConfig.from_dict([1, 2], where="here")


@pytest.mark.parametrize("fmt", [PLAIN, DIGESTED], ids=["plain", "digested"])
def test_round_trip_full_and_half(fmt: str | WeightsFormat, tmp_path: Path) -> None:
    net = _net()
    path = write_weights_file(tmp_path / "w.pt", fmt, net.config.to_dict(), net, extras={"scale": 1.5})
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"], "a temporary file was left behind"
    config, data = read_model_config(path, fmt, TinyConfig, expected=TinyConfig())
    assert config == TinyConfig() and data["scale"] == 1.5
    loaded = load_model_file(path, fmt, TinyConfig, TinyNet, expected=TinyConfig())
    assert loaded.config == config and not loaded.training
    assert not _same_state(net, loaded), f"tensors changed through the file: {_same_state(net, loaded)}"
    assert loaded.norm.num_batches_tracked.dtype == torch.int64

    half = write_weights_file(tmp_path / "half.pt", fmt, net.config.to_dict(), net, half=True)
    cfg_dict, state = read_weights_file(half, fmt)
    assert cfg_dict == {"width": 4, "levels": [2, 3]}
    assert (
        state["conv.weight"].dtype == torch.float16 and state["norm.num_batches_tracked"].dtype == torch.int64
    )
    from_half = load_model_file(half, fmt, TinyConfig, TinyNet)
    assert from_half.conv.weight.dtype == torch.float32
    err = (from_half.conv.weight - net.conv.weight).abs().max().item()
    assert err < 1e-3, f"float16 storage changed a weight by {err}"


def test_digest_refuses_edited_tensors_and_config(tmp_path: Path) -> None:
    net = _net()
    path = write_weights_file(tmp_path / "w.pt", DIGESTED, net.config.to_dict(), net)
    data = torch.load(path, weights_only=True)
    assert data["sha256"] == state_digest(data["state_dict"], data["config"])
    assert data["sha256"] != state_digest(data["state_dict"]), "the config is not part of the digest"

    state = dict(data["state_dict"])
    state["conv.bias"] = state["conv.bias"] + 1e-3
    torch.save({**data, "state_dict": state}, tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"tensor\.pt: the config or weights fail their sha256 digest"):
        read_weights_payload(tmp_path / "tensor.pt", DIGESTED)
    torch.save({**data, "config": {**data["config"], "width": 5}}, tmp_path / "config.pt")
    with pytest.raises(ValueError, match=r"config\.pt: the config or weights fail their sha256 digest"):
        read_weights_payload(tmp_path / "config.pt", DIGESTED)
    tensors_only = WeightsFormat(PLAIN, digest_key="sha256")
    write_weights_file(tmp_path / "t.pt", tensors_only, net.config.to_dict(), net)
    data = torch.load(tmp_path / "t.pt", weights_only=True)
    assert data["sha256"] == state_digest(data["state_dict"])
    torch.save({**data, "config": {"width": 4, "levels": [2, 3], "colour": 1}}, tmp_path / "t2.pt")
    read_weights_payload(tmp_path / "t2.pt", tensors_only)  # the config is not covered: it reads


def test_foreign_unreadable_and_missing_files_are_refused(tmp_path: Path) -> None:
    net = _net()
    other = write_weights_file(tmp_path / "other.pt", "xraycardiac.something_else", {}, net)
    with pytest.raises(
        ValueError,
        match=r"other\.pt: not a tiny test model weights file \(format 'xraycardiac.something_else', "
        r"expected 'xraycardiac.test_tiny'\)",
    ):
        read_weights_file(other, DIGESTED)
    with pytest.raises(ValueError, match=r"other\.pt: not the expected kind of weights file"):
        read_weights_file(other, PLAIN)
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt: not .* \(format None, expected"):
        read_weights_file(tmp_path / "bare.pt", PLAIN)
    torch.save({"format": PLAIN, "config": {}}, tmp_path / "nostate.pt")
    with pytest.raises(
        ValueError, match=r"nostate\.pt: xraycardiac.test_tiny file without its config or state"
    ):
        read_weights_file(tmp_path / "nostate.pt", PLAIN)
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable torch weights file"):
        read_weights_file(tmp_path / "junk.pt", PLAIN)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: weights file not found"):
        read_weights_file(tmp_path / "absent.pt", PLAIN)
    with pytest.raises(ValueError, match=r"extras: \['config'\] are keys of the weights file"):
        write_weights_file(tmp_path / "x.pt", PLAIN, {}, net, extras={"config": 1})
    assert not (tmp_path / "x.pt").exists()


def test_config_mismatch_and_misfit_weights_are_refused(tmp_path: Path) -> None:
    net = _net()
    path = write_weights_file(tmp_path / "w.pt", PLAIN, net.config.to_dict(), net)
    with pytest.raises(
        ValueError, match=r"w\.pt: TinyConfig differs from the expected one \(width: 4 != 8\)"
    ):
        load_model_file(path, PLAIN, TinyConfig, TinyNet, expected=TinyConfig(width=8))
    wrong = write_weights_file(tmp_path / "wrong.pt", PLAIN, {"width": 8}, net)  # config of another net
    with pytest.raises(ValueError, match=r"wrong\.pt: weights do not fit their config"):
        load_model_file(wrong, PLAIN, TinyConfig, TinyNet)
    odd = write_weights_file(tmp_path / "odd.pt", PLAIN, {"width": 4, "depth": 2}, net)
    with pytest.raises(ValueError, match=r"odd\.pt: unknown TinyConfig field\(s\) \['depth'\]"):
        read_model_config(odd, PLAIN, TinyConfig)
    half_state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    restored = load_state(TinyNet(TinyConfig()).train(), half_state, "somewhere")
    assert not restored.training and restored.conv.weight.dtype == torch.float32
    with pytest.raises(ValueError, match=r"^somewhere: weights do not fit their config \(.*conv\.weight"):
        load_state(TinyNet(TinyConfig(width=8)), net.state_dict(), "somewhere")


def test_run_folder_sha256_must_match_model_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    weights = write_weights_file(run / "model.pt", PLAIN, TinyConfig().to_dict(), _net())
    entry = _package(run, weights)
    found = locate_model(run)
    assert (found.file, found.sha256, found.entry["name"]) == (weights, entry["sha256"], "tiny-test")
    assert found.config == TinyConfig().to_dict()
    assert found.provenance == {"model": "tiny-test", "version": "0.1.0", "file": str(weights),
                                "sha256": entry["sha256"]}  # fmt: skip
    beside = locate_model(weights)  # the file itself: the entry beside it describes it
    assert beside.entry is not None and beside.provenance == found.provenance

    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(
        ValueError, match=r"model: .*model\.pt: sha256 \w{12}\.\.\. differs from .*model\.json"
    ):
        locate_model(run)
    changed = locate_model(weights)  # a bare file no longer described by model.json
    assert changed.entry is None and changed.provenance["model"] == "model" and changed.config == {}
    assert changed.sha256 == sha256_file(weights) != entry["sha256"]

    (run / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"run: .*model\.json is not valid JSON"):
        locate_model(run, what="run")
    (run / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no model\.json.*unfinished run"):
        locate_model(run)
    _package(run, weights)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt, named by .*model\.json, not found"):
        locate_model(run)


def test_paths_and_names(tmp_path: Path, xraycardiac_home: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^encoder: .*nowhere\.pt does not exist"):
        locate_model(tmp_path / "nowhere.pt", what="encoder")
    with pytest.raises(FileNotFoundError, match=r"^/no/such/run does not exist"):
        locate_model("/no/such/run", what=None)
    with pytest.raises(ValueError, match=r"^model: model 'no-such-model' is not known"):
        locate_model("no-such-model")
    with pytest.raises(ValueError, match=r"^model 'no-such-model' is not known"):
        locate_model("no-such-model", what=None)

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    entry = _package(pkg, write_weights_file(pkg / "model.pt", PLAIN, TinyConfig().to_dict(), _net()))
    import_model(pkg)
    found = locate_model("tiny-test")
    assert found.sha256 == entry["sha256"] and found.file.is_relative_to(xraycardiac_home)
    net = load_model_file(found.file, PLAIN, TinyConfig, TinyNet)
    assert not _same_state(net, _net())
    found.file.write_bytes(found.file.read_bytes() + b"\0")  # the installed copy changes afterwards
    with pytest.raises(ModelIntegrityError, match=r"^model: .*sha256 mismatch"):
        locate_model("tiny-test")


def test_shipped_angio_weights_read_through_the_shared_reader() -> None:
    config, state = read_weights_file(
        PACKAGED_WEIGHTS_DIR / "angio-diffusion-demo.pt", "xraycardiac.angio_diffusion"
    )
    assert config["image_size"] == 128 and config["condition"] == "mask+thickness"
    assert state and all(v.dtype in (torch.float16, torch.int64) for v in state.values())
