"""Classify raw text with a trained model: `python -m pipeline.predict`.

Documents come from arguments (one each), files (--file, `-` for stdin), directories (--dir, every
regular file below it) or piped stdin; a file is one document, or one per non-blank line with
--lines. The model is the registry alias (models:/newsgroups-classifier@champion) by default, or
--model: a `models:/...` or `runs:/...` URI, a pipeline model name (data/models/<name>, made by
train@<name>) or the path of a model directory. Output: the top-k groups per document, one line
each (`<source>: group p | group p | ...`), or JSON lines with --json.

Exit status: 0 when every input was classified; 1 on any error (each printed as one `error: ...`
line on stderr: bad inputs are reported after the others are classified); 2 for bad usage.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from . import paths
from .common import PipelineError, run_main, silenced_fd2

MAX_INPUT_BYTES = 10 * 1024 * 1024  # 10 MB: per argument, file or stdin
DEFAULT_REGISTERED_MODEL = "newsgroups-classifier"
DEFAULT_ALIAS = "champion"
MODELS_DIR = paths.MODELS
CHUNK = 256  # documents per model call: output streams, memory stays bounded


# ---------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    source: str  # "arg 1", "path/to/file", "path/to/file:3", "stdin", "stdin:3"
    text: str
    path: str | None = None
    line: int | None = None


def decode(data: bytes, where: str) -> str:
    """Bytes -> text: UTF-8 (BOM allowed), else latin-1 as the corpus itself is read; CRLF -> LF.
    NUL bytes or many control characters mean a binary file, refused."""
    if b"\x00" in data:
        raise PipelineError(f"{where}: binary file (contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    sample = text[:65536]
    control = sum(1 for c in sample if (ord(c) < 32 and c not in "\t\n\r\f\v\b\x1b") or 0x7F <= ord(c) < 0xA0)
    if sample and control / len(sample) > 0.05:
        raise PipelineError(f"{where}: binary file ({control} control characters in the first {len(sample)}), not text")
    return text.replace("\r\n", "\n")


def too_large(where: str, size: int | None = None) -> PipelineError:
    got = f" ({size:,} bytes)" if size is not None else ""
    return PipelineError(f"{where}: input larger than 10 MB{got}; the limit is {MAX_INPUT_BYTES:,} bytes")


def read_bytes(path: Path, where: str) -> bytes:
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise PipelineError(f"{where}: is a directory (use --dir)")
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_INPUT_BYTES:
            raise too_large(where, info.st_size)
        with open(path, "rb") as handle:  # FIFOs (e.g. <(cmd)) too: read at most the limit + 1
            data = handle.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise PipelineError(f"{where}: no such file") from None
    except PermissionError:
        raise PipelineError(f"{where}: unreadable (permission denied)") from None
    except OSError as exc:
        raise PipelineError(f"{where}: unreadable ({exc.strerror or exc})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise too_large(where)
    return data


def read_stdin(stream=None) -> bytes:
    stream = stream if stream is not None else sys.stdin.buffer
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise too_large("stdin")
    return data


def split_documents(text: str, source: str, path: str | None, lines: bool) -> list[Document]:
    """One document, or one per non-blank line; empty input is an error."""
    if lines:
        docs = [
            Document(f"{source}:{i}", line, path, i)
            for i, line in enumerate(text.split("\n"), start=1)
            if line.strip()
        ]
        if not docs:
            raise PipelineError(f"{source}: empty input (no non-blank line)")
        return docs
    if not text.strip():
        raise PipelineError(f"{source}: empty input")
    return [Document(source, text, path)]


def walk_files(directory: Path, errors: list[str]) -> list[Path]:
    """Every regular file below `directory` (sorted, hidden names skipped, symlinked directories not
    followed); an unreadable subdirectory or a special file is reported, the rest goes on."""
    if not directory.exists():
        raise PipelineError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise PipelineError(f"{directory}: not a directory (use --file)")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise PipelineError(f"{directory}: unreadable directory (permission denied)")
    found: list[Path] = []

    def failed(exc: OSError) -> None:
        errors.append(f"{exc.filename}: unreadable directory ({exc.strerror or exc})")

    for root, dirs, files in os.walk(directory, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                mode = path.stat().st_mode
            except OSError as exc:  # e.g. a dangling symlink
                errors.append(f"{path}: unreadable ({exc.strerror or exc})")
                continue
            if stat.S_ISREG(mode):
                found.append(path)
            else:
                errors.append(f"{path}: not a regular file, skipped")
    if not found and not errors:
        raise PipelineError(f"{directory}: empty directory (no files to classify)")
    return found


def iter_documents(
    texts: Sequence[str], files: Sequence[str], dirs: Sequence[str], lines: bool, use_stdin: bool,
    errors: list[str], stdin=None,
) -> Iterator[Document]:
    """Documents in input order; a bad input adds one message to `errors` and is skipped."""

    def attempt(make: Callable[[], list[Document]]) -> list[Document]:
        try:
            return make()
        except PipelineError as exc:
            errors.append(str(exc))
            return []

    for i, text in enumerate(texts, start=1):
        source = f"arg {i}"

        def from_arg(text=text, source=source):
            if len(text.encode("utf-8", "surrogateescape")) > MAX_INPUT_BYTES:
                raise too_large(source)
            if not text.strip():
                raise PipelineError(f"{source}: empty text")
            return [Document(source, text)]  # an argument is one document, --lines or not

        yield from attempt(from_arg)

    def from_file(path: Path, shown: str):
        if shown == "-":
            return split_documents(decode(read_stdin(stdin), "stdin"), "stdin", None, lines)
        return split_documents(decode(read_bytes(path, shown), shown), shown, shown, lines)

    for name in files:
        yield from attempt(lambda name=name: from_file(Path(name), name))
    for name in dirs:
        paths = attempt(lambda name=name: walk_files(Path(name), errors))
        for path in paths:
            yield from attempt(lambda path=path: from_file(path, str(path)))
    if use_stdin:
        yield from attempt(lambda: from_file(Path("-"), "-"))


def chunks(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- models


@dataclass
class Predictor:
    """A loaded model: texts -> frame with `label` and one probability column per group."""

    uri: str  # what was asked for, resolved (models:/..., runs:/..., or a directory)
    predict_frame: Callable[[list[str]], "object"]


def quiet_libraries() -> None:
    """No library chatter on stderr: there, only our `error:` lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def import_serving() -> None:
    """The pyfunc wrapper (and MLflow, seconds to import), for MLflow models only: imported
    here, unpickling the model finds it loaded."""
    from . import serving  # noqa: F401


