"""Overlap-tile inference: one normalised plane → class probabilities, blended seam-free.

The plane is mirror-padded (the U-Net paper's overlap-tile strategy), cut into overlapping
tiles that are run in batches, and the tiles' softmax outputs are blended with a Gaussian
importance map so no seams appear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one plane go. Input windows are ``in_tile`` wide, outputs ``out_tile``."""

    in_tile: int
    out_tile: int
    pad: tuple[int, int, int, int]  # top, bottom, left, right mirror padding of the input
    canvas: tuple[int, int]  # output canvas (padded plane minus the valid-conv halo)
    starts: list[tuple[int, int]]  # tile origins on the canvas


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return sorted({round(x) for x in np.linspace(0, length - tile, n)})


def plan_tiles(
    shape: tuple[int, int], in_tile: int, out_tile: int, overlap: int
) -> TileGrid:
    """Lay tiles over a plane of ``shape``; ``overlap`` is in output pixels."""
    h, w = shape
    halo = (in_tile - out_tile) // 2
    border = overlap // 2
    pads = []
    for n in (h, w):
        extent = max(n + 2 * border, out_tile)
        before = border + (extent - n - 2 * border) // 2
        after = extent - n - before
        pads += [before + halo, after + halo]
    canvas = (h + pads[0] + pads[1] - 2 * halo, w + pads[2] + pads[3] - 2 * halo)
    ys, xs = _starts(canvas[0], out_tile, overlap), _starts(canvas[1], out_tile, overlap)
    return TileGrid(in_tile, out_tile, tuple(pads), canvas, [(y, x) for y in ys for x in xs])


@lru_cache(maxsize=8)
def gaussian_weights(size: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """A 2D Gaussian importance map (as in nnU-Net/MONAI), never exactly zero at the edges."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * (size * sigma_scale) ** 2))
    w = torch.outer(g, g)
    w /= w.max()
    return w.clamp_min(1e-3)


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
    amp: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> np.ndarray:
    """Probabilities ``(K, H, W)`` for one normalised ``(C, H, W)`` plane."""
    h, w = plane.shape[-2:]
    grid = plan_tiles((h, w), in_tile, out_tile, overlap)
    padded = torch.from_numpy(np.ascontiguousarray(mirror_pad(plane, grid.pad)))
    padded = padded.to(device, non_blocking=True)
    weight = gaussian_weights(out_tile).to(device)
    acc: torch.Tensor | None = None
    norm = torch.zeros(grid.canvas, device=device)
    total = total if total is not None else len(grid.starts)
    done = done_before
    channels_last = device.type != "mps"
    with torch.inference_mode():
        for i in range(0, len(grid.starts), batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Segmentation was cancelled.")
            starts = grid.starts[i : i + batch_size]
            batch = torch.stack([padded[:, y : y + in_tile, x : x + in_tile] for y, x in starts])
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(batch)
            probs = torch.softmax(logits.float(), dim=1) * weight
            if acc is None:
                acc = torch.zeros((probs.shape[1], *grid.canvas), device=device)
            for (y, x), p in zip(starts, probs):
                acc[:, y : y + out_tile, x : x + out_tile] += p
                norm[y : y + out_tile, x : x + out_tile] += weight
            done += len(starts)
            if progress is not None:
                progress(done, total)
    assert acc is not None
    t, l = grid.pad[0] - (in_tile - out_tile) // 2, grid.pad[2] - (in_tile - out_tile) // 2
    out = acc[:, t : t + h, l : l + w] / norm[t : t + h, l : l + w]
    return out.cpu().numpy()


def count_tiles(shape: tuple[int, int], in_tile: int, out_tile: int, overlap: int) -> int:
    return len(plan_tiles(shape, in_tile, out_tile, overlap).starts)


def resize_planes(x: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize ``(C, H, W)`` to ``size`` (bilinear, or nearest for labels)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    mode = "nearest" if nearest else "bilinear"
    kwargs = {} if nearest else {"align_corners": False, "antialias": True}
    return F.interpolate(t, size=size, mode=mode, **kwargs)[0].numpy()
