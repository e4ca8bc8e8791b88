"""Decoding one image file into a square uint8 RGB array (shared by list-file and folder readers).

Resizing rule, used everywhere: the image is turned upright by its EXIF orientation (a phone's
portrait photo, stored sideways, is decoded as it is shown), converted to RGB (grayscale, palette,
CMYK and alpha images included; alpha is dropped, GIFs give their first frame), the largest centred
square is cropped from it and that square is resized to ``image_size`` x ``image_size`` with
bilinear interpolation. This equals "resize the shorter side to ``image_size``, then centre-crop"
up to rounding, and keeps the aspect ratio of the content. JPEGs are decoded with PIL's draft mode
(DCT-domain downscaling to no less than the target size) because it makes large sets several times
faster to decode; the result can differ by a few grey levels from a full-size decode.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from quantrieve.data.base import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
# The formats of IMAGE_EXTENSIONS: what an image from outside (an upload) may be. PIL is asked to
# identify only these, so no other decoder (EPS through Ghostscript, ...) ever sees the bytes.
UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF")
# Pixel modes that convert to RGB faithfully; 16-bit, 32-bit and float images ("I;16", "I", "F")
# would be clipped to 255 and come out mostly white, so they are refused instead.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
# Default pixel limit of an uploaded image (width x height, before any decoding): 40 megapixels,
# e.g. 8000 x 5000. A small file that claims more is a decompression bomb.
MAX_UPLOAD_PIXELS = 40_000_000


class UnreadableImageError(DataError):
    """An image file exists but cannot be decoded.

    Attributes:
        path: the image file.
        reason: what the decoder said.
        index: position of the image in the list being decoded, once known (else None), so that
            a reader can name the line of its list file.
    """

    def __init__(self, path: Path, reason: str, index: int | None = None) -> None:
        super().__init__(f"{path}: unreadable image ({reason})")
        self.path = path
        self.reason = reason
        self.index = index


@dataclass(frozen=True)
class BadImage:
    """An image that could not be decoded.

    Attributes:
        index: its position in the list of paths being decoded.
        path: the image file.
        reason: what the decoder said.
    """

    index: int
    path: Path
    reason: str


# How many unreadable files an error message names before it says "... and N more".
SHOW_BAD = 5
SKIP_BAD_HINT = "set data.skip_bad=true to leave {them} out (they are listed in the run record)"


class UnreadableImagesError(DataError):
    """One or more image files cannot be decoded; all of them, found in one pass, are in ``bad``.

    Attributes:
        bad: every unreadable image, in input order.
    """

    def __init__(self, message: str, bad: Sequence[BadImage]) -> None:
        super().__init__(message)
        self.bad = list(bad)


def unreadable_message(items: Sequence[str], limit: int = SHOW_BAD) -> str:
    """One line naming unreadable images: the first ``limit`` descriptions, the count, the fix.

    Args:
        items: one description per unreadable image, e.g. ``a/b.jpg: unreadable image (...)``.
        limit: how many are named; the rest are counted.

    Returns:
        For one image ``"<item>; fix or remove it, or set data.skip_bad=true ..."``, for several
        ``"3 unreadable images: <item>; <item>; ... and 1 more; fix or remove them, or ..."``.
    """
    if len(items) == 1:
        return f"{items[0]}; fix or remove it, or {SKIP_BAD_HINT.format(them='it')}"
    shown = "; ".join(items[:limit])
    if len(items) > limit:
        shown += f"; ... and {len(items) - limit} more"
    return (
        f"{len(items)} unreadable images: {shown}; fix or remove them, or "
        f"{SKIP_BAD_HINT.format(them='them')}"
    )


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is not hidden.

    Args:
        path: a file path (only its name is inspected).

    Returns:
        True for names such as ``a.JPG``; False for ``._a.jpg`` (macOS metadata) or ``a.txt``.
    """
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode_image(path: Path, image_size: int, channels: int = 3) -> np.ndarray:
    """Decode one image file into a square uint8 array (see the module docstring).

    Args:
        path: the image file.
        image_size: side of the square output, in pixels.
        channels: 3 (RGB) or 1 (grayscale: ITU-R 601 luma, PIL's ``L`` mode).

    Returns:
        uint8 array of shape (image_size, image_size, channels).

    Raises:
        UnreadableImageError: the file cannot be opened or decoded.
    """
    mode = {3: "RGB", 1: "L"}.get(channels)
    if mode is None:
        raise DataError(f"{path}: cannot decode an image to {channels} channels (only 1 or 3)")
    try:
        with Image.open(path) as image:
            square = _fit_square(image, image_size, channels)
    # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(path, str(exc) or type(exc).__name__) from None
    return np.asarray(square, dtype=np.uint8).reshape(image_size, image_size, channels)


