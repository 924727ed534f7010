"""Graphs of 2D and 3D skeletons: the one skeleton -> nodes + edges builder of the library.

A skeleton is a bool image (2D pixels or 3D voxels, one pixel wide, ``skimage.morphology.skeletonize``).
Two levels, both n-dimensional with full (8 / 26) connectivity:

- :func:`pixel_graph`: the skeleton's pixels (``np.argwhere`` order, i.e. raster order) and every
  pair of neighbouring pixels once (:data:`half_offsets` order), with each pixel's neighbour count.
  Callers weight the pairs by step length (their own spacing) for shortest paths or spanning trees.
- :func:`skeleton_graph`: nodes and edges. A *node pixel* has a neighbour count other than 2 (0:
  isolated, 1: free end, >= 3: junction); touching node pixels form one node at their centroid
  (a junction of a thin skeleton is often several touching pixels). An *edge* is an ordered run of
  degree-2 pixels from one node to another (both may be the same node: a loop through a junction).
  A closed ring with no node pixel has neither nodes nor edges.

Pure graph edits on edge lists (:func:`merge_degree_two`) live here too. Pruning spurs, resampling,
trees and rooting are the callers' own steps (:mod:`xraycardiac.coronary.recon.centrelines`,
:mod:`xraycardiac.coronary.matching.vessel_keypoints`, :mod:`xraycardiac.coronary.from_labelmap`).
Coordinates are array indices ((row, col) in 2D, (k, j, i) in 3D).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

__all__ = ["PixelGraph", "SkeletonGraph", "half_offsets", "merge_degree_two", "pixel_graph", "skeleton_graph"]

NODE_KINDS = ("isolated", "end", "junction")


def half_offsets(ndim: int) -> np.ndarray:
    """(3^ndim - 1) / 2 neighbour offsets, lexicographically after zero: each undirected pair once."""
    return np.array([o for o in itertools.product((-1, 0, 1), repeat=ndim) if o > (0,) * ndim])


@dataclass(frozen=True)
class PixelGraph:
    """Neighbour graph of a skeleton's pixels.

    Attributes:
        coords: (P, ndim) int64 pixel indices, ``np.argwhere`` (raster) order; pixel id = row here.
        pairs: (E, 2) int64 pixel ids (p, q) of neighbours, q = p + ``offsets[offset[e]]``; grouped
            by offset in :func:`half_offsets` order, ascending p within a group.
        offset: (E,) int64 index into ``offsets`` of each pair.
        offsets: (M, ndim) the half offsets.
        degree: (P,) int64 number of neighbours of each pixel.
    """

    coords: np.ndarray
    pairs: np.ndarray
    offset: np.ndarray
    offsets: np.ndarray
    degree: np.ndarray

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR lists (indptr (P + 1,), indices): the neighbours of pixel p, ascending (= offset order)."""
        both = np.concatenate([self.pairs, self.pairs[:, ::-1]])
        order = np.lexsort((both[:, 1], both[:, 0]))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(both[:, 0], minlength=len(self.coords)))])
        return indptr.astype(np.int64), both[order, 1]

    def degree_image(self, shape: tuple[int, ...]) -> np.ndarray:
        """(shape) int64: each skeleton pixel's neighbour count, 0 off the skeleton."""
        out = np.zeros(shape, dtype=np.int64)
        out[tuple(self.coords.T)] = self.degree
        return out


