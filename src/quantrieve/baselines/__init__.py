"""Baselines evaluated by the same evaluator as the deep models."""

from quantrieve.baselines.pixels import BASELINES, PixelBaseline, fit_baseline, flatten_pixels

__all__ = ["BASELINES", "PixelBaseline", "fit_baseline", "flatten_pixels"]
