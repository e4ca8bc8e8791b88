"""Backbones, projection head, product quantizer and the full encoder."""

from quantrieve.models.backbones import build_backbone
from quantrieve.models.encoder import ProjectionHead, QuantizationEncoder
from quantrieve.models.quantizer import ProductQuantizer

__all__ = ["ProductQuantizer", "ProjectionHead", "QuantizationEncoder", "build_backbone"]
