"""Joint transforms keep image and mask aligned to the pixel and labels exact, through crop, flip, resize and pad.

The test image encodes each pixel's own coordinates (R = 4x, G = 4y) and the mask holds the same position as a
label (x + W*y). After any geometric transform, an output pixel's colour says which source position its centre
came from, and its label says which source pixel the mask took: they must be the same pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from twostream.config import load_config
from twostream.data.classes import IGNORE_INDEX
from twostream.data.transforms import build_transforms, make_transforms

H = W = 64


def _coordinate_pair() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([x * 4, y * 4, np.full_like(x, 128)]).astype(np.uint8)  # (3, H, W)
    return tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy((x + W * y).astype(np.int64)))


def _misalignment(image: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Largest distance (source pixels) between the pixel the image sampled and the one the mask took."""
    xs = image[0].numpy() * 255 / 4  # continuous source x of each output pixel's centre
    ys = image[1].numpy() * 255 / 4
    m = mask.numpy()
    # Judge pixels whose sampled position is unambiguous: not within 0.15 px of a half-pixel (where rounding could
    # go either way after uint8 quantisation), not padding, and not within 2 pixels of the output's border or the
    # image's edge (resampling filters are clipped there, which bends the encoded ramp).
    ok = (np.abs(xs - np.floor(xs) - 0.5) > 0.15) & (np.abs(ys - np.floor(ys) - 0.5) > 0.15) & (m != IGNORE_INDEX)
    ok &= (xs > 1) & (xs < W - 2) & (ys > 1) & (ys < H - 2)
    ok[:2] = ok[-2:] = False
    ok[:, :2] = ok[:, -2:] = False
    dx = np.abs(np.round(xs) - m % W)[ok]
    dy = np.abs(np.round(ys) - m // W)[ok]
    return float(max(dx.max(initial=0), dy.max(initial=0))), int(ok.sum())


@pytest.mark.parametrize("out_size", [(40, 36), (150, 130)], ids=["shrink", "enlarge"])
def test_train_crop_flip_resize_keep_mask_aligned(out_size):
    t = make_transforms(out_size, train=True, hflip=0.5, scale=(0.3, 1.0), color_jitter=0.0)
    flips = judged_total = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, mask = t(*_coordinate_pair())
        assert image.shape == (3, *out_size) and mask.shape == out_size
        err, judged = _misalignment(image, mask)
        assert err == 0.0, f"seed {seed}: mask off by {err} px"
        judged_total += judged
        flips += bool(image[0, :, -1].mean() < image[0, :, 0].mean())  # x decreasing: flipped
    assert judged_total > 300  # the check really looked at many pixels
    assert 0 < flips < 12  # both branches were exercised


@pytest.mark.parametrize("keep_ratio, out_size", [(False, (24, 20)), (False, (100, 90)), (True, (30, 50))])
def test_validation_resize_keeps_mask_aligned(keep_ratio, out_size):
    image, mask = make_transforms(out_size, train=False, keep_ratio=keep_ratio)(*_coordinate_pair())
    assert image.shape == (3, *out_size) and image.dtype == torch.float32
    assert mask.shape == out_size and mask.dtype == torch.int64
    err, judged = _misalignment(image, mask)
    assert judged > 50 and err == 0.0


def test_keep_ratio_pads_mask_with_ignore_and_image_with_zero():
    image, mask = make_transforms((30, 50), train=False, keep_ratio=True)(*_coordinate_pair())
    # a 64x64 square fitted into 30x50 is 30x30, centred: 10 padded columns on each side
    assert (mask[:, :10] == IGNORE_INDEX).all() and (mask[:, -10:] == IGNORE_INDEX).all()
    assert (mask[:, 10:40] != IGNORE_INDEX).all()
    assert (image[:, :, :10] == 0).all() and (image[:, :, 40:] == 0).all()


def test_labels_stay_exact_under_augmentation():
    rng = np.random.default_rng(0)
    labels = np.array([0, 3, 7, 150, 255])
    blocks = rng.choice(labels, size=(8, 8))
    mask = tv_tensors.Mask(torch.from_numpy(np.kron(blocks, np.ones((8, 8), np.int64))))  # (64, 64) blocky map
    image = tv_tensors.Image(torch.from_numpy(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8)))
    t = make_transforms((37, 29), train=True, scale=(0.2, 1.0), color_jitter=0.4)
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = t(image, mask)
        assert set(out_mask.unique().tolist()) <= set(labels.tolist())  # nearest neighbour: no new values
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_build_transforms_follows_config():
    cfg = load_config(None, ["data.image_size=[64, 96]", "data.augment.scale=[1.0, 1.0]", "data.augment.hflip=1.0",
                             "data.augment.color_jitter=0"])
    # data.normalize=true is refused by load_config (models normalise themselves) but configs of earlier versions, in
    # their checkpoints, still get the preprocessing they were trained with
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize=True))
    image, mask = build_transforms(cfg.data, train=True)(*_coordinate_pair())
    assert image.shape == (3, 64, 96) and mask.shape == (64, 96)
    assert image.min() < 0  # normalised
    assert mask[0, 0] % W == W - 1 and mask[0, -1] % W == 0  # hflip=1.0 always flips; no crop: the full width
    val_image, val_mask = build_transforms(cfg.data, train=False)(*_coordinate_pair())
    assert val_image.shape == (3, 64, 96) and val_mask[0, 0] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": (0, 10)}, "image_size must be"),
        ({"hflip": 1.5}, "hflip is a probability"),
        ({"scale": (0.8, 0.2)}, r"scale must be \(min, max\)"),
        ({"ratio": (0.0, 1.0)}, r"ratio must be \(min, max\)"),
        ({"color_jitter": -1.0}, "color_jitter must be >= 0"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    args = {"image_size": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=message):
        make_transforms(args.pop("image_size"), train=True, **args)
