"""Stacks as one image: 3D objects from stacked probabilities, ids through time, whole-stack
normalisation; the core on probabilities made from known shapes, and the shipped model end to end."""

from __future__ import annotations

from importlib.machinery import SourceFileLoader

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet import segment, segment_image
from napari_unet.engine.metrics import instance_scores
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.stack import labels_3d, link_frames, split_at_z_necks
from napari_unet.errors import InputError
from tests.helpers import SAMPLES

make_stacks = SourceFileLoader("make_stacks", str(SAMPLES.parent / "scripts" / "make_stacks.py")).load_module()


def ellipsoids(shape, centres, radii) -> np.ndarray:
    """Labels 1..n of ellipsoids ``(cz, cy, cx)`` with radii ``(rz, ry, rx)``; later ones win on overlap."""
    zz, yy, xx = np.indices(shape)
    out = np.zeros(shape, np.int32)
    for i, ((cz, cy, cx), (rz, ry, rx)) in enumerate(zip(centres, radii), 1):
        out[((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    return out


def plane_probabilities(labels: np.ndarray) -> np.ndarray:
    """``(Z, 3, H, W)`` background/interior/boundary as a 2D network sees each plane: the 2D rim of
    every section is boundary, the rest interior."""
    probs = np.zeros((labels.shape[0], 3, *labels.shape[1:]), np.float32)
    for z, plane in enumerate(labels):
        rim = (ndi.grey_dilation(plane, 3) != ndi.grey_erosion(plane, 3)) & (plane > 0)
        rim |= (plane > 0) & ~ndi.binary_erosion(plane > 0, iterations=2)
        probs[z, 1] = (plane > 0) & ~rim
        probs[z, 2] = rim
    probs[:, 0] = 1 - probs[:, 1] - probs[:, 2]
    return probs


def test_two_touching_ellipsoids_are_two_3d_objects():
    truth = ellipsoids((20, 48, 64), [(10, 24, 20), (10, 24, 41)], [(7, 12, 11), (7, 12, 11)])
    assert ndi.label(truth > 0)[1] == 1  # they touch: one blob without the network's rims
    labels = labels_3d(plane_probabilities(truth), PostprocessConfig(min_size=30))
    assert labels.max() == 2
    assert instance_scores(truth, labels, thresholds=(0.5,), volume=True).f1[0.5] == 1.0


def test_a_thin_nucleus_cut_by_the_side_face_beside_thick_ones_stays_its_own_3d_object():
    # a sliver 4 pixels wide on the x = 0 face, touching a nucleus twice as deep: its interior's
    # peak lies below a fifth of the typical peak, yet it is a nucleus of its own, as in each plane
    truth = ellipsoids((24, 48, 96), [(12, 24, 23), (12, 24, 62), (12, 24, -6)], [(10, 20, 20)] * 2 + [(8, 14, 10)])
    assert ndi.label(truth > 0)[1] == 1 and (truth[:, :, 0] == 3).any()
    labels = labels_3d(plane_probabilities(truth), PostprocessConfig(min_size=30))
    assert labels.max() == 3
    assert instance_scores(truth, labels, thresholds=(0.5,), volume=True).f1[0.5] == 1.0


def test_a_nucleus_missing_in_one_plane_stays_one_object():
    truth = ellipsoids((16, 40, 40), [(8, 20, 20)], [(6, 12, 12)])
    probs = plane_probabilities(truth)
    probs[8] = 0
    probs[8, 0] = 1  # the network missed it in its middle plane
    labels = labels_3d(probs, PostprocessConfig(min_size=30), voxel_size=(1.0, 0.5, 0.5))
    assert set(np.unique(labels)) == {0, 1}
    assert (labels[7] == 1).any() and (labels[9] == 1).any()
    # planes far apart (z spacing 6 pixel widths): a missing plane is a real gap
    apart = labels_3d(probs, PostprocessConfig(min_size=30), voxel_size=(3.0, 0.5, 0.5))
    assert len(np.unique(apart)) == 3


def test_two_nuclei_stacked_in_z_under_one_label_are_cut_at_their_neck():
    truth = ellipsoids((18, 48, 48), [(5, 24, 24), (11, 25, 23)], [(3, 10, 10), (3, 12, 12)])
    merged = (truth > 0).astype(np.int32)  # one seed for both: one label
    cut = split_at_z_necks(merged)
    assert instance_scores(truth, cut, thresholds=(0.5,), volume=True).f1[0.5] == 1.0
    single = ellipsoids((18, 48, 48), [(8, 24, 24)], [(6, 14, 14)])
    assert np.array_equal(split_at_z_necks(single), single)


def test_min_size_counts_voxels_so_thin_tips_stay():
    truth = ellipsoids((16, 40, 40), [(8, 20, 20)], [(7, 10, 10)])
    labels = labels_3d(plane_probabilities(truth), PostprocessConfig(min_size=200))
    tips = [z for z in range(16) if 0 < (truth[z] > 0).sum() < 200]
    assert tips and all((labels[z] == 1).any() for z in tips)  # planes of fewer pixels than min_size kept


def moving_discs(frames: int, step: float) -> np.ndarray:
    yy, xx = np.indices((64, 96))
    out = np.zeros((frames, 64, 96), np.int32)
    for t in range(frames):
        for i, (y, x, dy, dx) in enumerate([(11, 12, 0.1, 1), (32, 14, -0.1, 0.9), (53, 80, 0, -1)], 1):
            out[t][(yy - y - dy * step * t) ** 2 + (xx - x - dx * step * t) ** 2 <= 64] = i
    return out


@pytest.mark.parametrize("step", [3, 14])  # overlapping between frames, and moved past their size
def test_link_frames_keeps_ids_of_moving_objects(step):
    truth = moving_discs(5, step)
    shuffled = np.stack([np.array([0, 3, 1, 2])[f] if t % 2 else f for t, f in enumerate(truth)])  # ids per frame
    linked = link_frames(shuffled)
    for t in range(5):
        for i in (1, 2, 3):
            assert np.unique(linked[t][truth[t] == i]).tolist() == [i]


def test_link_frames_bridges_a_missed_frame_and_ends_divided_tracks():
    truth = moving_discs(4, 3)
    gap = truth.copy()
    gap[2][gap[2] == 2] = 0  # object 2 missed in frame 2
    linked = link_frames(gap)
    assert np.unique(linked[3][truth[3] == 2]).tolist() == [2]
    divided = truth.copy()
    cols = np.indices(divided.shape[1:])[1]
    middle = round(ndi.center_of_mass(divided[3] == 1)[1])
    divided[3][(divided[3] == 1) & (cols > middle)] = 4  # 1 splits in two
    divided[3][(divided[3] == 1) & (cols == middle)] = 0
    linked = link_frames(divided)
    daughters = set(np.unique(linked[3][truth[3] == 1]).tolist()) - {0}
    assert len(daughters) == 2 and 1 not in daughters


def test_link_frames_does_not_end_a_track_when_a_small_piece_comes_away():
    yy, xx = np.indices((48, 64))
    frames = np.zeros((3, 48, 64), np.int32)
    for t, x in enumerate((20, 27, 34)):  # a nucleus moving 7 px a frame, past half its overlap
        frames[t][(yy - 24) ** 2 + (xx - x) ** 2 <= 64] = 1
    frames[0][(yy - 24) ** 2 + (xx - 9) ** 2 <= 9] = 2
    frames[1][(yy - 24) ** 2 + (xx - 16) ** 2 <= 9] = 1  # a small neighbour merged into it in frame 1
    frames[2][(yy - 24) ** 2 + (xx - 23) ** 2 <= 9] = 2
    linked = link_frames(frames)
    assert [np.unique(linked[t][frames[t] == 1]).tolist() for t in (0, 2)] == [[1], [1]]


def cut_in_two(frame: np.ndarray, label: int, new: int) -> np.ndarray:
    """``frame`` with object ``label`` cut down its middle column; the right half becomes ``new``."""
    frame = frame.copy()
    cols = np.indices(frame.shape)[1]
    middle = round(ndi.center_of_mass(frame == label)[1])
    frame[(frame == label) & (cols > middle)] = new
    frame[(frame == label) & (cols == middle)] = 0
    return frame


def test_link_frames_heals_an_object_cut_in_one_frame_but_not_a_lasting_division():
    truth = moving_discs(5, 3)
    flicker = truth.copy()
    flicker[2] = cut_in_two(flicker[2], 1, 4)  # cut in frame 2 only, whole again in frame 3
    linked = link_frames(flicker)
    assert all(set(np.unique(linked[t][truth[t] == 1]).tolist()) - {0} == {1} for t in range(5))
    divided = truth.copy()
    for t in (3, 4):
        divided[t] = cut_in_two(divided[t], 1, 4)  # two from frame 3 on
    linked = link_frames(divided)
    daughters = set(np.unique(linked[3][truth[3] == 1]).tolist()) - {0}
    assert len(daughters) == 2 and 1 not in daughters


@pytest.mark.slow
def test_shipped_model_gives_3d_nuclei_and_nothing_on_empty_planes(default_model):
    image = tifffile.imread(SAMPLES / "nuclei_misc.tif")
    truth2d = tifffile.imread(SAMPLES / "nuclei_misc_labels.tif")
    img, lab = make_stacks.crowded_crop(image, truth2d, 160)
    stack, truth = make_stacks.make_zstack(img, lab, 3.0, np.random.default_rng(1), empty_planes=3)
    result = segment_image(default_model, stack, device="cpu", scale=1.0, stack="3d", voxel_size=(1.5, 0.5, 0.5))
    assert result.summary() == f"{len(np.unique(result.labels)) - 1} 3D objects"
    assert instance_scores(truth, result.labels, thresholds=(0.5,), volume=True).f1[0.5] >= 0.8
    assert not result.labels[:3].any() and not result.labels[-3:].any()


def test_planes_of_noise_in_a_stack_give_no_objects(default_model):
    nuclei = tifffile.imread(SAMPLES / "nuclei_misc.tif")[:192, :192].astype(np.float32)
    rng = np.random.default_rng(0)
    noise = lambda: nuclei.min() + rng.normal(0, 0.02 * np.ptp(nuclei), nuclei.shape)  # noqa: E731
    stack = np.stack([noise(), nuclei, noise()]).astype(np.float32)
    labels = segment(stack, default_model, device="cpu", scale=1.0)
    assert labels[1].max() > 3
    assert labels[0].max() == 0 and labels[2].max() == 0
    alone = segment(stack[0], default_model, device="cpu", scale=1.0)  # on its own a noise plane is stretched
    assert alone.max() > 0


def test_time_stack_keeps_ids_of_moving_nuclei(default_model):
    nuclei = tifffile.imread(SAMPLES / "nuclei_misc.tif")[:192, :192]
    movie = np.stack([np.roll(nuclei, (2 * t, 3 * t), axis=(0, 1)) for t in range(3)])
    result = segment_image(default_model, movie, device="cpu", scale=1.0, stack="time")
    first = result.labels[0]
    assert first.max() > 3 and result.summary().endswith("tracks")
    for t in (1, 2):
        moved = np.roll(first, (2 * t, 3 * t), axis=(0, 1))
        inner = (moved > 0) & (result.labels[t] > 0)
        inner[: 2 * t + 8], inner[:, : 3 * t + 8] = False, False  # away from what rolled in
        assert (moved[inner] == result.labels[t][inner]).mean() > 0.99


def test_stack_modes_refuse_images_without_the_axis(default_model):
    with pytest.raises(InputError, match="z-planes"):
        segment(np.zeros((64, 64), np.float32), default_model, stack="3d")
    with pytest.raises(InputError, match="Stack mode"):
        segment(np.zeros((2, 64, 64), np.float32), default_model, stack="volume")
    with pytest.raises(InputError, match="Voxel size"):
        segment(np.zeros((2, 64, 64), np.float32), default_model, stack="3d", voxel_size=(1, 0, 1))


def test_the_automatic_scale_of_a_stack_is_measured_on_its_in_focus_planes():
    from napari_unet.engine.predict import focus_planes

    rng = np.random.default_rng(0)
    stack = rng.normal(100, 3, (12, 1, 64, 64))  # blur and noise
    for z, contrast in zip(range(3, 9), (50, 58, 60, 59, 57, 30)):
        stack[z, 0, 16:48, 16:48] += contrast * rng.random((32, 32))
    assert focus_planes(stack) == [4, 5, 6, 7]  # plane 3 (spread 13.3 of 16.2) and 8 are out of focus
    assert focus_planes(stack, most=2) == [4, 5, 7]  # the two ends of the in-focus range, and the sharpest
    assert focus_planes(stack[:1]) == [0]
