"""Data-parallel pieces that need no second process: shards, the last-batch rule, torchrun's
environment, thread counts, restarts' run folders, the launcher's command line and messages."""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE
from cnnlab.cli import build_parser, main
from cnnlab.cli.torchrun import failure_message, torchrun_argv
from cnnlab.data.augment import get_augment_preset
from cnnlab.data.loader import DeviceLoader, Shard, shard_range
from cnnlab.data.splits import Split
from cnnlab.distributed import (
    World,
    check_batch_size,
    lost_peer,
    threads_per_process,
    world_from_env,
)
from cnnlab.distributed_run import job_id, restarted_run, world_size_note
from cnnlab.errors import ConfigError
from cnnlab.files import write_json
from cnnlab.train import train_step
from tests.conftest import one_error_line

# --- shards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_cover_the_batch_and_differ_by_at_most_one(world_size):
    for start, size in itertools.product((0, 5, 64), range(0, 30)):
        parts = [shard_range(start, start + size, Shard(r, world_size)) for r in range(world_size)]
        taken = [i for lo, hi in parts for i in range(lo, hi)]
        assert taken == list(range(start, start + size))  # disjoint, in rank order, covering
        sizes = [hi - lo for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the first ranks take the extra images


def numbered_split(n: int) -> Split:
    """Images whose first pixel is their index, so a batch says which images it holds."""
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return Split(images, torch.arange(n))


@pytest.mark.parametrize(("n", "batch", "world_size"), [(17, 6, 2), (17, 6, 3), (23, 8, 4)])
def test_sharded_epochs_put_together_are_the_single_process_epoch(n, batch, world_size):
    split = numbered_split(n)
    for epoch in (0, 1):
        whole = [y.tolist() for _, y in DeviceLoader(split, batch, True, 3).epoch(epoch)]
        loaders = [
            DeviceLoader(split, batch, True, 3, shard=Shard(r, world_size))
            for r in range(world_size)
        ]
        assert all(len(loader) == len(whole) for loader in loaders)
        parts = [list(loader.epoch(epoch)) for loader in loaders]
        for step, expected in enumerate(whole):
            together = [i for rank in range(world_size) for i in parts[rank][step][1].tolist()]
            assert together == expected
            first_pixels = [parts[r][step][0][:, 0, 0, 0] * 255 for r in range(world_size)]
            pixels = [round(float(v)) for values in first_pixels for v in values]
            assert pixels == expected  # the images travel with their labels


def random_split(n: int, mapped_to=None) -> Split:
    """Random 3-channel images with their index as label; memory-mapped under `mapped_to`."""
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    if mapped_to is not None:
        mapped = np.lib.format.open_memmap(mapped_to, "w+", np.uint8, images.shape)
        mapped[:] = images
        mapped.flush()
        return Split(np.load(mapped_to, mmap_mode="r"), torch.arange(n))
    return Split(torch.from_numpy(images), torch.arange(n))


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("augment", ["natural", "digits"])
def test_augmented_shards_put_together_are_the_single_process_batches(tmp_path, mapped, augment):
    """Each process draws the augmentation of the whole batch and keeps its rows' draws, so the
    augmented images of the parts are exactly those of the single-process batch."""
    split = random_split(21, tmp_path / "images.npy" if mapped else None)
    config = get_augment_preset(augment)
    whole = list(DeviceLoader(split, 8, True, 5, augment=config, device="cpu").epoch(1))
    loaders = [
        DeviceLoader(split, 8, True, 5, augment=config, device="cpu", shard=Shard(r, 3))
        for r in range(3)
    ]
    parts = [list(loader.epoch(1)) for loader in loaders]
    for step, (x, y) in enumerate(whole):
        together_x = torch.cat([parts[r][step][0] for r in range(3)])
        together_y = torch.cat([parts[r][step][1] for r in range(3)])
        assert torch.equal(together_y, y)
        assert torch.equal(together_x, x)
    assert not torch.equal(whole[0][0], next(DeviceLoader(split, 8, True, 5).epoch(1))[0])


# --- the last-batch rule ------------------------------------------------------------------------


def test_mean_over_is_none_for_even_batches_and_the_share_for_an_uneven_last_one():
    split = numbered_split(21)  # batches of 8: 8, 8, 5
    loader = DeviceLoader(split, 8, False, shard=Shard(0, 2))
    assert [loader.mean_over(step) for step in range(3)] == [None, None, 2.5]
    assert DeviceLoader(split, 8, False).mean_over(2) is None  # one process: its own mean
    three = DeviceLoader(numbered_split(17), 8, False, shard=Shard(2, 3))  # last batch: 1 image
    assert [len(y) for _, y in three.epoch(0)] == [2, 2, 0]  # 8 = 3 + 3 + 2; 1 = 1 + 0 + 0
    assert three.mean_over(2) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("size", "world_size"), [(8, 2), (5, 2), (7, 3), (2, 3), (1, 4)])
