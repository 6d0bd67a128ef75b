"""The model registry and the tutorial's numbers: parameter counts and stage shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import (
    ModelConfig,
    conv_layer_names,
    count_parameters,
    create_model,
    list_models,
)

MNIST = dict(input_shape=(1, 28, 28), num_classes=10)


def test_tutorial_cnn_has_50378_parameters():
    assert count_parameters(create_model(ModelConfig("cnn", **MNIST))) == 50_378


def test_tutorial_first_layers():
    model = create_model(ModelConfig("cnn", **MNIST))
    assert sum(p.numel() for p in model.conv1.parameters()) == 320
    assert model.conv1.weight.shape == (32, 1, 3, 3)
    mlp = create_model(ModelConfig("mlp", **MNIST))
    assert sum(p.numel() for p in mlp.fc1.parameters()) == 100_480


def test_cnn_keeps_the_tutorial_layer_names():
    model = create_model(ModelConfig("cnn", **MNIST))
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "bn1", "conv2", "bn2", "pool", "fc"]


def test_cnn_stage_shapes_match_the_tutorial():
    model = create_model(ModelConfig("cnn", **MNIST)).eval()
    x = torch.randn(4, 1, 28, 28)
    a = model.conv1(x)
    assert a.shape == (4, 32, 28, 28)
    a = model.pool(torch.relu(model.bn1(a)))
    assert a.shape == (4, 32, 14, 14)
    a = model.pool(torch.relu(model.bn2(model.conv2(a))))
    assert a.shape == (4, 64, 7, 7)
    flat = a.flatten(start_dim=1)
    assert flat.shape == (4, 3136)
    assert torch.equal(model.fc(flat), model(x))


def test_cnn_matches_the_tutorial_class_exactly():
    """Same seed, same layers: the registry's cnn computes what the tutorial's class computes."""

    class TutorialCNN(nn.Module):  # copied from the tutorial
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
            self.bn2 = nn.BatchNorm2d(64)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(64 * 7 * 7, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            return self.fc(x.flatten(start_dim=1))

    torch.manual_seed(3)
    ours = create_model(ModelConfig("cnn", **MNIST))
    torch.manual_seed(3)
    theirs = TutorialCNN()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(ours(x), theirs(x))


def test_mlp_hidden_option():
    model = create_model(ModelConfig("mlp", **MNIST, options={"hidden": 64}))
    assert count_parameters(model) == 784 * 64 + 64 + 64 * 10 + 10


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 5), ((1, 20, 24), 3)])
def test_every_model_builds_for_its_input(name, shape, classes):
    model = create_model(ModelConfig(name, shape, classes))
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_model_config_round_trips_through_json(name):
    config = ModelConfig(name, (1, 28, 28), 10)
    assert ModelConfig.from_json(config.to_json()) == config


def test_cnn_linear_layer_follows_the_input_size():
    model = create_model(ModelConfig("cnn", (3, 32, 32), 5))
    assert model.fc.in_features == 64 * 8 * 8
    assert conv_layer_names(model) == ["conv1", "conv2"]
    assert conv_layer_names(create_model(ModelConfig("mlp", **MNIST))) == []


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*cnn.*mlp.*resnet"):
        create_model(ModelConfig("vgg", **MNIST))


def test_unknown_model_option_is_an_error():
    with pytest.raises(ConfigError, match="no option width.*hidden"):
        create_model(ModelConfig("mlp", **MNIST, options={"width": 3}))


def test_cnn_refuses_images_too_small_for_two_poolings():
    with pytest.raises(ConfigError, match="at least 4x4.*3x8"):
        create_model(ModelConfig("cnn", (1, 3, 8), 10))
    assert create_model(ModelConfig("cnn", (1, 4, 4), 10)).fc.in_features == 64
