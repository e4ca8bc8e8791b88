"""Two-view augmentation in batch on the tensor's device (kornia).

The views follow docs/method.md (SimCLR-style): random resized crop, horizontal flip, colour jitter,
random grayscale and Gaussian blur; optionally (off by default) shape and intensity operations
for small grayscale images: rotation, erasing, affine shift and shear, elastic distortion
(Simard et al. 2003), sharpness, solarization (BYOL), histogram equalization, posterization
and the negative. For single-channel images the
colour-only operations (saturation, hue, grayscale) are skipped, so the same config serves
grayscale and RGB data. Multi-crop's small views (SwAV) are the same operations after a smaller
crop, resized to a smaller side: :func:`small_view_augment`.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from quantrieve.config import AugmentConfig


class TwoViewAugment(nn.Module):
    """Draws one random augmentation per image; call twice for two independent views.

    Args:
        config: Augmentation strengths and probabilities.
        image_size: Output side length (images are square after the crop).
        channels: Input channel count; colour-only operations are used when it is 3.
        crop_scale: Range of the crop's share of the image area; default the config's
            ``(crop_scale_min, crop_scale_max)``.
    """

    def __init__(
        self,
        config: AugmentConfig,
        image_size: int,
        channels: int,
        crop_scale: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        colour = channels == 3
        if crop_scale is None:
            crop_scale = (config.crop_scale_min, config.crop_scale_max)
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=crop_scale)]
        if config.hflip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=config.hflip_p))
        if config.jitter_p > 0:
            ops.append(
                K.ColorJitter(
                    brightness=config.brightness,
                    contrast=config.contrast,
                    saturation=config.saturation if colour else 0.0,
                    hue=config.hue if colour else 0.0,
                    p=config.jitter_p,
                )
            )
        if colour and config.grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=config.grayscale_p))
        if config.blur_p > 0:
            ops.append(
                K.RandomGaussianBlur(
                    (3, 3), (config.blur_sigma_min, config.blur_sigma_max), p=config.blur_p
                )
            )
        if config.rotate_p > 0:
            ops.append(K.RandomRotation(config.rotate_degrees, p=config.rotate_p))
        if config.affine_p > 0:
            ops.append(
                K.RandomAffine(
                    degrees=0.0,
                    translate=(config.affine_translate, config.affine_translate),
                    shear=config.affine_shear,
                    p=config.affine_p,
                )
            )
        if config.elastic_p > 0:
            side = 2 * int(2 * config.elastic_sigma) + 1  # the Gaussian to +-2 sigma
            ops.append(
                K.RandomElasticTransform(
                    kernel_size=(side, side),
                    sigma=(config.elastic_sigma, config.elastic_sigma),
                    alpha=(config.elastic_alpha, config.elastic_alpha),
                    p=config.elastic_p,
                )
            )
        if config.sharpness_p > 0:
            ops.append(K.RandomSharpness(sharpness=config.sharpness, p=config.sharpness_p))
        if config.solarize_p > 0:
            ops.append(K.RandomSolarize(p=config.solarize_p))
        if config.equalize_p > 0:
            ops.append(K.RandomEqualize(p=config.equalize_p))
        if config.posterize_p > 0:
            bits = float(config.posterize_bits)  # a range: kornia draws from (bits, 8) for one
            ops.append(K.RandomPosterize(bits=(bits, bits), p=config.posterize_p))
        if config.invert_p > 0:
            ops.append(K.RandomInvert(p=config.invert_p))
        if config.erase_p > 0:
            ops.append(K.RandomErasing(scale=(0.02, config.erase_scale_max), p=config.erase_p))
        self.pipeline = K.AugmentationSequential(*ops)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment float images (B, C, H, W) in [0, 1]; returns the same shape, clamped."""
        return self.pipeline(images).clamp_(0.0, 1.0)


def small_view_side(config: AugmentConfig, image_size: int) -> int:
    """Side in pixels of multi-crop's small views: ``small_crop_ratio`` of the image side,
    rounded half up."""
    return max(1, int(config.small_crop_ratio * image_size + 0.5))


def small_view_augment(config: AugmentConfig, image_size: int, channels: int) -> TwoViewAugment:
    """The augmentation of multi-crop's small views [Caron et al., SwAV, NeurIPS 2020, Sec. 3.2]:
    a crop of ``[small_crop_scale_min, small_crop_scale_max]`` of the area, resized to
    :func:`small_view_side`, then the same operations as the two main views."""
    return TwoViewAugment(
        config,
        small_view_side(config, image_size),
        channels,
        crop_scale=(config.small_crop_scale_min, config.small_crop_scale_max),
    )
