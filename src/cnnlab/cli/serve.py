"""`cnnlab serve`: the live page, where a learner draws a digit and watches every layer respond.

    cnnlab serve                          # the bundled model, on http://127.0.0.1:8000/
    cnnlab serve --run runs/<run> --open  # a run you trained; opens the browser

It listens on 127.0.0.1 (this machine only) unless --host says otherwise; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import threading
import time
import webbrowser

from cnnlab.cli.common import int_in, path_arg, positive_float
from cnnlab.errors import ConfigError

SERVE_MODULES = ("fastapi", "uvicorn", "starlette", "pydantic")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a live web page: draw a digit and watch every layer of the network respond",
        description="Serve a page where you draw a digit (or upload an image) and see what the "
        "model sees, its probabilities and the feature maps of every conv stage; click a map to "
        "see the tutorial's sum with its numbers. Needs pip install 'cnnlab[serve]'.",
    )
    p.add_argument(
        "--run",
        type=path_arg,
        help="a run folder, or a .safetensors file inside one "
        "(default: the model that ships with cnnlab)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, reachable from this machine only; "
        "0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int_in(0, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=5.0,
        help="largest image upload accepted, in MiB (default: 5)",
    )
    p.set_defaults(handler=run_serve)


def require_serve_packages() -> None:
    """One line naming the missing package and the extra that installs it."""
    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if not any(importlib.util.find_spec(n) for n in ("python_multipart", "multipart")):
        missing.append("python-multipart")
    if missing:
        raise ConfigError(
            f"cnnlab serve needs {', '.join(missing)}: install with pip install 'cnnlab[serve]'"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one error line (port in use, unknown host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def open_when_started(server, url: str) -> None:
    def wait_then_open():
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            webbrowser.open(url)

    threading.Thread(target=wait_then_open, daemon=True).start()


def run_serve(args: argparse.Namespace) -> int:
    require_serve_packages()
    import uvicorn

    from cnnlab.serve.app import create_app

    if args.run is None:
        from cnnlab.bundled import bundled_run_dir

        run_dir = bundled_run_dir()
    else:
        run_dir = args.run
    app = create_app(run_dir, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    service = app.state.service
    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    url = page_url(args.host, port)
    run = service.run
    print(f"Serving {run.model_config.name} ({run.dataset.name}) from {run.run_dir}")
    if args.host in LOOPBACK:
        print(f"Listening on {args.host} only: this machine can open the page, no other can.")
    else:
        print(f"Listening on {args.host}: other machines on the network can open the page too.")
    print(f"Open {url}  (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    if args.open:
        open_when_started(server, url)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("Stopped.")
    return 0
