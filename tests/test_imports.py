"""Importing cnnlab changes nothing global and is cheap: no PyTorch, no matplotlib backend."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_cnnlab_does_not_import_torch():
    assert run_python("import sys, cnnlab; print('torch' in sys.modules)") == "False"


def test_importing_the_library_leaves_matplotlibs_backend_alone():
    code = (
        "import matplotlib; before = matplotlib.get_backend()\n"
        "import cnnlab.run, cnnlab.viz.training, cnnlab.viz.tutorial\n"
        "print(before, matplotlib.get_backend())"
    )
    assert run_python(code, MPLBACKEND="svg") == "svg svg"


def test_lazy_names_resolve_to_the_library_objects():
    import cnnlab
    from cnnlab.metrics import evaluate
    from cnnlab.models import create_model

    assert cnnlab.evaluate is evaluate and cnnlab.create_model is create_model
    assert set(cnnlab.__all__) <= set(dir(cnnlab))
    for name in cnnlab.__all__:  # every name the README's library example may use
        assert getattr(cnnlab, name).__name__ == name


HEAVY = ("torch", "numpy", "matplotlib", "PIL", "safetensors", "tqdm", "fastapi")


def test_help_loads_no_heavy_library():
    """`cnnlab --help` and every `cnnlab COMMAND --help` answer from the standard library alone
    (the handlers import PyTorch and the rest when a command runs)."""
    code = (
        "import contextlib, io, sys\n"
        "from cnnlab.cli import build_parser\n"
        "parser = build_parser()\n"
        "commands = list(parser._subparsers._group_actions[0].choices)\n"
        "for argv in [['--help']] + [[c, '--help'] for c in commands]:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        build_parser().parse_args(argv)\n"
        "    assert 'usage: cnnlab' in out.getvalue(), argv\n"
        f"print(len(commands), sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    count, loaded = run_python(code).split(" ", 1)
    assert int(count) >= 15 and loaded == "[]"


def test_the_help_lists_exactly_the_registered_models():
    from cnnlab.choices import MODEL_NAMES
    from cnnlab.models import list_models

    assert sorted(MODEL_NAMES) == list_models()


def test_the_help_states_the_recipe_defaults():
    from cnnlab.config import DEFAULTS, TrainConfig

    built = TrainConfig()
    assert vars(DEFAULTS) == {k: v for k, v in vars(built).items() if k in vars(DEFAULTS)}
    assert set(vars(built)) - set(vars(DEFAULTS)) == {"model_options"}
