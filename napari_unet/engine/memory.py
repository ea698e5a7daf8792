"""Memory estimates checked before a run, so an image that cannot fit is refused in one sentence
up front instead of failing with MemoryError (or the kernel's OOM killer) minutes later."""

from __future__ import annotations

import math
import os
import resource

from napari_unet.errors import InputError

GIB = 1024**3


def available_bytes() -> int | None:
    """Memory this process can still allocate: MemAvailable, capped by an address-space limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        avail = max(0, soft - used) if avail is None else min(avail, max(0, soft - used))
    return avail


def check_fits(needed: int, what: str, hint: str = "") -> None:
    """Raise InputError if ``needed`` bytes are more than this process can allocate now."""
    avail = available_bytes()
    if avail is not None and needed > avail:
        raise InputError(
            f"{what} needs about {needed / GIB:.1f} GiB of memory but only {avail / GIB:.1f} GiB is "
            f"available{'; ' + hint if hint else ''}."
        )


def predict_bytes(n_planes: int, channels: int, classes: int, shape: tuple[int, int], work: tuple[int, int]) -> int:
    """Peak bytes of :func:`napari_unet.predict` for ``n_planes`` planes of ``shape`` run at ``work`` size."""
    h, w = shape
    wh, ww = work
    out = n_planes * classes * h * w * 4  # the returned float32 probabilities
    per_plane = (3 * channels + 2 * classes + 2) * wh * ww * 4  # normalised, padded, accumulators, weights
    return out + per_plane


LARGE_PLANE = 8192 * 8192  # planes this large go block by block even when they would fit


def too_large(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` (``(…, H, W)``) should be segmented block by block: a plane
    of 8192² pixels or more, or the in-memory path would not fit in the memory available now."""
    h, w = (int(n) for n in shape[-2:])
    if h * w >= LARGE_PLANE:
        return True
    planes = math.prod(int(n) for n in shape[:-2])
    avail = available_bytes()
    return avail is not None and predict_bytes(planes, 1, 3, (h, w), (h, w)) > avail
