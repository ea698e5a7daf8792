"""Stitching blockwise labels: objects crossing block faces become one object, numbered 1..N.

Each block is segmented with a halo of context around its core. Besides its core labels (local
ids 1..n), a block reports two thin bands around each face: its own core labels just inside
(``inner``) and, just outside, the labels it found in its halo for objects that also reach into
its core (``outer``). Where block A's outer band lies on block B's inner band, both describe the
same pixels, so a pair (a, b) covering most of the smaller of the two there is one object.
Pairs → a sparse graph → ``scipy.sparse.csgraph.connected_components`` → one lookup table per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Rect = tuple[int, int, int, int]  # y0, y1, x0, x1 in plane coordinates


@dataclass
class Band:
    """Labels over a rectangle of the plane."""

    rect: Rect
    labels: np.ndarray


@dataclass
class BlockEdges:
    """What the stitcher needs from one block: its object count and the bands around its faces."""

    count: int
    inner: list[Band]
    outer: list[Band]


def _ring(core: Rect, limit: Rect, width: int, outside: bool) -> list[Rect]:
    """The four bands of ``width`` just inside (or just outside) ``core``, clipped to ``limit``."""
    y0, y1, x0, x1 = core
    if outside:
        rects = [(y0 - width, y0, x0 - width, x1 + width), (y1, y1 + width, x0 - width, x1 + width),
                 (y0, y1, x0 - width, x0), (y0, y1, x1, x1 + width)]
    else:
        rects = [(y0, y0 + width, x0, x1), (y1 - width, y1, x0, x1), (y0, y1, x0, x0 + width), (y0, y1, x1 - width, x1)]
    ly0, ly1, lx0, lx1 = limit
    clipped = [(max(a, ly0), min(b, ly1), max(c, lx0), min(d, lx1)) for a, b, c, d in rects]
    return [r for r in clipped if r[0] < r[1] and r[2] < r[3]]


def block_edges(labels: np.ndarray, ext: Rect, core: Rect, local: np.ndarray, count: int, width: int) -> BlockEdges:
    """Bands for one block. ``labels`` covers ``ext`` (core + halo); ``local`` maps its ids to the
    block's core ids (0 for objects that do not reach into the core)."""
    def band(r: Rect) -> Band:
        ids = labels[r[0] - ext[0] : r[1] - ext[0], r[2] - ext[2] : r[3] - ext[2]]
        return Band(r, local[ids].astype(dtype))

    dtype = np.uint8 if count < 2**8 else np.uint16 if count < 2**16 else np.uint32  # bands pile up on the driver
    inner = [band(r) for r in _ring(core, core, width, outside=False)]
    outer = [band(r) for r in _ring(core, ext, width, outside=True)]
    return BlockEdges(count, inner, outer)


def _pairs(outer: list[Band], inner: list[Band]) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs (a from ``outer``, b from ``inner``) at every shared pixel where both are set."""
    a_all, b_all = [], []
    for o in outer:
        for i in inner:
            y0, y1 = max(o.rect[0], i.rect[0]), min(o.rect[1], i.rect[1])
            x0, x1 = max(o.rect[2], i.rect[2]), min(o.rect[3], i.rect[3])
            if y0 >= y1 or x0 >= x1:
                continue
            a = o.labels[y0 - o.rect[0] : y1 - o.rect[0], x0 - o.rect[2] : x1 - o.rect[2]].ravel()
            b = i.labels[y0 - i.rect[0] : y1 - i.rect[0], x0 - i.rect[2] : x1 - i.rect[2]].ravel()
            a_all.append(a)
            b_all.append(b)
    if not a_all:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a_all).astype(np.int64), np.concatenate(b_all).astype(np.int64)


def _links(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)`` that cover more than half of the smaller of a's and b's pixels in the
    compared area: the same object seen by two blocks (touching neighbours share a few pixels only)."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    size_a = np.bincount(a[a > 0])
    size_b = np.bincount(b[b > 0])
    keys, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    smaller = np.minimum(size_a[keys[0]], size_b[keys[1]])
    return keys[:, 2 * counts > smaller].T


def merge_tables(blocks: dict[object, BlockEdges], neighbours: dict[object, list[object]]) -> tuple[dict, int]:
    """One lookup table per block (local id → global id, 0 → 0) and the number of objects N.

    ``neighbours[k]`` lists the blocks (of the same plane) whose core touches block ``k``'s,
    faces and corners. Global ids are 1..N, in block order, without gaps or duplicates.
    """
    keys = list(blocks)
    offsets, total = {}, 0
    for k in keys:
        offsets[k] = total
        total += blocks[k].count
    rows, cols = [], []
    for k in keys:
        for j in neighbours.get(k, []):
            a, b = _pairs(blocks[k].outer, blocks[j].inner)
            for la, lb in _links(a, b):
                rows.append(offsets[k] + la - 1)
                cols.append(offsets[j] + lb - 1)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(total, total))
    n, component = connected_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))
    tables = {}
    for k in keys:
        lut = np.zeros(blocks[k].count + 1, np.uint32)
        lut[1:] = component[offsets[k] : offsets[k] + blocks[k].count] + 1
        tables[k] = lut
    return tables, int(n)
