"""The 2D U-Net (Ronneberger et al., 2015), UNet++ (Zhou et al., 2018) and their typed configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

Norm = Literal["batch", "group", "none"]
Padding = Literal["same", "valid"]
Architecture = Literal["unet", "unetpp"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    in_channels: int = 1
    out_classes: int = 3
    depth: int = 4
    base_width: int = 16
    norm: Norm = "batch"
    padding: Padding = "same"
    architecture: Architecture = "unet"  # checkpoints written before UNet++ existed have no key: "unet"
    deep_supervision: bool = False  # UNet++ only: a head on every X^{0,j}, averaged loss in training

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
        if self.architecture not in ("unet", "unetpp"):
            raise ValueError(f"architecture must be unet or unetpp, not {self.architecture!r}")
        if self.deep_supervision and self.architecture != "unetpp":
            raise ValueError("deep_supervision needs architecture='unetpp'")

    def to_dict(self) -> dict[str, Any]:
        """As a dict; the UNet++ keys only when not the default, so a plain U-Net's config stays
        readable by napari-unet versions from before UNet++."""
        d = asdict(self)
        if self.architecture == "unet":
            del d["architecture"], d["deep_supervision"]
        return d

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


def _encoder(c: UNetConfig) -> tuple[list[int], nn.ModuleList]:
    """The contracting path shared by U-Net and UNet++: channel widths and one DoubleConv per level."""
    widths = [c.base_width * 2**i for i in range(c.depth)]
    down, cin = nn.ModuleList(), c.in_channels
    for w in widths:
        down.append(DoubleConv(cin, w, c.norm, c.padding))
        cin = w
    return widths, down


class UNet(nn.Module):
    """Contracting path of conv pairs + 2×2 max-pool (channels doubling), expanding path of
    2×2 up-convolutions (channels halving) with concatenated skips, final 1×1 conv to logits."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config
        widths, self.down = _encoder(c)
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

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every output head (one for a U-Net); training averages their losses."""
        return [self(x)]

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


class UNetPlusPlus(UNet):
    """UNet++: nested, dense skip pathways. Node X^{i,j} (level i, j-th on the skip path) takes
    X^{i,0..j-1} and the up-sampled X^{i+1,j-1}; the full head reads X^{0,depth-1}. Same encoder,
    tile geometry and pooling grid as the U-Net, so tiling, BatchNorm folding and training are shared."""

    def __init__(self, config: UNetConfig) -> None:
        nn.Module.__init__(self)
        self.config = c = config
        widths, self.down = _encoder(c)
        self.pool = nn.MaxPool2d(2)
        # nodes[j-1][i] is X^{i,j} for i + j < depth; ups[j-1][i] up-samples X^{i+1,j-1} for it
        self.ups = nn.ModuleList()
        self.nodes = nn.ModuleList()
        for j in range(1, c.depth):
            self.ups.append(nn.ModuleList(
                nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(c.depth - j)
            ))
            self.nodes.append(nn.ModuleList(
                DoubleConv(widths[i] * (j + 1), widths[i], c.norm, c.padding) for i in range(c.depth - j)
            ))
        n_heads = c.depth - 1 if c.deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], c.out_classes, 1) for _ in range(max(1, n_heads)))

    def _top_row(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid: list[list[torch.Tensor]] = []  # grid[i][j] = X^{i,j}
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            grid.append([x])
        for j in range(1, self.config.depth):
            for i in range(self.config.depth - j):
                up = self.ups[j - 1][i](grid[i + 1][j - 1])
                h, w = up.shape[-2:]
                parts = [_center_crop(t, h, w) if t.shape[-2:] != (h, w) else t for t in grid[i]]
                grid[i].append(self.nodes[j - 1][i](torch.cat([*parts, up], dim=1)))
        return grid[0][1:] or grid[0]

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        top = self._top_row(x)
        if len(self.heads) == 1:
            return [self.heads[0](top[-1])]
        h, w = top[-1].shape[-2:]
        return [head(_center_crop(t, h, w)) for head, t in zip(self.heads, top)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full head (X^{0,depth-1}); with deep supervision the last head."""
        return self.heads[-1](self._top_row(x)[-1])


def build_network(config: UNetConfig) -> UNet:
    """The network a config describes (U-Net or UNet++)."""
    return UNetPlusPlus(config) if config.architecture == "unetpp" else UNet(config)
