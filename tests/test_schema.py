"""config.json and checkpoint metadata against one schema: any edit gives CheckpointError or a run
that works, never another exception.

One run is trained per module; every example rewrites a copy's config.json or checkpoint
metadata with random JSON at a random place (hypothesis), then loads it the ways commands do
(`load_run`, `load_training_state`, and, when that succeeds, the resume's model and optimizer).
Named examples pin the cases a user met: 1e400 classes, epochs_done -1, deep nesting, tensors of
another dtype, tampered optimizer settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, load_training_state
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.errors import CheckpointError
from cnnlab.files import load_safetensors, save_safetensors
from cnnlab.runfiles import load_run
from cnnlab.runtime import resolve_runtime
from cnnlab.train import start_training
from tests.conftest import one_error_line

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def paths_in(value, prefix=()) -> list[tuple]:
    """Every place in a JSON tree: each key or index, and a new key beside each object's keys."""
    found = []
    if isinstance(value, dict):
        found.append((*prefix, "unexpected"))
        for key, child in value.items():
            found.append((*prefix, key))
            found += paths_in(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found += paths_in(child, (*prefix, index))
    return found


def replaced(tree, path: tuple, value):
    tree = json.loads(json.dumps(tree))
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=70)
    | st.integers()
    | st.sampled_from([2**32, 2**63, 10**30, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
) | st.just(nested(200))


def only_checkpoint_errors(action) -> bool:
    """True if `action` succeeded, False if it raised CheckpointError; anything else fails."""
    try:
        action()
    except CheckpointError as err:
        assert "\n" not in str(err)
        return False
    return True


# --- config.json --------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_any_edit_of_config_json_is_a_checkpoint_error_or_loads(trained, tmp_path, data):
    _, source = trained
    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(source, run)
    original = json.loads((source / CONFIG_FILE).read_text())
    path = data.draw(st.sampled_from(paths_in(original)), label="path")
    value = data.draw(JSON_VALUES, label="value")
    (run / CONFIG_FILE).write_text(json.dumps(replaced(original, path, value)))
    only_checkpoint_errors(lambda: load_run(run))
    only_checkpoint_errors(lambda: load_training_state(run))


CONFIG_EDITS = {
    "num_classes_1e400": ('"num_classes": 10', '"num_classes": 1e400'),
    "num_classes_huge_int": ('"num_classes": 10', '"num_classes": ' + "9" * 5000),
    "input_shape_text": ('"input_shape": [', '"input_shape": ["1", '),
    "epochs_infinite": ('"epochs": 1,', '"epochs": Infinity,'),
    "hidden_1e9": ('"hidden": 8', '"hidden": 1000000000'),
    "seed_negative": ('"seed": 0,', '"seed": -1,'),
    "threads_zero": ('"threads": ', '"threads": 0, "x": '),
    "precision_unknown": ('"precision": "', '"precision": "fp8", "x": "'),
    "world_size_zero": ('"world_size": 1', '"world_size": 0'),
    "world_size_text": ('"world_size": 1', '"world_size": "2"'),
    "run_id_number": ('"world_size": 1', '"world_size": 1, "run_id": 7'),
    "sync_bn_text": ('"sync_bn": false', '"sync_bn": "yes"'),
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_out_of_range_config_values_are_one_line(run_copy, trained, capsys, case):
    old, new = CONFIG_EDITS[case]
    text = (run_copy / CONFIG_FILE).read_text()
    assert old in text
    (run_copy / CONFIG_FILE).write_text(text.replace(old, new, 1))
    with pytest.raises(CheckpointError, match=str(run_copy / CONFIG_FILE)):
        load_run(run_copy)
    capsys.readouterr()
    assert main(["eval", str(run_copy), "--data-dir", str(trained[0])]) == 1
    assert str(run_copy / CONFIG_FILE) in one_error_line(capsys)


def test_deeply_nested_config_is_refused_without_recursing(run_copy):
    (run_copy / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_run(run_copy)
    config = {"model": nested(40)}
    (run_copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="nested more than 32 levels"):
        load_run(run_copy)


def test_model_section_that_disagrees_with_the_recipe_is_refused(run_copy):
    """A silent wrong answer otherwise: the weights would load into the other model."""
    config = json.loads((run_copy / CONFIG_FILE).read_text())
    config["train"]["model_options"] = {"hidden": 16}
    (run_copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the model the 'train' section"):
        load_run(run_copy)


def test_normalization_that_contradicts_the_recipe_is_refused(run_copy):
    config = json.loads((run_copy / CONFIG_FILE).read_text())
    config["normalization"] = {"scale": "x/255", "mean": 0.5, "std": 0.25}
    (run_copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="normalization is set but the recipe's normalize"):
        load_run(run_copy)


# --- checkpoint metadata and tensors ------------------------------------------------------------


def resumable(run: Path) -> None:
    """Load the checkpoint and build the resumed model and optimizer, as `fit` does."""
    state = load_training_state(run)
    config = TrainConfig.from_json(json.loads((run / CONFIG_FILE).read_text())["train"])
    start_training(config, resolve_runtime("cpu", "fp32", 1), state)


@PROPERTY
@given(data=st.data())
def test_any_edit_of_checkpoint_metadata_is_a_checkpoint_error_or_resumes(trained, tmp_path, data):
    _, source = trained
    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(source, run)
    tensors, meta = load_safetensors(source / CHECKPOINT_FILE)
    path = data.draw(st.sampled_from(paths_in(meta)), label="path")
    value = data.draw(JSON_VALUES, label="value")
    save_safetensors(run / CHECKPOINT_FILE, tensors, replaced(meta, path, value))
    threads = torch.get_num_threads()
    try:
        only_checkpoint_errors(lambda: resumable(run))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("entry", [{}, {"step": 1.0}])
def test_optimizer_scalars_for_no_parameter_are_refused(run_copy, entry):
    tensors, meta = load_safetensors(run_copy / CHECKPOINT_FILE)
    meta["optimizer_scalars"] = {"unexpected": entry}
    save_safetensors(run_copy / CHECKPOINT_FILE, tensors, meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_training_state(run_copy)


TENSOR_EDITS = st.sampled_from(["float64", "int64", "bfloat16", "uint8", "flatten", "scalar"])


@PROPERTY
@given(data=st.data())
def test_checkpoint_tensors_of_another_dtype_or_shape_are_refused(trained, tmp_path, data):
    _, source = trained
    run = tmp_path / "run"
    if not run.exists():
        shutil.copytree(source, run)
    tensors, meta = load_safetensors(source / CHECKPOINT_FILE)
    key = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
    edit = data.draw(TENSOR_EDITS, label="edit")
    value = tensors[key]
    if edit == "flatten":
        changed = value.reshape(-1, 1)
    elif edit == "scalar":
        changed = value.reshape(-1)[:1].reshape(()) if value.numel() else torch.zeros(())
    else:
        changed = value.to(getattr(torch, edit))
    if changed.dtype == value.dtype and changed.shape == value.shape:
        return  # the edit changed nothing
    save_safetensors(run / CHECKPOINT_FILE, tensors | {key: changed}, meta)
    assert not only_checkpoint_errors(lambda: resumable(run)), (key, edit)


METADATA_EDITS = {
    "epochs_done_negative": (lambda m: m.__setitem__("epochs_done", -1), "epochs_done"),
    "epochs_done_beyond_recipe": (lambda m: m.__setitem__("epochs_done", 7), "epochs_done"),
    "betas_changed": (
        lambda m: m["optimizer_param_groups"][0].__setitem__("betas", [0.5, 0.5]),
        "optimizer setting betas",
    ),
    "lr_text": (lambda m: m["optimizer_param_groups"][0].__setitem__("lr", "fast"), "lr"),
    "metric_epoch_wrong": (lambda m: m["metrics"][0].__setitem__("epoch", 3), "metric record 1"),
    "metric_loss_text": (lambda m: m["metrics"][0].__setitem__("loss", "low"), "metric loss"),
}


@pytest.mark.parametrize("case", sorted(METADATA_EDITS))
def test_tampered_checkpoint_metadata_is_refused_before_resuming(run_copy, trained, capsys, case):
    edit, needle = METADATA_EDITS[case]
    tensors, meta = load_safetensors(run_copy / CHECKPOINT_FILE)
    edit(meta)
    save_safetensors(run_copy / CHECKPOINT_FILE, tensors, meta)
    with pytest.raises(CheckpointError, match=needle):
        load_training_state(run_copy)
    argv = ["train", "--resume", str(run_copy), "--epochs", "3", "--data-dir", str(trained[0])]
    capsys.readouterr()
    assert main(argv) == 1
    assert needle in one_error_line(capsys)


def test_weights_of_another_dtype_or_not_finite_are_refused(run_copy):
    tensors, meta = load_safetensors(run_copy / WEIGHTS_FILE)
    save_safetensors(run_copy / WEIGHTS_FILE, tensors | {"fc1.bias": tensors["fc1.bias"].double()})
    with pytest.raises(CheckpointError, match="fc1.bias is stored as F64, the model needs F32"):
        load_run(run_copy)
    bad = tensors["fc1.bias"].clone()
    bad[0] = float("nan")
    save_safetensors(run_copy / WEIGHTS_FILE, tensors | {"fc1.bias": bad})
    with pytest.raises(CheckpointError, match="fc1.bias holds NaN or infinite values"):
        load_run(run_copy)


def test_untampered_run_loads_and_resumes(run_copy):
    """The control: the property tests' starting point is valid."""
    load_run(run_copy)
    threads = torch.get_num_threads()
    resumable(run_copy)
    torch.set_num_threads(threads)


def test_configs_of_data_parallel_runs_and_of_runs_before_them_load(run_copy, trained, capsys):
    """A torchrun job's config.json (sync_bn, world_size, the job's run_id) loads; one written
    before those fields existed loads and resumes too."""
    config = json.loads((run_copy / CONFIG_FILE).read_text())
    job = json.loads(json.dumps(config))
    job["train"]["sync_bn"] = True
    job["runtime"] |= {"world_size": 2, "run_id": "job-7"}
    (run_copy / CONFIG_FILE).write_text(json.dumps(job))
    load_run(run_copy)
    del config["train"]["sync_bn"], config["runtime"]["world_size"]
    (run_copy / CONFIG_FILE).write_text(json.dumps(config))
    load_run(run_copy)
    argv = ["train", "--resume", str(run_copy), "--epochs", "2", "--data-dir", str(trained[0])]
    threads = torch.get_num_threads()
    assert main([*argv, "--quiet"]) == 0
    torch.set_num_threads(threads)
    assert "process(es)" not in capsys.readouterr().out  # no note: one process then and now
    resumed = json.loads((run_copy / CONFIG_FILE).read_text())
    assert resumed["train"]["sync_bn"] is False and resumed["runtime"]["world_size"] == 1