def registry_defaults() -> tuple[str, str]:
    """The registered model and alias `report` uses (params.yaml `report`), else the defaults."""
    from .tracking import project_root

    try:
        from . import params as P

        report = P.load_params(project_root() / P.PARAMS_FILE).get("report") or {}
        return str(report.get("registered_model") or DEFAULT_REGISTERED_MODEL), str(report.get("alias") or DEFAULT_ALIAS)
    except (PipelineError, AttributeError, OSError):
        return DEFAULT_REGISTERED_MODEL, DEFAULT_ALIAS


def default_model_uri() -> str:
    name, alias = registry_defaults()
    return f"models:/{name}@{alias}"


def check_store(uri: str) -> None:
    """A sqlite store that does not exist would be created, empty, by MLflow: say what is missing."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise PipelineError(f"MLflow store {uri}: no such database (run the pipeline, `dvc repro`, first)")
    elif uri.startswith("file:"):
        from urllib.parse import urlparse

        if not Path(urlparse(uri).path).is_dir():
            raise PipelineError(f"MLflow store {uri}: no such directory")


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def check_registry_uri(model_uri: str, client) -> None:
    """Name what is missing in a models:/ URI before loading: the model, the alias or the version."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))?/?", model_uri)
    if not match:
        return
    name, alias, version = match.groups()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        try:
            known = sorted(m.name for m in client.search_registered_models())
        except MlflowException:
            known = []
        hint = f" (registered: {', '.join(known)})" if known else " (none registered: `dvc repro` registers the champion)"
        raise PipelineError(f"{model_uri}: no registered model {name!r}{hint}") from None
    if alias is not None and alias not in (registered.aliases or {}):
        known = ", ".join(sorted(registered.aliases or {})) or "none"
        raise PipelineError(f"{model_uri}: unknown alias {alias!r} of {name!r} (aliases: {known})")
    if version is not None and version.isdigit():
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise PipelineError(f"{model_uri}: {name!r} has no version {version}") from None


def check_run_uri(model_uri: str, client) -> None:
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"runs:/([^/]+)(?:/.*)?", model_uri)
    if not match:
        return
    try:
        client.get_run(match.group(1))
    except MlflowException:
        raise PipelineError(f"{model_uri}: no run {match.group(1)!r} in the tracking store") from None


