"""On-disk format of synthetic coronary view-pair datasets, its writer and a torch ``Dataset`` reading it.

Layout (format ``xraycardiac.coronary_pairs``, version 1)::

    DIR/
      dataset.json                  format, version, generator parameters, renderer, counts, shards
      shards/shard_<i>-of-<N>.json  what each shard run did (trees, written/skipped/resumed, timing)
      tree_<t:05d>/                 one folder per coronary tree t (tree seed = base seed + t)
        tree.json                   the 3D CoronaryTree (CoronaryTree.save_json), once per tree
        pair_<t:05d>_<k:02d>/       view pair k of tree t: one training sample
          view1.png, view2.png      (rows, cols) 8-bit renderer output, vessels dark; value / 255 in [0, 1]
          mask1.png, mask2.png      (rows, cols) 8-bit vessel masks, 0 or 255
          thickness1.npy, ...2.npy  (rows, cols) float16 path length in mm through the opacified lumen
          geometry.json             {"view1": CArmGeometry.to_dict(), "view2": ...}: every C-arm field
                                    plus the (3, 4) "projection_matrix" (RAS mm -> pixel (u, v))
          keypoints.json            the K ground-truth keypoints and their matches (below)
          sample.json               provenance: tree/pair index, injection, seeds, renderer draws, counts

``keypoints.json`` holds, for the K keypoints sampled on the 3D tree (bifurcations, endpoints,
centreline samples every ``spacing_mm``): ``points_ras_mm`` (K, 3), ``kind``, ``branch`` and
``tree`` (0 = left, 1 = right) per keypoint, ``point_index`` into ``tree.json``, ``uv1``/``uv2``
(K, 2) pixel positions (u = column, v = row, pixel centres at integers) in each view, the flags
``in_field1``/``in_field2`` (on the detector) and ``ambiguous1``/``ambiguous2`` (another opacified
vessel within ``overlap_px`` in that view), and ``matches`` (M, 2): pairs (i, j) of positions in the
per-view lists ``index1 = flatnonzero(in_field1)``, ``index2 = flatnonzero(in_field2)``, exactly as
:class:`~xraycardiac.coronary.synth.correspondences.GTMatches` defines them. Floats are written with
Python's shortest round-trip repr, so ``uv`` and the projection matrices read back bit-exact.

Writing is crash-safe: a sample is written into a hidden ``.pair_..tmp-*`` folder next to its final
name and renamed in one step, so a sample folder either is complete or does not exist; readers
list only complete ones. Every file of a sample is a deterministic function of the generator
parameters and the (tree, pair) index (no time stamps), so a resumed or sharded run writes the
same bytes as one uninterrupted run. ``dataset.json``'s ``counts`` and ``shards`` summarise the
``shards/`` records and the folders on disk; they are rewritten by each finishing shard run
(concurrent shards may briefly leave them stale). The folders are the truth. Creating
``dataset.json`` and checking that a later run into the same folder uses the same parameters is
the run's business: ``prepare_dataset_dir`` and ``record_shard`` in
:mod:`xraycardiac.coronary.synth.engine`.

Splits: :func:`split_of_tree` puts a whole tree (all its pairs) in "train", "val" or "test" by a
fixed hash of its index, so no anatomy is shared between splits and adding trees never moves old
ones.

Importing this module is light (numpy only); ``CoronaryPairDataset`` and :func:`collate_pairs`
import torch when first used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xraycardiac import outputs
from xraycardiac.jsonutil import json_default

if TYPE_CHECKING:
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.synth.correspondences import GTMatches
    from xraycardiac.geometry import CArmGeometry

__all__ = [
    "DATASET_FORMAT", "FORMAT_VERSION", "SAMPLE_FILES",
    "CoronaryPairDataset",  # noqa: F822 -- made by the module __getattr__ on first use (imports torch)
    "collate_pairs", "dataset_info", "list_samples", "match_matrix", "normalised", "read_json", "read_sample",
    "remove_stale_temp", "sample_name", "sample_path", "split_of_tree", "tree_dir",
    "write_json_atomic", "write_sample", "write_tree",
]  # fmt: skip

DATASET_FORMAT = "xraycardiac.coronary_pairs"
FORMAT_VERSION = 1
INFO_NAME = "dataset.json"
SAMPLE_FILES = (
    "view1.png", "view2.png", "mask1.png", "mask2.png", "thickness1.npy", "thickness2.npy",
    "geometry.json", "keypoints.json", "sample.json",
)  # fmt: skip
SPLITS = ("train", "val", "test")
MAX_TREES = 100_000  # five digits in the folder names
MAX_PAIRS_PER_TREE = 100  # two digits
_SAMPLE_RE = re.compile(r"^pair_(\d{5})_(\d{2})$")
_TREE_RE = re.compile(r"^tree_(\d{5})$")


# --- Names -----------------------------------------------------------------------------------------


def _check_index(name: str, value: int, upper: int) -> int:
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and 0 <= value < upper):
        raise ValueError(f"{name}: expected an integer in [0, {upper}), got {value!r}")
    return int(value)


def sample_name(tree_index: int, pair_index: int) -> str:
    """``pair_<tree:05d>_<pair:02d>``, the folder name of one sample."""
    t = _check_index("tree_index", tree_index, MAX_TREES)
    k = _check_index("pair_index", pair_index, MAX_PAIRS_PER_TREE)
    return f"pair_{t:05d}_{k:02d}"


def tree_dir(root: str | os.PathLike[str], tree_index: int) -> Path:
    """``root/tree_<t:05d>``, the folder of one tree and its pairs."""
    return Path(root) / f"tree_{_check_index('tree_index', tree_index, MAX_TREES):05d}"


def sample_path(root: str | os.PathLike[str], tree_index: int, pair_index: int) -> Path:
    """``root/tree_<t>/pair_<t>_<k>``, where sample (t, k) lives once complete."""
    return tree_dir(root, tree_index) / sample_name(tree_index, pair_index)


def split_of_tree(tree_index: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split ("train", "val" or "test") of a tree: a fixed hash of its index against ``fractions``.

    Knuth's multiplicative hash spreads consecutive indices over [0, 1) evenly, so any range of
    trees splits close to ``fractions``; the split of a tree never depends on how many there are.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"split fractions: expected three values >= 0 (train, val, test) summing to 1, got {fractions}"
        )
    x = ((int(tree_index) * 2654435761) % 2**32) / 2**32
    return SPLITS[int(np.searchsorted(np.cumsum(f)[:2], x, side="right"))]


# --- JSON helpers ----------------------------------------------------------------------------------


def _dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(data, default=json_default, allow_nan=False, indent=indent)


def normalised(data: Any) -> Any:
    """``data`` as JSON would give it back (tuples -> lists, numpy -> Python)."""
    return json.loads(_dumps(data))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented strict JSON to ``path``, atomically (:func:`xraycardiac.outputs.write_json_atomic`)."""
    outputs.write_json_atomic(path, data, indent=1, allow_nan=False, default=json_default, fsync=False)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; errors name ``what`` and the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from None


