"""Image / label / instance / scene-file readers: mode conversions, EXIF, and one-line errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from twostream.data.io import DataError, load_image, load_label, read_instances, read_scene_categories


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 10, y * 10, np.full_like(x, 77)], axis=2).astype(np.uint8)


def test_rgb_jpeg_and_png_round_trip(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, a)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "a.jpg").astype(int) - a).max() < 12  # lossy, but the same picture


def test_modes_become_rgb_uint8(tmp_path):
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png"), np.repeat(gray[..., None], 3, 2))

    g16 = (gray.astype(np.uint16) * 257)  # 16-bit grayscale: scaled back to the same 8-bit values
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png")[..., 0], gray)

    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255  # left half opaque red, right half transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert (out[:, 0] == [200, 0, 0]).all() and (out[:, -1] == [255, 255, 255]).all()

    pal = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (12, 16, 3)


def test_exif_orientation_applied_for_photos_not_for_datasets(tmp_path):
    im = Image.fromarray(_rgb(12, 16))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "o.jpg").shape == (16, 12, 3)  # upright, as a viewer shows it
    assert load_image(tmp_path / "o.jpg", exif_transpose=False).shape == (12, 16, 3)  # stored grid


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not a picture"), "not an image"),
        (lambda p: p.write_bytes(_jpeg_bytes()[: len(_jpeg_bytes()) // 2]), "truncated or corrupt"),
        (lambda p: p.write_bytes(_jpeg_bytes()[:300]), "truncated or corrupt"),
    ],
    ids=["missing", "empty", "not-an-image", "truncated-data", "truncated-header"],
)
def test_bad_image_files_raise_one_line_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(DataError, match=reason) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_too_large_image_is_refused_before_decoding(tmp_path):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"too large: 50x40 = 2,000 pixels > limit 1,000") as e:
        load_image(tmp_path / "big.png", max_pixels=1000)
    assert str(tmp_path / "big.png") in str(e.value)


def test_load_label_accepts_single_channel_and_refuses_colour(tmp_path):
    lab = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16) % 151
    Image.fromarray(lab, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_label(tmp_path / "l.png"), lab)
    p = Image.fromarray(lab, "L").convert("P")  # palette indices are the labels
    p.putpalette(list(range(256)) * 3)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_label(tmp_path / "p.png"), lab)
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="RGB image; expected a single-channel"):
        load_label(tmp_path / "rgb.png")


def test_read_instances_masks_boxes_labels(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[2:5, 3:7] = (20, 1, 0)  # chair, instance 1: rows 2..4, cols 3..6
    rgb[6, 9] = (21, 2, 0)  # car, instance 2: one pixel
    rgb[0:2, 0:2] = (4, 0, 0)  # stuff pixels (G = 0) are no instance
    Image.fromarray(rgb, "RGB").save(tmp_path / "i.png")
    out = read_instances(tmp_path / "i.png")
    assert out["labels"].tolist() == [20, 21] and out["labels"].dtype == np.int64
    assert out["masks"].shape == (2, 10, 12) and out["masks"].dtype == bool
    assert out["masks"][0].sum() == 12 and out["masks"][1].sum() == 1
    np.testing.assert_array_equal(out["boxes"], [[3, 2, 7, 5], [9, 6, 10, 7]])  # x1, y1 exclusive
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "none.png")
    empty = read_instances(tmp_path / "none.png")
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 4, 4) and empty["labels"].shape == (0,)


def test_scene_file_parsing_and_errors(tmp_path):
    f = tmp_path / "sceneCategories.txt"
    f.write_text("ADE_train_00000001 bedroom\n\nADE_train_00000002 street\nADE_train_00000001 bedroom\n")
    assert read_scene_categories(f) == {"ADE_train_00000001": "bedroom", "ADE_train_00000002": "street"}
    f.write_text("ADE_train_00000001 bedroom\nADE_train_00000002 living room\n")
    with pytest.raises(DataError, match=r"sceneCategories.txt:2: expected '<image stem> <scene>'"):
        read_scene_categories(f)
    f.write_text("ADE_train_00000001 bedroom\nADE_train_00000001 street\n")
    with pytest.raises(DataError, match=r":2: ADE_train_00000001 is listed again with scene 'street'"):
        read_scene_categories(f)
    with pytest.raises(DataError, match="scene-label file not found"):
        read_scene_categories(tmp_path / "missing.txt")
