"""Where a command may write, and when a written sample counts as finished.

Two rules that every command and job follows:

* **The overwrite rule** (:func:`check_output`), checked before any work: an output that exists and
  is not empty is refused unless the caller passes ``overwrite``. A resumable command names its
  settings file: a folder holding one continues if the settings are the same, and is refused
  otherwise with the first setting that differs and both values. A read-only output (or the
  read-only folder it would be made in) is refused with a PermissionError, never replaced.
* **Atomic writes** (:func:`atomic_path`, :func:`write_bytes_atomic`, :func:`write_json_atomic`): every
  file the library writes goes to a hidden temp sibling ``.<name>.<hex>.tmp<ext>`` and is renamed over
  its name; a failed write deletes the temp file (:func:`remove_stale_temps` clears a killed one's).
* **Completion records** (:func:`write_record`, :func:`verify_record`, :func:`discard`): a resumable
  command writes, after a sample's files and atomically, a record (``<sample>.done.json``) listing
  each file with its size in bytes and its sha256. A rerun keeps a sample only if its record is
  there and every file still matches it; anything else is deleted and made again, so a file cut
  short, emptied or deleted is never taken for a finished sample. Records hold no time stamps:
  a resumed run writes the same bytes as an uninterrupted one.

Light (standard library only), so every layer may use it: the ground of every write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "RECORD_FORMAT",
    "atomic_path",
    "check_output",
    "check_parent",
    "discard",
    "first_difference",
    "move_into_place",
    "new_work_dir",
    "parse_shard",
    "read_format_json",
    "recorded_sample",
    "remove_stale_temps",
    "sha256_file",
    "sha256_stream",
    "verify_record",
    "write_bytes_atomic",
    "write_failed",
    "write_json_atomic",
    "write_record",
]

RECORD_FORMAT = "xraycardiac.sample_record"
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------ the overwrite rule


def _read_only(path: Path) -> bool:
    """True if ``path`` cannot be written by this process, or has no write bit at all (root ignores modes)."""
    return not os.access(path, os.W_OK) or stat.S_IMODE(path.stat().st_mode) & 0o222 == 0


def _check_writable(path: Path, what: str) -> None:
    """PermissionError if ``path`` (or, if absent, the nearest folder above it) is read-only."""
    target = path
    while not target.exists() and target != target.parent:
        target = target.parent
    if target.exists() and _read_only(target):
        where = f"{what} {path}" if target == path else f"{what} {path}: the folder {target}"
        raise PermissionError(
            f"{where} is read-only (mode {stat.S_IMODE(target.stat().st_mode):o}); make it writable or "
            "choose another place"
        )


def first_difference(old: Any, new: Any, where: str = "", ignore: Iterable[str] = ()) -> str | None:
    """``"<setting> was <old>, now <new>"`` for the first difference between two JSON values, None if equal.

    Args:
        old, new: JSON values (dicts are compared key by key, in sorted order).
        where: dotted name of ``old``/``new`` ("" at the top).
        ignore: dotted names not compared (e.g. ``"generator.trees"``).
    """
    ignore = frozenset(ignore)
    if where in ignore:
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            diff = first_difference(
                old.get(key), new.get(key), f"{where}.{key}" if where else str(key), ignore
            )
            if diff:
                return diff
        return None
    return None if old == new else f"{where or 'settings'} was {old!r}, now {new!r}"


def _normalised(data: Any) -> Any:
    """``data`` as JSON gives it back (tuples -> lists)."""
    return json.loads(json.dumps(data, default=str))


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    file: bool = False,
    settings_file: str | None = None,
    settings: Mapping[str, Any] | None = None,
    ignore: Iterable[str] = (),
    what: str = "--out",
    how: str | None = "pass --overwrite",
    kind: str = "this command's output",
    noun: str = "settings",
) -> dict[str, Any] | None:
    """The overwrite rule, checked before any work (module docstring); creates nothing.

    Args:
        path: the output folder (or file, with ``file``).
        overwrite: the caller will replace what is there (the folder's own files, or the file).
        file: ``path`` is one output file (replaced atomically) rather than a folder.
        settings_file: a resumable command's settings file inside the folder (JSON object).
        settings: what the folder must have been made with: compared with the same top-level keys
            of ``settings_file``.
        ignore: dotted setting names that may differ between runs (e.g. counts that may grow).
        what: how the user names ``path`` (``--out``, ``output_dir``).
        how: how the user asks to replace it (``pass --overwrite``, ``set params.overwrite = true``);
            None where the command has no way to (only resuming).
        kind: what a folder holding ``settings_file`` is, for messages.
        noun: ``settings`` or ``parameters``, for messages.

    Returns:
        The parsed ``settings_file`` when an existing folder is resumed, None otherwise.

    Raises:
        FileExistsError: ``path`` exists and is not empty (or is a file where a folder is wanted),
            and neither ``overwrite`` nor a resumable settings file allows writing there.
        IsADirectoryError: ``file`` and ``path`` is a folder.
        PermissionError: ``path``, or the folder it would be made in, is read-only.
        ValueError: the settings file is unreadable, or the folder was made with other settings
            (naming the first one and both values).
    """
    path = Path(path)
    replace = f" or {how} to replace it" if how else ""
    again = f", {how} to start again," if how else ""
    if file:
        if path.is_dir():
            raise IsADirectoryError(f"{what} {path} is a folder; give the name of a file to write")
        if path.exists() and path.stat().st_size > 0 and not overwrite:
            raise FileExistsError(f"{what} {path} exists; choose another file{replace}")
        _check_writable(path, what)  # the file, or (absent) the folder it would be made in
        if path.exists():
            _check_writable(path.parent, what)  # the folder the replacement is renamed in
        return None
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path} exists and is not a folder; choose a folder")
    _check_writable(path, what)
    if not path.is_dir() or not any(path.iterdir()) or overwrite:
        return None
    marker = path / settings_file if settings_file else None
    if marker is None or not marker.is_file():
        holds = f" and holds no {settings_file} (it is not {kind})" if settings_file else ""
        raise FileExistsError(f"{what} {path} exists and is not empty{holds}; choose another folder{replace}")
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{marker}: unreadable ({exc}); choose another folder{replace}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{marker}: expected a JSON object; choose another folder{replace}")
    new = _normalised(dict(settings or {}))
    diff = first_difference({k: doc.get(k) for k in new}, new, "", ignore)
    if diff:
        raise ValueError(
            f"{path} holds {kind} made with other {noun} ({diff}); use the same {noun} to resume{again} "
            "or choose another folder"
        )
    return doc


# -------------------------------------------------------------------------------------- records


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A fresh hidden temp sibling of ``path`` to write; renamed over ``path`` when the block ends cleanly.

    The one atomic-write idiom of the library: whatever writes the file (``torch.save``, a zip, a copy,
    an ITK writer) writes the yielded path; on any exception the temp file is deleted and ``path`` is
    left as it was.

    Args:
        path: the final file.
        suffix: kept at the end of the temp name (for writers that choose the format by extension).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_parent(path: Path, func: str) -> None:
    """FileNotFoundError naming ``func`` if the folder ``path`` is to be written in does not exist."""
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{func}: output directory {path.parent} does not exist (writing {path.name})"
        )


def write_failed(path: Path, exc: BaseException) -> OSError:
    """The error of a write that did not complete (ITK and PIL messages reduced to their last line)."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return OSError(
        f"could not write {path} ({reason}); the disk may be full, a file size limit reached or the folder "
        "not writable. Nothing was written under that name."
    )


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str], fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``.

    Python's file objects raise on a short write (full disk, file size limit), unlike some C++ writers;
    encoders that can produce bytes in memory (VTK's ``WriteToOutputStringOn``) write through here.

    Args:
        data: the file's bytes.
        path: the destination; its folder must exist.
        fsync: flush the data to the disk before the rename (records a rerun trusts).

    Raises:
        FileNotFoundError: the destination directory does not exist.
        OSError: the file could not be written whole; nothing is left under ``path`` or the temp name.
    """
    path = Path(path)
    check_parent(path, "write_bytes_atomic")
    with atomic_path(path, path.suffix) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise write_failed(path, exc) from None
    return path


def write_json_atomic(
    path: str | os.PathLike[str],
    data: Any,
    *,
    indent: int | None = 1,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = str,
    fsync: bool = True,
) -> Path:
    """Write ``data`` as JSON (UTF-8, one trailing newline) atomically (:func:`write_bytes_atomic`).

    Args:
        path: the destination; its folder must exist.
        data: a JSON value.
        indent, allow_nan, default: as for ``json.dumps``: ``default=str`` writes other objects as
            text, None refuses them (TypeError); ``allow_nan=False`` refuses NaN and inf (strict JSON).
        fsync: flush to the disk before the rename.

    Returns:
        ``path``.
    """
    text = json.dumps(data, indent=indent, allow_nan=allow_nan, default=default) + "\n"
    return write_bytes_atomic(text.encode("utf-8"), path, fsync=fsync)


def read_format_json(
    path: str | os.PathLike[str], what: str, fmt: str, features: Sequence[str], remedy: str
) -> dict[str, Any]:
    """Read a JSON file this package wrote with ``{"format": fmt, "features": [...], ...}``.

    Args:
        path: the file.
        what: what it is, for the message (e.g. ``"input statistics"``).
        fmt, features: the ``format`` and ``features`` it must record.
        remedy: the command that makes it again (named in the message).

    Returns:
        The document.

    Raises:
        ValueError: unreadable, not a JSON object, or another format / other features (naming the file).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(d, dict) or d.get("format") != fmt or d.get("features") != list(features):
        raise ValueError(f"{path}: not {fmt} with features {list(features)}; recompute it ({remedy})")
    return d


def sha256_stream(stream: IO[bytes], sink: IO[bytes] | None = None) -> str:
    """sha256 (hex) of what is left in ``stream``, read in 1 MiB chunks (each also written to ``sink``)."""
    h = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file, streamed; never cached (``models.sha256_file`` remembers digests).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    with open(path, "rb") as f:
        return sha256_stream(f)


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(shard: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"i/N"`` (or (i, N)) -> (i, N) with 0 <= i < N: the share of a dataset one writer makes (``--shard``).

    Raises:
        ValueError: anything else (names ``shard``).
    """
    if isinstance(shard, tuple | list) and len(shard) == 2:
        i, n = shard
    else:
        m = _SHARD.fullmatch(str(shard))
        if m is None:
            raise ValueError(f"shard: expected i/n with 0 <= i < n (e.g. 0/4), got {shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard: expected i/n with 0 <= i < n (e.g. 0/4), got {shard!r}")
    return i, n


def _files_in(root: Path, files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files of ``files`` (paths relative to ``root``), folders expanded to the files under them."""
    out = []
    for rel in files:
        p = root / rel
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out


def write_record(
    record: str | os.PathLike[str], root: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]
) -> dict[str, Any]:
    """Record a finished sample: size (bytes) and sha256 of each of its files; write it last, atomically.

    Args:
        record: the record's path (e.g. ``<sample>.done.json``).
        root: the folder the file names are relative to.
        files: the sample's files (relative to ``root``); a folder stands for every file under it.

    Returns:
        The record written.

    Raises:
        FileNotFoundError: a file of the sample does not exist.
    """
    root = Path(root)
    entries = {}
    for p in _files_in(root, files):
        if not p.is_file():
            raise FileNotFoundError(f"write_record: {p} does not exist; a sample is recorded after its files")
        entries[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    data = {"format": RECORD_FORMAT, "files": dict(sorted(entries.items()))}
    write_json_atomic(record, data)
    return data


def verify_record(record: str | os.PathLike[str], root: str | os.PathLike[str]) -> str | None:
    """None if the sample ``record`` describes is complete: every file there with its size and sha256.

    Returns:
        None, or why the sample is not complete (no record, unreadable record, a file missing,
        of another size or with other content).
    """
    record, root = Path(record), Path(root)
    if not record.is_file():
        return f"no record {record.name}"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        files = data["files"] if data.get("format") == RECORD_FORMAT else None
        if not isinstance(files, dict) or not files:
            return f"{record.name} is not a sample record"
        for rel, entry in files.items():
            p = root / rel
            if not p.is_file():
                return f"{rel} is missing"
            size = p.stat().st_size
            if size != entry["size"]:
                return f"{rel} has {size} bytes, the record says {entry['size']}"
            if sha256_file(p) != entry["sha256"]:
                return f"{rel} differs from the file recorded (sha256)"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{record.name} is unreadable ({exc})"
    return None


@contextmanager
def recorded_sample(
    record: str | os.PathLike[str],
    root: str | os.PathLike[str],
    files: Iterable[str | os.PathLike[str]],
    folders: bool = False,
) -> Iterator[None]:
    """Make one sample of a resumable dataset: the one write-then-record step of every sharded writer.

    Clears what an earlier try left (:func:`discard`), lets the ``with`` body write the files, then
    records them (:func:`write_record`, written last); if the body (or the record) fails, nothing of
    the sample remains and the error propagates.

    Args:
        record: the sample's record path.
        root: the folder the names in ``files`` are relative to.
        files: the sample's files (relative to ``root``).
        folders: as for :func:`discard`.
    """
    files = list(files)
    discard(record, root, files, folders=folders)
    try:
        yield
        write_record(record, root, files)
    except BaseException:
        discard(record, root, files, folders=folders)  # nothing of a failed sample remains
        raise


def remove_stale_temps(path: str | os.PathLike[str]) -> int:
    """Delete the hidden temp siblings (``.<name>.*``) that a killed atomic write of ``path`` left; returns how many."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    stale = list(path.parent.glob(f".{path.name}.*"))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def discard(
    record: str | os.PathLike[str] | None,
    root: str | os.PathLike[str],
    files: Iterable[str | os.PathLike[str]],
    folders: bool = False,
) -> None:
    """Delete an unfinished sample: its record first, then its files (or folders) and their stale temp files.

    Args:
        record: the sample's record, or None (e.g. clearing a command's own files for ``overwrite``).
        root: the folder the names in ``files`` are relative to.
        files: the sample's files (relative to ``root``); absent ones are skipped.
        folders: the names may be folders (a sample that is a folder), deleted whole; otherwise a
            folder found where a file belongs is left alone (nothing this code wrote), and writing
            the file will fail naming it.
    """
    if record is not None:
        Path(record).unlink(missing_ok=True)
    root = Path(root)
    for rel in files:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            if not folders:
                continue
            aside = p.with_name(f".{p.name}.discard-{uuid.uuid4().hex[:8]}")
            os.rename(p, aside)  # gone from its name in one step, then deleted
            shutil.rmtree(aside, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        remove_stale_temps(p)


def require_parent_dir(path: str | os.PathLike[str], func: str) -> None:
    """Raise FileNotFoundError (naming ``func`` and the file) unless the folder ``path`` goes into exists."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{func}: output directory {path.parent} does not exist (writing {path.name})"
        )


