"""napari-unet: U-Net segmentation for microscopy, in napari and from the command line.

Public API::

    model = load_model()            # the shipped nuclei model, or load_model("my.safetensors")
    probs = predict(model, image)   # (*stack, K, H, W) class probabilities
    labels = segment(image, model)  # (*stack, H, W) uint32 instance labels
    result = segment_image(model, image)  # labels, probabilities, the scale and min size used
"""

from napari_unet._version import __version__ as __version__
from napari_unet.api import segment
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.engine.predict import choose_scale, predict
from napari_unet.engine.scale import scale_from_pixel_size
from napari_unet.engine.segmentation import Segmentation, segment_image
from napari_unet.errors import Cancelled, CheckpointError, InputError, NapariUnetError, NapariUnetWarning
from napari_unet.models import load_model
from napari_unet.training.versions import list_versions

__all__ = [
    "Cancelled",
    "CheckpointError",
    "InputError",
    "NapariUnetError",
    "NapariUnetWarning",
    "PostprocessConfig",
    "Segmentation",
    "SegmentationModel",
    "choose_scale",
    "labels_from_probabilities",
    "list_versions",
    "load_model",
    "predict",
    "scale_from_pixel_size",
    "segment",
    "segment_image",
]
