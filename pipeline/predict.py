"""Classify raw text with a trained model: `python -m pipeline.predict`.

Documents come from arguments (one each), files (--file, `-` for stdin), directories (--dir, every
regular file below it) or piped stdin; a file is one document, or one per non-blank line with
--lines. The model is the registry alias (models:/newsgroups-classifier@champion) by default, or
--model: a `models:/...` or `runs:/...` URI, a pipeline model name (data/models/<name>, made by
train@<name>) or the path of a model directory. Output: the top-k groups per document, one line
each (`<source>: group p | group p | ...`), or JSON lines with --json.

Exit status: 0 when every input was classified; 1 on any error (each printed as one `error: ...`
line on stderr: bad inputs are reported after the others are classified); 2 for bad usage.

Reading the inputs: inputs.py; finding and loading the model: predictor.py; here, the command line
and the output.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Iterator, Sequence

from .common import PipelineError, run_main
from .inputs import Input, chunks, iter_inputs
from .predictor import Predictor, load_model

CHUNK = 256  # documents per model call: output streams, memory stays bounded


# ---------------------------------------------------------------- classify and print


def top_groups(classes: Sequence[str], probs, k: int) -> list[dict]:
    """Per row of probabilities: the most probable group as `label` and the k most probable groups,
    most probable first."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        {"label": classes[best[0]], "top": [{"group": classes[j], "probability": float(row[j])} for j in best]}
        for row, best in zip(probs, order)
    ]


def classify(predictor: Predictor, texts: Sequence[str], k: int = 3) -> list[dict]:
    return top_groups(predictor.classes, predictor.predict_proba(list(texts)), k)


def human_line(doc: Input, result: dict) -> str:
    groups = " | ".join(f"{t['group']} {t['probability']:.2f}" for t in result["top"])
    return f"{doc.source}: {groups}"


def json_line(doc: Input, result: dict) -> str:
    record = {"source": doc.source}
    if doc.path is not None:
        record["path"] = doc.path
    if doc.line is not None:
        record["line"] = doc.line
    record["label"] = result["label"]
    record["top"] = [{"group": t["group"], "probability": round(t["probability"], 6)} for t in result["top"]]
    return json.dumps(record, ensure_ascii=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify text into 20 Newsgroups groups with a trained model.",
        epilog="Without TEXT, --file or --dir, piped stdin is read. Exit status: 0 all classified, "
        "1 any error (bad inputs are reported after the rest), 2 bad usage.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="a document to classify (one per argument)")
    p.add_argument("-f", "--file", action="append", default=[], metavar="PATH",
                   help="a file to classify (repeatable; - for stdin)")
    p.add_argument("-d", "--dir", action="append", default=[], metavar="DIR",
                   help="classify every regular file below DIR (repeatable; hidden names skipped)")
    p.add_argument("-l", "--lines", action="store_true",
                   help="files and stdin hold one document per line (blank lines skipped)")
    p.add_argument("-m", "--model", default=None, metavar="MODEL",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a pipeline model "
                   "name (data/models/NAME) or a model directory (default: models:/newsgroups-classifier@champion)")
    p.add_argument("-k", "--top", type=int, default=3, metavar="K", help="groups to show per document (default 3)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines: source, label and the top-k groups with probabilities")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking store for models:/ and runs:/ "
                   "(default: MLFLOW_TRACKING_URI or the project's mlflow.db)")
    return p


def main(argv: list[str], stdin=None, stdout=None) -> None:
    args = parser().parse_args(argv)
    stdout = stdout or sys.stdout
    if args.top < 1:
        raise PipelineError(f"--top {args.top}: expected at least 1")
    stdin_stream = stdin if stdin is not None else sys.stdin
    use_stdin = not (args.texts or args.file or args.dir)
    if use_stdin and (stdin_stream is None or (hasattr(stdin_stream, "isatty") and stdin_stream.isatty())):
        raise PipelineError("no input: give TEXT arguments, --file, --dir, or pipe text on stdin (see --help)")
    raw_stdin = getattr(stdin_stream, "buffer", stdin_stream) if stdin_stream is not None else None

    errors: list[str] = []
    documents = iter_inputs(args.texts, args.file, args.dir, args.lines, use_stdin, errors, raw_stdin)
    batches = chunks(documents, CHUNK)
    first = next(batches, None)  # read some input before the (slow) model load: bad input fails fast
    if first is None:
        for message in errors[:-1]:
            print(f"error: {message}", file=sys.stderr)
        raise PipelineError(errors[-1] if errors else "no input: nothing to classify")
    # Loading imports scikit-learn, pandas and onnxruntime (TensorFlow too, for a model saved without
    # its ONNX export): a great many objects, none of them garbage, which the collector would scan
    # again and again while they load (0.1 s of a 1.8 s run with a scikit-learn model); then they
    # stay out of its passes
    gc.disable()
    try:
        predictor = load_model(args.model, args.tracking_uri)
    finally:
        gc.freeze()
        gc.enable()
    classified = 0
    for batch in _prepend(first, batches):
        results = classify(predictor, [d.text for d in batch], args.top)
        for doc, result in zip(batch, results):
            print(json_line(doc, result) if args.json else human_line(doc, result), file=stdout)
        stdout.flush()
        classified += len(batch)
    if errors:  # after the output: one bad input does not stop the others
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        failed = f"{len(errors)} input{'s' if len(errors) > 1 else ''} failed"
        raise PipelineError(f"{failed}, {classified} document{'s' if classified != 1 else ''} classified")


def _prepend(first: list, rest: Iterator[list]) -> Iterator[list]:
    yield first
    yield from rest


if __name__ == "__main__":
    try:
        run_main(main)
    except BrokenPipeError:  # `... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
