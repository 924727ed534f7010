"""Model manifest, weights cache, integrity checks, import and export.

Manifest format (JSON, UTF-8)::

    {"models": [
      {
        "name": "coronary-matcher-demo",          # [A-Za-z0-9._-]+, unique together with version
        "version": "0.1.0",
        "file": "coronary-matcher-demo.pt",        # a bare file name, no directories
        "sha256": "3b0c...e9",                     # 64 lower-case hex digits of the weights file
        "licence": "Apache-2.0",
        "training_data": "200 synthetic angiogram pairs from xraycardiac.phantoms, seed 0",
        "training_command": "xraycardiac train coronary --config demo.json",
        "intended_use": "research only, not for clinical use",   # optional, this is the default
        "config": {"channels": 8},                 # optional: the model's frozen-dataclass config
        "description": "tiny matcher for the offline demo"        # optional
      }
    ]}

Where weights live:

- **packaged**: entries of ``xraycardiac/models/manifest.json``, files under
  ``xraycardiac/models/weights/<file>`` (small demo weights shipped with the package);
- **imported**: entries of ``<models_home()>/models/manifest.json``, files under
  ``<models_home()>/models/<name>/<version>/<file>`` next to a ``model.json`` holding the entry.
  ``models_home()`` is ``$XRAYCARDIAC_HOME`` if set, else the user cache directory
  (``$XDG_CACHE_HOME/xraycardiac`` or ``~/.cache/xraycardiac`` on Linux, ``~/Library/Caches/xraycardiac``
  on macOS, ``%LOCALAPPDATA%\\xraycardiac`` on Windows).

An import/export package is a directory or a .zip holding ``model.json`` (one entry, as above, or a
manifest with exactly one entry) and the weights file, side by side (in a .zip: at the top level or
in one top-level folder). Nothing is downloaded: weights are imported from files a user brings.

Integrity: the sha256 of a weights file is checked every time ``resolve`` hands it out, packaged or
imported. Within one process a digest is reused while the file's (path, inode, mtime, size) are
unchanged -- but only for files whose mtime was at least ``_RACY_SECONDS`` older than the moment they
were hashed, because file-system timestamps are coarse and a file rewritten within the same tick
would otherwise keep its old digest (git's "racy clean" rule). This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xraycardiac.outputs import atomic_path, sha256_stream, write_bytes_atomic

DEFAULT_INTENDED_USE = "research only, not for clinical use"

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_MANIFEST = PACKAGE_DIR / "manifest.json"
PACKAGED_WEIGHTS_DIR = PACKAGE_DIR / "weights"
MODEL_JSON = "model.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_RACY_SECONDS = 2.0


class ModelIntegrityError(ValueError):
    """A weights file's sha256 is not the one its manifest entry records."""


