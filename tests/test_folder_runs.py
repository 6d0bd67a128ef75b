"""`cnnlab train --dataset folder:PATH` end to end, on small folders of PNG files written here.

Each test runs the CLI in-process and checks the files a run leaves (config.json, splits.json,
skipped.txt), what eval prints, the decoded-image cache and the memory-mapped path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnlab.checkpoint import METRICS_FILE
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.run import load_splits
from tests.conftest import one_error_line, strip_timing

CLASSES = ("apple", "banana", "cherry")
FAST = ["--epochs", "1", "--batch-size", "16", "--quiet", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("no_run_figures")


def write_class_folder(root: Path, counts: dict[str, int], size=(12, 12), colour=False, seed=0):
    """root/<class>/<i>.png: each class a bright band at its own rows over noise."""
    rng = np.random.default_rng(seed)
    for label, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 80, size=(*size, 3) if colour else size, dtype=np.uint8)
            pixels[3 * label : 3 * label + 3] = 255
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def train(folder: Path, out: Path, *flags: str) -> int:
    return main(["train", "--dataset", f"folder:{folder}", *FAST, "--out", str(out), *flags])


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_class_folders_train_record_the_split_and_eval_names_the_classes(tmp_path, capsys):
    folder = write_class_folder(tmp_path / "fruit", {c: 20 for c in CLASSES})
    run = tmp_path / "run"
    assert train(folder, run) == 0
    out = capsys.readouterr().out
    assert f"Folder {folder}: 3 classes (apple, banana, cherry), 1x12x12, train 54, test 6" in out
    recorded = config(run)
    dataset = recorded["dataset"]
    assert dataset["classes"] == list(CLASSES) and dataset["shape"] == [1, 12, 12]
    assert dataset["path"] == str(folder) and dataset["held_out"] == ["test"]
    assert recorded["model"]["input_shape"] == [1, 12, 12] and recorded["model"]["num_classes"] == 3
    assert recorded["train"]["dataset"] == f"folder:{folder}"
    assignment = json.loads((run / "splits.json").read_text())
    assert sorted(assignment["train"] + assignment["test"]) == files_under(folder)
    assert [f.split("/")[0] for f in assignment["test"]] == ["apple"] * 2 + ["banana"] * 2 + [
        "cherry"
    ] * 2  # 10% of each class of 20
    assert (run / "skipped.txt").read_text() == ""

    assert main(["eval", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "of 6 images" in shown
    for name in CLASSES:
        assert f"\n{name}" in shown  # a per-class row and a confusion-matrix row per class
    assert main(["eval", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == list(CLASSES) and report["images"] == 6


def test_train_val_test_folders_are_used_as_they_are(tmp_path, capsys):
    root = tmp_path / "set"
    for split, n in (("train", 12), ("val", 3), ("test", 4)):
        write_class_folder(root / split, {"cat": n, "dog": n}, seed=n)
    run = tmp_path / "run"
    assert train(root, run) == 0
    assignment = json.loads((run / "splits.json").read_text())
    for split in ("train", "val", "test"):
        assert assignment[split] == [f"{split}/{f}" for f in files_under(root / split)]
    metrics = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert "val_accuracy" in metrics[0]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert "of 6 images" in capsys.readouterr().out


def test_val_size_holds_out_that_many_training_files(tmp_path):
    folder = write_class_folder(tmp_path / "f", {"a": 30, "b": 10})
    run = tmp_path / "run"
    assert train(folder, run, "--val-size", "8") == 0
    assignment = json.loads((run / "splits.json").read_text())
    assert len(assignment["val"]) == 8
    assert [f[0] for f in assignment["val"]].count("a") == 6  # in proportion: 30:10 of 8
    assert set(assignment["val"]).isdisjoint(assignment["train"] + assignment["test"])


def test_second_run_is_a_cache_hit_and_a_changed_file_a_miss(tmp_path, capsys):
    folder = write_class_folder(tmp_path / "f", {"a": 6, "b": 6})
    assert train(folder, tmp_path / "r1") == 0
    assert "Decoded 12 images" in capsys.readouterr().out
    assert train(folder, tmp_path / "r2") == 0
    assert "Decoded images: cache hit" in capsys.readouterr().out
    changed = folder / "a" / "000.png"
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(changed)
    info = changed.stat()
    os.utime(changed, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert train(folder, tmp_path / "r3") == 0
    out = capsys.readouterr().out
    assert "Decoded 12 images" in out and "cache hit" not in out


def test_memory_mapped_run_trains_exactly_like_the_resident_one(tmp_path, capsys):
    # 96 colour images of 64x64 are 1.1 MiB decoded: over a budget of 1 MiB
    folder = write_class_folder(tmp_path / "f", {"a": 32, "b": 32, "c": 32}, (64, 64), True)
    flags = ["--epochs", "2", "--val-size", "9", "--normalize"]
    assert train(folder, tmp_path / "resident", *flags) == 0
    assert "Memory-mapped" not in capsys.readouterr().out
    assert train(folder, tmp_path / "mapped", *flags, "--memory-budget", "1") == 0
    assert (
        "Memory-mapped: the decoded images exceed --memory-budget 1 MB" in capsys.readouterr().out
    )
    runs = [tmp_path / "resident", tmp_path / "mapped"]
    metrics = [
        strip_timing([json.loads(x) for x in (r / METRICS_FILE).read_text().splitlines()])
        for r in runs
    ]
    assert metrics[0] == metrics[1] and "val_accuracy" in metrics[0][-1]
    weights = [load_file(r / "model.safetensors") for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert main(["eval", str(tmp_path / "mapped"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == metrics[1][-1]["test_accuracy"]


def test_unreadable_files_are_skipped_and_listed_or_with_strict_an_error(tmp_path, capsys):
    folder = write_class_folder(tmp_path / "f", {"a": 6, "b": 6})
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "b" / "Thumbs.db").write_bytes(b"\0")
    run = tmp_path / "run"
    assert train(folder, run) == 0
    out = capsys.readouterr().out
    assert f"Skipped 1 image file(s) that cannot be read; listed in {run / 'skipped.txt'}" in out
    assert (run / "skipped.txt").read_text().startswith("a/broken.png\t")
    assert train(folder, tmp_path / "strict", "--strict") == 1
    line = one_error_line(capsys)
    assert "1 image file(s) cannot be used (strict): a/broken.png" in line
    assert not (tmp_path / "strict").exists()


def bad_folders(tmp_path: Path) -> list[tuple[str, Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    single = write_class_folder(tmp_path / "single", {"only": 4})
    hollow = write_class_folder(tmp_path / "hollow", {"a": 4, "b": 4})
    (hollow / "c").mkdir()
    (hollow / "c" / "notes.txt").write_text("no images here")
    differ = tmp_path / "differ"
    write_class_folder(differ / "train", {"a": 4, "b": 4})
    write_class_folder(differ / "test", {"a": 2, "c": 2})
    return [
        ("missing", tmp_path / "nowhere", "nowhere: folder not found"),
        ("empty", empty, "empty: no class folders found; expected PATH/<class>/<image>"),
        ("single", single, "only one class folder ('only'); a classifier needs at least two"),
        ("class without images", hollow, "class folder c holds no images"),
        ("test classes differ", differ, "class folders differ from the training set's"),
    ]


def test_every_bad_folder_is_one_line_before_training(tmp_path, capsys):
    for what, folder, message in bad_folders(tmp_path):
        out = tmp_path / f"run-{what}"
        assert train(folder, out) == 1, what
        line = one_error_line(capsys)
        assert message in line, (what, line)
        assert not out.exists(), what


def test_eval_refuses_a_folder_that_changed_since_training(tmp_path, capsys):
    folder = write_class_folder(tmp_path / "f", {"a": 10, "b": 10})
    run = tmp_path / "run"
    assert train(folder, run) == 0
    write_class_folder(folder, {"a": 11, "b": 10}, seed=5)  # one more apple: a new split
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    assert f"{folder} has changed since the run was trained" in one_error_line(capsys)


def test_subsets_spread_over_the_classes(tmp_path):
    folder = write_class_folder(tmp_path / "f", {"a": 10, "b": 10, "c": 10})
    recipe = TrainConfig(dataset=f"folder:{folder}", train_subset=9, test_subset=3)
    splits = load_splits(recipe, tmp_path / "unused-data-root")
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test.labels.tolist() == [0, 1, 2]
    assert splits.spec.classes == ("a", "b", "c") and splits.spec.shape == (1, 12, 12)


def test_folder_run_reruns_from_its_config_and_resumes(tmp_path, capsys):
    folder = write_class_folder(tmp_path / "f", {"a": 8, "b": 8}, (16, 16))
    first = tmp_path / "first"
    assert train(folder, first, "--image-size", "8", "--fit", "pad", "--augment", "natural") == 0
    recorded = config(first)
    assert recorded["train"]["image_size"] == 8 and recorded["train"]["fit"] == "pad"
    assert recorded["train"]["augment"] == "natural" and recorded["dataset"]["shape"] == [1, 8, 8]
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again), *FAST]) == 0
    assert config(again)["train"] == recorded["train"]
    assert json.loads((again / "splits.json").read_text()) == json.loads(
        (first / "splits.json").read_text()
    )
    assert main(["train", "--resume", str(first), "--epochs", "2", "--quiet"]) == 0
    assert "Resuming after epoch 1 of 2" in capsys.readouterr().out


def test_relative_folder_path_is_recorded_absolute(tmp_path, monkeypatch):
    write_class_folder(tmp_path / "f", {"a": 4, "b": 4})
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "folder:f", *FAST, "--out", "run"]) == 0
    assert config(tmp_path / "run")["train"]["dataset"] == f"folder:{tmp_path / 'f'}"
