"""Accuracy of a model on a folder of labelled images (`FOLDER/<label>/<file>`), by kind.

The label is the name of each image's folder; kinds are the file type and, where the generating
script put it in the file name, the style (e.g. `drawn`). Used for the real-world digit sets in the
README:

    python scripts/eval_digits.py font-digits                 # the bundled model
    python scripts/eval_digits.py drawn-digits --run runs/x   # any run
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from cnnlab.predict import Failure, collect_files, predict_files, run_classifier
from cnnlab.runtime import configure_process, resolve_runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--run", type=Path, help="run folder (default: the bundled model)")
    args = parser.parse_args(argv)
    if args.run is None:
        from cnnlab.bundled import bundled_run_dir

        args.run = bundled_run_dir()
    configure_process()
    classifier = run_classifier(args.run, resolve_runtime("cpu", "fp32"))
    files, problems = collect_files([args.folder])
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for result in predict_files(files, classifier, top_k=1):
        path = Path(result.file)
        kinds = ["all", path.suffix.lower().lstrip(".")]
        right = 0 if isinstance(result, Failure) else int(result.label == path.parent.name)
        for kind in kinds:
            tally[kind][0] += right
            tally[kind][1] += 1
    print(f"{args.folder} with {args.run}:")
    for kind, (right, total) in sorted(tally.items()):
        print(f"  {kind:6s} {right / total:7.1%}  ({right} of {total})")
    return 0 if tally else 1


if __name__ == "__main__":
    sys.exit(main())
