"""Image kinds (the stain step) and the out-of-domain warning, with the real default model."""

import numpy as np
import pytest
from skimage import data

from napari_unet import segment
from napari_unet.engine.segmentation import segment_image
from napari_unet.engine.stain import apply_stain
from napari_unet.errors import InputError, NapariUnetWarning

FAST = {"scale": 1.0, "tile": 256, "device": "cpu"}


def test_dark_nuclei_on_an_inverted_image_give_the_fluorescence_labels(default_model, misc):
    crop = misc[:256, :256]
    inverted = crop.max() - crop
    plain = segment_image(default_model, crop, **FAST)
    assert plain.warning is None and plain.counts[0] >= 3
    with pytest.warns(NapariUnetWarning, match="background is bright.*dark nuclei"):
        wrong = segment(inverted, default_model, **FAST)
    assert (wrong > 0).mean() > 0.5  # what the warning is about: most of the image labelled
    dark = segment_image(default_model, inverted, stain="dark nuclei", **FAST)
    assert dark.warning is None
    np.testing.assert_array_equal(dark.labels, plain.labels)


def test_colour_histology_warns_and_hematoxylin_runs(default_model):
    ihc = data.immunohistochemistry()[:256, :256]
    blue = segment_image(default_model, ihc, channel=2, **FAST)
    assert blue.warning is not None and "hematoxylin" in blue.warning
    hematoxylin = segment_image(default_model, ihc, stain="hematoxylin", **FAST)
    assert hematoxylin.labels.shape == (256, 256) and hematoxylin.counts[0] > 0


def test_stain_needs_what_it_converts(misc):
    with pytest.raises(InputError, match="hematoxylin stain needs a colour"):
        apply_stain(misc, "hematoxylin")
    with pytest.raises(InputError, match="Unknown stain"):
        apply_stain(misc, "eosin")
    rgb = np.stack([misc, misc // 2, misc // 3], axis=-1)
    grey, axis, channel = apply_stain(rgb, "dark nuclei", channel=1)
    assert grey.shape == misc.shape and axis is None and channel is None
    np.testing.assert_array_equal(grey, -(misc // 2).astype(np.float32))