def pixel_graph(skeleton: np.ndarray) -> PixelGraph:
    """The neighbour graph (full connectivity) of the True pixels of a 2D or 3D bool image."""
    skeleton = np.asarray(skeleton, dtype=bool)
    coords = np.argwhere(skeleton)
    index = np.full(skeleton.shape, -1, dtype=np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    offsets = half_offsets(skeleton.ndim)
    shape = np.asarray(skeleton.shape)
    first, second, which = [], [], []
    for m, off in enumerate(offsets):
        other = coords + off
        inside = np.all((other >= 0) & (other < shape), axis=1)
        q = np.full(len(coords), -1, dtype=np.int64)
        q[inside] = index[tuple(other[inside].T)]
        hit = q >= 0
        first.append(np.flatnonzero(hit))
        second.append(q[hit])
        which.append(np.full(int(hit.sum()), m, dtype=np.int64))
    pairs = np.stack([np.concatenate(first), np.concatenate(second)], axis=1).astype(np.int64).reshape(-1, 2)
    degree = np.bincount(pairs.ravel(), minlength=len(coords)).astype(np.int64)
    return PixelGraph(coords, pairs, np.concatenate(which), offsets, degree)


@dataclass(frozen=True)
class SkeletonGraph:
    """Nodes and edges of a skeleton (module docstring).

    Attributes:
        pixels: the :class:`PixelGraph` the graph was traced on.
        nodes: (K, ndim) float64 node positions: centroids of touching node pixels (array indices).
        kind: (K,) str, the node's most connected pixel: "isolated" (0 neighbours), "end" (1) or
            "junction" (>= 3).
        node_of: (P,) int64 node of each pixel, -1 for edge (degree-2) pixels.
        edges: (E, 2) int64 node ids (start, end).
        paths: E (L,) int64 pixel ids of each edge's degree-2 pixels in order from start to end.
    """

    pixels: PixelGraph
    nodes: np.ndarray
    kind: np.ndarray
    node_of: np.ndarray
    edges: np.ndarray
    paths: list[np.ndarray]

    def degree(self) -> np.ndarray:
        """(K,) number of edge ends at each node (a loop counts twice)."""
        return np.bincount(self.edges.ravel(), minlength=len(self.nodes))

    def adjacency(self) -> list[list[int]]:
        """Per node, the edge ids that start or end at it (a loop listed twice), ascending."""
        out: list[list[int]] = [[] for _ in range(len(self.nodes))]
        for e, (a, b) in enumerate(self.edges):
            out[int(a)].append(e)
            out[int(b)].append(e)
        return out


def skeleton_graph(skeleton: np.ndarray) -> SkeletonGraph:
    """Trace a 2D or 3D skeleton into nodes and edges (module docstring).

    Edges are found from the node pixels in raster order, each pixel's neighbours in ascending id;
    an edge leaving a node pixel toward a pixel already traced is not traced again.

    Args:
        skeleton: bool (rows, cols) or (K, J, I) image, one pixel wide.

    Returns:
        :class:`SkeletonGraph`.
    """
    skeleton = np.asarray(skeleton, dtype=bool)
    px = pixel_graph(skeleton)
    indptr, indices = px.neighbours()
    is_node = px.degree != 2
    node_img = np.zeros(skeleton.shape, dtype=bool)
    node_img[tuple(px.coords[is_node].T)] = True
    labels, n_nodes = ndi.label(node_img, structure=np.ones((3,) * skeleton.ndim, dtype=bool))
    node_of = np.where(is_node, labels[tuple(px.coords.T)] - 1, -1).astype(np.int64)
    centres = np.asarray(ndi.center_of_mass(node_img, labels, np.arange(1, n_nodes + 1)), dtype=np.float64)
    centres = centres.reshape(-1, skeleton.ndim)
    top = np.zeros(n_nodes, dtype=np.int64)
    np.maximum.at(top, node_of[is_node], px.degree[is_node])
    kind = np.array([NODE_KINDS[min(int(d), 2) if d != 2 else 1] for d in top], dtype=str).reshape(-1)
    visited = np.zeros(len(px.coords), dtype=bool)
    edges, paths = [], []
    for p in np.flatnonzero(is_node):
        for q in indices[indptr[p] : indptr[p + 1]]:
            if is_node[q] or visited[q]:
                continue
            prev, cur, chain = p, int(q), [int(q)]
            visited[cur] = True
            while True:
                nbrs = indices[indptr[cur] : indptr[cur + 1]]
                nxt = [int(n) for n in nbrs if n != prev and n not in chain[-3:]]
                if not nxt:  # dead end (cannot happen for degree-2 pixels; kept safe)
                    break
                nxt_node = [n for n in nxt if is_node[n]]
                if nxt_node:
                    edges.append((int(node_of[p]), int(node_of[nxt_node[0]])))
                    paths.append(np.asarray(chain, dtype=np.int64))
                    break
                if visited[nxt[0]]:
                    break
                prev, cur = cur, nxt[0]
                visited[cur] = True
                chain.append(cur)
    edges_arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return SkeletonGraph(px, centres, kind, node_of, edges_arr, paths)


def merge_degree_two(edges: list[list[int]], paths: list[np.ndarray]) -> bool:
    """Join, in place, the two edges of every node that has exactly two (a corner); True if any did.

    Args:
        edges: [start, end] node ids per edge; a joined edge is appended, its two parts deleted.
        paths: per edge, its (L, ...) points from start to end, both end points included (the
            shared node's point is kept once in a joined path).
    """
    merged = False
    while True:
        ends = [n for e in edges if e[0] != e[1] for n in e]
        two = [n for n in set(ends) if ends.count(n) == 2 and sum(n in e for e in edges) == 2]
        if not two:
            return merged
        n = two[0]
        i, j = [k for k, e in enumerate(edges) if n in e]
        pi = paths[i] if edges[i][1] == n else paths[i][::-1]
        pj = paths[j] if edges[j][0] == n else paths[j][::-1]
        a, b = sum(edges[i]) - n, sum(edges[j]) - n
        for k in sorted((i, j), reverse=True):
            del edges[k], paths[k]
        edges.append([a, b])
        paths.append(np.vstack([pi, pj[1:]]))
        merged = True
