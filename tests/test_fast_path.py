"""The fast path (bf16 autocast, channels_last, fused optimizer, folded batch norm) computes what
the plain fp32 path computes, within the tolerance of its precision; bf16 only where supported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab import runtime as runtime_module
from cnnlab.bench import ablation_bench, forward_flops_per_image, profile_step, run_bench
from cnnlab.config import TrainConfig, preset_config
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import make_splits
from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, count_parameters, create_model, list_models
from cnnlab.predict import Predictor
from cnnlab.runtime import Runtime, autocast, resolve_precision, resolve_runtime
from cnnlab.train import fit, make_optimizer

CPU = torch.device("cpu")
BF16 = runtime_module.bf16_supported(CPU)


def gradients(precision: str, channels_last: bool):
    """Loss and gradients of one tutorial-CNN batch (the same weights and data every call)."""
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn"))
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(CPU, precision):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}


# Conv biases right before batch norm have a true gradient of zero: only rounding noise is left.
WEIGHTS = ("conv1.weight", "conv2.weight", "bn1.weight", "bn2.weight", "fc.weight", "fc.bias")


def test_channels_last_gives_the_same_gradients():
    plain_loss, plain = gradients("fp32", channels_last=False)
    fast_loss, fast = gradients("fp32", channels_last=True)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-6)
    for name in WEIGHTS:
        assert torch.allclose(fast[name], plain[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.skipif(not BF16, reason="this CPU has no native bf16")
def test_bf16_gradients_point_the_same_way():
    plain_loss, plain = gradients("fp32", channels_last=False)
    fast_loss, fast = gradients("bf16", channels_last=True)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-2)
    for name in WEIGHTS:
        cosine = F.cosine_similarity(fast[name].flatten(), plain[name].flatten(), dim=0)
        assert cosine > 0.98, (name, float(cosine))  # measured 0.989 for conv1.weight


REFERENCE_OPTIMIZERS = {  # PyTorch's plain per-parameter loops
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01, foreach=False),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01, foreach=False),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.01, foreach=False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_OPTIMIZERS))
def test_fused_optimizers_match_the_reference_loop(name):
    torch.manual_seed(0)
    params = [torch.randn(32, 3, 3), torch.randn(10)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(5)]
    config = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.01, momentum=0.9)
    results = []
    for make in (lambda ps: make_optimizer(config, ps), REFERENCE_OPTIMIZERS[name]):
        copies = [p.clone().requires_grad_() for p in params]
        optimizer = make(copies)
        for step in grads:
            for p, g in zip(copies, step):
                p.grad = g.clone()
            optimizer.step()
        results.append((optimizer, copies))
    (fused, ours), (_, reference) = results
    assert fused.defaults["fused"] is True
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-6)


def test_fast_and_plain_training_reach_the_same_place(fake_root):
    train, test = load_dataset(get_dataset("mnist"), fake_root)
    splits = make_splits(train, test)
    config = TrainConfig(epochs=2)
    plain = fit(
        config, splits, Runtime(CPU, "fp32", False, torch.get_num_threads()), log=lambda _: None
    )
    fast = fit(config, splits, resolve_runtime("cpu", "auto"), log=lambda _: None)
    for a, b in zip(plain.metrics, fast.metrics):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.1, abs=0.02)
    assert abs(fast.test_accuracy - plain.test_accuracy) <= 0.02


def test_auto_precision_uses_bf16_only_where_supported(monkeypatch):
    monkeypatch.setattr(runtime_module, "bf16_supported", lambda device: False)
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ConfigError, match="no native bf16"):
        resolve_precision("bf16", CPU)
    monkeypatch.setattr(runtime_module, "bf16_supported", lambda device: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.parametrize("name", list_models())
def test_folded_predictor_matches_the_model(name):
    torch.manual_seed(1)
    model = create_model(ModelConfig(name))
    with torch.no_grad():  # non-trivial running statistics, so folding has work to do
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    model.train()
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    logits = Predictor(model).logits(images)
    assert model.training  # left as it was
    expected = model.eval()(images.float() / 255)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_forward_flops_match_the_tutorial_layers():
    """2 x multiply-adds of conv1 (28*28*32*9), conv2 (14*14*64*32*9) and fc (3136*10)."""
    flops = forward_flops_per_image(create_model(ModelConfig("cnn")), (1, 28, 28))
    assert flops == 2 * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 10)
    assert round(flops / 1e6, 2) == 7.74


def test_bench_reports_every_figure(fake_root):
    report = run_bench(fake_root, resolve_runtime("cpu"), steps=3, repeats=1, log=lambda _: None)
    assert report["speedup"] == pytest.approx(
        report["cnnlab_images_per_second"] / report["tutorial_images_per_second"]
    )
    assert report["limit_gflops"]["bf16"] > 0 and report["limit_gflops"]["fp32"] > 0
    assert report["train_flops_per_image"] == 3 * report["forward_flops_per_image"]
    assert set(report["inference_images_per_second"]) == {"batch_1", "batch_1000"}


def test_speedrun_preset_and_model():
    config = preset_config("speedrun")
    assert (config.model, config.epochs, config.schedule) == ("speedrun", 1, "onecycle")
    model = create_model(ModelConfig("speedrun"))
    convs = (16 * 1 * 9 + 16) + (32 * 16 * 9 + 32) + (64 * 32 * 9 + 64)
    expected = convs + 2 * (16 + 32 + 64) + (64 * 3 * 3 * 10 + 10)  # + batch norms + fc
    assert count_parameters(model) == expected
    with pytest.raises(ConfigError, match="unknown preset 'fast'; choose from tutorial, speedrun"):
        preset_config("fast")


def test_speedrun_on_real_mnist(data_root):
    """One epoch of the preset, seed 0. Measured 0.992 (BENCHMARKS.md: mean over 10 seeds)."""
    config = preset_config("speedrun")
    from cnnlab.run import load_splits

    result = fit(config, load_splits(config, data_root), resolve_runtime("cpu"), log=lambda _: None)
    assert result.test_accuracy >= 0.988


def test_loss_scale_is_unchanged_by_autocast():
    """The loss is computed in fp32 whatever the precision of the logits."""
    logits = torch.randn(8, 10).bfloat16()
    y = torch.randint(0, 10, (8,))
    assert F.cross_entropy(logits.float(), y).dtype == torch.float32


def test_profile_names_the_step_operators():
    rows = profile_step(resolve_runtime("cpu", "fp32"), TrainConfig(batch_size=8), steps=3)
    names = {name for name, _, _ in rows}
    assert {"aten::native_batch_norm", "aten::max_pool2d_with_indices"} <= names
    assert any("convolution" in name for name in names)
    assert sum(share for _, _, share in rows) == pytest.approx(1.0)


def test_ablation_measures_each_step(fake_root):
    report = ablation_bench(
        fake_root, resolve_runtime("cpu"), steps=2, repeats=1, log=lambda _: None
    )
    names = list(report["images_per_second"])
    assert names[:3] == ["tutorial loop", "uint8 in memory, fp32, NCHW", "+ channels_last"]
    assert report["speedup"]["tutorial loop"] == 1.0