# --- dataset.json ----------------------------------------------------------------------------------


def dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``dataset.json`` of a dataset folder.

    Raises:
        FileNotFoundError: ``root`` or its ``dataset.json`` does not exist.
        ValueError: it is not a coronary pair dataset of a version this code reads.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"coronary pair dataset: folder {root} does not exist")
    info = read_json(root / INFO_NAME, "coronary pair dataset")
    if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
        raise ValueError(
            f'{root / INFO_NAME} is not a coronary pair dataset (expected "format": "{DATASET_FORMAT}")'
        )
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root / INFO_NAME}: format_version {info.get('format_version')!r}; this version of xraycardiac "
            f"reads version {FORMAT_VERSION}"
        )
    return info


# --- Writing ---------------------------------------------------------------------------------------


def write_tree(root: str | os.PathLike[str], tree_index: int, tree: CoronaryTree) -> Path:
    """Write ``tree_<t>/tree.json`` (atomically) unless it is there already; returns its path."""
    folder = tree_dir(root, tree_index)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tree.json"
    if not path.exists():
        tree.save_json(path)
    return path


def _pair(value: Any, what: str) -> tuple[Any, Any]:
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == 2:
        return value[0], value[1]
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    raise ValueError(f"write_sample: {what} must be a pair (view 1, view 2), got {type(value).__name__}")


