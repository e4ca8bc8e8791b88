"""Backbones, projection head, product quantizer and the full encoder; the exported encoder run
by onnxruntime (``onnx_runtime``, torch-free). Members are imported on first use (PEP 562)."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "build_backbone": "quantrieve.models.backbones",
    "ProjectionHead": "quantrieve.models.encoder",
    "QuantizationEncoder": "quantrieve.models.encoder",
    "ProductQuantizer": "quantrieve.models.quantizer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quantrieve.models' has no attribute {name!r}")
    return getattr(import_module(module), name)


if TYPE_CHECKING:
    from quantrieve.models.backbones import build_backbone
    from quantrieve.models.encoder import ProjectionHead, QuantizationEncoder
    from quantrieve.models.quantizer import ProductQuantizer

__all__ = ["ProductQuantizer", "ProjectionHead", "QuantizationEncoder", "build_backbone"]
