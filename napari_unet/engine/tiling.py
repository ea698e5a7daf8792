"""Overlap-tile inference: one normalised plane → class probabilities, seam-free.

The plane is mirror-padded and cut into overlapping tiles that are run in batches. As in the
U-Net paper's overlap-tile strategy, each tile's margins are cropped: every output pixel is
taken from the tile in which it lies farthest from a tile edge (the most context), so a small
overlap suffices and no seams appear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet.engine.network import UNet
from napari_unet.errors import Cancelled, InputError

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one plane go: input windows ``in_tile``, their outputs ``out_tile`` (h, w)."""

    in_tile: tuple[int, int]
    out_tile: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right mirror padding of the input
    canvas: tuple[int, int]  # output canvas (padded plane minus the valid-conv halo)
    starts: list[tuple[int, int]]  # tile origins on the canvas


def _axis(n: int, tile: int, overlap: int, halo: int, multiple: int | None) -> tuple[int, list[int], int, int]:
    """Tile length, tile starts, and mirror padding before/after along one axis of length ``n``.

    As few tiles as the maximum size allows. With ``multiple`` (a network that pools by that
    factor) tiles shrink so neighbours overlap by about ``overlap`` and no more, and every tile
    starts on the pooling grid of the image, so tiled and untiled passes see the same pooling phase.
    """
    border = overlap // 2
    step = multiple or 1
    before = -(-border // step) * step
    length = before + n + border
    count = 1 if length <= tile else math.ceil((length - overlap) / (tile - overlap))
    if multiple:
        tile = min(tile, -(-(length + (count - 1) * overlap) // (count * multiple)) * multiple)
        length = -(-length // multiple) * multiple
    length = max(length, tile)
    if count == 1:
        starts = [0]
    else:
        starts = sorted({round(x / step) * step for x in np.linspace(0, length - tile, count)})
    return tile, starts, before + halo, length - n - before + halo


def plan_tiles(
    shape: tuple[int, int], in_tile: int, out_tile: int, overlap: int, *, multiple: int | None = None
) -> TileGrid:
    """Lay tiles over a plane of ``shape``; ``overlap`` is in output pixels.

    With ``multiple`` (networks with 'same' padding, ``in_tile == out_tile``) tiles shrink to fit
    the plane and align to the pooling grid; otherwise (valid convolutions) the tile is fixed.
    """
    halo = (in_tile - out_tile) // 2
    axes = [_axis(n, out_tile, overlap, halo, multiple) for n in shape]
    out = (axes[0][0], axes[1][0])
    pad = (axes[0][2], axes[0][3], axes[1][2], axes[1][3])
    canvas = (shape[0] + pad[0] + pad[1] - 2 * halo, shape[1] + pad[2] + pad[3] - 2 * halo)
    return TileGrid((out[0] + 2 * halo, out[1] + 2 * halo), out, pad, canvas,
                    [(y, x) for y in axes[0][1] for x in axes[1][1]])


@lru_cache(maxsize=16)
def edge_distance(h: int, w: int) -> torch.Tensor:
    """Distance of each pixel of an ``h × w`` tile to its nearest edge (1 at the edge), float32."""
    ys = torch.minimum(torch.arange(h), torch.arange(h - 1, -1, -1)) + 1
    xs = torch.minimum(torch.arange(w), torch.arange(w - 1, -1, -1)) + 1
    return torch.minimum(ys[:, None], xs[None, :]).float()


def tile_geometry(net: UNet, tile: int, overlap: int) -> tuple[int, int, int, int | None]:
    """``(in_tile, out_tile, overlap, multiple)`` for a network and a requested tile and overlap.

    The overlap is capped at half the output tile; ``multiple`` is set for 'same'-padding
    networks, whose tiles may shrink to fit (see :func:`plan_tiles`).
    """
    if tile < 16:
        raise InputError(f"Tile size {tile} is too small; use at least 16 pixels.")
    if overlap < 0:
        raise InputError(f"Overlap {overlap} must not be negative.")
    in_tile, out_tile = net.tile_io(tile)
    multiple = net.size_multiple if in_tile == out_tile else None
    return in_tile, out_tile, min(overlap, out_tile // 2), multiple


def mirror_pad(plane: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Mirror-pad the last two axes, repeating the reflection if the pad exceeds the size."""
    t, b, l, r = pad
    mode = "symmetric" if min(plane.shape[-2:]) < 2 else "reflect"
    return np.pad(plane, ((0, 0), (t, b), (l, r)), mode=mode)


def predict_plane(
    net: torch.nn.Module,
    plane: np.ndarray,
    *,
    in_tile: int,
    out_tile: int,
    overlap: int,
    batch_size: int,
    device: torch.device,
    multiple: int | None = None,
    amp: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> np.ndarray:
    """Probabilities ``(K, H, W)`` for one normalised ``(C, H, W)`` plane.

    ``multiple`` lets tiles shrink to fit the plane (see :func:`plan_tiles`).
    """
    h, w = plane.shape[-2:]
    grid = plan_tiles((h, w), in_tile, out_tile, overlap, multiple=multiple)
    (ih, iw), (oh, ow) = grid.in_tile, grid.out_tile
    padded = torch.from_numpy(np.ascontiguousarray(mirror_pad(plane, grid.pad))).to(device)
    depth = edge_distance(oh, ow).to(device)
    acc: torch.Tensor | None = None
    best = torch.zeros(grid.canvas, device=device)  # edge distance of the tile each pixel came from
    total = total if total is not None else len(grid.starts)
    done = done_before
    channels_last = device.type != "mps"
    with torch.inference_mode():
        for i in range(0, len(grid.starts), batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Segmentation was cancelled.")
            starts = grid.starts[i : i + batch_size]
            batch = torch.stack([padded[:, y : y + ih, x : x + iw] for y, x in starts])
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(batch)
            probs = torch.softmax(logits.float(), dim=1)
            if acc is None:
                acc = torch.zeros((probs.shape[1], *grid.canvas), device=device)
            for (y, x), p in zip(starts, probs):
                region = best[y : y + oh, x : x + ow]
                closer = depth > region  # this tile sees the pixel with more context
                acc[:, y : y + oh, x : x + ow] = torch.where(closer, p, acc[:, y : y + oh, x : x + ow])
                region.copy_(torch.where(closer, depth, region))
            done += len(starts)
            if progress is not None:
                progress(done, total)
    assert acc is not None
    t, l = grid.pad[0] - (ih - oh) // 2, grid.pad[2] - (iw - ow) // 2
    return acc[:, t : t + h, l : l + w].cpu().numpy()


def count_tiles(shape: tuple[int, int], in_tile: int, out_tile: int, overlap: int, multiple: int | None = None) -> int:
    return len(plan_tiles(shape, in_tile, out_tile, overlap, multiple=multiple).starts)


def resize_probabilities(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, H, W)`` class probabilities resized to ``size`` and renormalised to sum to 1."""
    if p.shape[-2:] == tuple(size):
        return p
    p = resize_planes(p, size)
    p /= p.sum(axis=0, keepdims=True)
    return p


def resize_planes(x: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize ``(C, H, W)`` to ``size`` (bilinear, or for labels the nearest pixel centre, as the
    bilinear image resize aligns pixel centres: torch's plain "nearest" shifts by up to a pixel)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    mode = "nearest-exact" if nearest else "bilinear"
    kwargs = {} if nearest else {"align_corners": False, "antialias": True}
    return F.interpolate(t, size=size, mode=mode, **kwargs)[0].numpy()