def _keypoints_record(gt: GTMatches) -> dict[str, Any]:
    """The keypoints.json content (see the module docstring)."""
    kp = gt.keypoints
    record: dict[str, Any] = {
        "format": "xraycardiac.coronary_keypoints",
        "count": len(kp),
        "spacing_mm": float(kp.spacing_mm),
        "overlap_px": float(gt.overlap_px),
        "trees": [int(t) for t in kp.trees],
        "points_ras_mm": np.asarray(kp.points, dtype=np.float64).tolist(),
        "kind": [str(s) for s in kp.kind],
        "branch": [str(s) for s in kp.branch],
        "tree": np.asarray(kp.tree_id, dtype=np.int64).tolist(),
        "point_index": np.asarray(kp.point_index, dtype=np.int64).tolist(),
    }
    for v in (1, 2):
        record[f"uv{v}"] = np.asarray(getattr(gt, f"uv{v}"), dtype=np.float64).tolist()
        for flag in ("in_field", "ambiguous"):
            record[f"{flag}{v}"] = np.asarray(getattr(gt, f"{flag}{v}"), dtype=bool).tolist()
    record["matches"] = np.asarray(gt.matches, dtype=np.int64).reshape(-1, 2).tolist()
    return record


def write_sample(
    root: str | os.PathLike[str],
    tree_index: int,
    pair_index: int,
    *,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thickness_mm: Sequence[np.ndarray],
    geometries: Sequence[CArmGeometry],
    gt: GTMatches,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write one view-pair sample atomically (hidden temp folder, then one rename).

    Args:
        root: dataset folder; ``tree_<t>/`` is created if needed.
        tree_index, pair_index: the sample's (t, k); its folder is :func:`sample_path`.
        images: two (rows, cols) renderer images in [0, 1], vessels dark; stored as 8-bit
            (``round(255 x)``), which is exact for the renderer's 256 output levels.
        masks: two (rows, cols) boolean vessel masks.
        thickness_mm: two (rows, cols) vessel path-length maps in mm (stored float16).
        geometries: the two C-arm views the images were made with.
        gt: ground-truth keypoints and matches of these two views.
        meta: JSON-ready provenance for ``sample.json`` (keep it free of time stamps so reruns
            write the same bytes).

    Returns:
        The sample folder.

    Raises:
        ValueError: an array of the wrong shape (every image must be (detector_rows,
            detector_cols) of its view) or a value JSON cannot hold.
        FileExistsError: the sample exists already (it is never overwritten).
    """
    from xraycardiac.io import write_png

    final = sample_path(root, tree_index, pair_index)
    if final.exists():
        raise FileExistsError(f"write_sample: sample {final} exists already")
    views = _pair(images, "images"), _pair(masks, "masks"), _pair(thickness_mm, "thickness_mm")
    g1, g2 = _pair(geometries, "geometries")
    arrays: dict[str, np.ndarray] = {}
    for v, g in ((0, g1), (1, g2)):
        shape = (g.detector_rows, g.detector_cols)
        for what, group in zip(("image", "mask", "thickness"), views, strict=True):
            a = np.asarray(group[v])
            if a.shape != shape:
                raise ValueError(
                    f"write_sample: {what} of view {v + 1} has shape {a.shape}, expected {shape} (detector rows, cols)"
                )
            arrays[f"{what}{v + 1}"] = a
    for key in ("image1", "image2", "thickness1", "thickness2"):
        if not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"write_sample: {key} contains NaN or infinite values")
    if not (np.allclose(gt.p1, g1.projection_matrix()) and np.allclose(gt.p2, g2.projection_matrix())):
        raise ValueError(
            "write_sample: gt was built with other views than geometries; pass the matches of these views"
        )
    sample_meta = {
        "format": "xraycardiac.coronary_pair_sample",
        "format_version": FORMAT_VERSION,
        "name": final.name,
        "tree_index": int(tree_index),
        "pair_index": int(pair_index),
        "image_shape": [[g1.detector_rows, g1.detector_cols], [g2.detector_rows, g2.detector_cols]],
        "counts": {
            "keypoints": len(gt.keypoints),
            "view1": int(np.count_nonzero(gt.in_field1)),
            "view2": int(np.count_nonzero(gt.in_field2)),
            "matches": int(len(gt.matches)),
        },
        **(meta or {}),
    }
    texts = {
        "geometry.json": _dumps({"view1": g1.to_dict(), "view2": g2.to_dict()}, indent=1) + "\n",
        "keypoints.json": _dumps(_keypoints_record(gt)) + "\n",
        "sample.json": _dumps(sample_meta, indent=1) + "\n",
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for v in (1, 2):
            image = np.clip(arrays[f"image{v}"].astype(np.float64), 0.0, 1.0)
            write_png(image, tmp / f"view{v}.png", window=(0.0, 1.0))
            write_png(
                arrays[f"mask{v}"].astype(bool).astype(np.float64), tmp / f"mask{v}.png", window=(0.0, 1.0)
            )
            np.save(tmp / f"thickness{v}.npy", arrays[f"thickness{v}"].astype(np.float16))
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        try:
            os.rename(tmp, final)  # refuses an existing non-empty folder: a sample is never replaced
        except OSError:
            if final.exists():
                raise FileExistsError(f"write_sample: sample {final} appeared while writing it") from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_temp(root: str | os.PathLike[str], tree_index: int, pair_index: int) -> int:
    """Delete temp folders a killed run left for sample (t, k); returns how many."""
    folder = tree_dir(root, tree_index)
    if not folder.is_dir():
        return 0
    stale = list(folder.glob(f".{sample_name(tree_index, pair_index)}.tmp-*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


# --- Reading ---------------------------------------------------------------------------------------


def list_samples(
    root: str | os.PathLike[str], split: str | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> list[Path]:
    """Complete sample folders of a dataset, sorted by (tree, pair).

    Args:
        root: dataset folder (with ``dataset.json``).
        split: None for all, or "train" / "val" / "test" (:func:`split_of_tree`).
        fractions: (train, val, test) shares used with ``split``.

    Raises:
        FileNotFoundError: ``root`` or its ``dataset.json`` does not exist.
        ValueError: not a coronary pair dataset, or an unknown ``split``.
    """
    root = Path(root)
    dataset_info(root)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: expected None or one of {SPLITS}, got {split!r}")
    out = []
    for tdir in sorted(p for p in root.iterdir() if p.is_dir() and _TREE_RE.match(p.name)):
        t = int(_TREE_RE.match(tdir.name).group(1))
        if split is not None and split_of_tree(t, fractions) != split:
            continue
        out.extend(
            sorted(
                p
                for p in tdir.iterdir()
                if p.is_dir() and (m := _SAMPLE_RE.match(p.name)) and int(m.group(1)) == t
            )
        )
    return out


def _read_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"coronary pair sample: {path} is missing") from None
    if a.dtype != np.uint8 or a.shape != shape:
        raise ValueError(f"coronary pair sample: {path} is {a.dtype} {a.shape}, expected uint8 {shape}")
    return a


def match_matrix(matches: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """(k1 + 1, k2 + 1) float32 assignment with dustbins, as ``GTMatches.match_matrix``."""
    m = np.zeros((k1 + 1, k2 + 1), dtype=np.float32)
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    m[matches[:, 0], matches[:, 1]] = 1.0
    m[np.setdiff1d(np.arange(k1), matches[:, 0]), k2] = 1.0
    m[k1, np.setdiff1d(np.arange(k2), matches[:, 1])] = 1.0
    return m


def read_sample(path: str | os.PathLike[str], load_thickness: bool = True) -> dict[str, Any]:
    """Read one sample folder into numpy arrays.

    Returns:
        ``image1``/``image2`` (rows, cols) float32 in [0, 1]; ``mask1``/``mask2`` bool;
        ``thickness1``/``thickness2`` float32 mm (if ``load_thickness``); ``projection_matrices``
        (2, 3, 4) float64; ``geometry`` (the geometry.json dict); ``keypoints`` (the keypoints.json
        dict with numpy arrays: ``points_ras_mm`` (K, 3) float64, ``uv1``/``uv2`` (K, 2) float64,
        flags (K,) bool, ``matches`` (M, 2) int64, ``kind``/``branch`` (K,) str, ``tree``/
        ``point_index`` (K,) int64); ``meta`` (sample.json); ``name``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: a file is unreadable or has the wrong shape.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"coronary pair sample: folder {path} does not exist")
    geometry = read_json(path / "geometry.json", "coronary pair sample")
    kp = read_json(path / "keypoints.json", "coronary pair sample")
    meta = read_json(path / "sample.json", "coronary pair sample")
    out: dict[str, Any] = {"name": path.name, "geometry": geometry, "meta": meta}
    pmats = []
    for v in (1, 2):
        g = geometry[f"view{v}"]
        shape = (int(g["detector_rows"]), int(g["detector_cols"]))
        out[f"image{v}"] = _read_png(path / f"view{v}.png", shape).astype(np.float32) / 255.0
        out[f"mask{v}"] = _read_png(path / f"mask{v}.png", shape) > 127
        if load_thickness:
            t = np.load(path / f"thickness{v}.npy", allow_pickle=False)
            if t.shape != shape:
                raise ValueError(
                    f"coronary pair sample: {path / f'thickness{v}.npy'} has shape {t.shape}, expected {shape}"
                )
            out[f"thickness{v}"] = t.astype(np.float32)
        pmats.append(np.asarray(g["projection_matrix"], dtype=np.float64))
    out["projection_matrices"] = np.stack(pmats)
    k = int(kp["count"])
    arrays = dict(kp)
    arrays["points_ras_mm"] = np.asarray(kp["points_ras_mm"], dtype=np.float64).reshape(k, 3)
    for key in ("uv1", "uv2"):
        arrays[key] = np.asarray(kp[key], dtype=np.float64).reshape(k, 2)
    for key in ("in_field1", "in_field2", "ambiguous1", "ambiguous2"):
        arrays[key] = np.asarray(kp[key], dtype=bool).reshape(k)
    for key in ("tree", "point_index"):
        arrays[key] = np.asarray(kp[key], dtype=np.int64).reshape(k)
    for key in ("kind", "branch"):
        arrays[key] = np.asarray(kp[key], dtype=str).reshape(k)
    arrays["matches"] = np.asarray(kp["matches"], dtype=np.int64).reshape(-1, 2)
    out["keypoints"] = arrays
    return out


