"""The encoder as an ONNX graph: uint8 images in, the embeddings the index is searched with out.

The graph is the model's one forward pass (:meth:`RetrievalModel.embed` after
:func:`to_float_images`): input ``images`` uint8 (N, H, W, C), any N; output ``embeddings``
float32 (N, M*d), and for an index that refines by the backbone (``backbone=True``) a second
output ``backbone``, float32 (N, backbone width), the unit backbone representations
(:meth:`RetrievalModel.embed_with_backbone`). Its metadata names the image size, channels,
embedding size (and backbone width) and, when given, the SHA-256 of the codebooks of the index
it belongs to. Exported with ``torch.onnx`` (the ``dynamo`` exporter: ``pip install
'quantrieve[onnx]'``), then checked with onnxruntime when it is installed: the largest
difference from torch's outputs on random images is returned.
"""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from quantrieve.config import ConfigError
from quantrieve.models.retrieval import RetrievalModel, to_float_images

#: The largest difference between onnxruntime's and torch's embeddings an export accepts,
#: relative to the largest embedding value (float32 arithmetic in another order).
ONNX_TOLERANCE = 1e-4


class _ImagesToEmbeddings(nn.Module):
    """uint8 (N, H, W, C) -> float32 embeddings (N, M*d), as search embeds a query."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed(to_float_images(images).contiguous())


class _ImagesToEmbeddingsAndBackbone(_ImagesToEmbeddings):
    """uint8 (N, H, W, C) -> (embeddings, unit backbone vectors), both float32."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.model.embed_with_backbone(to_float_images(images).contiguous())


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how closely it matches torch.

    Attributes:
        path: the ``.onnx`` file.
        max_difference: the largest |onnxruntime - torch| over the check images' embeddings,
            or None when onnxruntime is not installed (not checked).
        scale: the largest |embedding value| of the check (the tolerance is relative to it).
    """

    path: Path
    max_difference: float | None
    scale: float


def export_onnx(
    model: RetrievalModel,
    path: str | Path,
    codebooks_sha256: str | None = None,
    check_images: int = 16,
    seed: int = 0,
    backbone: bool = False,
) -> OnnxExport:
    """Write ``model``'s embedding pass to ``path`` as ONNX and check it (module docstring).
    ``backbone``: also output the unit backbone vectors (an index that refines by them).

    Raises:
        ConfigError: the ONNX exporter's packages are missing, or onnxruntime's embeddings
            differ from torch's by more than :data:`ONNX_TOLERANCE` (relative).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ConfigError(
            "exporting ONNX needs the onnx and onnxscript packages: pip install 'quantrieve[onnx]'"
        ) from None
    path = Path(path)
    kind = _ImagesToEmbeddingsAndBackbone if backbone else _ImagesToEmbeddings
    graph = kind(copy.deepcopy(model).cpu()).eval()  # the caller's is kept
    side, channels = model.image_size, model.channels
    example = torch.zeros(2, side, side, channels, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["embeddings", "backbone"] if backbone else ["embeddings"],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    proto = program.model_proto
    meta = {
        "quantrieve.image_size": str(side),
        "quantrieve.channels": str(channels),
        "quantrieve.embedding_dim": str(model.config.embed_dim),
        "quantrieve.input": "uint8 images (N, H, W, C)",
        "quantrieve.output": "float32 embeddings (N, M*d), searched by ADC",
    }
    if codebooks_sha256 is not None:
        meta["quantrieve.codebooks_sha256"] = codebooks_sha256
    if backbone:
        meta["quantrieve.backbone_dim"] = str(model.backbone_dim)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (check_images, side, side, channels), dtype=np.uint8)
    with torch.no_grad():
        outputs = graph(torch.from_numpy(images))
    wanted = [o.numpy() for o in (outputs if backbone else (outputs,))]
    scale = float(np.abs(wanted[0]).max())
    got = onnx_outputs(path, images)
    if got is None:
        return OnnxExport(path, None, scale)
    # each output against its own largest value (the backbone vectors are unit length)
    difference = max(
        float(np.abs(g - w).max()) * scale / max(float(np.abs(w).max()), 1e-12)
        for g, w in zip(got, wanted, strict=True)
    )
    if difference > ONNX_TOLERANCE * max(scale, 1e-12):
        raise ConfigError(
            f"{path}: onnxruntime's embeddings differ from torch's by {difference:.3g} "
            f"(largest value {scale:.3g}); the export is not faithful"
        )
    return OnnxExport(path, difference, scale)


def onnx_embeddings(path: str | Path, images: np.ndarray) -> np.ndarray | None:
    """Embeddings of uint8 images (N, H, W, C) by onnxruntime from an exported file, or None
    when onnxruntime is not installed."""
    outputs = onnx_outputs(path, images)
    return None if outputs is None else outputs[0]


def onnx_outputs(path: str | Path, images: np.ndarray) -> list[np.ndarray] | None:
    """Every output of an exported file for uint8 images (the embeddings, then the backbone
    vectors when exported with them), or None when onnxruntime is not installed."""
    from quantrieve.models.onnx_runtime import OnnxEncoder

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    encoder = OnnxEncoder(path)
    if encoder.backbone_dim is None:
        return [encoder.embed(images)]
    return list(encoder.embed_with_backbone(images))
