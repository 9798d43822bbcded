"""Reading the files of an ADE20K-layout dataset: images, label maps, instance maps, the scene-label file.

Every reader raises :class:`DataError` (a ``ValueError``) with one line that names the file and the reason
(missing, empty, not an image, truncated, too large, wrong kind of annotation), so a long run can log the line and
skip the item, and inference can show it to the user as it is.

Images are decoded with PIL and always come back as ``(H, W, 3)`` uint8 RGB, whatever the file holds: grayscale,
palette, RGBA/LA (composited on white), CMYK, 16-bit grayscale (scaled to 8 bits). The EXIF orientation tag is
applied by default (a phone photo comes out upright); dataset readers turn it off because ADE20K's annotations are
drawn on the pixel grid as stored.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "DataError",
    "exif_orientation",
    "load_image",
    "load_label",
    "pil_to_rgb",
    "read_instances",
    "read_scene_categories",
]

# Decompression-bomb guard: a 64-megapixel image is far beyond any ADE20K image (at most a few megapixels) and
# beyond what a dataloader worker should hold; a tiny file that claims more is refused before it is decoded.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # ADE20K ships .jpg; own data in the same layout may use the others
MAX_IMAGE_PIXELS = 64_000_000


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent. ``str(err)`` is one line naming the file."""


def _open(path: Path, max_pixels: int, what: str) -> Image.Image:
    """Open ``path`` with PIL, check its declared size against ``max_pixels`` and decode it fully."""
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: {what} is an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns (and at twice its own limit raises) for huge images; our own limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: {what} is not an image PIL can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {what} is too large ({e})") from None
    except PermissionError:
        raise DataError(f"{path}: {what} cannot be read: permission denied") from None
    except OSError as e:  # the header itself is cut short or garbled
        raise DataError(f"{path}: {what} is truncated or corrupt (header unreadable: {e})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DataError(f"{path}: {what} is too large: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,} "
                        "(decompression-bomb guard; raise max_pixels if the file is genuine)")
    if w == 0 or h == 0:
        raise DataError(f"{path}: {what} has zero size ({w}x{h})")
    try:
        im.load()  # decode now: a truncated file fails here, inside our error handling, not later in numpy
    except (OSError, SyntaxError, ValueError) as e:
        im.close()
        raise DataError(f"{path}: {what} is truncated or corrupt: {e}") from None
    return im


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = upright, 2..8 = flipped/rotated; 1 when absent)."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block must not make an otherwise good image unreadable
        return 1


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> ``(H, W, 3)`` uint8 RGB."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG opens as I;16 or I): scale 0..65535 to 0..255 rather than clipping to white
        a = np.asarray(im).astype(np.int64)
        a = (np.clip(a, 0, 65535) + 128) // 257
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        hi = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0  # float images are in [0, 1] or [0, 255]
        a = np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels keep arbitrary colours in the file; composite on white as a viewer would show them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def pil_to_rgb(im: Image.Image, *, exif_transpose: bool = True) -> np.ndarray:
    """An opened PIL image -> ``(H, W, 3)`` uint8 RGB, converted exactly as :func:`load_image` converts files."""
    if exif_transpose and exif_orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    return _to_rgb(im)


def load_image(path: str | Path, *, exif_transpose: bool = True, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Args:
        path: any format PIL reads (JPEG, PNG, WebP, BMP, TIFF, ...).
        exif_transpose: apply the EXIF orientation tag (photos from phones and cameras). Dataset readers pass
            ``False``: annotations are aligned with the pixels as stored.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).

    Raises:
        DataError: one line naming the file and why: not found, empty, not an image, truncated, too large.
    """
    path = Path(path)
    with _open(path, max_pixels, "image") as im:
        return pil_to_rgb(im, exif_transpose=exif_transpose)


def load_label(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a label-map PNG as ``(H, W)`` uint8 (ADE20K: 0 = other, 1..150 = classes).

    Single-channel files (``L``, palette ``P`` whose indices are the labels, or 16-bit grayscale with values below
    256) are accepted; a colour or RGBA file is refused, because its colours are not labels.

    Raises:
        DataError: one line naming the file: missing, unreadable, colour instead of labels, values above 255.
    """
    path = Path(path)
    with _open(path, max_pixels, "annotation") as im:
        if im.mode in ("L", "P"):
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            a = np.asarray(im)
            if a.size and (int(a.max()) > 255 or int(a.min()) < 0):
                raise DataError(f"{path}: annotation has label values up to {int(a.max())}; expected 0..255")
            return a.astype(np.uint8)
        raise DataError(f"{path}: annotation is a {im.mode} image; expected a single-channel (8-bit) label PNG "
                        "whose pixel values are class ids")


def read_instances(path: str | Path) -> dict[str, np.ndarray]:
    """Read an instance PNG (R = ADE20K-150 class id, G = instance index 1..k in the image, 0 = no instance).

    Returns:
        ``boxes`` ``(M, 4)`` float32 ``(x0, y0, x1, y1)`` in pixels, ``x1, y1`` exclusive (a one-pixel instance
        at column 3 has ``x0 = 3, x1 = 4``); ``labels`` ``(M,)`` int64 class ids; ``masks`` ``(M, H, W)`` bool.
        Instances are ordered by their index (G). ``M = 0`` gives empty arrays of the right shapes.

    Raises:
        DataError: the file is missing or unreadable, or not an RGB image.
    """
    path = Path(path)
    with _open(path, MAX_IMAGE_PIXELS, "instance annotation") as im:
        if im.mode != "RGB":
            raise DataError(f"{path}: instance annotation is a {im.mode} image; expected RGB (R = class, G = index)")
        rgb = np.asarray(im, dtype=np.uint8)
    h, w = rgb.shape[:2]
    cls = rgb[..., 0].astype(np.int64)
    idx = rgb[..., 1].astype(np.int64)
    key = np.where(idx > 0, idx * 256 + cls, -1)  # sorting by key orders instances by index, then class
    ids, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(h, w)
    keep = ids >= 0
    slots = np.nonzero(keep)[0]
    masks = inverse[None] == slots[:, None, None]  # (M, H, W)
    labels = (ids[keep] % 256).astype(np.int64)
    boxes = np.zeros((len(slots), 4), dtype=np.float32)
    if len(slots):
        rows = masks.any(axis=2)  # (M, H)
        cols = masks.any(axis=1)  # (M, W)
        boxes[:, 0] = cols.argmax(axis=1)
        boxes[:, 1] = rows.argmax(axis=1)
        boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
        boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def read_scene_categories(path: str | Path) -> dict[str, str]:
    """Read ``sceneCategories.txt`` (``ADE_train_00000001 airport_terminal``, one line per image) as stem -> scene.

    Blank lines are ignored. A line with other than two fields, or a stem listed twice with different scenes, is an
    error naming the file and line (listing it twice with the same scene is harmless and accepted).

    Raises:
        DataError: the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: scene-label file not found (ADEChallengeData2016 keeps it at the dataset root)")
    scenes: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected '<image stem> <scene>', got {line.strip()!r}")
            stem, scene = parts
            if scenes.get(stem, scene) != scene:
                raise DataError(f"{path}:{lineno}: {stem} is listed again with scene '{scene}' "
                                f"(first as '{scenes[stem]}')")
            scenes[stem] = scene
    return scenes
