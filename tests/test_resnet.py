"""The registered small ResNet: shapes, a hand count of its parameters, its residual start."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, count_parameters, create_model, list_models


def hand_count(in_channels: int, classes: int, w: int = 32) -> int:
    """Weights of every layer, counted from the architecture (BN: a weight and a bias each)."""
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731  3x3, no bias
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(in_channels, w) + bn(w)
    total = stem
    for c_in, c_out in ((w, w), (w, 2 * w), (2 * w, 4 * w)):
        total += conv(c_in, c_out) + bn(c_out)  # downsampling conv
        total += 2 * (conv(c_out, c_out) + bn(c_out))  # residual block
    return total + 4 * w * classes  # linear head, no bias


def test_resnet_is_registered():
    assert "resnet" in list_models()


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_forward_shapes_and_parameter_count(shape):
    model = create_model(ModelConfig("resnet", shape, 10))
    assert model(torch.randn(4, *shape)).shape == (4, 10)
    n = count_parameters(model)
    assert n == hand_count(shape[0], 10)
    assert 200_000 < n < 700_000
    assert count_parameters(create_model(ModelConfig("resnet", (3, 32, 32), 10))) == 492_000


def test_stage_shapes_for_cifar():
    model = create_model(ModelConfig("resnet", (3, 32, 32), 10)).eval()
    x = model.stem(torch.randn(2, 3, 32, 32))
    for stage, expected in (
        (model.stage1, (32, 16)),
        (model.stage2, (64, 8)),
        (model.stage3, (128, 4)),
    ):
        x = stage(x)
        assert x.shape[1:] == (expected[0], expected[1], expected[1])


def test_residual_blocks_start_as_the_identity():
    block = create_model(ModelConfig("resnet", (3, 32, 32), 10)).stage2.block.eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(block(x), torch.nn.functional.gelu(x))


def test_width_option_and_too_small_input():
    model = create_model(ModelConfig("resnet", (1, 28, 28), 5, options={"width": 8}))
    assert count_parameters(model) == hand_count(1, 5, w=8)
    with pytest.raises(ConfigError, match="at least 8x8.*7x8"):
        create_model(ModelConfig("resnet", (1, 7, 8), 10))
