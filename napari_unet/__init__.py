"""napari-unet: U-Net segmentation for microscopy, in napari and from the command line.

Public API::

    model = load_model()            # the shipped nuclei model, or load_model("my.safetensors")
    probs = predict(model, image)   # (*stack, K, H, W) class probabilities
    labels = segment(image, model)  # (*stack, H, W) uint32 instance labels
"""

__version__ = "0.1.0"

from .errors import Cancelled, CheckpointError, InputError, NapariUnetError  # noqa: E402
from .inference import SegmentationModel, load_model, predict, segment  # noqa: E402
from .postprocess import PostprocessConfig, labels_from_probabilities  # noqa: E402
from .scale import choose_scale, scale_from_pixel_size  # noqa: E402
from .versions import list_versions  # noqa: E402

__all__ = [
    "Cancelled",
    "CheckpointError",
    "InputError",
    "NapariUnetError",
    "PostprocessConfig",
    "SegmentationModel",
    "choose_scale",
    "labels_from_probabilities",
    "list_versions",
    "load_model",
    "predict",
    "scale_from_pixel_size",
    "segment",
]
