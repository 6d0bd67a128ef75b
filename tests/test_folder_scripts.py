"""The scripts that turn IDX datasets into folder datasets, on the synthetic data root."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from cnnlab.data import get_dataset
from cnnlab.data.folder import load_image_folder
from cnnlab.data.sources import load_split

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fashion_folder_holds_the_idx_pixels(fake_root, tmp_path):
    out = tmp_path / "fashion"
    assert (
        script("make_fashion_folder").main(["--data-dir", str(fake_root), "--out", str(out)]) == 0
    )
    data = load_image_folder(out, cache_dir=None, progress=False)
    spec = get_dataset("fashion-mnist")
    assert data.layout == "splits" and data.shape == (1, 28, 28)
    assert data.classes == tuple(sorted(c.replace("/", "-") for c in spec.classes))
    source = load_split(spec, fake_root, train=False)
    index = torch.tensor([int(Path(f).stem) for f in data.test.files])
    assert torch.equal(data.test.images, source.images[index])
    names = [spec.classes[y].replace("/", "-") for y in source.labels[index]]
    assert names == [data.classes[y] for y in data.test.labels]


def test_colour_digits_are_seeded_rgb_32x32(fake_root, tmp_path):
    make = script("make_colour_digits")
    args = ["--data-dir", str(fake_root), "--train", "40", "--test", "20", "--seed", "3"]
    assert make.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert make.main([*args, "--out", str(tmp_path / "b")]) == 0
    a = load_image_folder(tmp_path / "a", cache_dir=None, progress=False)
    b = load_image_folder(tmp_path / "b", cache_dir=None, progress=False)
    assert a.shape == (3, 32, 32) and (len(a.train), len(a.test)) == (40, 20)
    assert torch.equal(a.train.images, b.train.images) and a.assignment() == b.assignment()
    assert (a.train.images[:, 0] != a.train.images[:, 1]).any()  # colour, not grey


def test_scripts_refuse_a_folder_that_is_not_empty(fake_root, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    for name in ("make_fashion_folder", "make_colour_digits"):
        code = script(name).main(["--data-dir", str(fake_root), "--out", str(tmp_path / "out")])
        assert code == 1 and "is not empty" in capsys.readouterr().err
