"""How closely a napari-unet bioimage.io package, run by bioimageio.core, reproduces napari-unet.

For each weight format: (a) as `bioimageio test` runs it (test input, no halo padding) against
napari-unet's one-tile prediction stored as the test output; (b) as bioimageio.core's ``predict``
runs it for users (halo padding) against napari-unet's default tiled ``predict``.

Usage: python scripts/bioimageio_diff.py PACKAGE.zip [MODEL.safetensors]
"""

from __future__ import annotations

import sys

import numpy as np
from bioimageio.core import create_prediction_pipeline, load_model_description
from bioimageio.core.digest_spec import get_test_input_sample

from napari_unet import load_model, predict


def main(package: str, checkpoint: str | None = None) -> None:
    descr = load_model_description(package)
    sample = get_test_input_sample(descr)
    image = next(iter(sample.members.values())).data.to_numpy()[0, 0]
    model = load_model(checkpoint)
    one_tile = predict(model, image, tile=max(image.shape), overlap=0, device="cpu", scale=1.0)
    default = predict(model, image, device="cpu", scale=1.0)
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        if getattr(descr.weights, fmt) is None:
            print(f"{fmt}: not in the package")
            continue
        with create_prediction_pipeline(descr, weight_format=fmt) as pipeline:
            unpadded = pipeline.predict_sample_without_blocking(
                get_test_input_sample(descr), skip_input_padding=True, skip_output_cropping=True)
            padded = pipeline.predict_sample_without_blocking(get_test_input_sample(descr))
        a = next(iter(unpadded.members.values())).data.to_numpy()[0]
        b = next(iter(padded.members.values())).data.to_numpy()[0]
        print(f"{fmt}: as tested max|diff| = {np.abs(a - one_tile).max():.2e}; "
              f"with halo padding vs default predict max|diff| = {np.abs(b - default).max():.2e} "
              f"(99.9th percentile {np.percentile(np.abs(b - default), 99.9):.2e})")


if __name__ == "__main__":
    main(*sys.argv[1:])
