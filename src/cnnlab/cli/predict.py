"""`cnnlab predict` and `cnnlab export`: use a trained model on people's own images.

cnnlab predict my-digit.jpg photos/ --run runs/<run> --top-k 3
cnnlab predict scans/ --json > predictions.jsonl
cnnlab export runs/<run> --format onnx --out digits.onnx
cnnlab predict my-digit.jpg --onnx digits.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.bundled import bundled_run_dir
from cnnlab.choices import PREDICT_BATCH_SIZE
from cnnlab.cli.common import add_device, path_arg, positive_int, runtime_for
from cnnlab.errors import ConfigError, OutputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify your own image files with a trained model",
        description="Classify image files (PNG, JPEG, BMP, GIF, TIFF, WebP), each prepared the "
        "way the model's training data was made (MNIST: grey, ink bright, scaled to 20 px and "
        "centred by its centre of mass). Folders are searched recursively.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER", help="images or folders")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--run",
        type=path_arg,
        help="a run folder or its model.safetensors (default: the bundled model)",
    )
    source.add_argument(
        "--onnx",
        type=path_arg,
        metavar="FILE.onnx",
        help="a file from `cnnlab export`, run with onnxruntime (no run folder needed)",
    )
    p.add_argument("--top-k", type=positive_int, default=3, help="classes to list (default: 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument(
        "--show",
        type=path_arg,
        metavar="OUT.png",
        help="draw each image, the model's input and the probabilities (first 16 images)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=PREDICT_BATCH_SIZE,
        help=f"(default: {PREDICT_BATCH_SIZE})",
    )
    add_device(p)
    p.set_defaults(handler=run_predict)

    p = subparsers.add_parser(
        "export",
        help="export a trained run to ONNX, checked against PyTorch",
        description="Write the model as ONNX (batch norm folded, any batch size) with its class "
        "names, input shape, preprocessing and normalization in the file's metadata. "
        "onnxruntime must reproduce PyTorch's logits on 1,000 test images (random ones when "
        "the dataset is not present) within 1e-4, with the same class everywhere.",
    )
    p.add_argument("run", type=path_arg, nargs="?", help="a run folder or its model.safetensors")
    p.add_argument("--bundled", action="store_true", help="export the bundled model instead")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    p.add_argument(
        "--out",
        type=path_arg,
        metavar="FILE",
        help="file to write (default: model.onnx in the run folder; for --bundled, "
        "mnist-cnn.onnx in the current folder)",
    )
    p.add_argument(
        "--data-dir",
        type=path_arg,
        metavar="DIR",
        help="dataset root holding the test images for the check (default: $CNNLAB_DATA, "
        "else ~/.cache/cnnlab); nothing is downloaded",
    )
    p.set_defaults(handler=run_export)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cnnlab.predict import Failure, collect_files, predict_files, run_classifier

    if args.show is not None and args.show.suffix.lower() != ".png":
        raise ConfigError(f"--show {args.show}: figures are written as PNG; name it .png")
    if args.onnx is not None:
        from cnnlab.export import onnx_classifier

        classifier = onnx_classifier(args.onnx)
    else:
        runtime = runtime_for(args.device, "auto")
        classifier = run_classifier(args.run or bundled_run_dir(), runtime, args.batch_size)
    files, problems = collect_files(args.inputs)
    for message in problems:
        print(f"cnnlab: error: {message}", file=sys.stderr)
    shown = 16 if args.show is not None else 0
    big = len(files) > args.batch_size and sys.stderr.isatty()
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, disable=not big, leave=False)
    failed, predicted, kept = len(problems), 0, []
    for result in predict_files(files, classifier, args.top_k, args.batch_size, shown):
        bar.update(1)
        if isinstance(result, Failure):
            failed += 1
            bar.write(f"cnnlab: error: {result.message}", file=sys.stderr)
            continue
        predicted += 1
        if len(kept) < shown:
            kept.append(result)
        bar.write(json.dumps(result.to_json()) if args.json else _line(result), file=sys.stdout)
    bar.close()
    if args.show is not None:
        _write_figure(args.show, kept, classifier, predicted)
    if failed:
        print(f"cnnlab: {failed} of {len(files) + len(problems)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def _line(result) -> str:
    """`digits/7.png: 7 (98.3%); then 1 (1.2%), 9 (0.3%)`"""
    line = f"{result.file}: {result.label} ({result.confidence:.1%})"
    rest = ", ".join(f"{name} ({p:.1%})" for name, p in result.top[1:])
    return f"{line}; then {rest}" if rest else line


def _write_figure(path: Path, predictions, classifier, total: int) -> None:
    from cnnlab.viz.predict import predictions_figure, save_png

    if not predictions:
        print(f"cnnlab: error: --show {path}: no image could be classified", file=sys.stderr)
        return
    fig = predictions_figure(predictions, classifier.classes, total, classifier.source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    save_png(fig, path)
    capped = (
        f" (the first {len(predictions)} of {total} images)" if total > len(predictions) else ""
    )
    print(f"Wrote {path}{capped}", file=sys.stderr)


def run_export(args: argparse.Namespace) -> int:
    from cnnlab.export import export_onnx, require_onnx
    from cnnlab.run import run_data_location
    from cnnlab.runfiles import load_run

    if (args.run is None) == (not args.bundled):
        raise ConfigError("give a run folder or --bundled (one of them)")
    require_onnx()
    run = load_run(bundled_run_dir() if args.bundled else args.run, "cpu")
    out = args.out
    if out is None:
        out = Path("mnist-cnn.onnx") if args.bundled else run.run_dir / "model.onnx"
    elif out.is_dir():
        out = out / "model.onnx"
    report = export_onnx(
        run, out, run_data_location(run.config, args.data_dir, log=lambda _: None).root
    )
    print(f"Wrote {report.path} (opset {report.opset}, {report.exporter} exporter)")
    print(
        f"Check on {report.images:,} {report.inputs}: max |logit diff| onnxruntime vs PyTorch "
        f"{report.max_abs_diff:.2e}, same class on {report.same_argmax:,}/{report.images:,}"
    )
    return 0
