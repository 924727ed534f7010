"""Model manifest and cache: import -> list -> resolve -> export -> re-import, integrity errors, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xraycardiac.models import (
    DEFAULT_INTENDED_USE,
    ModelEntry,
    ModelIntegrityError,
    export_model,
    import_model,
    list_models,
    load_manifest,
    models_dir,
    models_home,
    resolve,
    sha256_file,
    verify_file,
)
from xraycardiac.models import manifest as manifest_mod
from xraycardiac.models.cli import app

REPO = Path(__file__).resolve().parents[1]


def _tiny_package(directory: Path, name: str = "tiny-net", version: str = "0.1.0") -> tuple[Path, dict]:
    """A model package dir: a tiny torch state_dict + model.json with its sha256. Returns (dir, state)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    weights = directory / f"{name}.pt"
    torch.save(state, weights)
    entry = {
        "name": name,
        "version": version,
        "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "licence": "Apache-2.0",
        "training_data": "none: random initialisation (test)",
        "training_command": "pytest Testing/test_models.py",
        "config": {"channels": 4, "kernel": 3},
        "description": "two conv layers",
    }
    (directory / "model.json").write_text(json.dumps(entry))
    return directory, state


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_models_home_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XRAYCARDIAC_HOME", str(tmp_path / "h"))
    assert models_home() == tmp_path / "h", models_home()
    assert models_dir() == tmp_path / "h" / "models", models_dir()
    monkeypatch.delenv("XRAYCARDIAC_HOME")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert models_home() == tmp_path / "xdg" / "xraycardiac", models_home()
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert models_home() == Path.home() / ".cache" / "xraycardiac", models_home()


def test_packaged_manifest_is_valid() -> None:
    entries = load_manifest(manifest_mod.PACKAGED_MANIFEST)
    raw = json.loads(manifest_mod.PACKAGED_MANIFEST.read_text())
    assert isinstance(raw.get("models"), list), raw
    assert len(entries) == len(raw["models"]), entries
    for e in entries:  # every shipped weights file must exist and match its hash
        verify_file(manifest_mod.PACKAGED_WEIGHTS_DIR / e.file, e.sha256, model=e.name)


