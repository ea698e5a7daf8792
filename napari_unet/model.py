"""The 2D U-Net (Ronneberger et al., 2015) and its typed configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

Norm = Literal["batch", "group", "none"]
Padding = Literal["same", "valid"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    in_channels: int = 1
    out_classes: int = 3
    depth: int = 4
    base_width: int = 16
    norm: Norm = "batch"
    padding: Padding = "same"

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_classes < 1:
            raise ValueError("in_channels and out_classes must be at least 1")
        if not 1 <= self.depth <= 7:
            raise ValueError(f"depth must be between 1 and 7, not {self.depth}")
        if self.base_width < 1:
            raise ValueError("base_width must be at least 1")
        if self.norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be batch, group or none, not {self.norm!r}")
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be same or valid, not {self.padding!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from a dict, refusing unknown keys so typos don't pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, cin: int, cout: int, norm: Norm, padding: Padding) -> None:
        pad = 1 if padding == "same" else 0
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=pad, bias=bias),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=pad, bias=bias),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
        )


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., dh : dh + h, dw : dw + w]


class UNet(nn.Module):
    """Contracting path of conv pairs + 2×2 max-pool (channels doubling), expanding path of
    2×2 up-convolutions (channels halving) with concatenated skips, final 1×1 conv to logits."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config
        widths = [c.base_width * 2**i for i in range(c.depth)]
        self.down = nn.ModuleList()
        cin = c.in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, c.norm, c.padding))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(w * 2, w, 2, stride=2))
            self.up_conv.append(DoubleConv(w * 2, w, c.norm, c.padding))
        self.head = nn.Conv2d(widths[0], c.out_classes, 1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this for 'same' padding."""
        return 2 ** (self.config.depth - 1)

    def output_size(self, n: int) -> int:
        """Output side length for an input side length ``n`` (0 if too small)."""
        if self.config.padding == "same":
            return n if n % self.size_multiple == 0 else 0
        for _ in range(self.config.depth - 1):
            n -= 4
            if n <= 0 or n % 2:
                return 0
            n //= 2
        n -= 4
        for _ in range(self.config.depth - 1):
            n = n * 2 - 4
        return max(n, 0)

    def valid_input_size(self, at_least: int) -> int:
        """Smallest input side ≥ ``at_least`` whose output is non-empty."""
        n = max(at_least, 1)
        while self.output_size(n) <= 0:
            n += 1
        return n

    def tile_io(self, tile: int) -> tuple[int, int]:
        """(input, output) side of a tile of about ``tile`` pixels: equal for 'same' padding
        (rounded up to :attr:`size_multiple`), output smaller by the halo for 'valid' padding."""
        if self.config.padding == "same":
            side = -(-tile // self.size_multiple) * self.size_multiple
            return side, side
        side = self.valid_input_size(tile)
        return side, self.output_size(side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, conv in zip(self.up, self.up_conv):
            x = up(x)
            skip = skips.pop()
            if skip.shape[-2:] != x.shape[-2:]:
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = conv(torch.cat([skip, x], dim=1))
        return self.head(x)
