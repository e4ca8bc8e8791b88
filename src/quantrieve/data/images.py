"""Decoding one image file into a square uint8 RGB array (shared by list-file and folder readers).

Resizing rule, used everywhere: the image is converted to RGB (grayscale, palette, CMYK and alpha
images included; alpha is dropped, GIFs give their first frame), the largest centred square is
cropped from it and that square is resized to ``image_size`` x ``image_size`` with bilinear
interpolation. This equals "resize the shorter side to ``image_size``, then centre-crop" up to
rounding, and keeps the aspect ratio of the content. JPEGs are decoded with PIL's draft mode
(DCT-domain downscaling to no less than the target size) because it makes large sets several times
faster to decode; the result can differ by a few grey levels from a full-size decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from quantrieve.data.base import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})


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
            if image.format == "JPEG":
                image.draft(mode, (image_size, image_size))
            converted = image.convert(mode)
            square = ImageOps.fit(converted, (image_size, image_size), Image.Resampling.BILINEAR)
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
