"""The encoder exported by ``quantrieve export-onnx``, run by onnxruntime: query images to the
embeddings an index is searched with, in a process without torch (``quantrieve serve --onnx``).

The file holds the whole embedding pass (:mod:`quantrieve.models.onnx_export`): uint8 images
(N, H, W, C) in, float32 embeddings (N, M*d) out, and metadata naming the image size, the
channels, the embedding size and the SHA-256 of the codebooks of the index it was exported
from. Embeddings agree with torch's within :data:`~quantrieve.models.onnx_export.ONNX_TOLERANCE`
(relative), checked at export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantrieve.config import ConfigError


class OnnxEncoder:
    """Query images to embeddings by onnxruntime.

    Args:
        path: a file written by ``quantrieve export-onnx``.
        threads: onnxruntime's intra-op threads (None: its default, every core).

    Attributes:
        image_size, channels: the images the encoder takes (H = W = image_size).
        embedding_dim: M * d.
        codebooks_sha256: the codebooks of the index it was exported from, or None.
        backbone_dim: the width of the unit backbone vectors it also outputs (exported for an
            index that refines by them), or None.

    Raises:
        ConfigError: onnxruntime is not installed, or the file does not load or was not
            written by ``quantrieve export-onnx`` (its metadata is missing).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                "embedding queries with ONNX needs onnxruntime: pip install onnxruntime"
            ) from None
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"{self.path}: not a loadable ONNX file ({exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.image_size = int(meta["quantrieve.image_size"])
            self.channels = int(meta["quantrieve.channels"])
            self.embedding_dim = int(meta["quantrieve.embedding_dim"])
        except (KeyError, ValueError):
            raise ConfigError(
                f"{self.path}: no quantrieve metadata (image size, channels); write it with "
                "quantrieve export-onnx INDEX OUT.onnx"
            ) from None
        self.codebooks_sha256: str | None = meta.get("quantrieve.codebooks_sha256")
        width = meta.get("quantrieve.backbone_dim")
        self.backbone_dim: int | None = None if width is None else int(width)

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """float32 (N, M*d) embeddings of uint8 images (N, H, W, C)."""
        return self._run(images, batch_size, ["embeddings"])[0]

    def embed_with_backbone(
        self, images: np.ndarray, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, unit backbone vectors)`` of uint8 images, from a file exported for an
        index that refines by the backbone."""
        if self.backbone_dim is None:
            raise ConfigError(
                f"{self.path} does not output backbone vectors; export it again from the index "
                "that refines by them (quantrieve export-onnx INDEX OUT.onnx)"
            )
        f, u = self._run(images, batch_size, ["embeddings", "backbone"])
        return f, u

    def _run(self, images: np.ndarray, batch_size: int, names: list[str]) -> list[np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        expected = (self.image_size, self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"images must be (N, {shape}), got {images.shape}")
        batches = [
            self.session.run(names, {"images": images[start : start + batch_size]})
            for start in range(0, len(images), batch_size)
        ]
        widths = {"embeddings": self.embedding_dim, "backbone": self.backbone_dim or 0}
        return [
            np.concatenate([b[j] for b in batches]).astype(np.float32, copy=False)
            if batches
            else np.zeros((0, widths[name]), dtype=np.float32)
            for j, name in enumerate(names)
        ]
