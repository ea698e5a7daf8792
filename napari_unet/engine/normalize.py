"""Percentile intensity normalisation, applied once per image (never per tile)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_MAX_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Normalization:
    """Map the ``low``/``high`` percentiles of each channel to 0/1 (values may exceed them)."""

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {self.low}, {self.high}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        data = dict(data)
        kind = data.pop("kind", "percentile")
        if kind != "percentile":
            raise ValueError(f"unknown normalisation kind {kind!r}")
        return cls(**data)

    def apply(self, planes: np.ndarray) -> np.ndarray:
        """Normalise ``(C, H, W)`` planes channel by channel to float32.

        NaN/Inf are replaced by the low percentile; a constant channel becomes zeros.
        """
        return self.apply_bounds(planes, [self.bounds(channel) for channel in planes])

    def apply_bounds(self, planes: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
        """Normalise ``(C, H, W)`` planes with given per-channel ``(low, high)`` values, as :meth:`apply`
        does (so a block of a large image is normalised exactly as the whole image would be)."""
        out = np.empty(planes.shape, dtype=np.float32)
        for c, channel in enumerate(planes):
            lo, hi = bounds[c]
            scale = 1.0 / (hi - lo) if hi > lo else 0.0
            x = np.asarray(channel, dtype=np.float32)
            np.subtract(x, np.float32(lo), out=out[c])
            out[c] *= np.float32(scale)
            bad = ~np.isfinite(out[c])
            if bad.any():
                out[c][bad] = 0.0
        return out

    def stack_bounds(self, planes: np.ndarray) -> list[tuple[float, float]]:
        """Per-channel low/high values of ``(N, C, H, W)`` planes taken from the whole stack, so a plane
        of blur or noise is not stretched to full contrast; one plane gives exactly :meth:`bounds`."""
        if planes.shape[0] == 1:
            return [self.bounds(channel) for channel in planes[0]]
        n, _, h, w = planes.shape
        step = max(1, int(np.sqrt(n * h * w / _MAX_SAMPLES)))
        return [self.bounds(np.concatenate([p[c, ::step, ::step] for p in planes], axis=0))
                for c in range(planes.shape[1])]

    def bounds(self, channel: np.ndarray) -> tuple[float, float]:
        """The low/high percentile values of one 2D channel, from a strided sample of at most about
        a million pixels; only that sample is read, so zarr and dask arrays stay lazy."""
        values = percentile_values(channel, (self.low, self.high))
        return (0.0, 0.0) if values is None else (values[0], values[1])

    def bounds_from(self, percentiles: tuple[float, ...], values: list[float]) -> tuple[float, float]:
        """The low/high values read from a table of a channel's ``values`` at ``percentiles``
        (linear between its entries), for a crop to be normalised as the plane it came from was."""
        lo, hi = np.interp([self.low, self.high], percentiles, values)
        return float(lo), float(hi)


def percentile_values(channel: np.ndarray, percentiles: tuple[float, ...]) -> list[float] | None:
    """The values of one 2D channel at ``percentiles``, from a strided sample of at most about a
    million pixels (only that sample is read); None when it holds no finite value."""
    step = max(1, int(np.sqrt(channel.size / _MAX_SAMPLES)))
    sample = np.asarray(channel[::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    return [float(v) for v in np.percentile(sample, percentiles)]
