"""A fresh machine with no network and no data folder: the packaged MNIST, the data a run
remembers, and printed commands that run as printed."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.data import get_dataset, sources
from cnnlab.data.sources import PACKAGED_ROOT, locate_data
from tests.conftest import one_error_line, write_fake_dataset

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture
def fresh_machine(monkeypatch, tmp_path):
    """No CNNLAB_DATA, an empty user cache."""
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def test_the_package_holds_the_four_mnist_files_with_their_official_checksums():
    import hashlib

    from cnnlab.data.identity import OFFICIAL

    for name in FILES:
        raw = gzip.decompress((PACKAGED_ROOT / "MNIST" / "raw" / f"{name}.gz").read_bytes())
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == OFFICIAL["mnist"][name]


def test_search_order(tmp_path, fresh_machine):
    spec = get_dataset("mnist")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert locate_data(spec, None, env).origin == "packaged copy"
    assert locate_data(spec, None, env).root == PACKAGED_ROOT
    write_fake_dataset(tmp_path / "cache" / "cnnlab")
    assert locate_data(spec, None, env).origin == "user cache"
    assert locate_data(spec, None, env | {"CNNLAB_DATA": "/x"}).root == Path("/x")
    assert locate_data(spec, "/y", env | {"CNNLAB_DATA": "/x"}).root == Path("/y")
    # Fashion-MNIST is not packaged: the user cache, where it would be downloaded
    fashion = locate_data(get_dataset("fashion-mnist"), None, {"XDG_CACHE_HOME": "/c"})
    assert fashion.root == Path("/c/cnnlab") and fashion.origin == "user cache"


def test_train_with_nothing_given_uses_the_packaged_copy(
    tmp_path, capsys, fresh_machine, failing_download
):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--train-subset", "256", "--test-subset", "100"]) == 0
    stdout = capsys.readouterr().out
    assert failing_download == []
    assert f"Data: {PACKAGED_ROOT} (packaged copy), the official files, checksums" in stdout
    assert "Test accuracy: " in stdout
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["origin"] == "packaged copy" and data["official"] is True
    assert set(data["files"]) == set(FILES)


def test_an_explicit_data_dir_is_never_skipped_for_the_packaged_copy(
    tmp_path, capsys, fresh_machine, failing_download
):
    missing = tmp_path / "not-here"
    argv = ["train", "--data-dir", str(missing), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main(argv) == 1
    assert f"mnist is not in {missing / 'MNIST' / 'raw'}" in one_error_line(capsys)
    assert failing_download, "the explicit folder was tried (download into it), not skipped"


def damaged_packaged_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the packaged files whose test labels have one label changed (same size)."""
    root = tmp_path / "packaged"
    shutil.copytree(PACKAGED_ROOT, root)
    path = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(sources, "PACKAGED_ROOT", root)
    return path


def test_a_damaged_packaged_file_is_refused(tmp_path, capsys, fresh_machine, monkeypatch):
    path = damaged_packaged_copy(tmp_path, monkeypatch)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 1
    line = one_error_line(capsys)
    assert str(path) in line and "damaged copy" in line
    assert not (tmp_path / "run").exists()


def link_files(root: Path, mapping: dict[str, Path]) -> Path:
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for name, target in mapping.items():
        (folder / name).symlink_to(target)
    return root


def test_swapped_splits_and_another_datasets_files_are_refused(tmp_path, capsys, data_root):
    real = data_root / "MNIST" / "raw"
    swapped = {
        "train-images-idx3-ubyte": real / "t10k-images-idx3-ubyte",
        "train-labels-idx1-ubyte": real / "t10k-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte": real / "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte": real / "train-labels-idx1-ubyte",
    }
    root = link_files(tmp_path / "swapped", swapped)
    assert main(["train", "--data-dir", str(root), "--out", str(tmp_path / "r1")]) == 1
    assert "the file t10k-images-idx3-ubyte (a swapped split?)" in one_error_line(capsys)

    fashion = tmp_path / "fashion"
    (fashion / "FashionMNIST").mkdir(parents=True)
    (fashion / "FashionMNIST" / "raw").symlink_to(real)
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fashion)]
    assert main([*argv, "--out", str(tmp_path / "r2")]) == 1
    assert "this is mnist's train-images-idx3-ubyte" in one_error_line(capsys)


def test_a_custom_copy_is_accepted_and_said_so(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--threads", "1", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["official"] is False
    assert config["data"]["origin"] == "--data-dir"


def test_resume_and_eval_refuse_other_data_than_the_run_was_trained_with(
    fake_root, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_root), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--threads", "1", "--quiet"]) == 0
    other = write_fake_dataset(tmp_path / "other", seed=5)
    capsys.readouterr()
    assert main(["eval", str(out), "--data-dir", str(other)]) == 1
    assert "differs from the file this run was trained with" in one_error_line(capsys)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", str(other)]) == 1
    assert "differs from the file this run was trained with" in one_error_line(capsys)


def printed_command(stdout: str, label: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return shlex.split(line[len(label) :])


def test_printed_commands_run_verbatim_from_another_folder(fake_root, tmp_path):
    """After a --data-dir run, `Evaluate:` and `Train further:` work as printed, elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_DATA"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-cache")
    bin_dir = Path(sys.executable).parent
    work = tmp_path / "work dir"  # a space in the path, so quoting matters
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cnnlab(args: list[str], cwd: Path) -> str:
        cmd = [sys.executable, "-m", "cnnlab", *args[1:]] if args[0] == "cnnlab" else args
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert bin_dir.exists()
    argv = ["cnnlab", "train", "--data-dir", str(fake_root), "--out", "my run", "--epochs", "1"]
    stdout = cnnlab([*argv, "--threads", "1", "--quiet"], work)
    evaluate = printed_command(stdout, "Evaluate: ")
    further = printed_command(stdout, "Train further: ")
    assert evaluate[-1] == str(work / "my run")
    assert "Test accuracy:" in cnnlab(evaluate, elsewhere)
    assert "Resuming after epoch 1" in cnnlab(further, elsewhere)
    assert f"Data: {fake_root.resolve()} (recorded in config.json)" in cnnlab(
        [*further[:-1], str(int(further[-1]) + 1)], elsewhere
    )