# PIL modes of single-channel images (bilevel, 8-bit, 16/32-bit integer, float, with alpha).
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})


def collection_channels(paths: Sequence[Path]) -> int:
    """1 when every readable file is single-channel (grayscale), else 3: a grayscale
    collection is decoded to one channel, not copied three times. Only the headers are read;
    unreadable files are left to the decoder to report."""
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode not in GRAY_MODES:
                    return 3
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            continue
    return 1 if paths else 3


class BadUploadError(DataError):
    """Bytes from outside that are not an image quantrieve accepts (not an image, a format or
    pixel mode it refuses, too many pixels, truncated data); the message says which."""


def _fit_square(image: Image.Image, image_size: int, channels: int = 3) -> Image.Image:
    """Turned upright by its EXIF orientation (as a phone's portrait photo is shown), RGB (or L
    for one channel), then the largest centred square resized (bilinear) to ``image_size``: the
    one rule every decoded image follows (files, uploads, queries, training)."""
    mode = {3: "RGB", 1: "L"}[channels]
    if image.format == "JPEG":
        image.draft(mode, (image_size, image_size))
    upright = ImageOps.exif_transpose(image.convert(mode))
    return ImageOps.fit(upright, (image_size, image_size), Image.Resampling.BILINEAR)


def decode_image_bytes(
    data: bytes,
    image_size: int,
    channels: int = 3,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    name: str = "upload",
) -> np.ndarray:
    """Decode an image received from outside (an upload) exactly as a file in a dataset folder.

    Stricter than :func:`decode_image`: only :data:`UPLOAD_FORMATS` are identified, the pixel
    count in the header is checked against ``max_pixels`` before anything is decoded
    (decompression bombs), and modes that do not convert faithfully to RGB are refused.

    Args:
        data: the file's bytes.
        image_size: side of the square output.
        channels: 3 (RGB) or 1 (grayscale, as :func:`load_image_file`).
        max_pixels: largest width x height accepted.
        name: what to call the image in messages (e.g. the uploaded file name).

    Returns:
        uint8 array (image_size, image_size, channels), equal to what the dataset readers decode
        from the same file.

    Raises:
        BadUploadError: not an image, another format, a refused mode, too many pixels, or
            corrupt data (the message says which).
    """
    if channels not in (1, 3):
        raise DataError(f"{name}: cannot decode an image to {channels} channels (only 1 or 3)")
    image = open_image_bytes(data, max_pixels, name)
    try:
        with image:
            square = _fit_square(image, image_size, channels)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadUploadError(f"{name}: corrupt image data ({exc or type(exc).__name__})") from None
    return np.asarray(square, dtype=np.uint8).reshape(image_size, image_size, channels)


def open_image_bytes(
    data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS, name: str = "upload"
) -> Image.Image:
    """Open (not decode) image bytes after the checks of :func:`decode_image_bytes`: a format of
    :data:`UPLOAD_FORMATS`, a convertible mode, at most ``max_pixels`` pixels. The caller closes
    the returned ``PIL.Image.Image``."""
    if not data:
        raise BadUploadError(f"{name}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.UnidentifiedImageError:
        raise BadUploadError(
            f"{name}: not an image quantrieve reads (accepted: {', '.join(UPLOAD_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadUploadError(
            f"{name}: too many pixels, refused as a decompression bomb ({exc})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadUploadError(f"{name}: unreadable image ({exc or type(exc).__name__})") from None
    width, height = image.size
    if width * height > max_pixels or width < 1 or height < 1:
        image.close()
        raise BadUploadError(
            f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,} pixels "
            "(a decompression bomb, or a photo to downscale first)"
        )
    if image.mode not in CONVERTIBLE_MODES:
        mode = image.mode
        image.close()
        raise BadUploadError(
            f"{name}: pixel mode {mode!r} (16-bit, 32-bit or float pixels) is not accepted; "
            "save the image as 8-bit RGB or grayscale"
        )
    return image


def load_image_file(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """Decode a query image for a model trained on ``channels``-channel images.

    Args:
        path: the image file.
        image_size: side of the square the model expects.
        channels: 3 (RGB) or 1 (grayscale, ITU-R 601 luma as PIL's ``L`` mode).

    Returns:
        uint8 array (image_size, image_size, channels).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    return decode_image(path, image_size, channels)