# --- torch Dataset (built on first use so that importing this module does not import torch) --------

_DATASET_CLASS: type | None = None


def _make_dataset_class() -> type:
    import torch
    from torch.utils.data import Dataset

    class CoronaryPairDataset(Dataset):
        """Synthetic coronary view pairs as dicts of tensors (a ``torch.utils.data.Dataset``).

        Args:
            root: dataset folder (:mod:`xraycardiac.coronary.synth.dataset` format).
            split: None for every sample, or "train" / "val" / "test" (whole trees, see
                :func:`split_of_tree`).
            load_thickness: also return the thickness maps.
            fractions: (train, val, test) shares of the trees for ``split``.

        Each item (K1 / K2 = keypoints on detector 1 / 2, K = all keypoints, M = matches)::

            image1, image2            (1, H, W) float32 in [0, 1], vessels dark
            mask1, mask2              (1, H, W) float32, 1 on vessels
            thickness1, thickness2    (1, H, W) float32 mm (with load_thickness)
            keypoints1, keypoints2    (Kv, 2) float32 pixel (u, v) of the in-field keypoints
            ambiguous1, ambiguous2    (Kv,) bool overlap flags of those keypoints
            keypoint_ids1, ...ids2    (Kv,) int64 index of each into points3d
            points3d                  (K, 3) float64 RAS mm
            matches                   (M, 2) int64 (i into view 1's list, j into view 2's)
            match_matrix              (K1 + 1, K2 + 1) float32 with dustbins (LightGlue targets)
            projection_matrices       (2, 3, 4) float64, RAS mm -> pixel
            index (int), name (str)

        Use :func:`collate_pairs` as the DataLoader's ``collate_fn`` (keypoint counts vary).
        """

        def __init__(
            self,
            root: str | os.PathLike[str],
            split: str | None = None,
            load_thickness: bool = True,
            fractions: Sequence[float] = (0.8, 0.1, 0.1),
        ) -> None:
            self.root = Path(root)
            self.split = split
            self.load_thickness = bool(load_thickness)
            self.samples = list_samples(self.root, split, fractions)

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int) -> dict[str, Any]:
            if not -len(self) <= index < len(self):
                raise IndexError(f"CoronaryPairDataset: index {index} out of range for {len(self)} samples")
            index = index % len(self)
            s = read_sample(self.samples[index], self.load_thickness)
            kp = s["keypoints"]
            item: dict[str, Any] = {"index": index, "name": s["name"]}
            for v in (1, 2):
                item[f"image{v}"] = torch.from_numpy(s[f"image{v}"])[None]
                item[f"mask{v}"] = torch.from_numpy(s[f"mask{v}"].astype(np.float32))[None]
                if self.load_thickness:
                    item[f"thickness{v}"] = torch.from_numpy(s[f"thickness{v}"])[None]
                ids = np.flatnonzero(kp[f"in_field{v}"])
                item[f"keypoints{v}"] = torch.from_numpy(kp[f"uv{v}"][ids].astype(np.float32))
                item[f"ambiguous{v}"] = torch.from_numpy(kp[f"ambiguous{v}"][ids])
                item[f"keypoint_ids{v}"] = torch.from_numpy(ids.astype(np.int64))
            k1, k2 = len(item["keypoints1"]), len(item["keypoints2"])
            item["points3d"] = torch.from_numpy(kp["points_ras_mm"])
            item["matches"] = torch.from_numpy(kp["matches"])
            item["match_matrix"] = torch.from_numpy(match_matrix(kp["matches"], k1, k2))
            item["projection_matrices"] = torch.from_numpy(s["projection_matrices"])
            return item

        def __repr__(self) -> str:
            return f"CoronaryPairDataset(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"

    CoronaryPairDataset.__module__ = __name__
    CoronaryPairDataset.__qualname__ = "CoronaryPairDataset"  # picklable for DataLoader workers
    return CoronaryPairDataset


