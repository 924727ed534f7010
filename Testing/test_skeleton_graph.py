"""The one skeleton -> graph builder (xraycardiac.geometry.skeleton_graph) on hand-drawn 2D and 3D skeletons."""

from __future__ import annotations

import numpy as np

from xraycardiac.geometry.skeleton_graph import merge_degree_two, pixel_graph, skeleton_graph


def _image(shape: tuple[int, ...], pixels: list[tuple[int, ...]]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[tuple(np.array(pixels).T)] = True
    return out


def _node_at(graph, position: tuple[float, ...]) -> int:
    hit = np.flatnonzero(np.all(np.isclose(graph.nodes, position), axis=1))
    assert len(hit) == 1, f"no single node at {position}: nodes {graph.nodes.tolist()}"
    return int(hit[0])


def _edge_path(graph, a: int, b: int) -> list[tuple[int, ...]]:
    """Pixels of the edge between nodes a and b, ordered from a to b."""
    for (s, e), path in zip(graph.edges.tolist(), graph.paths, strict=True):
        pixels = [tuple(int(v) for v in graph.pixels.coords[p]) for p in path]
        if (s, e) == (a, b):
            return pixels
        if (s, e) == (b, a):
            return pixels[::-1]
    raise AssertionError(f"no edge between nodes {a} and {b}: edges {graph.edges.tolist()}")


def test_a_2d_y_has_one_junction_three_ends_and_the_drawn_arms() -> None:
    left = [(3, 3), (2, 2)]
    right = [(3, 5), (2, 6)]
    stem = [(5, 4), (6, 4)]
    g = skeleton_graph(_image((9, 9), [(1, 1), *left, (1, 7), *right, (4, 4), *stem, (7, 4)]))
    assert sorted(g.kind.tolist()) == ["end", "end", "end", "junction"]
    centre = _node_at(g, (4, 4))
    assert g.kind[centre] == "junction" and g.degree()[centre] == 3
    for end, arm in (((1, 1), left), ((1, 7), right), ((7, 4), stem)):
        e = _node_at(g, end)
        assert g.kind[e] == "end" and g.degree()[e] == 1
        assert _edge_path(g, centre, e) == arm
    assert sorted(len(a) for a in g.adjacency()) == [1, 1, 1, 3]


def test_touching_junction_pixels_form_one_node_at_their_centroid() -> None:
    # A 2D T: (3, 3), (3, 4), (3, 5) and (4, 4) all have three or more 8-neighbours.
    bar = [(3, c) for c in range(9)]
    stem = [(r, 4) for r in range(4, 9)]
    g = skeleton_graph(_image((10, 10), bar + stem))
    assert g.kind.tolist().count("junction") == 1 and len(g.nodes) == 4
    centre = _node_at(g, (3.25, 4.0))
    assert g.degree()[centre] == 3
    assert np.all(
        g.node_of[[g.pixels.coords.tolist().index(list(p)) for p in ((3, 3), (3, 5), (4, 4))]] == centre
    )
    assert _edge_path(g, centre, _node_at(g, (3, 0))) == [(3, 2), (3, 1)]
    assert _edge_path(g, centre, _node_at(g, (8, 4))) == [(5, 4), (6, 4), (7, 4)]


def test_a_3d_t_is_traced_with_26_connectivity() -> None:
    bar = [(2, 2, i) for i in range(9)]
    stem = [(k, 2, 4) for k in range(3, 8)]
    g = skeleton_graph(_image((10, 5, 10), bar + stem))
    assert g.nodes.shape == (4, 3) and sorted(g.kind.tolist()) == ["end", "end", "end", "junction"]
    centre = _node_at(g, (2.25, 2.0, 4.0))  # (2,2,3), (2,2,4), (2,2,5), (3,2,4) touch
    assert g.degree()[centre] == 3
    assert _edge_path(g, centre, _node_at(g, (2, 2, 0))) == [(2, 2, 2), (2, 2, 1)]
    assert _edge_path(g, centre, _node_at(g, (2, 2, 8))) == [(2, 2, 6), (2, 2, 7)]
    assert _edge_path(g, centre, _node_at(g, (7, 2, 4))) == [(4, 2, 4), (5, 2, 4), (6, 2, 4)]
    px = pixel_graph(_image((10, 5, 10), bar + stem))
    assert len(px.offsets) == 13 and px.degree.sum() == 2 * len(px.pairs)


def test_a_loop_through_a_junction_is_one_edge_from_the_node_to_itself() -> None:
    ring = [(r, c) for r in range(9) for c in range(9) if abs(r - 4) + abs(c - 4) == 3]
    tail = [(4, 8), (4, 9)]
    g = skeleton_graph(_image((9, 11), ring + tail + [(4, 10)]))
    junction, end = _node_at(g, (4, 7)), _node_at(g, (4, 10))
    assert g.kind[junction] == "junction" and g.kind[end] == "end"
    assert sorted(map(tuple, g.edges.tolist())) == sorted(
        [(junction, junction), tuple(sorted((junction, end)))]
    )
    loop = next(p for (a, b), p in zip(g.edges.tolist(), g.paths, strict=True) if a == b)
    pixels = g.pixels.coords[loop]
    assert len(loop) == len(ring) - 1 and set(map(tuple, pixels.tolist())) == set(ring) - {(4, 7)}
    steps = np.abs(np.diff(pixels, axis=0)).max(axis=1)
    assert np.all(steps == 1), "the loop's pixels are not in walking order"
    assert g.degree()[junction] == 3  # the loop counts twice, the tail once
    # a closed ring without any junction or end has no node to start from: nothing is traced
    bare = skeleton_graph(_image((9, 9), ring))
    assert len(bare.nodes) == 0 and len(bare.edges) == 0


def test_an_isolated_pixel_is_a_node_without_edges() -> None:
    g = skeleton_graph(_image((5, 5), [(2, 3)]))
    assert g.nodes.tolist() == [[2.0, 3.0]] and g.kind.tolist() == ["isolated"]
    assert len(g.edges) == 0 and g.degree().tolist() == [0]
    empty = skeleton_graph(np.zeros((4, 4), dtype=bool))
    assert empty.nodes.shape == (0, 2) and empty.edges.shape == (0, 2)


def test_merge_degree_two_joins_a_corner_node() -> None:
    edges = [[0, 1], [2, 1], [1, 3]]
    paths = [np.array([[0.0], [1.0]]), np.array([[5.0], [2.0]]), np.array([[2.0], [3.0]])]
    assert not merge_degree_two(edges, paths)  # node 1 has three edges
    del edges[2], paths[2]
    assert merge_degree_two(edges, paths)
    assert edges == [[0, 2]] and paths[0][:, 0].tolist() == [0.0, 1.0, 5.0]
