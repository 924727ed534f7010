"""Check what a volume file stores against what its header declares, before any voxel is read.

Used by :mod:`xraycardiac.io` when reading (a truncated file or a damaged compressed stream is
refused instead of being read as zeros) and after writing (ITK's writers do not always report a
short write). Uncompressed data is measured by size; zlib/gzip streams are inflated in bounded
chunks, which also checks their CRC and length. Only the standard library is used.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

__all__ = ["check_stored_data", "check_stored_data_in", "pixel_bytes"]


_CHUNK = 1 << 20  # bytes read, and at most inflated, per step: checks run in bounded memory
_NRRD_END = re.compile(rb"\r?\n\r?\n")  # the blank line after an attached NRRD header
_MHA_END = re.compile(rb"ElementDataFile\s*=[^\n]*\n")  # the last line of a MetaImage header


def pixel_bytes(reader: Any) -> int:
    """Bytes per voxel of an image whose header ``reader`` has read (all components)."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())  # e.g. "vector of 32-bit float"
    bits = re.search(r"(\d+)-bit", name)
    per_component = int(bits.group(1)) // 8 if bits else 8
    return per_component * (2 if "complex" in name else 1) * max(1, reader.GetNumberOfComponents())


def _inflate_count(fh: Any, wbits: int, keep: int = 0) -> tuple[bytes, int]:
    """Inflate the zlib/gzip stream(s) from ``fh``'s position to the end of the file, in bounded memory.

    zlib checks a gzip member's CRC-32 and length (and a zlib stream's Adler-32) as it reaches them.

    Returns:
        The first ``keep`` inflated bytes and the total inflated size in bytes.

    Raises:
        ValueError: the stream is damaged or ends early.
    """
    head, total = b"", 0
    d = zlib.decompressobj(wbits)
    data = fh.read(_CHUNK)
    try:
        while data:
            out = d.decompress(data, _CHUNK)
            total += len(out)
            if len(head) < keep:
                head += out[: keep - len(head)]
            data = d.unconsumed_tail
            if d.eof:
                rest = d.unused_data + fh.read(2)
                if rest[:2] != b"\x1f\x8b":  # not another gzip member: trailing bytes are ignored
                    return head, total
                d, data = zlib.decompressobj(wbits), rest + fh.read(_CHUNK)
            elif not data:
                data = fh.read(_CHUNK)
    except zlib.error as exc:
        raise ValueError(f"its compressed data is corrupt ({exc}) after {total} inflated bytes") from None
    raise ValueError(f"its compressed data ends early (file truncated) after {total} inflated bytes")


def _nifti_header(head: bytes) -> dict[str, Any] | None:
    """The fields of a NIfTI-1/-2 header (first 348/540 bytes) needed here; None if ``head`` is not one."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348:
            dim = struct.unpack(e + "8h", head[40:56])
            bitpix = struct.unpack(e + "h", head[72:74])[0]
            pixdim = struct.unpack(e + "8f", head[76:108])
            offset = struct.unpack(e + "f", head[108:112])[0]
            single = head[344:347] == b"n+1"
        elif len(head) >= 540 and struct.unpack(e + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(e + "h", head[14:16])[0]
            dim = struct.unpack(e + "8q", head[16:80])
            pixdim = struct.unpack(e + "8d", head[104:168])
            offset = struct.unpack(e + "q", head[168:176])[0]
            single = head[4:7] == b"n+2"
        else:
            continue
        ndim = min(max(int(dim[0]), 1), 7)
        nbytes = math.prod(max(int(n), 1) for n in dim[1 : ndim + 1]) * max(int(bitpix), 8) // 8
        return {"ndim": ndim, "pixdim": pixdim[1 : ndim + 1], "nbytes": nbytes, "offset": int(offset),
                "single_file": single}  # fmt: skip
    return None


def _text_header(fh: Any, end: re.Pattern[bytes], separator: str) -> tuple[dict[str, str], int] | None:
    """NRRD/MetaImage header fields (lower-case keys) and the offset where its attached data begins."""
    text = fh.read(1 << 16)
    match = end.search(text)
    if match is None:
        return None
    fields = {}
    for line in text[: match.end()].decode("latin-1").splitlines():
        key, sep, value = line.partition(separator)
        if sep and not key.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return fields, match.end()


def check_stored_data(path: Path, declared_bytes: int) -> dict[str, Any] | None:
    """Check that ``path`` stores the voxel data its header declares (NIfTI, NRRD, MetaImage with
    attached data; other formats are left to their readers).

    Args:
        path: the file.
        declared_bytes: voxel bytes by the header as SimpleITK read it (NIfTI uses its own header).

    Returns:
        The NIfTI header fields of :func:`_nifti_header` for a NIfTI file, else None.

    Raises:
        ValueError: the data is shorter than declared, or its compressed stream is damaged.
    """
    try:
        return check_stored_data_in(path, declared_bytes)
    except ValueError as exc:
        raise ValueError(f"{path}: the file is truncated or damaged: {exc}") from None


def check_stored_data_in(path: Path, declared_bytes: int) -> dict[str, Any] | None:
    """:func:`_check_stored_data` without the file name in its messages."""
    name = path.name.lower()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        if name.endswith((".nii", ".nii.gz")):
            if magic[:2] == b"\x1f\x8b":
                head, stored = _inflate_count(fh, 31, keep=540)
            else:
                head, stored = fh.read(540), size
            header = _nifti_header(head)
            if header is None:
                return None
            if header["single_file"]:
                _compare(stored - header["offset"], header["nbytes"])
            return header
        if magic == b"NRRD":
            parsed = _text_header(fh, _NRRD_END, ":")
            if parsed is None or {"data file", "datafile", "line skip", "byte skip"} & set(parsed[0]):
                return None  # detached or offset data: its reader checks it
            fields, start = parsed
            encoding = fields.get("encoding", "raw").lower()
        elif name.endswith(".mha"):
            parsed = _text_header(fh, _MHA_END, "=")
            if parsed is None or parsed[0].get("elementdatafile", "").upper() != "LOCAL":
                return None  # detached data: its reader checks it
            fields, start = parsed
            encoding = "gzip" if fields.get("compresseddata", "false").lower() == "true" else "raw"
        else:
            return None
        if encoding == "raw":
            _compare(size - start, declared_bytes)
        elif encoding in ("gzip", "gz"):
            fh.seek(start)
            _compare(_inflate_count(fh, 47)[1], declared_bytes)
    return None


def _compare(stored: int, declared: int) -> None:
    """ValueError when a file stores fewer voxel bytes than its header declares."""
    if stored < declared:
        raise ValueError(
            f"it holds {max(stored, 0):,} bytes of voxel data but its header declares {declared:,}"
        )
