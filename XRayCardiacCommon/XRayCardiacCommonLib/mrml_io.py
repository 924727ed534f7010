"""MRML volume nodes <-> ``xraycardiac.Volume``, and the node attributes the extension writes.

Everything here works on a plain ``slicer.vtkMRMLScene`` (slicer-core, no Qt), so the module logic
can be tested outside the Slicer application.

Geometry: ``Volume.ijk_to_ras`` is exactly ``vtkMRMLVolumeNode.GetIJKToRASMatrix`` (patient RAS mm)
and ``Volume.array`` is indexed (K, J, I) exactly as ``slicer.util.arrayFromVolume`` returns it, so
no axis is permuted or flipped on the way. A node under a linear parent transform is read in world
RAS (the transform is applied to the matrix); a non-linear parent transform must be hardened first.

Attributes: every attribute the extension writes starts with ``XRayCardiac.`` (``ATTRIBUTE_PREFIX``).
Strings are stored as they are; anything else is stored as JSON.

Scene: ``removed_on_error`` and ``temporary_nodes`` remove the nodes a block adds to a scene (when it
fails, or always), so that a failed import or a temporary export leaves the scene as it was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

import xraycardiac
from xraycardiac.io import write_volume
from xraycardiac.jsonutil import json_default
from xraycardiac.volume import Volume

__all__ = [
    "ATTRIBUTE_PREFIX",
    "GEOMETRY_ATTRIBUTE",
    "PROJECTION_MATRIX_ATTRIBUTE",
    "describe_node",
    "export_node",
    "format_projection_matrix",
    "node_from_volume",
    "node_geometry",
    "parse_projection_matrix",
    "read_attributes",
    "removed_on_error",
    "set_provenance",
    "temporary_nodes",
    "volume_from_node",
]

ATTRIBUTE_PREFIX = "XRayCardiac."
PROJECTION_MATRIX_ATTRIBUTE = ATTRIBUTE_PREFIX + "ProjectionMatrix"
GEOMETRY_ATTRIBUTE = ATTRIBUTE_PREFIX + "Geometry"

# numpy dtypes that vtkImageData cannot hold (or that Slicer refuses) -> the dtype they are stored as.
_STORED_DTYPE = {
    np.dtype(np.bool_): np.dtype(np.uint8),
    np.dtype(np.float16): np.dtype(np.float32),
}


def _matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def describe_node(node: Any) -> str:
    """E.g. ``"vtkMRMLScalarVolumeNode 'chest'"``, for error messages; ``"None"`` for None."""
    if node is None:
        return "None"
    name = node.GetName() if hasattr(node, "GetName") else None
    return f"{node.GetClassName()} {name!r}" if hasattr(node, "GetClassName") else type(node).__name__


def volume_from_node(node: Any, name: str = "node") -> Volume:
    """Copy a scalar volume node into a ``Volume`` in world RAS.

    Args:
        node: a ``vtkMRMLScalarVolumeNode`` (or a subclass such as a label map) holding image data.
        name: the parameter name used in error messages.

    Returns:
        Volume with a copy of the voxels, shape (K, J, I) (K = 1 for a 2D image), ``ijk_to_ras`` the
        node's IJK-to-RAS matrix composed with its linear parent transform (if any), and
        ``meta = {"name": node name}``.

    Raises:
        ValueError: ``node`` is not a scalar volume node, has no voxels, or sits under a non-linear
            transform.
    """
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(
            f"{name}: expected a scalar volume node (vtkMRMLScalarVolumeNode), got {describe_node(node)}"
        )
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0 or image.GetPointData().GetScalars() is None:
        raise ValueError(f"{name}: volume node {node.GetName()!r} holds no voxels (empty image data)")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"{name}: volume node {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components "
            "per voxel; expected a scalar (single-component) volume"
        )
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _matrix_to_numpy(m)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                f"{name}: volume node {node.GetName()!r} is under the non-linear transform "
                f"{parent.GetName()!r}; harden the transform first (Data module: right-click > Harden transform)"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = _matrix_to_numpy(to_world) @ ijk_to_ras
    return Volume(array=array, ijk_to_ras=ijk_to_ras, meta={"name": node.GetName()})


def _storable_array(array: np.ndarray, name: str) -> np.ndarray:
    """The voxels as a dtype vtkImageData holds and Slicer displays (64-bit integers narrowed if they fit)."""
    a = np.asarray(array)
    if a.dtype in _STORED_DTYPE:
        return a.astype(_STORED_DTYPE[a.dtype])
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        # Slicer rejects "long long" voxels; keep exact values when they fit in 32 bits.
        target = np.dtype(np.int32) if a.dtype.kind == "i" else np.dtype(np.uint32)
        info = np.iinfo(target)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(target)
        return a.astype(np.float64)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: voxel type {a.dtype} cannot be stored in a scalar volume node")
    return a


def _attribute_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, allow_nan=False, default=json_default)


def node_from_volume(
    scene: Any,
    volume: Volume,
    name: str,
    node_class: str = "vtkMRMLScalarVolumeNode",
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """Add a new volume node holding ``volume`` to ``scene``.

    Args:
        scene: the ``vtkMRMLScene`` that receives the node.
        volume: voxels (K, J, I) and ``ijk_to_ras`` in RAS mm; K = 1 gives a one-slice (2D) node.
        name: node name (Slicer makes it unique only if asked; it is used as given).
        node_class: a ``vtkMRMLScalarVolumeNode`` class or subclass, e.g. ``"vtkMRMLLabelMapVolumeNode"``.
        attributes: node attributes to set; strings as given, other values as JSON.

    Returns:
        The new node, with a default display node.

    Raises:
        ValueError: ``node_class`` is not a scalar volume class, or the voxel type cannot be stored.
            On any error no node is left in the scene.
    """
    array = _storable_array(volume.array, "volume")
    node = scene.AddNewNodeByClass(node_class, name)
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        if node is not None:
            scene.RemoveNode(node)
        raise ValueError(f"node_class: expected vtkMRMLScalarVolumeNode or a subclass, got {node_class!r}")
    try:
        node.SetIJKToRASMatrix(_numpy_to_matrix(volume.ijk_to_ras))
        slicer.util.updateVolumeFromArray(node, array)
        for key, value in (attributes or {}).items():
            node.SetAttribute(str(key), _attribute_text(value))
        node.CreateDefaultDisplayNodes()
    except Exception:
        display = node.GetDisplayNode()
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(node)
        raise
    return node


def export_node(node: Any, path: str | os.PathLike[str], name: str = "node") -> Path:
    """Write a scalar volume node (world RAS geometry) to NRRD / NIfTI / MetaImage by extension.

    Args:
        node: scalar volume node, see ``volume_from_node``.
        path: destination file ending in .nrrd, .nii, .nii.gz or .mha; its folder must exist.
        name: the parameter name used in error messages.

    Returns:
        The written path.
    """
    return write_volume(volume_from_node(node, name), path)


# ------------------------------------------------------------------------------------------------
# Attributes
# ------------------------------------------------------------------------------------------------


def set_provenance(node: Any, provenance: Mapping[str, Any]) -> None:
    """Store where a node came from as ``XRayCardiac.<Key>`` attributes.

    ``XRayCardiac.PackageVersion`` is always written (the installed ``xraycardiac`` version) unless
    ``provenance`` gives it. Conventional keys: ``Pipeline``, ``Device``, ``Seed``, ``ModelName``,
    ``ModelSha256``, ``Parameters`` (a dict, stored as JSON), ``SourceNode``.

    Args:
        node: any MRML node.
        provenance: key -> value; keys must be non-empty and contain no whitespace; values are
            stored as strings (non-strings as JSON). A None value removes the attribute.

    Raises:
        ValueError: a key is empty or contains whitespace, or a value cannot be written as JSON.
    """
    entries = {"PackageVersion": xraycardiac.__version__, **dict(provenance)}
    texts: dict[str, str | None] = {}
    for key, value in entries.items():
        if not isinstance(key, str) or not key or any(ch.isspace() for ch in key):
            raise ValueError(f"provenance: keys must be non-empty strings without spaces, got {key!r}")
        try:
            texts[key] = None if value is None else _attribute_text(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provenance[{key!r}]: cannot be stored as JSON ({exc})") from exc
    for key, text in texts.items():
        attribute = key if key.startswith(ATTRIBUTE_PREFIX) else ATTRIBUTE_PREFIX + key
        if text is None:
            node.RemoveAttribute(attribute)
        else:
            node.SetAttribute(attribute, text)


def read_attributes(node: Any) -> dict[str, Any]:
    """All ``XRayCardiac.*`` attributes of ``node``, prefix removed, JSON values decoded."""
    out: dict[str, Any] = {}
    for attribute in node.GetAttributeNames() or ():
        if not attribute.startswith(ATTRIBUTE_PREFIX):
            continue
        text = node.GetAttribute(attribute)
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            value = text
        out[attribute[len(ATTRIBUTE_PREFIX) :]] = value
    return out


def node_geometry(node: Any, name: str, shape: tuple[int, int]) -> dict[str, Any] | None:
    """A radiograph node's ``XRayCardiac.Geometry``, parsed and checked against its image size.

    Args:
        node: a one-slice volume node.
        name: the parameter name used in error messages.
        shape: the image's (rows, cols) in pixels, which the geometry's detector must match.

    Returns:
        The geometry as ``CArmGeometry.to_dict()``, or None when the node has no such attribute.

    Raises:
        ValueError: naming ``name`` and the node: not a C-arm geometry, or a detector of another size.
    """
    from xraycardiac.geometry import CArmGeometry  # here: the package imports torch (epipolar geometry)

    text = node.GetAttribute(GEOMETRY_ATTRIBUTE)
    if not text:
        return None
    try:
        geometry = CArmGeometry.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{name}: {node.GetName()!r}: {GEOMETRY_ATTRIBUTE} is not a C-arm geometry ({exc})"
        ) from None
    detector = (geometry.detector_rows, geometry.detector_cols)
    if detector != tuple(shape):
        raise ValueError(
            f"{name}: {node.GetName()!r} is {shape[0]} x {shape[1]} pixels but its geometry's detector is "
            f"{detector[0]} x {detector[1]}"
        )
    return geometry.to_dict()


def format_projection_matrix(matrix: Any) -> str:
    """A (3, 4) projection matrix as 12 comma-separated numbers, row-major, full float precision."""
    p = np.asarray(matrix, dtype=np.float64)
    if p.shape != (3, 4) or not np.all(np.isfinite(p)):
        raise ValueError(f"projection matrix: expected a finite 3x4 matrix, got shape {p.shape}")
    return ",".join(repr(float(x)) for x in p.reshape(-1))


def parse_projection_matrix(text: str | None, name: str = PROJECTION_MATRIX_ATTRIBUTE) -> np.ndarray:
    """Inverse of ``format_projection_matrix``: 12 comma-separated numbers -> (3, 4) float64.

    Raises:
        ValueError: naming ``name``, when the text is missing, not 12 numbers, or not finite.
    """
    if not text:
        raise ValueError(f"{name}: missing; expected 12 comma-separated numbers (a 3x4 matrix, row-major)")
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{name}: expected 12 comma-separated numbers, got {text!r}") from None
    if len(values) != 12 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected 12 finite comma-separated numbers, got {len(values)} in {text!r}")
    return np.asarray(values, dtype=np.float64).reshape(3, 4)


# ------------------------------------------------------------------------------------------------
# Scene
# ------------------------------------------------------------------------------------------------


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _remove_nodes_added_since(scene: Any, before: set[str], keep: Iterable[Any] = ()) -> None:
    """Remove every node whose ID is not in ``before`` and that is not in ``keep``, newest first."""
    kept = before | {n.GetID() for n in keep}
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in reversed([n for n in added if n.GetID() not in kept]):
        scene.RemoveNode(node)


@contextmanager
def removed_on_error(scene: Any) -> Iterator[None]:
    """Remove every node the block adds to ``scene`` (display, storage and helper nodes included) if it raises.

    The import of a job's outputs runs in such a block, so that a failure adds no node.
    """
    before = _node_ids(scene)
    try:
        yield
    except BaseException:
        _remove_nodes_added_since(scene, before)
        raise


@contextmanager
def temporary_nodes(scene: Any) -> Iterator[list[Any]]:
    """Remove every node the block adds to ``scene`` when it ends, except those it appends to the yielded list.

    For exports through a temporary node: Slicer's segmentation export also adds a display node and
    a colour table (and the subject hierarchy node in a bare scene), which go too.
    """
    before = _node_ids(scene)
    keep: list[Any] = []
    try:
        yield keep
    finally:
        _remove_nodes_added_since(scene, before, keep=[n for n in keep if n is not None])