@dataclass(frozen=True)
class ModelEntry:
    """One model in a manifest.

    Attributes:
        name: model name, ``[A-Za-z0-9._-]+``.
        version: version string; ``resolve`` picks the highest (numeric parts compared as numbers).
        file: weights file name, relative to the entry's directory (no path separators).
        sha256: expected sha256 of the weights file, 64 lower-case hex digits.
        licence: licence of the weights (SPDX identifier where one exists).
        training_data: what the weights were trained on.
        training_command: the exact command that produced them.
        intended_use: defaults to "research only, not for clinical use".
        config: the model's configuration (its frozen-dataclass config as a dict).
        description: one line for listings.
        origin: "packaged" or "imported" once listed; not part of the manifest.
        directory: folder holding ``file`` once listed; not part of the manifest.
    """

    name: str
    version: str
    file: str
    sha256: str
    licence: str
    training_data: str
    training_command: str
    intended_use: str = DEFAULT_INTENDED_USE
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""
    origin: str = field(default="", compare=False)
    directory: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"model entry {self.name!r}"
        for key in ("name", "version", "file", "sha256", "licence", "training_data", "training_command"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
        if not _NAME_RE.match(self.name):
            raise ValueError(f"{where}: name must match [A-Za-z0-9][A-Za-z0-9._-]*, got {self.name!r}")
        if not _NAME_RE.match(self.version):
            raise ValueError(f"{where}: version must match [A-Za-z0-9][A-Za-z0-9._-]*, got {self.version!r}")
        if not _NAME_RE.match(self.file) or self.file in (".", ".."):
            raise ValueError(f"{where}: file must be a bare file name (no directories), got {self.file!r}")
        if not _SHA_RE.match(self.sha256):
            raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if not isinstance(self.config, dict):
            raise ValueError(f"{where}: config must be a JSON object, got {type(self.config).__name__}")
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: config must be JSON-serialisable ({exc})") from exc

    @property
    def path(self) -> Path | None:
        """Where the weights file should be, once the entry was listed; None for a bare entry."""
        return None if self.directory is None else self.directory / self.file

    def to_dict(self) -> dict[str, Any]:
        """The manifest fields (no origin/directory), JSON-ready."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _LOCAL_FIELDS
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "model entry") -> ModelEntry:
        """Build from a manifest dict; unknown or missing keys are a ValueError naming ``where``."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - _LOCAL_FIELDS
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def located(self, origin: str, directory: Path) -> ModelEntry:
        """A copy that records where its file lives."""
        return dataclasses.replace(self, origin=origin, directory=directory)


_LOCAL_FIELDS = frozenset({"origin", "directory"})


# --- Locations


def models_home() -> Path:
    """Root of the user's xraycardiac cache: ``$XRAYCARDIAC_HOME`` or the platform user cache dir."""
    env = os.environ.get("XRAYCARDIAC_HOME", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "xraycardiac"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "xraycardiac"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xraycardiac"


def models_dir() -> Path:
    """Folder of imported models: ``models_home() / "models"`` (holds ``manifest.json``)."""
    return models_home() / "models"


def _imported_manifest() -> Path:
    return models_dir() / "manifest.json"


def _imported_dir(entry: ModelEntry) -> Path:
    return models_dir() / entry.name / entry.version


# --- Manifest files


def _parse_manifest(data: Any, where: str) -> list[ModelEntry]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f'{where}: expected {{"models": [...]}}, got {str(data)[:80]!r}')
    entries = [ModelEntry.from_dict(d, f"{where}, models[{i}]") for i, d in enumerate(data["models"])]
    seen: set[tuple[str, str]] = set()
    for e in entries:
        if (e.name, e.version) in seen:
            raise ValueError(f"{where}: model {e.name!r} version {e.version!r} is listed twice")
        seen.add((e.name, e.version))
    return entries


def load_manifest(path: str | os.PathLike[str]) -> list[ModelEntry]:
    """Read a manifest file (format in the module docstring); a missing file is an empty manifest.

    Raises:
        ValueError: not valid JSON or not a valid manifest (message names the file and entry).
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON manifest ({exc})") from exc
    return _parse_manifest(data, str(path))


def _entry_json(entry: ModelEntry) -> bytes:
    return (json.dumps(entry.to_dict(), indent=2) + "\n").encode("utf-8")


def save_manifest(entries: list[ModelEntry], path: str | os.PathLike[str]) -> None:
    """Write ``{"models": [...]}`` atomically (sorted by name, then version)."""
    path = Path(path)
    ordered = sorted(entries, key=lambda e: (e.name, _version_key(e.version)))
    text = json.dumps({"models": [e.to_dict() for e in ordered]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(text.encode("utf-8"), path)


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: numeric parts as numbers, and after text parts (so 0.10 > 0.9, 1.0 > 1.0rc1)."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


# --- Hashing

_hash_cache: dict[tuple[str, int, int, int, int], str] = {}


def clear_hash_cache() -> None:
    """Forget the digests remembered by ``sha256_file`` in this process."""
    _hash_cache.clear()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 (hex) of a file, remembered per (path, inode, mtime, size) in this process.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    started = time.time_ns()
    with path.open("rb") as f:
        digest = sha256_stream(f)
    if st.st_mtime_ns < started - int(_RACY_SECONDS * 1e9):
        _hash_cache[key] = digest
    return digest


def verify_file(path: str | os.PathLike[str], expected_sha256: str, model: str | None = None) -> Path:
    """Check a file's sha256.

    Args:
        path: the file.
        expected_sha256: 64 hex digits (case ignored).
        model: model name (and version) to put in error messages.

    Returns:
        ``path`` as a Path.

    Raises:
        FileNotFoundError: the file does not exist (names the file and the model).
        ModelIntegrityError: the digest differs (names the file, the expected and the actual hash).
    """
    path = Path(path)
    what = f" of model {model}" if model else ""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: weights file{what} not found; re-import it with `xraycardiac models import PATH`"
        )
    actual = sha256_file(path)
    expected = expected_sha256.strip().lower()
    if actual != expected:
        raise ModelIntegrityError(
            f"{path}: sha256 mismatch for the weights{what}: expected {expected}, got {actual}. The file is "
            "corrupted or is not the file the manifest describes; re-import it with `xraycardiac models import`."
        )
    return path


# --- Listing and resolving


def list_models() -> list[ModelEntry]:
    """All models known here: packaged first, then imported, each with ``origin`` and ``directory`` set.

    Files are not opened; use ``verify_file(entry.path, entry.sha256)`` to check one.
    """
    packaged = [e.located("packaged", PACKAGED_WEIGHTS_DIR) for e in load_manifest(PACKAGED_MANIFEST)]
    imported = [e.located("imported", _imported_dir(e)) for e in load_manifest(_imported_manifest())]
    return packaged + imported


def _label(entry: ModelEntry) -> str:
    return f"'{entry.name}' version {entry.version}"


def find(name: str, version: str | None = None) -> list[ModelEntry]:
    """Entries named ``name`` (and ``version`` if given), highest version first, packaged before imported.

    Raises:
        ValueError: no such model or version (lists the known ones).
    """
    entries = list_models()
    named = [e for e in entries if e.name == name]
    if not named:
        known = ", ".join(sorted({e.name for e in entries})) or "none"
        raise ValueError(
            f"model {name!r} is not known (known models: {known}); import it with `xraycardiac models import PATH`"
        )
    if version is not None:
        picked = [e for e in named if e.version == version]
        if not picked:
            versions = ", ".join(sorted({e.version for e in named}, key=_version_key))
            raise ValueError(f"model {name!r} has no version {version!r}; available: {versions}")
        return picked
    top = max(_version_key(e.version) for e in named)
    return [e for e in named if _version_key(e.version) == top]


def resolve_entry(name: str, version: str | None = None) -> ModelEntry:
    """Like ``resolve`` but returns the (located) entry whose file was verified."""
    candidates = find(name, version)
    present = [e for e in candidates if e.path is not None and e.path.is_file()]
    entry = (present or candidates)[0]
    assert entry.path is not None
    verify_file(entry.path, entry.sha256, model=_label(entry))
    return entry


def resolve(name: str, version: str | None = None) -> Path:
    """Path of a model's weights file, after checking its sha256.

    Args:
        name: model name as listed by ``list_models``.
        version: a version of it; None picks the highest version.

    Returns:
        Path of the verified weights file (packaged copy preferred when both exist).

    Raises:
        ValueError: unknown model or version.
        FileNotFoundError: the weights file is missing (names the file and the model).
        ModelIntegrityError: the file's sha256 differs from the manifest's.
    """
    entry = resolve_entry(name, version)
    assert entry.path is not None
    return entry.path


# --- Import / export


def _entry_from_json_bytes(raw: bytes, where: str) -> ModelEntry:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "models" in data:
        entries = _parse_manifest(data, where)
        if len(entries) != 1:
            raise ValueError(f"{where}: expected exactly one model entry, found {len(entries)}")
        return entries[0]
    return ModelEntry.from_dict(data, where)


def _copy_verified(src: IO[bytes], dest: Path, entry: ModelEntry, source_label: str) -> None:
    """Stream ``src`` into ``dest`` through a temp file, hashing on the way; rename only if it matches."""
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as out:
            actual = sha256_stream(src, out)
        if actual != entry.sha256:
            raise ModelIntegrityError(
                f"{source_label}: sha256 mismatch for the weights of model {_label(entry)}: expected "
                f"{entry.sha256}, got {actual}. Nothing was imported."
            )


def _zip_member(names: list[str], zip_path: Path) -> str:
    """Name of the single model.json in a zip (top level or one folder down)."""
    hits = [n for n in names if n == MODEL_JSON or (n.count("/") == 1 and n.endswith("/" + MODEL_JSON))]
    if len(hits) != 1:
        raise ValueError(
            f"{zip_path}: expected one {MODEL_JSON} at the top level or in one top-level folder, found {hits or 'none'}"
        )
    return hits[0]


def import_model(source: str | os.PathLike[str]) -> ModelEntry:
    """Import a model package (a directory or .zip with ``model.json`` + weights) into the cache.

    The weights' sha256 is checked against ``model.json`` while they are copied to a temp file in
    the cache; only a matching file is renamed into place and registered. Importing the same
    name/version/sha256 again is harmless; the same name/version with another sha256 is refused.

    Args:
        source: directory or .zip file.

    Returns:
        The registered entry (origin "imported", directory in the cache).

    Raises:
        FileNotFoundError: ``source``, its model.json or its weights file is missing.
        ValueError: bad model.json, not a directory or .zip, or a conflicting name/version.
        ModelIntegrityError: the weights do not match the sha256 in model.json.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"import_model: {source} does not exist")
    if source.is_dir():
        meta = source / MODEL_JSON
        if not meta.is_file():
            raise FileNotFoundError(f"import_model: {meta} not found; a package holds {MODEL_JSON} + weights")
        entry = _entry_from_json_bytes(meta.read_bytes(), str(meta))
        weights = source / entry.file
        if not weights.is_file():
            raise FileNotFoundError(
                f"import_model: weights file {weights} of model {_label(entry)} not found"
            )
        with weights.open("rb") as src:
            return _install(entry, src, str(weights))
    if not zipfile.is_zipfile(source):
        raise ValueError(f"import_model: {source} is neither a directory nor a .zip file")
    with zipfile.ZipFile(source) as zf:
        json_name = _zip_member(zf.namelist(), source)
        entry = _entry_from_json_bytes(zf.read(json_name), f"{source}:{json_name}")
        member = json_name[: -len(MODEL_JSON)] + entry.file
        if member not in zf.namelist():
            raise FileNotFoundError(
                f"import_model: {source} has no {member} (weights of model {_label(entry)})"
            )
        with zf.open(member) as src:
            return _install(entry, src, f"{source}:{member}")