def load_mlflow(model_uri: str, tracking: str | None = None) -> Predictor:
    import mlflow
    from mlflow import MlflowClient

    from .tracking import tracking_uri

    quiet_libraries()
    import_serving()
    store = tracking or tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")):
        check_store(store)
    mlflow.set_tracking_uri(store)
    client = MlflowClient(tracking_uri=store)
    try:
        check_registry_uri(model_uri, client)
        check_run_uri(model_uri, client)
        with silenced_fd2():
            model = mlflow.pyfunc.load_model(model_uri)
    except PipelineError:
        raise
    except Exception as exc:  # unreachable store, missing artifacts, a broken model
        raise PipelineError(f"{model_uri}: cannot load the model ({type(exc).__name__}: {first_line(exc)})") from None

    def predict_frame(texts: list[str]):
        return model.predict(list(texts))

    return Predictor(model_uri, predict_frame)


def load_directory(directory: Path) -> Predictor:
    from .classifier import META, Classifier

    quiet_libraries()
    if (directory / META).is_file():
        try:
            with silenced_fd2():
                classifier = Classifier(directory)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(f"{directory}: cannot load the model ({type(exc).__name__}: {first_line(exc)})") from None
        return Predictor(str(directory), classifier.predict_frame)
    if (directory / "MLmodel").is_file():
        return load_mlflow(str(directory))
    raise PipelineError(f"{directory}: not a model directory (no {META} or MLmodel)")


def pipeline_model_dir(name: str) -> Path:
    """data/models/<name> (train@<name>), or where classifier.py says the pipeline keeps `name`."""
    from .classifier import model_dir

    return model_dir(name)


def pipeline_models() -> list[str]:
    from .classifier import META
    from .tracking import project_root

    root = project_root() / MODELS_DIR
    return sorted(p.name for p in root.glob("*") if (p / META).is_file()) if root.is_dir() else []


def load_model(spec: str | None = None, tracking: str | None = None) -> Predictor:
    """`spec`: None (the registry alias), a models:/ or runs:/ URI, a pipeline model name, or a
    model directory (with meta.json, or an MLflow model with MLmodel)."""
    from .tracking import project_root

    spec = spec or default_model_uri()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", spec):
        return load_mlflow(spec, tracking)
    if re.fullmatch(r"[A-Za-z0-9_.-]+", spec) and spec not in (".", ".."):
        directory = project_root() / pipeline_model_dir(spec)
        if directory.is_dir():
            return load_directory(directory)
        if not Path(spec).is_dir():
            known = ", ".join(pipeline_models()) or "none yet: run `dvc repro`"
            raise PipelineError(f"model {spec!r}: no {pipeline_model_dir(spec)} (trained models: {known})")
    path = Path(spec)
    if not path.exists():
        raise PipelineError(f"model {spec!r}: no such model directory")
    if not path.is_dir():
        raise PipelineError(f"model {spec!r}: not a model directory")
    return load_directory(path)


# ---------------------------------------------------------------- classify and print


def top_groups(frame, k: int) -> list[dict]:
    """Per row of a predict frame: label and the k most probable groups, most probable first."""
    import numpy as np

    if "label" not in frame.columns:
        raise PipelineError("the model's output has no 'label' column: not a newsgroups classifier")
    classes = [c for c in frame.columns if c != "label"]
    probs = frame[classes].to_numpy(dtype=np.float64)
    out = []
    for label, row in zip(frame["label"].tolist(), probs):
        order = np.argsort(-row, kind="stable")[:k]
        out.append({"label": label, "top": [{"group": classes[j], "probability": float(row[j])} for j in order]})
    return out


def classify(predictor: Predictor, texts: Sequence[str], k: int = 3) -> list[dict]:
    return top_groups(predictor.predict_frame(list(texts)), k)


def human_line(doc: Document, result: dict) -> str:
    groups = " | ".join(f"{t['group']} {t['probability']:.2f}" for t in result["top"])
    return f"{doc.source}: {groups}"


def json_line(doc: Document, result: dict) -> str:
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
    p.add_argument("--json", action="store_true", help="JSON lines: source, label and the top-k groups with probabilities")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking store for models:/ and runs:/ (default: MLFLOW_TRACKING_URI or the project's mlflow.db)")
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
    documents = iter_documents(args.texts, args.file, args.dir, args.lines, use_stdin, errors, raw_stdin)
    batches = chunks(documents, CHUNK)
    first = next(batches, None)  # read some input before the (slow) model load: bad input fails fast
    if first is None:
        for message in errors[:-1]:
            print(f"error: {message}", file=sys.stderr)
        raise PipelineError(errors[-1] if errors else "no input: nothing to classify")
    predictor = load_model(args.model, args.tracking_uri)
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
