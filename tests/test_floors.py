"""The floors under a training step: bytes per layer from the tutorial CNN's shapes, and the
arithmetic that turns bytes and FLOPs into milliseconds."""

from __future__ import annotations

import pytest

from cnnlab.bench.floors import Floors, LayerBytes, layer_bytes
from cnnlab.models import ModelConfig, create_model


def test_bytes_follow_the_tutorials_shapes():
    b, f = 64, 4  # batch, bytes per fp32 value
    image, a1, p1, a2, p2 = 28 * 28, 32 * 28 * 28, 32 * 14 * 14, 64 * 14 * 14, 64 * 7 * 7
    w1, w2, wf = (32 * 9 + 32) * f, (64 * 32 * 9 + 64) * f, (3136 * 10 + 10) * f
    layers = {(x.name, x.kind): x for x in layer_bytes(create_model(ModelConfig("cnn")), b, f)}
    conv1 = layers["conv1", "Conv2d"]
    assert conv1.forward == b * image * f + w1 + b * a1 * f
    assert conv1.backward == b * a1 * f + b * image * f + w1  # no input gradient for the image
    assert conv1.flops == 2 * 2 * (32 * 9) * (28 * 28) * b  # forward and weight gradient only
    conv2 = layers["conv2", "Conv2d"]
    assert conv2.backward == 2 * (b * a2 * f + b * p1 * f + w2)
    bn2 = layers["bn2", "BatchNorm2d"]
    assert bn2.forward == 3 * b * a2 * f + 128 * f
    assert bn2.backward == 5 * b * a2 * f + 128 * f
    fc = layers["fc", "Linear"]
    assert fc.forward == b * p2 * f + wf + b * 10 * f
    assert layers["optimizer", "Adam"].backward == 7 * 50_378 * f
    assert conv2.flops == 3 * 2 * (64 * 32 * 9) * (14 * 14) * b  # forward, input and weight grads
    assert fc.flops == 3 * 2 * 3136 * 10 * b and layers["bn1", "BatchNorm2d"].flops == 0
    relus = [x for x in layer_bytes(create_model(ModelConfig("cnn")), b, f) if x.kind == "ReLU"]
    assert [r.forward for r in relus] == [2 * b * p1 * f, 2 * b * p2 * f]  # after pooling


def test_bf16_halves_the_activations_not_the_weights():
    model = create_model(ModelConfig("cnn"))
    fp32 = {x.name: x for x in layer_bytes(model, 8, 4)}
    bf16 = {x.name: x for x in layer_bytes(model, 8, 2)}
    w1 = (32 * 9 + 32) * 4
    assert bf16["conv1"].forward - w1 == (fp32["conv1"].forward - w1) // 2


def test_the_binding_floor_and_the_fraction():
    layers = (LayerBytes("a", "Conv2d", 600_000_000, 400_000_000),)  # 1 GB a step
    floors = Floors(64, "fp32", layers, 2_000_000_000, 100.0, 50.0, 1 << 20, 3200.0, 25.0)
    assert floors.compute_ms == pytest.approx(20.0)  # 2 GFLOP at 100 GFLOP/s
    assert floors.memory_ms == pytest.approx(20.0 * 1.0)  # 1 GB at 50 GB/s
    floors = Floors(64, "fp32", layers, 1_000_000_000, 100.0, 50.0, 1 << 20, 3200.0, 25.0)
    assert floors.binding == "memory" and floors.floor_ms == pytest.approx(20.0)
    assert floors.measured_ms == pytest.approx(20.0)  # 64 images at 3,200 images/s
    assert floors.fraction_of_floor == pytest.approx(1.0)


def test_the_layered_floor_takes_each_layer_at_its_own_limit():
    layers = (
        LayerBytes("conv", "Conv2d", 50_000_000, 50_000_000, 2_000_000_000),  # 20 ms compute
        LayerBytes("bn", "BatchNorm2d", 300_000_000, 200_000_000),  # 10 ms of memory
    )
    floors = Floors(64, "fp32", layers, 2_000_000_000, 100.0, 50.0, 1 << 20, 1600.0, 25.0)
    assert floors.compute_ms == pytest.approx(20.0) and floors.memory_ms == pytest.approx(12.0)
    assert floors.floor_ms == pytest.approx(20.0)  # the binding one alone
    assert floors.layered_ms == pytest.approx(20.0 + 10.0)  # conv's 2 ms of memory hide
    assert floors.fraction_of_layered_floor == pytest.approx(30.0 / 40.0)  # a 40 ms step
    assert floors.memory_from_dram_ms == pytest.approx(600_000_000 / 25e9 * 1e3)
    assert set(floors.to_json()) >= {"layered_ms", "memory_from_dram_ms"}