def test_averaged_process_gradients_are_the_whole_batch_mean_gradient(size, world_size):
    """DDP averages the processes' gradients; with each process's loss as `train_step` computes
    it for its part (`mean_over` from the loader), the average is the gradient of the batch's
    mean loss, which PyTorch computes here on the whole batch in one piece (the reference)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(size, 1, 2, 2), torch.randint(0, 3, (size,))
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(x), y).backward()

    total = [torch.zeros_like(p) for p in model.parameters()]
    full = world_size * 4  # a global batch the processes divide; this batch is the last one
    for rank in range(world_size):
        part = copy.deepcopy(model)
        shard = Shard(rank, world_size)
        loader = DeviceLoader(numbered_split(full + size), full, False, shard=shard)
        lo, hi = shard_range(0, size, Shard(rank, world_size))
        before = [p.detach().clone() for p in part.parameters()]
        sgd = torch.optim.SGD(part.parameters(), lr=1.0)  # the step is minus the gradient
        train_step(part, sgd, x[lo:hi], y[lo:hi], "fp32", mean_over=loader.mean_over(1))
        for t, b, p in zip(total, before, part.parameters()):
            t += (b - p.detach()) / world_size
    for t, p in zip(total, reference.parameters()):
        torch.testing.assert_close(t, p.grad, rtol=1e-6, atol=1e-7)


# --- torchrun's environment, threads, batch sizes -------------------------------------------------


def test_world_from_torchruns_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_RUN_ID": "job-7"}
    world = world_from_env(env | {"TORCHELASTIC_MAX_RESTARTS": "2"})
    assert world == World(3, 4, 1, 2, restart=1, run_id="job-7", max_restarts=2)
    assert not world.is_main and world.shard == Shard(3, 4)
    assert world_from_env({}) is None
    with pytest.raises(ConfigError, match="not numbers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="do not describe"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_threads_share_the_cores_without_oversubscribing():
    assert threads_per_process(2, cores=2) == 1
    assert threads_per_process(1, cores=2) == 2
    assert threads_per_process(3, cores=16) == 5
    assert threads_per_process(4, cores=2) == 1


def test_batch_size_is_global_and_must_divide():
    assert check_batch_size(64, 2) == 32
    with pytest.raises(ConfigError, match=r"--batch-size 65 .* among 2 processes.* 64 or 66"):
        check_batch_size(65, 2)
    with pytest.raises(ConfigError, match="such as 3$"):
        check_batch_size(2, 3)


def test_lost_peer_messages_are_one_line():
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[127.0.0.1]:1234: Connection reset by peer. This is typically caused by ...\nmore"
    )
    err = lost_peer(gloo, World(0, 2, 0, 2, restart=0, max_restarts=1))
    assert str(err) == (
        "lost contact with another training process (Read error [127.0.0.1]:1234: Connection "
        "reset by peer). torchrun restarts the job (1 restart(s) left)."
    )
    hung = RuntimeError("[x.cc:81] Timed out waiting 5000ms for recv operation to complete")
    assert str(lost_peer(hung)).startswith("another training process stopped answering")
    assert lost_peer(RuntimeError("shape mismatch")) is None
    assert lost_peer(ValueError("connection")) is None


# --- run folders after a restart ----------------------------------------------------------------


def run_folder(path, run_id: str, checkpoint: bool):
    path.mkdir()
    write_json(path / CONFIG_FILE, {"runtime": {"run_id": run_id, "world_size": 2}})
    if checkpoint:
        (path / CHECKPOINT_FILE).write_bytes(b"x")
    return path


def test_a_restarted_job_resumes_only_the_folder_it_created(tmp_path):
    restarted = World(0, 2, 0, 2, restart=1, run_id="job-a")
    assert restarted_run(restarted, run_folder(tmp_path / "mine", "job-a", True)) is True
    assert restarted_run(restarted, run_folder(tmp_path / "no-epoch", "job-a", False)) is False
    assert restarted_run(restarted, run_folder(tmp_path / "other", "job-b", True)) is False
    assert restarted_run(restarted, tmp_path / "missing") is False
    first_attempt = World(0, 2, 0, 2, restart=0, run_id="job-a")
    assert restarted_run(first_attempt, tmp_path / "mine") is False


def test_a_restarted_job_finishes_what_its_killed_rank_0_left(tmp_path):
    """Killed in the middle of swapping its first epoch in: the restart finishes the swap
    (under the folder's lock) and then recognises its own run."""
    run_dir = tmp_path / "run"
    staging = run_dir / ".cnnlab-new-999999999"
    staging.mkdir(parents=True)
    write_json(staging / CONFIG_FILE, {"runtime": {"run_id": "job-a"}})
    for name in (CHECKPOINT_FILE, "model.safetensors", METRICS_FILE):
        (staging / name).write_bytes(b"x")
    assert restarted_run(World(0, 2, 0, 2, restart=1, run_id="job-a"), run_dir) is True
    assert not staging.exists()
    assert json.loads((run_dir / CONFIG_FILE).read_text())["runtime"]["run_id"] == "job-a"


def test_job_id_is_torchruns_run_id_else_the_agent():
    assert job_id(World(0, 2, 0, 2, run_id="abc")) == "abc"
    fallback = job_id(World(0, 2, 0, 2, run_id="none"), {"MASTER_PORT": "29500"})
    assert fallback.endswith(":29500") and fallback.count(":") == 2


def test_world_size_note():
    assert world_size_note({"runtime": {"world_size": 2}}, 2, False) is None
    note = world_size_note({"runtime": {"world_size": 2}}, 1, True)
    assert "trained on 2 process(es) and resumes on 1" in note and "last bits" in note
    assert "batch norm" in world_size_note({"runtime": {}}, 2, False)  # recorded: 1 process


# --- the launcher -------------------------------------------------------------------------------


def train_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_torchrun_command_line_passes_the_users_flags_through():
    argv = ["--nproc", "2", "--max-restarts", "1", "--epochs", "3", "--lr", "0.01", "--sync-bn"]
    argv += ["--data-dir", "d", "--quiet", "--out", "runs/x", "--hidden", "64"]
    args = train_args(argv)
    command = torchrun_argv(args, args.out)
    assert command[:8] == [
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "cnnlab",
        "train",
    ]
    worker = vars(train_args(command[8:]))  # what each process parses
    expected = {k: v for k, v in vars(args).items() if k not in ("nproc", "max_restarts")}
    assert worker == expected


def fake_failure(exitcode: int, timestamp: int = 0):
    import signal

    name = signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>"
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, signal_name=lambda: name)


