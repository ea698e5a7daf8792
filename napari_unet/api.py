"""The public Python API: ``load_model`` and ``segment`` (``predict`` lives in the engine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.predict import predict
from napari_unet.engine.segmentation import labels_for_image
from napari_unet.models import load_model


def segment(
    image: np.ndarray,
    model: SegmentationModel | None = None,
    *,
    postprocess: PostprocessConfig | None = None,
    **options: Any,
) -> np.ndarray:
    """Instance labels (uint32, the image's stack and spatial shape) for ``image``.

    ``postprocess`` defaults to the model's own parameters, whose sizes (in training-scale
    pixels) follow the scale used; a given ``postprocess`` is in image pixels.
    ``options`` are passed to :func:`predict` (``scale="auto"`` by default).
    """
    model = model or load_model()
    used: list[float] = []
    report = options.pop("on_scale", None)

    def on_scale(s: float) -> None:
        used.append(s)
        if report is not None:
            report(s)

    semantic = getattr(model, "semantic", False)  # a package whose classes are not nuclei/boundary
    probs = predict(model, image, on_scale=on_scale, keep_enlarged=not semantic, **options)
    if semantic:
        return probs.argmax(axis=-3).astype(np.uint32)
    return labels_for_image(probs, image, model, used[0], postprocess or model.postprocess,
                            sizes="model" if postprocess is None else "image",
                            channel_axis=options.get("channel_axis"), channel=options.get("channel"))
