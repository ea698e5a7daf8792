"""Images larger than memory: the same per-tile engine run per block on dask workers, stitched into zarr."""

from napari_unet.blockwise.engine import (
    DEFAULT_BLOCK,
    BlockwiseOptions,
    BlockwiseResult,
    dask_client,
    segment_blockwise,
    segment_many,
)

__all__ = ["DEFAULT_BLOCK", "BlockwiseOptions", "BlockwiseResult", "dask_client", "segment_blockwise", "segment_many"]
