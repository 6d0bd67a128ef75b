"""Benchmarks with typed results: speed and accuracy against the tutorial's own program.

Every measurement runs on the runtime's device and waits for it (`timing.sync`) before each clock
read, so a GPU's figures count finished work, not queued kernels. Each function returns a frozen
dataclass whose derived figures are properties and whose `to_json()` is what `--json` writes;
`cnnlab bench` only renders them.

cnnlab.bench.throughput  run_bench (tutorial loop, cnnlab's loop, the limit, inference), ablation
cnnlab.bench.accuracy    speedrun_bench, accuracy_bench
cnnlab.bench.profile     profile_step
cnnlab.bench.prediction  predict_bench (the predict path and the model alone, PyTorch and ONNX)
cnnlab.bench.tutorial    the tutorial's program as it is written: the baseline
cnnlab.bench.timing      sync, timed, LoopRuns
"""

from cnnlab.bench.accuracy import AccuracyReport, SpeedrunReport, accuracy_bench, speedrun_bench
from cnnlab.bench.profile import ProfileRow, StepProfile, profile_step
from cnnlab.bench.throughput import (
    AblationReport,
    BenchPlan,
    BenchReport,
    InferenceRate,
    ablation_bench,
    conv_limit_gflops,
    forward_flops_per_image,
    inference_throughput,
    run_bench,
)
from cnnlab.bench.timing import LoopRuns, sync, timed

__all__ = [
    "AblationReport",
    "AccuracyReport",
    "BenchPlan",
    "BenchReport",
    "InferenceRate",
    "LoopRuns",
    "ProfileRow",
    "SpeedrunReport",
    "StepProfile",
    "ablation_bench",
    "accuracy_bench",
    "conv_limit_gflops",
    "forward_flops_per_image",
    "inference_throughput",
    "profile_step",
    "run_bench",
    "speedrun_bench",
    "sync",
    "timed",
]