def __getattr__(name: str) -> Any:
    global _DATASET_CLASS
    if name == "CoronaryPairDataset":
        if _DATASET_CLASS is None:
            _DATASET_CLASS = _make_dataset_class()
        return _DATASET_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_STACKED = ("image1", "image2", "mask1", "mask2", "thickness1", "thickness2", "projection_matrices")
# padded groups: keys padded along their first axis, the pad value, and the name of the validity mask
_PADDED = (
    (("keypoints1", "ambiguous1", "keypoint_ids1"), "keypoints1_valid"),
    (("keypoints2", "ambiguous2", "keypoint_ids2"), "keypoints2_valid"),
    (("points3d",), "points3d_valid"),
)


def collate_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch ``CoronaryPairDataset`` items whose keypoint counts differ (a DataLoader ``collate_fn``).

    Returns:
        Images, masks, thickness maps and projection matrices stacked to (B, ...); per-view
        keypoint fields padded to the batch's largest count, ``keypointsV`` (B, Kv_max, 2),
        ``ambiguousV`` (B, Kv_max) False-padded, ``keypoint_idsV`` (B, Kv_max) -1-padded, with
        ``keypointsV_valid`` (B, Kv_max) bool; ``points3d`` (B, K_max, 3) with ``points3d_valid``;
        ``match_matrix`` (B, K1_max + 1, K2_max + 1) with the dustbins in the last row / column
        (padded rows and columns are all 0); ``matches`` a list of (M_b, 2) tensors; ``index``
        (B,) int64; ``name`` a list of str.

    Raises:
        ValueError: an empty batch, or images of different sizes (naming the samples).
    """
    import torch

    if not batch:
        raise ValueError("collate_pairs: empty batch")
    out: dict[str, Any] = {}
    for key in _STACKED:
        if key not in batch[0]:
            continue
        shapes = {tuple(b[key].shape) for b in batch}
        if len(shapes) > 1:
            names = [b.get("name") for b in batch]
            raise ValueError(f"collate_pairs: {key} sizes differ within the batch {names}: {sorted(shapes)}")
        out[key] = torch.stack([b[key] for b in batch])
    for keys, valid_key in _PADDED:
        n = max(len(b[keys[0]]) for b in batch)
        out[valid_key] = torch.zeros((len(batch), n), dtype=torch.bool)
        for b_i, b in enumerate(batch):
            out[valid_key][b_i, : len(b[keys[0]])] = True
        for key in keys:
            first = batch[0][key]
            fill = -1 if key.startswith("keypoint_ids") else 0
            padded = torch.full((len(batch), n, *first.shape[1:]), fill, dtype=first.dtype)
            for b_i, b in enumerate(batch):
                padded[b_i, : len(b[key])] = b[key]
            out[key] = padded
    k1 = out["keypoints1_valid"].shape[1]
    k2 = out["keypoints2_valid"].shape[1]
    mm = torch.zeros((len(batch), k1 + 1, k2 + 1), dtype=torch.float32)
    for b_i, b in enumerate(batch):
        m = b["match_matrix"]
        n1, n2 = m.shape[0] - 1, m.shape[1] - 1
        mm[b_i, :n1, :n2] = m[:n1, :n2]
        mm[b_i, :n1, k2] = m[:n1, n2]
        mm[b_i, k1, :n2] = m[n1, :n2]
    out["match_matrix"] = mm
    out["matches"] = [b["matches"] for b in batch]
    out["index"] = torch.as_tensor([int(b["index"]) for b in batch], dtype=torch.int64)
    out["name"] = [b["name"] for b in batch]
    return out
