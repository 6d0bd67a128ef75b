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
