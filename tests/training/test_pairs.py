"""Training-pairs folders: export, atomicity under SIGKILL, concurrent writers, orphans, validation,
cellpose folders."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile

from napari_unet import InputError
from napari_unet.cli.main import main
from napari_unet.training.pairs import count_pairs, export_pair, find_orphans, read_pairs


def test_export_whole_plane_and_rectangle(tmp_path, misc, misc_labels):
    rec = export_pair(tmp_path, misc, misc_labels, source="nuclei_misc.tif", plane=(0,), model="default",
                      edited_pixels=42)
    assert (tmp_path / "images" / f"{rec.name}.tif").exists()
    assert not (tmp_path / "reviewed" / f"{rec.name}.tif").exists()
    rec2 = export_pair(tmp_path, misc, misc_labels, rect=(100, 150, 300, 400), source="nuclei_misc.tif")
    assert rec2.name != rec.name and rec2.crop == [68, 118, 332, 432]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted([f"{rec.name}.tif", f"{rec2.name}.tif"])
    manifest = json.loads((tmp_path / "pairs.json").read_text())
    assert [p["name"] for p in manifest["pairs"]] == [rec.name, rec2.name]
    assert manifest["pairs"][0]["edited_pixels"] == 42 and manifest["pairs"][0]["model"] == "default"
    pairs, skipped = read_pairs(tmp_path)
    assert not skipped and len(pairs) == 2 == count_pairs(tmp_path)
    whole, rect = pairs
    np.testing.assert_array_equal(whole.image, misc)
    assert whole.image.dtype == misc.dtype and whole.labels.dtype == np.uint32 and whole.reviewed is None
    assert rect.image.shape == (264, 314)
    assert rect.reviewed.sum() == 200 * 250 and rect.reviewed[32:232, 32:282].all()


def test_export_refuses_bad_input(tmp_path, misc, misc_labels):
    with pytest.raises(InputError, match="empty"):
        export_pair(tmp_path, misc, np.zeros_like(misc_labels))
    with pytest.raises(InputError, match="labels are"):
        export_pair(tmp_path, misc, misc_labels[:100])
    with pytest.raises(InputError, match="no labelled objects inside the rectangle"):
        export_pair(tmp_path, misc, misc_labels, rect=(0, 0, 10, 10))
    assert count_pairs(tmp_path) == 0


def test_bad_pairs_are_skipped_with_a_warning(tmp_path, misc, misc_labels):
    good = export_pair(tmp_path, misc, misc_labels)
    bad_shape = export_pair(tmp_path, misc, misc_labels)
    tifffile.imwrite(tmp_path / "labels" / f"{bad_shape.name}.tif", misc_labels[:50].astype(np.uint32))
    unreadable = export_pair(tmp_path, misc, misc_labels)
    (tmp_path / "images" / f"{unreadable.name}.tif").write_bytes(b"not a tiff")
    empty = export_pair(tmp_path, misc, misc_labels)
    tifffile.imwrite(tmp_path / "labels" / f"{empty.name}.tif", np.zeros_like(misc_labels, np.uint32))
    with pytest.warns(UserWarning, match="Skipping pair"):
        pairs, skipped = read_pairs(tmp_path)
    assert [p.name for p in pairs] == [good.name]
    reasons = dict(skipped)
    assert "image is (512, 512) but labels are (50, 512)" in reasons[bad_shape.name]
    assert "not a readable TIFF" in reasons[unreadable.name]
    assert "empty" in reasons[empty.name]


def test_cellpose_style_folder(tmp_path, misc, misc_labels):
    tifffile.imwrite(tmp_path / "a.tif", misc)
    tifffile.imwrite(tmp_path / "a_masks.tif", misc_labels)
    tifffile.imwrite(tmp_path / "b_masks.tif", misc_labels)  # image missing
    with pytest.warns(UserWarning):
        pairs, skipped = read_pairs(tmp_path)
    assert [p.name for p in pairs] == ["a"] and skipped[0][0] == "b"


def test_missing_folder_and_broken_manifest(tmp_path):
    with pytest.raises(InputError, match="no such pairs folder"):
        read_pairs(tmp_path / "nope")
    (tmp_path / "pairs.json").write_text("{broken")
    with pytest.raises(InputError, match="manifest is unreadable"):
        read_pairs(tmp_path)
    (tmp_path / "pairs.json").write_text(json.dumps({"format": "napari-unet-pairs", "version": 9, "pairs": []}))
    with pytest.raises(InputError, match="newer"):
        read_pairs(tmp_path)


def test_export_survives_sigkill_at_any_moment(tmp_path, misc, misc_labels):
    np.save(tmp_path / "img.npy", misc)
    np.save(tmp_path / "lab.npy", misc_labels)
    folder = tmp_path / "pairs"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from napari_unet.training.pairs import export_pair
        img, lab = np.load({str(tmp_path / 'img.npy')!r}), np.load({str(tmp_path / 'lab.npy')!r})
        print("ready", flush=True)
        i = 0
        while True:
            export_pair({str(folder)!r}, img, lab, rect=(0, 0, 300, 300) if i % 2 else None)
            i += 1
    """)
    for delay in (0.05, 0.17, 0.31, 0.44):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pairs, skipped = read_pairs(folder)
        assert not skipped, skipped  # every listed pair is complete
        for p in pairs:
            assert p.labels.max() > 0
    assert len(pairs) >= 2