def _install(entry: ModelEntry, weights: IO[bytes], source_label: str) -> ModelEntry:
    """Copy verified weights + model.json into the cache and register the entry."""
    _check_conflict(entry)
    dest_dir = _imported_dir(entry)
    created = [d for d in (models_dir(), dest_dir.parent, dest_dir) if not d.exists()]
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        _copy_verified(weights, dest_dir / entry.file, entry, source_label)
    except BaseException:
        for d in reversed(created):  # leave no empty folders behind a refused import
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    write_bytes_atomic(_entry_json(entry), dest_dir / MODEL_JSON)
    key = (entry.name, entry.version)
    registered = [e for e in load_manifest(_imported_manifest()) if (e.name, e.version) != key]
    save_manifest([*registered, entry], _imported_manifest())
    return entry.located("imported", dest_dir)


def _check_conflict(entry: ModelEntry) -> None:
    for known in list_models():
        if (known.name, known.version) == (entry.name, entry.version) and known.sha256 != entry.sha256:
            raise ValueError(
                f"import_model: model {_label(entry)} is already {known.origin} with sha256 {known.sha256}, "
                f"the package has {entry.sha256}; give the new weights another version"
            )


def export_model(name: str, dest: str | os.PathLike[str], version: str | None = None) -> Path:
    """Write a model package (weights + ``model.json``) after verifying the weights.

    Args:
        name: model name.
        dest: a directory (created if needed; files inside replaced atomically) or a path ending
            in .zip (written atomically; its parent directory must exist).
        version: the version to export; None picks the highest.

    Returns:
        ``dest`` as a Path.

    Raises:
        ValueError / FileNotFoundError / ModelIntegrityError: as ``resolve``; FileNotFoundError also
            when the parent directory of a .zip destination does not exist.
    """
    entry = resolve_entry(name, version)
    assert entry.path is not None
    dest = Path(dest)
    if dest.suffix.lower() == ".zip":
        if not dest.parent.is_dir():
            raise FileNotFoundError(f"export_model: output directory {dest.parent} does not exist")
        with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(MODEL_JSON, _entry_json(entry), compress_type=zipfile.ZIP_DEFLATED)
            # Weights barely compress; storing them keeps export and import fast.
            zf.write(entry.path, entry.file, compress_type=zipfile.ZIP_STORED)
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    weights_dest = dest / entry.file
    if weights_dest.resolve() != entry.path.resolve():
        with atomic_path(weights_dest) as tmp:
            shutil.copyfile(entry.path, tmp)
    write_bytes_atomic(_entry_json(entry), dest / MODEL_JSON)
    return dest
