"""The Segment section's option widgets and their values: scale, post-processing, advanced options."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox

from napari_unet._widget.state import State
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.predict import DEFAULT_OVERLAP, DEFAULT_TILE
from napari_unet.engine.stain import STAINS

DEVICES = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if torch.backends.mps.is_available() else [])
# name: (default, tooltip) — the values "Restore defaults" brings back; post-processing ones come from the model
ADVANCED = {
    "tile": (DEFAULT_TILE, "Side of the square pieces the image is cut into for the network. Larger is faster "
                           "but needs more memory; lower it if you run out of memory."),
    "overlap": (DEFAULT_OVERLAP, "How much neighbouring pieces overlap, so nuclei on a seam are not cut. "
                                 "Rarely needs changing."),
    "batch": (4, "Pieces processed at once. Higher can be faster on a GPU; lower it if memory runs out."),
    "device": ("auto", "Where the network runs: 'auto' picks a GPU when there is one, else the CPU."),
}
CHANNELS = [("auto", None)] + [(str(c), c) for c in range(4)]
BLUE = 2  # the channel "auto" gives a one-channel model on a colour image: where DAPI usually is
SCALE = {"auto_scale": True, "scale": 1.0}  # defaults; a settings file without "auto_scale" gets auto


# the dock's stack choices and the segment_image stack mode each one means
STACK_CHOICES = {"current plane": "planes", "whole stack": "planes", "3D objects": "3d", "track through time": "time"}


def stack_choice_for(layer: Any) -> str | None:
    """The stack choice a layer's axis names ask for: a ``t``/``time`` axis before Y, X tracks through
    time, a ``z`` axis gives 3D objects; None when napari does not know the names."""
    names = [str(a).lower() for a in getattr(layer, "axis_labels", ())[:-2]]
    if any(n in ("t", "time", "frame", "frames") for n in names):
        return "track through time"
    if any(n in ("z", "depth", "plane", "planes", "slice") for n in names):
        return "3D objects"
    return None


class SegmentOptions:
    """Stack / channel choice, scale row, threshold / seed threshold / min size (the model's values), tile / overlap /
    batch / device (folded away); their settings, defaults and the post-processing they give."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.stack = ComboBox(label="stack", choices=list(STACK_CHOICES), value="current plane", tooltip=(
            "For stacks (time, z): segment only the plane you look at, every plane on its own, the z-stack "
            "as 3D objects (one id per nucleus through the planes), or track nuclei through time (one id per "
            "nucleus through the frames)."))
        self.channel = ComboBox(label="channel", choices=CHANNELS, value=None, tooltip=(
            "For colour or multichannel images: the one channel (e.g. the DAPI channel) a single-channel "
            "model should see. 'auto': all channels when the model takes them; for a colour (RGB) image and "
            "a one-channel model, blue (fluorescence) or all three (the other stains)."))
        self.stain = ComboBox(label="stain", choices=list(STAINS), value="fluorescence", tooltip=(
            "What the image shows. fluorescence: bright nuclei on a dark background (what the model was "
            "trained on). dark nuclei: dark nuclei on a bright background (brightfield); the image is "
            "inverted. hematoxylin: the nuclear stain of an H&E or IHC colour image, by colour deconvolution."))
        self.auto_scale = CheckBox(text="auto", value=True, tooltip=(
            "Let the model measure the nuclei first and resize the image so they match the size it was "
            "trained on; the scale it chose is shown after the run. Untick to set the scale yourself."))
        self.scale = FloatSpinBox(min=0.1, max=10, step=0.25, value=1.0, enabled=False, tooltip=(
            "Resize the image before the network: above 1 when your nuclei are smaller than the model's, "
            "below 1 when larger. Labels come back at the original size."))
        self.scale_row = Container(widgets=[self.auto_scale, self.scale], layout="horizontal", labels=False,
                                   label="scale")
        self.scale_row.margins = (0, 0, 0, 0)
        self.auto_scale.changed.connect(lambda auto: setattr(self.scale, "enabled", not auto))
        pp = PostprocessConfig()
        self.threshold = FloatSpinBox(label="threshold", min=0, max=1, step=0.05, value=pp.threshold, tooltip=(
            "How sure the network must be that a pixel is nucleus. Lower it if nuclei come out too small or are "
            "missed; raise it if background is picked up. Changes re-label without re-running the network."))
        self.seeds = FloatSpinBox(label="seed threshold", min=0, max=1, step=0.05, value=pp.seed_threshold,
                                  tooltip=("How sure the network must be about a nucleus' core to split touching "
                                           "nuclei. Lower it if touching nuclei stay merged; raise it if single "
                                           "nuclei are split."))
        self.min_size = SpinBox(label="min size (px)", min=0, max=100000, step=10, value=pp.min_size, tooltip=(
            "Objects smaller than this many pixels are dropped (debris, noise). Counted at the model's "
            "size: it follows the scale (at scale 2, a quarter of it in image pixels; the value used is shown)."))
        self.tile = SpinBox(label="tile", min=64, max=4096, step=64)
        self.overlap = SpinBox(label="overlap", min=0, max=1024, step=16)
        self.batch = SpinBox(label="batch", min=1, max=64)
        self.device = ComboBox(label="device", choices=DEVICES)
        for name, (default, tip) in ADVANCED.items():
            w = getattr(self, name)
            w.value = default if name != "device" or default in DEVICES else "auto"
            w.tooltip = tip
        self.show_probs = CheckBox(text="show probabilities", value=False, tooltip=(
            "Also add the network's class probabilities (background, nucleus interior, boundary) as an image "
            "layer, one class per slider step: see what the model saw before the labels were made."))
        self.advanced = Container(widgets=[self.tile, self.overlap, self.batch, self.device, self.show_probs])

    # -- settings ---------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name).value for name in (*ADVANCED, *SCALE)}

    def apply_settings(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name in ADVANCED or name in SCALE:
                try:
                    getattr(self, name).value = value
                except (ValueError, TypeError):
                    pass  # a stale or hand-edited setting is ignored

    def restore_defaults(self) -> None:
        self.apply_settings({name: default for name, (default, _) in ADVANCED.items()} | SCALE)
        self.stack.value, self.channel.value, self.stain.value = "current plane", None, "fluorescence"
        self.show_probs.value = False
        self.show_model_postprocess()

    def channel_for(self, rgb: bool) -> int | None:
        """The channel to pass for an image: the one chosen, or for 'auto' on a colour image given as
        fluorescence to a one-channel model, blue (so the default always runs)."""
        model = self.state.model
        if self.channel.value is None and rgb and self.stain.value == "fluorescence" and model is not None \
                and model.config.in_channels == 1:
            return BLUE
        return self.channel.value

    def postprocess(self) -> PostprocessConfig:
        base = self.state.model.postprocess if self.state.model is not None else PostprocessConfig()
        config = replace(base, threshold=self.threshold.value, seed_threshold=self.seeds.value)
        if self.min_size.value != base.min_size:  # a min size typed by the user
            config = config.with_min_size(self.min_size.value)
        return config

    def show_model_postprocess(self) -> None:
        """Show the model's own post-processing values without re-labelling existing layers."""
        if self.state.model is None:
            return
        config = self.state.model.postprocess
        for w, value in ((self.threshold, config.threshold), (self.seeds, config.seed_threshold),
                         (self.min_size, config.min_size)):
            with w.changed.blocked():
                w.value = value

    def show_scale(self, scale: float) -> None:
        """Show the scale automatic mode chose in the (greyed) number box, as a start for setting it by hand."""
        if self.auto_scale.value:
            with self.scale.changed.blocked():
                self.scale.value = round(scale, 2)
