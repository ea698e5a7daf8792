"""Test-time augmentation: the 8 flips/rotations of a plane (the dihedral group), each with its inverse."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def dihedral(n: int = 8) -> list[tuple[Transform, Transform]]:
    """``n`` (1, 4 or 8) ``(forward, inverse)`` pairs acting on the last two axes: identity, the
    flips, then the rotations by 90° (and their flips). Copies, so tensors can be made from them."""
    if n not in (1, 4, 8):
        raise ValueError(f"test-time augmentation uses 1, 4 or 8 transforms, not {n}")
    pairs: list[tuple[Transform, Transform]] = []
    for k in (0, 1):
        for flip in ((), (-1,), (-2,), (-2, -1)):
            def forward(x: np.ndarray, k: int = k, flip: tuple[int, ...] = flip) -> np.ndarray:
                y = np.flip(x, flip) if flip else x
                return np.ascontiguousarray(np.rot90(y, k, axes=(-2, -1)))

            def inverse(x: np.ndarray, k: int = k, flip: tuple[int, ...] = flip) -> np.ndarray:
                y = np.rot90(x, -k, axes=(-2, -1))
                return np.ascontiguousarray(np.flip(y, flip) if flip else y)

            pairs.append((forward, inverse))
    return pairs[:n]
