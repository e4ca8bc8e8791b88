"""Two-view augmentation: shapes, ranges, channel handling, optional operations, validation."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from quantrieve.augment import TwoViewAugment, small_view_augment, small_view_side
from quantrieve.config import AugmentConfig, ConfigError


def _op_types(augment: TwoViewAugment) -> list[type]:
    return [type(op) for op in augment.pipeline.children()]


@pytest.mark.parametrize("channels", [1, 3])
def test_views_keep_shape_range_and_channels(channels: int) -> None:
    config = AugmentConfig(
        rotate_p=1.0, erase_p=1.0, affine_p=1.0, elastic_p=1.0, sharpness_p=1.0, solarize_p=1.0
    )
    augment = TwoViewAugment(config, image_size=28, channels=channels)
    images = torch.rand(6, channels, 28, 28)
    view = augment(images)
    assert view.shape == images.shape
    assert view.dtype == torch.float32
    assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0


def test_two_calls_differ_and_a_seed_repeats_them() -> None:
    augment = TwoViewAugment(AugmentConfig(), image_size=28, channels=1)
    images = torch.rand(4, 1, 28, 28)
    torch.manual_seed(3)
    first, second = augment(images), augment(images)
    assert not torch.allclose(first, second)
    torch.manual_seed(3)
    assert torch.equal(augment(images), first)


def test_grayscale_images_skip_colour_only_operations() -> None:
    config = AugmentConfig(grayscale_p=1.0)
    gray = TwoViewAugment(config, image_size=28, channels=1)
    rgb = TwoViewAugment(config, image_size=28, channels=3)
    assert K.RandomGrayscale not in _op_types(gray)
    assert K.RandomGrayscale in _op_types(rgb)


def test_rotation_and_erasing_only_when_enabled() -> None:
    default = _op_types(TwoViewAugment(AugmentConfig(), image_size=28, channels=1))
    assert K.RandomRotation not in default and K.RandomErasing not in default
    enabled = _op_types(
        TwoViewAugment(AugmentConfig(rotate_p=0.5, erase_p=0.5), image_size=28, channels=1)
    )
    assert K.RandomRotation in enabled and K.RandomErasing in enabled


def test_erasing_blanks_part_of_every_image() -> None:
    config = AugmentConfig(
        crop_scale_min=1.0, hflip_p=0.0, jitter_p=0.0, blur_p=0.0, erase_p=1.0, erase_scale_max=0.2
    )
    augment = TwoViewAugment(config, image_size=16, channels=1)
    torch.manual_seed(0)
    view = augment(torch.ones(8, 1, 16, 16))
    erased = (view == 0).flatten(1).float().mean(1)
    # kornia rounds the rectangle's sides separately, so the area can exceed 0.2 slightly.
    assert bool((erased > 0).all()) and bool((erased <= 0.3).all())


def test_rotation_moves_pixels() -> None:
    config = AugmentConfig(
        crop_scale_min=1.0, hflip_p=0.0, jitter_p=0.0, blur_p=0.0, rotate_p=1.0, rotate_degrees=90
    )
    augment = TwoViewAugment(config, image_size=16, channels=1)
    images = torch.zeros(8, 1, 16, 16)
    images[:, :, 2:5, 2:14] = 1.0  # an off-centre bar
    torch.manual_seed(0)
    moved = (augment(images) - images).abs().flatten(1).sum(1)
    assert bool((moved > 1.0).all())


_ONLY = dict(crop_scale_min=1.0, hflip_p=0.0, jitter_p=0.0, blur_p=0.0)
_OPTIONAL = [
    ("affine_p", K.RandomAffine),
    ("elastic_p", K.RandomElasticTransform),
    ("sharpness_p", K.RandomSharpness),
    ("solarize_p", K.RandomSolarize),
    ("equalize_p", K.RandomEqualize),
    ("posterize_p", K.RandomPosterize),
    ("invert_p", K.RandomInvert),
]


@pytest.mark.parametrize(("key", "op"), _OPTIONAL)
def test_optional_operations_only_when_enabled_and_they_change_images(key: str, op: type) -> None:
    """Off by default; on, the operation is in the pipeline and changes every image (a bar on
    a gradient, so that shifts, warps, sharpening and solarizing all show; 32 x 32, since
    equalization, like PIL's, leaves images of fewer than 255 pixels outside the top level as
    they are)."""
    assert op not in _op_types(TwoViewAugment(AugmentConfig(), image_size=32, channels=1))
    augment = TwoViewAugment(AugmentConfig(**_ONLY, **{key: 1.0}), image_size=32, channels=1)
    assert op in _op_types(augment)
    images = torch.linspace(0.2, 0.9, 32).expand(8, 1, 32, 32).clone()
    images[:, :, 6:12, 4:28] = 1.0
    torch.manual_seed(0)
    changed = (augment(images) - images).abs().flatten(1).amax(1)
    assert bool((changed > 0.05).all())


def _only(**keys: float) -> TwoViewAugment:
    return TwoViewAugment(AugmentConfig(**_ONLY, **keys), image_size=32, channels=1)


def test_invert_is_the_negative() -> None:
    images = torch.rand(5, 1, 32, 32)
    torch.testing.assert_close(_only(invert_p=1.0)(images), 1.0 - images)


@pytest.mark.parametrize("bits", [1, 3])
def test_posterize_keeps_at_most_two_to_the_bits_levels(bits: int) -> None:
    view = _only(posterize_p=1.0, posterize_bits=bits)(torch.rand(4, 1, 32, 32))
    for image in view:
        assert len(torch.unique(image)) <= 2**bits


def test_equalize_spreads_a_narrow_histogram() -> None:
    """Intensities within [0.4, 0.6] come out spread over almost all of [0, 1]."""
    images = 0.4 + 0.2 * torch.rand(4, 1, 32, 32)
    view = _only(equalize_p=1.0)(images)
    spread = view.flatten(1).amax(1) - view.flatten(1).amin(1)
    assert bool((spread > 0.9).all())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rotate_p", 1.5),
        ("erase_p", -0.1),
        ("rotate_degrees", 200.0),
        ("erase_scale_max", 1.5),
        ("affine_p", 2.0),
        ("elastic_p", -1.0),
        ("sharpness_p", 1.1),
        ("solarize_p", -0.5),
        ("affine_translate", 1.5),
        ("affine_shear", 95.0),
        ("elastic_sigma", 0.0),
        ("elastic_alpha", -1.0),
        ("sharpness", -0.1),
        ("equalize_p", 1.5),
        ("invert_p", -0.1),
        ("posterize_p", 2.0),
        ("posterize_bits", 0),
        ("posterize_bits", 8),
        ("small_crops", -1),
        ("small_crop_ratio", 0.0),
        ("small_crop_ratio", 1.5),
        ("small_crop_scale_min", 0.0),
        ("small_crop_scale_max", 1.2),
    ],
)
def test_invalid_values_name_their_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        AugmentConfig(**{key: value}).validate()


@pytest.mark.parametrize(
    ("ratio", "side", "expected"), [(0.5, 28, 14), (0.43, 224, 96), (1.0, 32, 32)]
)
def test_small_views_are_smaller_crops_of_the_same_images(
    ratio: float, side: int, expected: int
) -> None:
    """Multi-crop's small views: ``small_crop_ratio`` of the side, a crop of the configured
    share of the area, then the main views' operations (here solarization)."""
    config = AugmentConfig(
        small_crop_ratio=ratio, small_crop_scale_min=0.2, small_crop_scale_max=0.3, solarize_p=1.0
    )
    assert small_view_side(config, side) == expected
    augment = small_view_augment(config, side, channels=3)
    assert K.RandomSolarize in _op_types(augment)
    views = augment(torch.rand(3, 3, side, side))
    assert views.shape == (3, 3, expected, expected)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    # the crops drawn cover 0.2-0.3 of the area (up to whole-pixel rounding); the main views
    # keep the config's own range
    assert _crop_areas(augment, side).min() >= 0.18 and _crop_areas(augment, side).max() <= 0.32
    main = _crop_areas(TwoViewAugment(config, side, channels=3), side)
    assert main.min() < 0.18 and main.max() > 0.5


def _crop_areas(augment: TwoViewAugment, side: int) -> torch.Tensor:
    """Shares of the image area of 500 crops drawn by the pipeline's first operation."""
    corners = augment.pipeline[0].forward_parameters(torch.Size((500, 1, side, side)))["src"]
    width = corners[:, 1, 0] - corners[:, 0, 0] + 1
    height = corners[:, 2, 1] - corners[:, 1, 1] + 1
    return width * height / side**2
