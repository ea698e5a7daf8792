"""Blockwise segmentation on dask: agreement with the whole-image path, stitching, inputs, output safety."""

from __future__ import annotations

import json
import time

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_unet import Cancelled, InputError, segment
from napari_unet.blockwise.engine import (
    BlockwiseOptions,
    _running,
    _wait_until_not_running,
    dask_client,
    segment_blockwise,
    segment_many,
)
from napari_unet.engine.metrics import instance_scores
from napari_unet.io.lazy import open_lazy
from tests.helpers import make_tiny_model


def mosaic(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The real image tiled with mirror flips (seamless) and cropped to ``shape``."""
    period = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = (-(-shape[0] // period.shape[0]), -(-shape[1] // period.shape[1]))
    return np.ascontiguousarray(np.tile(period, reps)[: shape[0], : shape[1]])


def read_labels(path) -> np.ndarray:
    return zarr.open_array(str(path), mode="r", path="0")[:]


@pytest.fixture(scope="module")
def client():
    with dask_client(1) as c:  # one in-process worker, shared by the tests of this module
        yield c


@pytest.fixture(scope="module")
def nuclei_mosaic(u2os) -> np.ndarray:
    return mosaic(u2os, (1024, 1152))


def test_blockwise_matches_whole_image_on_real_nuclei(default_model, nuclei_mosaic, client, tmp_path):
    """Blocks of 256 px (20 blocks, 31 faces): same objects as one whole-image pass, none cut, ids 1..N."""
    whole = segment(nuclei_mosaic, default_model, device="cpu", scale=1.0)
    result = segment_blockwise(nuclei_mosaic, tmp_path / "m_labels.zarr", default_model,
                               options=BlockwiseOptions(block=256, device="cpu", scale=1.0), client=client)
    labels = read_labels(result.out)
    assert result.blocks == 20 and labels.shape == whole.shape and labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size)), "ids must be 1..N without gaps"
    assert result.objects == [ids.size - 1]
    scores = instance_scores(whole, labels)
    assert scores.f1[0.5] >= 0.99, scores.to_dict()
    assert scores.n_true > 150

    # no object cut at a block face: a whole-image object crossing a face has one blockwise label on both sides
    cut = 0
    for axis in (0, 1):
        for face in range(256, labels.shape[axis], 256):
            before = np.take(labels, face - 1, axis=axis)
            after = np.take(labels, face, axis=axis)
            same = np.take(whole, face - 1, axis=axis)
            crossing = (same > 0) & (same == np.take(whole, face, axis=axis))
            for obj in np.unique(same[crossing]):
                sel = crossing & (same == obj)
                a, b = np.bincount(before[sel]).argmax(), np.bincount(after[sel]).argmax()
                cut += int(a != b or a == 0)
    assert cut == 0, f"{cut} objects cut at block faces"


def test_every_input_kind_gives_the_same_labels(u2os, default_model, client, tmp_path):
    """numpy, dask, zarr array, zarr folder, OME-Zarr (level chosen by pixel size) and a tiled TIFF."""
    model = default_model
    image = u2os[:320, :384]
    opts = BlockwiseOptions(block=128, halo=64, tile=128, overlap=16, device="cpu", scale=1.0)
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=image.shape, chunks=(100, 100), dtype=image.dtype)
    z[:] = image
    ome = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    levels = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [s, s]}]}
              for i, s in enumerate((0.5, 1.0))]
    ome.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": levels}]
    big = np.kron(image, np.ones((2, 2), image.dtype))
    ome.create_array("0", shape=big.shape, dtype=image.dtype, chunks=(128, 128))[:] = big
    ome.create_array("1", shape=image.shape, dtype=image.dtype, chunks=(128, 128))[:] = image
    tifffile.imwrite(tmp_path / "img.tif", image, tile=(64, 64))
    assert open_lazy(tmp_path / "img.ome.zarr").shape == (640, 768)  # level 0 by default
    level1 = open_lazy(tmp_path / "img.ome.zarr", pixel_size=0.9)
    assert level1.component == "1" and level1.pixel_size == (1.0, 1.0)
    inputs = {
        "numpy": image, "dask": da.from_array(image, chunks=90), "zarr_array": z,
        "zarr_folder": tmp_path / "plain.zarr", "ome_zarr": level1, "tiff": tmp_path / "img.tif",
    }
    results = segment_many([(src, tmp_path / f"{name}_labels.zarr") for name, src in inputs.items()], model,
                           options=opts, client=client)
    assert [r.error for r in results] == [None] * len(inputs)
    first = read_labels(results[0].out)
    assert first.max() > 15
    for r in results[1:]:
        np.testing.assert_array_equal(read_labels(r.out), first, err_msg=r.source)
    meta = dict(zarr.open_group(str(results[0].out), mode="r").attrs)
    assert meta["multiscales"][0]["datasets"][0]["path"] == "0" and "image-label" in meta
    assert meta["napari-unet-labels"]["objects"] == [int(first.max())]
    json.dumps(meta)


def test_stacks_go_plane_by_plane(u2os, default_model, client, tmp_path):
    model = default_model
    planes = np.stack([u2os[:200, :256], u2os[200:400, 256:512]])
    opts = BlockwiseOptions(block=128, halo=64, tile=128, overlap=16, device="cpu", scale=1.0)
    r = segment_blockwise(planes, tmp_path / "stack.zarr", model, options=opts, client=client)
    stack = read_labels(r.out)
    assert stack.shape == (2, 200, 256) and len(r.objects) == 2
    one = segment_blockwise(planes[1], tmp_path / "one.zarr", model, options=opts, client=client)
    np.testing.assert_array_equal(stack[1], read_labels(one.out))
    assert r.objects == [int(stack[0].max()), int(stack[1].max())] and min(r.objects) > 1


def test_existing_output_is_never_overwritten_unless_asked(misc, client, tmp_path):
    model = make_tiny_model()
    opts = BlockwiseOptions(block=128, halo=32, tile=64, overlap=16, device="cpu", scale=1.0)
    out = tmp_path / "x_labels.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        segment_blockwise(misc[:128, :128], out, model, options=opts, client=client)
    assert (out / "precious.txt").read_text() == "keep"
    segment_blockwise(misc[:128, :128], out, model, options=opts, client=client, overwrite=True)
    assert not (out / "precious.txt").exists() and read_labels(out).shape == (128, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_labels.zarr"]  # no temp folders left


def test_cancel_stops_and_leaves_nothing(misc, client, tmp_path):
    model = make_tiny_model()
    opts = BlockwiseOptions(block=64, halo=16, tile=64, overlap=16, device="cpu", scale=1.0)
    seen = []
    with pytest.raises(Cancelled):
        segment_blockwise(misc, tmp_path / "c.zarr", model, options=opts, client=client,
                          progress=lambda d, t: seen.append((d, t)), cancel=lambda: len(seen) >= 2)
    assert seen and seen[-1][0] < seen[-1][1]
    assert list(tmp_path.iterdir()) == []


def _slow_write(path: str) -> None:
    time.sleep(1.0)
    with open(path, "w") as f:
        f.write("late")


def test_cancelled_tasks_that_already_run_are_waited_for_before_outputs_go(client, tmp_path):
    """distributed cannot stop a task that has started: the cleanup after a cancel waits for it
    (else a block still writing into the partial output could leave part of it behind)."""
    late = tmp_path / "late"
    fut = client.submit(_slow_write, str(late), pure=False)
    deadline = time.monotonic() + 10
    while not any(client.run(_running, {fut.key}).values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    client.cancel([fut])
    _wait_until_not_running(client, [fut.key])
    assert late.read_text() == "late"  # it had finished writing when the wait returned


def test_bad_input_is_one_sentence(client, tmp_path):
    model = make_tiny_model()
    with pytest.raises(InputError, match="no such file"):
        segment_blockwise(tmp_path / "missing.zarr", tmp_path / "o.zarr", model, client=client)
    with pytest.raises(InputError, match="3 channel.*expects 1"):
        segment_blockwise(np.zeros((64, 64, 3), np.uint8), tmp_path / "o.zarr", model, client=client)


def test_auto_scale_blockwise_matches_the_in_memory_choice_and_scales_min_size(default_model, u2os, u2os_labels,
                                                                               client, tmp_path):
    """The sample shrunk 0.5x (nuclei 4x smaller in area): "auto" reads only the central crop, picks
    the same scale as the whole-image path, enlarges, and keeps the small nuclei (min_size scaled)."""
    from napari_unet.engine.predict import choose_scale
    from napari_unet.engine.tiling import resize_planes

    size = (u2os.shape[0] // 2, u2os.shape[1] // 2)
    small = resize_planes(u2os[None].astype(np.float32), size)[0].astype(np.uint16)
    small_lab = resize_planes(u2os_labels[None].astype(np.float32), size, nearest=True)[0].astype(np.int32)
    store = tmp_path / "small.zarr"
    zarr.open_array(str(store), mode="w", shape=small.shape, chunks=(128, 128), dtype="uint16")[:] = small
    result = segment_blockwise(store, tmp_path / "small_labels.zarr", default_model, client=client,
                               options=BlockwiseOptions(block=256, device="cpu"))
    expected = choose_scale(default_model, small, device="cpu")
    assert result.scale.how == "object size" and result.scale.scale == pytest.approx(expected.scale, rel=0.05)
    assert 1.6 < result.scale.scale < 2.4
    labels = read_labels(result.out)
    f1_auto = instance_scores(small_lab, labels).f1[0.5]
    at_one = segment_blockwise(store, tmp_path / "one_labels.zarr", default_model, client=client,
                               options=BlockwiseOptions(block=256, device="cpu", scale=1.0))
    f1_one = instance_scores(small_lab, read_labels(at_one.out)).f1[0.5]
    assert f1_auto > f1_one and f1_auto > 0.8, (f1_auto, f1_one)
    with pytest.raises(InputError, match="Scale"):
        segment_blockwise(store, tmp_path / "bad.zarr", default_model, client=client,
                          options=BlockwiseOptions(scale="big"))


def test_local_worker_processes_keep_the_default_malloc():
    """dask's nanny would set MALLOC_TRIM_THRESHOLD_ (one worker ran the network 1.5x slower);
    napari-unet's local worker processes start without it."""
    import os

    from napari_unet.blockwise.engine import dask_client

    with dask_client(workers=2) as client:
        environ = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(environ) == 2 and set(environ.values()) == {None}


def test_auto_scale_of_a_lazy_stack_is_measured_on_its_in_focus_planes(default_model, u2os, tmp_path):
    """A zarr z-stack whose first planes are blur and noise: "auto" finds the planes in focus (on a
    small central square of each) and measures the nuclei there, as for the in-memory stack."""
    from napari_unet.blockwise.engine import auto_scale
    from napari_unet.engine.predict import choose_scale
    from napari_unet.engine.tiling import resize_planes

    size = (u2os.shape[0] // 2, u2os.shape[1] // 2)
    small = resize_planes(u2os[None].astype(np.float32), size)[0]
    rng = np.random.default_rng(0)
    noise = [rng.normal(float(np.median(small)), 2.0, size) for _ in range(3)]
    stack = np.stack([*noise[:2], small, 0.97 * small, noise[2]]).astype(np.uint16)
    store = tmp_path / "stack.zarr"
    zarr.open_array(str(store), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype="uint16")[:] = stack
    choice = auto_scale(open_lazy(store), default_model, BlockwiseOptions(device="cpu"))
    assert choice.how == "object size" and 1.6 < choice.scale < 2.4
    assert choice.scale == pytest.approx(choose_scale(default_model, stack, device="cpu").scale, rel=0.05)
    assert choose_scale(default_model, stack[0], device="cpu").scale != pytest.approx(choice.scale, rel=0.2)
