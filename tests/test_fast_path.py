"""The fast path (bf16 autocast, channels_last, fused optimizer, folded batch norm) computes what
the plain fp32 path computes, within the tolerance of its precision; bf16 only where supported."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cnnlab import runtime as runtime_module
from cnnlab.bench import (
    BenchPlan,
    ablation_bench,
    forward_flops_per_image,
    profile_step,
    run_bench,
)
from cnnlab.bench import timing as bench_timing
from cnnlab.config import TrainConfig, preset_config
from cnnlab.data import get_dataset
from cnnlab.data.sources import load_dataset
from cnnlab.data.splits import make_splits
from cnnlab.errors import ConfigError
from cnnlab.models import ModelConfig, count_parameters, create_model, list_models
from cnnlab.predict import Predictor
from cnnlab.runtime import Runtime, autocast, resolve_precision, resolve_runtime
from cnnlab.train import fit, make_optimizer, train_step

CPU = torch.device("cpu")
BF16 = runtime_module.bf16_supported(CPU)


def gradients(precision: str, channels_last: bool, dtype: torch.dtype = torch.float32):
    """Loss and gradients of one tutorial-CNN batch (the same weights and data every call)."""
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn")).to(dtype)
    x = torch.rand(64, 1, 28, 28).to(dtype)
    y = torch.randint(0, 10, (64,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(CPU, precision):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item(), {n: p.grad.double() for n, p in model.named_parameters()}


# Conv biases right before batch norm have a true gradient of zero: only rounding noise is left.
WEIGHTS = ("conv1.weight", "conv2.weight", "bn1.weight", "bn2.weight", "fc.weight", "fc.bias")


def relative_error(grad: torch.Tensor, reference: torch.Tensor) -> float:
    return float((grad - reference).norm() / reference.norm())


def test_channels_last_gives_the_same_gradients():
    """Both fp32 layouts agree with a float64 reference to fp32 rounding. conv1's weight gradient
    sums 64 x 28 x 28 products; oneDNN's single-thread channels_last kernel sums them in one long
    chain, measured 4.6e-4 off in the largest element, so the bound is on the whole tensor."""
    reference_loss, reference = gradients("fp32", channels_last=False, dtype=torch.float64)
    for channels_last in (False, True):
        loss, grads = gradients("fp32", channels_last=channels_last)
        assert loss == pytest.approx(reference_loss, rel=1e-6)
        for name in WEIGHTS:
            error = relative_error(grads[name], reference[name])
            assert error < 1e-3, (name, channels_last, error)


def logits_and_gradients(pool_before_relu: bool, precision: str, channels_last: bool):
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn"))
    model.pool_before_relu = pool_before_relu
    x = torch.rand(64, 1, 28, 28)
    x[x < 0.5] = 0  # blank pixels, as in MNIST: windows of equal values, ties for the max
    y = torch.randint(0, 10, (64,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(CPU, precision):
        logits = model(x).float()
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pooling_before_relu_gives_the_same_values_and_gradients_exactly(precision, channels_last):
    """max(relu(a), relu(b)) = relu(max(a, b)), and the gradient reaches the same element."""
    if precision == "bf16" and not BF16:
        pytest.skip("this CPU has no native bf16")
    tutorial_logits, tutorial = logits_and_gradients(False, precision, channels_last)
    fast_logits, fast = logits_and_gradients(True, precision, channels_last)
    assert torch.equal(fast_logits, tutorial_logits)
    for name in tutorial:
        assert torch.equal(fast[name], tutorial[name]), name


def test_training_pools_first_and_a_loaded_model_runs_as_the_tutorial_writes_it():
    from cnnlab.train import build_model

    runtime = resolve_runtime("cpu", "fp32", 1)
    assert build_model(TrainConfig(), runtime).pool_before_relu
    assert not create_model(ModelConfig("cnn")).pool_before_relu  # feature maps, predict, serve


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


# 2 x multiply-adds of conv1 (28*28*32*9), conv2 (14*14*64*32*9) and fc (3136*10)
TUTORIAL_CNN_FLOPS = 2 * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 10)


def test_forward_flops_match_the_tutorial_layers():
    flops = forward_flops_per_image(create_model(ModelConfig("cnn")), (1, 28, 28))
    assert flops == TUTORIAL_CNN_FLOPS
    assert round(flops / 1e6, 2) == 7.74


class FakeClock:
    """A clock that moves on by `tick` seconds at every read, recording each read in `events`."""

    def __init__(self, tick: float, events: list | None = None):
        self.tick, self.now, self.events = tick, 0.0, events if events is not None else []

    def __call__(self) -> float:
        self.events.append("clock")
        self.now += self.tick
        return self.now


TINY_PLAN = BenchPlan(
    steps=3,
    repeats=2,
    limit_batch=4,
    limit_repeats=2,
    limit_iters=2,
    inference_batches=(1, 8),
    inference_repeats=2,
)


def test_bench_counts_images_and_seconds(fake_root):
    """With a clock that moves 0.5 s per read, every timed stretch lasts 0.5 s, so each figure
    is the work done in it, counted by hand."""
    runtime = Runtime(CPU, "fp32", True, torch.get_num_threads())
    report = run_bench(
        fake_root,
        runtime,
        TINY_PLAN,
        config=TrainConfig(batch_size=32),
        log=lambda _: None,
        clock=FakeClock(0.5),
    )
    assert report.tutorial.runs == (3 * 64 / 0.5,) * 2  # 3 steps of the tutorial's batch 64
    assert report.cnnlab.runs == (3 * 32 / 0.5,) * 2  # 3 steps of batch 32
    assert report.speedup == 0.5
    assert report.forward_flops_per_image == TUTORIAL_CNN_FLOPS
    assert report.cnnlab_gflops == pytest.approx(192 * 3 * TUTORIAL_CNN_FLOPS / 1e9)
    # conv2 at batch 4: 64 maps of 14x14, each value 32 x 3 x 3 multiply-adds; 2 per timed stretch
    conv2_flops = 2 * 4 * 64 * 14 * 14 * 32 * 3 * 3
    assert report.limit_gflops["fp32"] == pytest.approx(2 * conv2_flops / 0.5 / 1e9)
    assert report.limit == report.limit_gflops["fp32"]
    # (b)'s own epoch of MNIST's 60,000 images takes limit time / fraction of the limit
    epoch_at_our_speed = 60_000 / 192
    assert report.limit_epoch_seconds / report.fraction_of_limit == pytest.approx(
        epoch_at_our_speed
    )
    # 200 images per repeat: 200 calls at batch 1, 25 calls at batch 8
    assert [(r.batch, r.images_per_second) for r in report.inference] == [(1, 400), (8, 400)]
    assert report.inference_folded
    figures = json.loads(json.dumps(report.to_json()))
    assert figures["inference_images_per_second"] == {"batch_1": 400, "batch_8": 400}
    assert figures["tutorial_runs"] == [384, 384] and figures["repeats"] == 2


def test_bench_waits_for_the_device_before_every_clock_read(fake_root, monkeypatch):
    events: list = []
    monkeypatch.setattr(bench_timing, "sync", lambda device: events.append(("sync", device)))
    runtime = resolve_runtime("cpu", "fp32")
    run_bench(fake_root, runtime, TINY_PLAN, log=lambda _: None, clock=FakeClock(0.5, events))
    assert events[1::2] == ["clock"] * (len(events) // 2)
    assert events[0::2] == [("sync", runtime.device)] * (len(events) // 2)
    # 2 reads per timed stretch: (a) twice, (b) three times with its warm-up, 2 x 2 limit
    # repeats, 2 x (1 + 2) inference repeats with their warm-up
    assert len(events) == 4 * (2 + 3 + 4 + 6)


def test_sync_waits_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    bench_timing.sync(CPU)
    assert calls == []
    bench_timing.sync(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


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


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_train_step_loss_is_fp32_cross_entropy_of_its_bf16_logits(smoothing):
    """Under bf16 autocast `train_step` returns the fp32 cross-entropy of the logits it
    computed, the correct count of those logits, and takes one optimizer step."""
    torch.manual_seed(0)
    model = create_model(ModelConfig("cnn"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    before = model.fc.weight.detach().clone()
    loss, correct = train_step(model, optimizer, x, y, "bf16", label_smoothing=smoothing)
    (logits,) = seen
    assert logits.dtype == torch.bfloat16  # autocast was on
    assert loss.dtype == torch.float32 and not loss.requires_grad
    expected = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert int(correct) == int((logits.argmax(dim=1) == y).sum())
    assert not torch.equal(model.fc.weight, before)


def test_profile_names_the_step_operators():
    profile = profile_step(resolve_runtime("cpu", "fp32"), TrainConfig(batch_size=8), steps=3)
    names = {row.operator for row in profile.rows}
    assert {"aten::native_batch_norm", "aten::max_pool2d_with_indices"} <= names
    assert any("convolution" in name for name in names)
    assert sum(row.share for row in profile.rows) == pytest.approx(1.0)
    shares = [row.ms_per_step for row in profile.rows]
    assert shares == sorted(shares, reverse=True)
    top = profile.top(5)
    assert top[:5] == profile.rows[:5] and top[5].operator == "(all others)"
    assert sum(row.ms_per_step for row in top) == pytest.approx(sum(shares))


def test_ablation_measures_each_step(fake_root):
    """Every loop trains 2 steps of batch 64 per 0.5 s stretch of the fake clock."""
    report = ablation_bench(
        fake_root,
        resolve_runtime("cpu"),
        steps=2,
        repeats=1,
        log=lambda _: None,
        clock=FakeClock(0.5),
    )
    names = [loop.name for loop in report.loops]
    assert names[:3] == ["tutorial loop", "uint8 in memory, fp32, NCHW", "+ channels_last"]
    assert all(loop.runs == (2 * 64 / 0.5,) for loop in report.loops)
    assert all(report.speedup(loop) == 1.0 for loop in report.loops)
