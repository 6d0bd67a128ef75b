"""The reference layers in cnnlab.layers against torch.nn.functional on random inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnnlab.errors import ConfigError
from cnnlab.teach import layers

EXAMPLES = settings(max_examples=40, deadline=None)
TIGHT = {"rtol": 1e-10, "atol": 1e-10}  # float64 throughout


def fits(size: int, kernel: int, padding: int, dilation: int) -> bool:
    return dilation * (kernel - 1) + 1 <= size + 2 * padding


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


small = st.integers(1, 3)


@EXAMPLES
@given(
    batch=st.integers(1, 2),
    in_channels=small,
    out_channels=small,
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    kernel=st.tuples(small, small),
    stride=st.tuples(small, small),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_matches_torch(
    batch,
    in_channels,
    out_channels,
    height,
    width,
    kernel,
    stride,
    padding,
    dilation,
    with_bias,
    seed,
):
    assume(fits(height, kernel[0], padding[0], dilation[0]))
    assume(fits(width, kernel[1], padding[1], dilation[1]))
    x = randn(batch, in_channels, height, width, seed=seed)
    weight = randn(out_channels, in_channels, *kernel, seed=seed + 1)
    bias = randn(out_channels, seed=seed + 2) if with_bias else None
    options = {"stride": stride, "padding": padding, "dilation": dilation}
    ours = layers.conv2d(x, weight, bias, **options)
    theirs = F.conv2d(x, weight, bias, **options)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **TIGHT)


def test_conv2d_int_arguments_and_float32():
    """Called exactly like F.conv2d, with ints for stride, padding and dilation."""
    x, weight, bias = randn(2, 3, 9, 8, seed=0), randn(4, 3, 3, 3, seed=1), randn(4, seed=2)
    x, weight, bias = x.float(), weight.float(), bias.float()
    ours = layers.conv2d(x, weight, bias, stride=2, padding=1, dilation=2)
    theirs = F.conv2d(x, weight, bias, stride=2, padding=1, dilation=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_conv2d_is_the_tutorials_sum():
    """y[i,j] = sum_m sum_n x[i+m, j+n] * w[m,n] + b, written out for one position."""
    x, w = randn(1, 1, 5, 5, seed=3), randn(1, 1, 3, 3, seed=4)
    b = torch.tensor([0.5], dtype=torch.float64)
    y = layers.conv2d(x, w, b)
    i, j = 1, 2
    by_hand = sum(x[0, 0, i + m, j + n] * w[0, 0, m, n] for m in range(3) for n in range(3)) + b
    torch.testing.assert_close(y[0, 0, i, j], by_hand[0], **TIGHT)


def test_conv2d_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="input channels"):
        layers.conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(1, 3, 3, 3))


@EXAMPLES
@given(
    batch=st.integers(1, 2),
    channels=small,
    height=st.integers(1, 8),
    width=st.integers(1, 8),
    kernel=st.tuples(small, small),
    stride=st.one_of(st.none(), st.tuples(small, small)),
    use_padding=st.tuples(st.booleans(), st.booleans()),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    ceil_mode=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_max_pool2d_matches_torch(
    batch, channels, height, width, kernel, stride, use_padding, dilation, ceil_mode, seed
):
    padding = tuple(k // 2 if use else 0 for k, use in zip(kernel, use_padding))  # torch's most
    assume(fits(height, kernel[0], padding[0], dilation[0]))
    assume(fits(width, kernel[1], padding[1], dilation[1]))
    x = randn(batch, channels, height, width, seed=seed)
    options = {"stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    ours = layers.max_pool2d(x, kernel, **options)
    theirs = F.max_pool2d(x, kernel, **options)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **TIGHT)


def test_max_pool_halves_like_the_tutorial():
    x = randn(1, 32, 28, 28, seed=5)
    y = layers.max_pool2d(x, 2)
    assert y.shape == F.max_pool2d(x, 2).shape == (1, 32, 14, 14)
    torch.testing.assert_close(y, F.max_pool2d(x, 2), **TIGHT)


@EXAMPLES
@given(
    batch=st.integers(2, 4),
    channels=small,
    spatial=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))),
    momentum=st.sampled_from([0.1, 0.01, 0.5]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_matches_torch_in_both_modes(batch, channels, spatial, momentum, affine, seed):
    shape = (batch, channels, *spatial) if spatial else (batch, channels)  # BatchNorm2d or 1d
    x = randn(*shape, seed=seed) * 3 + 1
    gamma = randn(channels, seed=seed + 1) if affine else None
    beta = randn(channels, seed=seed + 2) if affine else None
    ours_mean, ours_var = randn(channels, seed=seed + 3), randn(channels, seed=seed + 4).abs()
    ref_mean, ref_var = ours_mean.clone(), ours_var.clone()

    for training in (True, False, True):
        ours = layers.batch_norm(x, ours_mean, ours_var, gamma, beta, training, momentum, 1e-5)
        theirs = F.batch_norm(x, ref_mean, ref_var, gamma, beta, training, momentum, 1e-5)
        torch.testing.assert_close(ours, theirs, **TIGHT)
        torch.testing.assert_close(ours_mean, ref_mean, **TIGHT)
        torch.testing.assert_close(ours_var, ref_var, **TIGHT)


def test_batch_norm_running_estimates_use_momentum_and_unbiased_variance():
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]], dtype=torch.float64)  # (4, 1)
    mean, var = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    layers.batch_norm(x, mean, var, training=True)
    # batch mean 3, biased variance 3.5, unbiased 14/3; one step of momentum 0.1 from (0, 1)
    torch.testing.assert_close(mean, torch.tensor([0.9 * 0 + 0.1 * 3], dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor([0.9 * 1 + 0.1 * 14 / 3], dtype=torch.float64))
    bn = torch.nn.BatchNorm1d(1).double()
    bn(x)
    torch.testing.assert_close(mean, bn.running_mean)
    torch.testing.assert_close(var, bn.running_var)


def test_batch_norm_train_and_eval_differ_on_the_same_input():
    x = randn(8, 2, 3, 3, seed=6) * 2 + 5
    mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    train = layers.batch_norm(x, mean, var, training=True)
    evaluation = layers.batch_norm(x, mean, var, training=False)
    assert not torch.allclose(train, evaluation)


def test_batch_norm_needs_two_values_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value"):
        layers.batch_norm(torch.zeros(1, 3), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError):  # PyTorch refuses it too
        F.batch_norm(torch.zeros(1, 3), torch.zeros(3), torch.ones(3), training=True)


def torch_conv_size(size, kernel, padding, stride, dilation) -> int:
    x = torch.empty(1, 1, size, size, device="meta")  # shapes only
    w = torch.empty(1, 1, kernel, kernel, device="meta")
    return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape[-1]


@EXAMPLES
@given(
    size=st.integers(1, 300),
    kernel=st.integers(1, 11),
    padding=st.integers(0, 5),
    stride=st.integers(1, 5),
    dilation=st.integers(1, 4),
)
def test_conv_output_size_matches_torch(size, kernel, padding, stride, dilation):
    if fits(size, kernel, padding, dilation):
        expected = torch_conv_size(size, kernel, padding, stride, dilation)
        assert layers.conv_output_size(size, kernel, padding, stride, dilation) == expected
    else:
        with pytest.raises(ConfigError, match="spans"):
            layers.conv_output_size(size, kernel, padding, stride, dilation)
        with pytest.raises(RuntimeError):
            torch_conv_size(size, kernel, padding, stride, dilation)


@pytest.mark.parametrize(
    ("padding", "stride", "tutorial"),
    [(1, 1, 28), (0, 1, 26), (1, 2, 14)],
)
def test_the_tutorials_sizes_for_28x28_and_3x3(padding, stride, tutorial):
    ours = layers.conv_output_size(28, 3, padding=padding, stride=stride)
    assert ours == torch_conv_size(28, 3, padding, stride, 1) == tutorial


@EXAMPLES
@given(
    size=st.integers(1, 100),
    kernel=st.integers(1, 6),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    use_padding=st.booleans(),
    dilation=st.integers(1, 3),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_matches_torch(size, kernel, stride, use_padding, dilation, ceil_mode):
    padding = kernel // 2 if use_padding else 0  # the most PyTorch allows
    assume(fits(size, kernel, padding, dilation))
    x = torch.empty(1, 1, size, size, device="meta")
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).shape[-1]
    assert layers.pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == expected


def test_pool_output_size_refuses_too_much_padding_like_torch():
    with pytest.raises(ConfigError, match="half the window"):
        layers.pool_output_size(8, 3, padding=2)
    with pytest.raises(RuntimeError):
        F.max_pool2d(torch.zeros(1, 1, 8, 8), 3, padding=2)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0, "kernel": 3}, {"size": 5, "kernel": 0}, {"size": 5, "kernel": 3, "stride": 0}],
)
def test_conv_output_size_rejects_non_positive_arguments(kwargs):
    with pytest.raises(ConfigError, match="positive"):
        layers.conv_output_size(**kwargs)
