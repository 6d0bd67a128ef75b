"""Batched augmentation: determinism, shapes, and each operation against a reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import (
    AugmentConfig,
    affine_images,
    apply_params,
    augment_batch,
    change_thickness,
    get_augment_preset,
    sample_params,
    shift_images,
)
from cnnlab.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_batch(shape=(16, 3, 32, 32), seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("preset", ["natural", "digits"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_same_seed_same_batch_other_seed_other_batch(preset, dtype):
    config = get_augment_preset(preset)
    x = uint8_batch((8, 1, 28, 28)).to(dtype)
    a, b = augment_batch(x, config, gen(1)), augment_batch(x, config, gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, config, gen(2)))
    assert not torch.equal(a, x)


def test_a_resumed_generator_continues_the_same_batches():
    config, x = get_augment_preset("natural"), uint8_batch()
    g = gen(3)
    augment_batch(x, config, g)
    state = g.get_state()
    second = augment_batch(x, config, g)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(augment_batch(x, config, resumed), second)


@pytest.mark.parametrize("preset", ["none", "natural", "digits"])
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (4, 3, 32, 32), (3, 3, 20, 24)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_and_dtype_are_kept(preset, shape, dtype):
    x = uint8_batch(shape).to(dtype)
    out = augment_batch(x, get_augment_preset(preset), gen(0))
    assert out.shape == x.shape and out.dtype == dtype


def test_flip_mirrors_exactly_the_chosen_images():
    config = AugmentConfig(flip=True)
    x = uint8_batch((64, 3, 8, 8))
    params = sample_params(config, 64, gen(0))
    out = apply_params(x, params, config)
    chosen = params.flip
    assert 0 < int(chosen.sum()) < 64
    assert torch.equal(out[chosen], torch.flip(x[chosen], dims=[-1]))
    assert torch.equal(out[~chosen], x[~chosen])


def test_digits_preset_never_flips():
    assert not get_augment_preset("digits").flip
    assert not sample_params(get_augment_preset("digits"), 100, gen(0)).flip.any()


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_zero_shift_is_the_identity(mode):
    x = uint8_batch()
    assert torch.equal(shift_images(x, torch.zeros(16, 2, dtype=torch.int64), mode), x)


@pytest.mark.parametrize("mode,pad_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_shift_is_a_crop_of_the_padded_image(mode, pad_mode):
    p = 4
    x = uint8_batch((32, 3, 10, 12))
    config = AugmentConfig(crop_padding=p, pad_mode=mode)
    params = sample_params(config, 32, gen(5))
    out = apply_params(x, params, config)
    padded = F.pad(x.float(), (p, p, p, p), mode=pad_mode)
    for i, (dy, dx) in enumerate(params.shifts.tolist()):
        crop = padded[i, :, p + dy : p + dy + 10, p + dx : p + dx + 12]
        assert torch.equal(out[i], crop.to(torch.uint8)), (dy, dx)
    assert params.shifts.abs().max() == p and params.shifts.unique().numel() == 2 * p + 1


def test_affine_with_zero_parameters_is_the_identity():
    x = torch.rand(6, 3, 20, 24, generator=gen(0), dtype=torch.float64)
    out = affine_images(x, torch.zeros(6), torch.ones(6), torch.zeros(6, 2))
    assert (out - x).abs().max() < 1e-6
    single = affine_images(x.float(), torch.zeros(6), torch.ones(6), torch.zeros(6, 2))
    assert (single - x).abs().max() < 1e-5  # float32 grid coordinates are off by ~W * 6e-8 px


def test_identity_affine_keeps_uint8_pixels_exactly():
    config = AugmentConfig(rotate_degrees=1e-9, scale=(1.0, 1.0 + 1e-9))
    x = uint8_batch((4, 3, 28, 28))
    assert torch.equal(augment_batch(x, config, gen(0)), x)


def test_affine_quarter_turn_matches_rot90():
    x = torch.rand(2, 1, 9, 9, generator=gen(0))
    out = affine_images(x, torch.full((2,), 90.0), torch.ones(2), torch.zeros(2, 2))
    turned = [torch.rot90(x, k, dims=(2, 3)) for k in (1, -1)]
    assert min((out - t).abs().max() for t in turned) < 1e-5


def test_affine_translation_of_one_pixel_is_a_shift_with_zeros():
    x = torch.rand(2, 1, 8, 10, generator=gen(0))
    translate = torch.tensor([[1 / 8, 0.0], [0.0, -1 / 10]])  # one row down, one column left
    out = affine_images(x, torch.zeros(2), torch.ones(2), translate)
    shifted = shift_images(x, torch.tensor([[-1, 0], [0, 1]]), "zeros")
    assert (out - shifted).abs().max() < 1e-5


def test_affine_rotation_is_drawn_within_its_range():
    config = AugmentConfig(rotate_degrees=12.0, scale=(0.85, 1.15), translate=0.1)
    params = sample_params(config, 1000, gen(0))
    assert params.angle.abs().max() <= 12 and params.angle.abs().max() > 11
    assert params.scale.min() >= 0.85 and params.scale.max() <= 1.15
    assert params.translate.abs().max() <= 0.1


def test_thickness_grows_a_dot_and_erases_a_thin_line():
    x = torch.zeros(3, 1, 7, 7)
    x[:, :, 3, 3] = 1.0
    out = change_thickness(x, torch.tensor([1.0, -1.0, 0.0]))
    square = torch.zeros(7, 7)
    square[2:5, 2:5] = 1.0
    assert torch.equal(out[0, 0], square)
    assert torch.equal(out[1, 0], torch.zeros(7, 7))
    assert torch.equal(out[2], x[2])
    half = change_thickness(x[:1], torch.tensor([0.5]))
    assert half[0, 0, 2, 2] == 0.5 and half[0, 0, 3, 3] == 1.0


def test_thickness_touches_only_the_chosen_share():
    params = sample_params(AugmentConfig(thickness=0.3), 2000, gen(0))
    share = (params.thickness != 0).float().mean()
    assert 0.25 < share < 0.35


def test_uint8_output_is_rounded_into_range():
    x = uint8_batch((8, 1, 28, 28))
    out = augment_batch(x, get_augment_preset("digits"), gen(0))
    reference = apply_params(
        x.float(),
        sample_params(get_augment_preset("digits"), 8, gen(0)),
        get_augment_preset("digits"),
    )
    assert torch.equal(out, reference.round().clamp(0, 255).to(torch.uint8))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown augmentation 'cifar'; known: digits, natural"):
        get_augment_preset("cifar")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pad_mode": "wrap"}, "unknown pad mode 'wrap'"),
        ({"crop_padding": -1}, "must not be negative"),
        ({"scale": (1.2, 0.8)}, "scale range"),
        ({"thickness": 2.0}, "thickness 2.0"),
    ],
)
def test_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        AugmentConfig(**kw)


def test_config_round_trips_through_json():
    config = get_augment_preset("digits")
    assert AugmentConfig.from_json(config.to_json()) == config