def test_failure_message_names_the_process_that_caused_it(tmp_path):
    killed = {0: fake_failure(-15), 1: fake_failure(-9, timestamp=5)}  # 0: stopped by torchrun
    message = failure_message(killed, tmp_path / "run", 2)
    assert message.startswith("training process rank 1 was killed by SIGKILL, so the job stopped.")
    assert message.endswith("No epoch was completed, so nothing was saved.")
    terminated = {0: fake_failure(143), 1: fake_failure(3, timestamp=5)}  # 0: exited on SIGTERM
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_FILE).write_text('{"epoch": 1}\n{"epoch": 2}\n')
    message = failure_message(terminated, tmp_path / "run", 2)
    assert message.startswith("training process rank 1 exited with code 3, so the job stopped.")
    assert message.endswith(
        f"Epoch 2 is saved in {tmp_path / 'run'}. Resume with: cnnlab train "
        f"--resume {tmp_path / 'run'} --nproc 2"
    )
    assert failure_message({0: fake_failure(1), 1: fake_failure(-15)}, tmp_path, 2) is None


def test_launcher_refusals_are_one_line(fake_root, tmp_path, capsys):
    base = ["train", "--data-dir", str(fake_root), "--out", str(tmp_path / "r")]
    assert main([*base, "--nproc", "2", "--batch-size", "63"]) == 1
    assert "--batch-size 63 (the global batch) does not divide among 2" in one_error_line(capsys)
    assert main([*base, "--nproc", "2", "--compile"]) == 1
    assert "--compile is not supported with several processes" in one_error_line(capsys)
    assert main([*base, "--max-restarts", "1"]) == 1
    assert "--max-restarts goes with --nproc" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()