def test_four_processes_exporting_into_one_folder_lose_nothing(tmp_path, misc, misc_labels):
    np.save(tmp_path / "img.npy", misc[:64, :64])
    np.save(tmp_path / "lab.npy", misc_labels[:64, :64])
    folder = tmp_path / "shared"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from napari_unet.training.pairs import export_pair
        img, lab = np.load({str(tmp_path / 'img.npy')!r}), np.load({str(tmp_path / 'lab.npy')!r})
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        for i in range(25):
            export_pair({str(folder)!r}, img, lab, source=f"writer{{sys.argv[1]}}.tif", plane=(i,))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for w in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(300) == 0
    manifest = json.loads((folder / "pairs.json").read_text())
    names = [e["name"] for e in manifest["pairs"]]
    assert len(names) == 100 and len(set(names)) == 100
    assert find_orphans(folder) == []
    pairs, skipped = read_pairs(folder)
    assert len(pairs) == 100 and not skipped


def test_orphans_are_reported_and_repaired(tmp_path, misc, misc_labels, capsys):
    folder = tmp_path / "pairs"
    rec = export_pair(folder, misc[:64, :64], misc_labels[:64, :64])
    for sub in ("images", "labels"):  # a pair whose manifest entry was lost (e.g. an old concurrent export)
        shutil.copy(folder / sub / f"{rec.name}.tif", folder / sub / "lost.tif")
    shutil.copy(folder / "images" / f"{rec.name}.tif", folder / "images" / "half.tif")  # image only
    assert find_orphans(folder) == ["half", "lost"]
    with pytest.warns(UserWarning, match="2 pair file.* not listed.*napari-unet pairs repair"):
        pairs, _ = read_pairs(folder)
    assert len(pairs) == 1
    assert main(["pairs", "repair", str(folder)]) == 0
    out = capsys.readouterr()
    assert "re-listed lost" in out.out and "half left unlisted" in out.err
    pairs, _ = read_pairs(folder)
    assert sorted(p.name for p in pairs) == sorted([rec.name, "lost"])
    assert find_orphans(folder) == ["half"]


def test_an_image_without_labels_and_no_manifest_is_no_pair(tmp_path, misc, misc_labels):
    """The first export into a folder stopped before its labels and manifest were written."""
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "stopped.tif", misc)
    with pytest.warns(UserWarning, match="1 image.* no labels file"):
        assert read_pairs(tmp_path) == ([], [])