def require_file(path: str | os.PathLike[str], func: str) -> None:
    """Raise FileNotFoundError (naming ``func``) unless ``path`` is an existing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{func}: {path} does not exist or is not a file")


# ------------------------------------------------------------------------------ output folders


def new_work_dir(output_dir: Path) -> Path:
    """Create a fresh hidden folder ``.<name>.tmp-XXXXXXXX`` next to ``output_dir`` (made if needed).

    Unlike ``tempfile.mkdtemp`` (mode 0700) it gets the usual permissions, which the outputs keep
    after the rename.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        work = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            work.mkdir()
            return work
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a work folder next to {output_dir}")


def move_into_place(
    work: Path, out: Path, overwrite: bool, check: Callable[[Path, bool], Any] | None = None
) -> None:
    """Rename ``work`` to ``out``; with ``overwrite``, swap out a non-empty ``out`` and delete it after.

    Args:
        check: the overwrite rule to apply when ``out`` appeared while the work ran (default
            :func:`check_output` with ``--out`` wording).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    aside: Path | None = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder is no output (and Windows cannot rename onto it)
    elif out.exists():
        if not overwrite:  # appeared while the work ran
            (check or (lambda p, o: check_output(p, overwrite=o)))(out, overwrite)
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, aside)
    try:
        _rename_dir(work, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)  # put the old outputs back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _rename_dir(src: Path, dst: Path) -> None:
    """Rename a folder; across filesystems, copy next to ``dst`` first so the last step is a rename."""
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.parent / f".{dst.name}.copy-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(src, ignore_errors=True)