def test_round_trip_import_list_resolve_export_reimport(
    tmp_path: Path, xraycardiac_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg, state = _tiny_package(tmp_path / "pkg")
    entry = import_model(pkg)
    assert entry.origin == "imported" and entry.directory == models_dir() / "tiny-net" / "0.1.0", entry
    assert entry.intended_use == DEFAULT_INTENDED_USE, entry.intended_use
    listed = [e for e in list_models() if e.origin == "imported"]
    assert [(e.name, e.version) for e in listed] == [("tiny-net", "0.1.0")], listed
    assert listed[0].config == {"channels": 4, "kernel": 3}, listed[0].config
    path = resolve("tiny-net")
    assert path.parent == models_dir() / "tiny-net" / "0.1.0", path
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == set(state), f"keys {sorted(loaded)} != {sorted(state)}"
    for k in state:
        assert torch.equal(loaded[k], state[k]), f"tensor {k} changed through import"
    # Export to a directory and to a zip, then import the zip into a second, empty home.
    out_dir = export_model("tiny-net", tmp_path / "exported")
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.json", "tiny-net.pt"], list(out_dir.iterdir())
    assert ModelEntry.from_dict(json.loads((out_dir / "model.json").read_text())) == entry
    zip_path = export_model("tiny-net", tmp_path / "tiny.zip", version="0.1.0")
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["model.json", "tiny-net.pt"], zf.namelist()
    second = tmp_path / "second_home"
    monkeypatch.setenv("XRAYCARDIAC_HOME", str(second))
    assert [e for e in list_models() if e.origin == "imported"] == []
    again = import_model(zip_path)
    assert again == entry, f"{again} != {entry}"
    path2 = resolve("tiny-net", "0.1.0")
    assert str(path2).startswith(str(second)), path2
    assert sha256_file(path2) == entry.sha256
    # Re-importing the same package is harmless; no temp files anywhere in the cache.
    import_model(out_dir)
    leftovers = [p for p in second.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_highest_version_and_conflicts(tmp_path: Path, xraycardiac_home: Path) -> None:
    for version in ("0.9.0", "0.10.0", "0.2"):
        import_model(_tiny_package(tmp_path / version, version=version)[0])
    assert resolve("tiny-net").parent.name == "0.10.0", resolve("tiny-net")
    assert resolve("tiny-net", "0.2").parent.name == "0.2"
    with pytest.raises(ValueError, match=r"no version '1\.0'.*0\.2, 0\.9\.0, 0\.10\.0"):
        resolve("tiny-net", "1.0")
    with pytest.raises(ValueError, match="'nope' is not known.*tiny-net"):
        resolve("nope")
    # Same name and version, other weights: refused, the cached copy is untouched.
    other, _ = _tiny_package(tmp_path / "other", version="0.2")
    torch.save({"w": torch.ones(3)}, other / "tiny-net.pt")
    meta = json.loads((other / "model.json").read_text())
    meta["sha256"] = hashlib.sha256((other / "tiny-net.pt").read_bytes()).hexdigest()
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="already imported"):
        import_model(other)
    resolve("tiny-net", "0.2")


def test_corrupted_cached_file_is_reported(tmp_path: Path, xraycardiac_home: Path) -> None:
    entry = import_model(_tiny_package(tmp_path / "pkg")[0])
    path = resolve("tiny-net")
    _flip_byte(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelIntegrityError) as err:
        resolve("tiny-net")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(path) in msg and entry.sha256 in msg and actual in msg, msg
    assert "tiny-net" in msg, msg


def test_corrupted_package_is_not_imported(tmp_path: Path, xraycardiac_home: Path) -> None:
    pkg, _ = _tiny_package(tmp_path / "pkg")
    expected = json.loads((pkg / "model.json").read_text())["sha256"]
    _flip_byte(pkg / "tiny-net.pt")
    actual = hashlib.sha256((pkg / "tiny-net.pt").read_bytes()).hexdigest()
    with pytest.raises(ModelIntegrityError) as err:
        import_model(pkg)
    msg = str(err.value)
    assert "tiny-net.pt" in msg and expected in msg and actual in msg, msg
    assert list_models() == [e for e in list_models() if e.origin == "packaged"], list_models()
    stray = list(xraycardiac_home.rglob("*"))
    assert stray == [], f"files left in the cache by a refused import: {stray}"


def test_missing_files(tmp_path: Path, xraycardiac_home: Path) -> None:
    import_model(_tiny_package(tmp_path / "pkg")[0])
    path = resolve("tiny-net")
    path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        resolve("tiny-net")
    assert str(path) in str(err.value) and "tiny-net" in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_model(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="model.json"):
        import_model(empty)
    pkg, _ = _tiny_package(tmp_path / "pkg2", name="other")
    (pkg / "other.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"other\.pt.*'other'"):
        import_model(pkg)
    with pytest.raises(FileNotFoundError):
        verify_file(tmp_path / "none.pt", "0" * 64)


def test_bad_model_json(tmp_path: Path, xraycardiac_home: Path) -> None:
    pkg, _ = _tiny_package(tmp_path / "pkg")
    good = json.loads((pkg / "model.json").read_text())
    cases = [
        ({**good, "sha256": "abc"}, "sha256 must be 64"),
        ({**good, "file": "../evil.pt"}, "bare file name"),
        ({**good, "lisence": "MIT"}, r"unknown keys \['lisence'\]"),
        ({k: v for k, v in good.items() if k != "licence"}, r"missing keys \['licence'\]"),
    ]
    for data, pattern in cases:
        (pkg / "model.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=pattern):
            import_model(pkg)


def test_packaged_weights_are_listed_and_verified(
    tmp_path: Path, xraycardiac_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg, _ = _tiny_package(tmp_path / "shipped", name="demo")
    entry = json.loads((pkg / "model.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setattr(manifest_mod, "PACKAGED_MANIFEST", tmp_path / "manifest.json")
    monkeypatch.setattr(manifest_mod, "PACKAGED_WEIGHTS_DIR", pkg)
    listed = list_models()
    assert [(e.name, e.origin) for e in listed] == [("demo", "packaged")], listed
    assert resolve("demo") == pkg / "demo.pt"
    _flip_byte(pkg / "demo.pt", offset=50)
    with pytest.raises(ModelIntegrityError, match="demo.pt"):
        resolve("demo")


def test_hash_cache_trusts_only_settled_files(tmp_path: Path, xraycardiac_home: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    tick = f.stat().st_mtime_ns
    first = sha256_file(f)
    _flip_byte(f, 10)
    os.utime(f, ns=(tick, tick))  # rewritten within the same timestamp tick: must still be seen
    assert sha256_file(f) != first, "a freshly rewritten file got its old digest from the cache"
    # A settled file (mtime well in the past) is hashed once; a later change of mtime re-hashes it.
    old = time.time() - 3600
    os.utime(f, (old, old))
    settled = sha256_file(f)
    f.write_bytes(b"b" * 1000)
    os.utime(f, (old, old))  # same path, size and mtime: the remembered digest is reused
    assert sha256_file(f) == settled, "the digest of an unchanged settled file was not reused"
    os.utime(f, (old + 1, old + 1))
    assert sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_cli_list_import_export(tmp_path: Path, xraycardiac_home: Path) -> None:
    runner = CliRunner()
    pkg, _ = _tiny_package(tmp_path / "pkg")
    res = runner.invoke(app, ["import", str(pkg)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.output) if r["origin"] == "imported"]
    assert len(rows) == 1 and rows[0]["name"] == "tiny-net" and rows[0]["verified"] is True, rows
    assert rows[0]["intended_use"] == DEFAULT_INTENDED_USE, rows
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "tiny-net" in res.output and "yes" in res.output, res.output
    res = runner.invoke(app, ["export", "tiny-net", str(tmp_path / "out.zip")])
    assert res.exit_code == 0 and (tmp_path / "out.zip").is_file(), res.output
    _flip_byte(Path(rows[0]["path"]))
    res = runner.invoke(app, ["list", "--json"])
    row = next(r for r in json.loads(res.output) if r["origin"] == "imported")
    assert row["verified"] is False and row["status"] == "sha256 mismatch", row
    res = runner.invoke(app, ["export", "tiny-net", str(tmp_path / "bad.zip")])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output, res.output
    assert not (tmp_path / "bad.zip").exists()
    res = runner.invoke(app, ["import", str(tmp_path / "absent")])
    assert res.exit_code == 1 and "does not exist" in res.output, res.output


def test_cli_list_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from xraycardiac.models.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = {**os.environ, "XRAYCARDIAC_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
