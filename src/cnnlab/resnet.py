"""A small residual network for 32x32 colour and 28x28 grey images (about 0.49 M parameters).

    >>> model = create_model(ModelConfig("resnet", input_shape=(3, 32, 32), num_classes=10))
    >>> count_parameters(model)
    492000

Shape of the network, for (3, 32, 32) input and the default width 32:

    stem      conv3x3 3->32, BN, GELU                           (B, 32, 32, 32)
    stage 1   conv3x3 32->32, maxpool 2, BN, GELU; residual     (B, 32, 16, 16)
    stage 2   conv3x3 32->64, maxpool 2, BN, GELU; residual     (B, 64, 8, 8)
    stage 3   conv3x3 64->128, maxpool 2, BN, GELU; residual    (B, 128, 4, 4)
    head      global max pool, linear 128->classes (no bias), x output_scale

Taken from airbench (KellerJordan/cifar10-airbench, the fast CIFAR-10 network): stages that
downsample with a 3x3 convolution followed by 2x2 max pooling, with batch norm and the activation
applied to the pooled (4x smaller) map; GELU activations; convolutions without bias (batch norm
follows each one); a max-pooled head into a bias-free linear layer whose output is scaled by a
constant (airbench: 1/9), which keeps the first logits small. Not taken: the data-dependent
whitening first layer (a model here is built from its shape alone), frozen batch-norm weights
and identity-initialised convolutions. Instead each stage ends in a ResNet basic block
(x + BN(conv(GELU(BN(conv(x))))), then GELU) whose last batch-norm weight starts at zero, so every
residual block starts as the identity (Goyal et al., 2017) - the job airbench's identity init does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.models import register_model


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions at constant width around an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)  # the block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.bn1(self.conv1(x)))
        return F.gelu(x + self.bn2(self.conv2(y)))


class Stage(nn.Module):
    """airbench's downsampling: conv, 2x2 max pool, then BN and GELU on the smaller map."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv3x3(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(c_out)
        self.block = ResidualBlock(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.gelu(self.bn(self.pool(self.conv(x)))))


class ResNet(nn.Module):
    """Stem, three downsampling residual stages of widths (w, 2w, 4w), max-pooled linear head."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 32, output_scale: float = 1 / 9
    ):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = conv3x3(in_channels, width)
        self.stem_bn = nn.BatchNorm2d(width)
        self.stage1 = Stage(width, widths[0])
        self.stage2 = Stage(widths[0], widths[1])
        self.stage3 = Stage(widths[1], widths[2])
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = F.gelu(self.stem_bn(self.stem(x)))  # (B, 32, 32, 32)
        x = self.stage1(x)  # (B, 32, 16, 16)
        x = self.stage2(x)  # (B, 64, 8, 8)
        x = self.stage3(x)  # (B, 128, 4, 4)
        x = torch.amax(x, dim=(2, 3))  # (B, 128)
        return self.fc(x) * self.output_scale  # (B, classes)


@register_model(
    "resnet",
    "small ResNet: stem, 3x (conv3x3-maxpool-bn-gelu, residual block) [32, 64, 128], linear",
)
def resnet(input_shape, num_classes, width: int = 32, output_scale: float = 1 / 9):
    channels, height, width_px = input_shape
    if height < 8 or width_px < 8:
        raise ConfigError(
            f"resnet needs images of at least 8x8 (three 2x2 poolings); got {height}x{width_px}"
        )
    if width < 1 or output_scale <= 0:
        raise ConfigError(
            f"resnet needs width >= 1 and output_scale > 0 (got {width}, {output_scale})"
        )
    return ResNet(channels, num_classes, width, output_scale)
