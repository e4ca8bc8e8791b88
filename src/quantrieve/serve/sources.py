"""Where a served item's image comes from, and its cached thumbnail.

Base items come from the index's source (``index.json`` ``source``: dataset, root, part):

- IDX and CIFAR data (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``): the arrays, read
  once on first use; the item id ``part:row`` names the row.
- image folders and list files: the file ``root / id``, decoded like the dataset readers decode
  it. The id comes from the index, never from a client, and a path that would leave ``root``
  (an edited ids.txt) is refused.

Uploaded items come from their segment (the upload as received, and the pixels the model saw);
items added from the image folder (``quantrieve add`` / ``sync``) come from their file, like base
items.
Thumbnails are encoded once and kept in a bounded in-memory cache (least recently used out).
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from quantrieve.config import RunConfig
from quantrieve.data import ARRAY_DATASETS, DataError, ImageSet
from quantrieve.data.images import MAX_UPLOAD_PIXELS, load_image_file, open_image_bytes
from quantrieve.data.run_parts import read_run_parts
from quantrieve.errors import QuantrieveError
from quantrieve.index.live import LiveIndex


class ImageUnavailableError(QuantrieveError):
    """The image of an item cannot be produced (its source is missing or unreadable)."""


class ItemImages:
    """Pixels and thumbnails of the items of one served index.

    Args:
        source: the index's ``source`` metadata (dataset, root, part), possibly empty.
        image_size: side of the square images the model embeds.
        channels: channels the model embeds (1 or 3).
        thumbnail_size: largest side of a thumbnail of an image file (arrays are served at their
            own size; the page scales them up).
        cache_items: thumbnails kept in memory.
        max_pixels: pixel limit when decoding an image file or an upload.
    """

    def __init__(
        self,
        source: dict[str, Any],
        image_size: int,
        channels: int,
        thumbnail_size: int = 160,
        cache_items: int = 4096,
        max_pixels: int = MAX_UPLOAD_PIXELS,
    ) -> None:
        self.dataset = source.get("dataset")
        root = source.get("root")
        self.root = Path(root).resolve() if root else None
        self.image_size = image_size
        self.channels = channels
        self.thumbnail_size = thumbnail_size
        self.max_pixels = max_pixels
        self._arrays: dict[str, ImageSet] | None = None
        self._arrays_lock = threading.Lock()
        self._cache: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_items = cache_items

    # ------------------------------------------------------------------ base items
    def _parts(self) -> dict[str, ImageSet]:
        with self._arrays_lock:
            if self._arrays is None:
                if self.root is None:
                    raise ImageUnavailableError("the index records no source for its images")
                try:
                    # The index's ids name the rows of the dataset's own parts (``part:row``).
                    data = dataclasses.replace(
                        RunConfig().data,
                        dataset=str(self.dataset),
                        root=str(self.root),
                        holdout_queries=0,
                    )
                    self._arrays = read_run_parts(data)
                except QuantrieveError as exc:
                    raise ImageUnavailableError(f"the index's source images: {exc}") from None
            return self._arrays

    def _file(self, item_id: str) -> Path:
        if self.root is None:
            raise ImageUnavailableError("the index records no source for its images")
        path = (self.root / item_id).resolve()
        if not path.is_relative_to(self.root):
            raise ImageUnavailableError(f"item id {item_id!r} points outside the source folder")
        if not path.is_file():
            raise ImageUnavailableError(f"the source image of {item_id!r} is missing")
        return path

    def _array(self, item_id: str) -> np.ndarray:
        part, _, row = item_id.rpartition(":")
        parts = self._parts()
        if part not in parts or not row.isdigit() or int(row) >= len(parts[part]):
            raise ImageUnavailableError(f"item id {item_id!r} is not a row of {self.dataset}")
        return np.asarray(parts[part].images[int(row)])

    def base_pixels(self, item_id: str) -> np.ndarray:
        """uint8 (image_size, image_size, channels): a base item as the model embeds it."""
        if self.dataset in ARRAY_DATASETS:
            pixels = self._array(item_id)
        else:
            try:
                pixels = load_image_file(self._file(item_id), self.image_size, self.channels)
            except DataError as exc:
                raise ImageUnavailableError(str(exc)) from None
        expected = (self.image_size, self.image_size, self.channels)
        if pixels.shape != expected:
            raise ImageUnavailableError(
                f"the source image of {item_id!r} is {pixels.shape}, the model takes {expected}"
            )
        return pixels

    # ------------------------------------------------------------------ thumbnails
    def thumbnail(self, live: LiveIndex, row: int) -> tuple[bytes, str]:
        """(encoded image, media type) of live row ``row``, from the cache when possible."""
        key = int(live.keys[row])  # an item's image never changes: one entry per item number
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        raw = b""
        if live.part[row] >= 0:  # an upload keeps its bytes; a file added from the folder not
            _, raw, name = live.read_added(row)
        if raw:
            out = self._thumbnail_of_bytes(raw, name)
        elif self.dataset in ARRAY_DATASETS:
            out = _png(self._array(live.index.ids[row]))
        else:
            file = self._file(live.index.ids[row])
            out = self._thumbnail_of_bytes(file.read_bytes(), live.index.ids[row])
        with self._cache_lock:
            self._cache[key] = out
            while len(self._cache) > self._cache_items:
                self._cache.popitem(last=False)
        return out

    def _thumbnail_of_bytes(self, data: bytes, name: str) -> tuple[bytes, str]:
        try:
            with open_image_bytes(data, self.max_pixels, name) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (self.thumbnail_size, self.thumbnail_size))
                rgb = ImageOps.exif_transpose(image.convert("RGB"))
                rgb.thumbnail((self.thumbnail_size, self.thumbnail_size), Image.Resampling.BILINEAR)
        except QuantrieveError as exc:
            raise ImageUnavailableError(str(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageUnavailableError(f"{name}: unreadable image ({exc})") from None
        if max(rgb.size) <= 64:
            return _png(np.asarray(rgb))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue(), "image/jpeg"


def _png(pixels: np.ndarray) -> tuple[bytes, str]:
    """A uint8 (H, W, C) array as PNG bytes (grayscale for one channel)."""
    array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"
