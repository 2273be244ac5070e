"""What the predict CLI classifies: documents from arguments, files, directories or stdin, each
with its source; bad inputs become one-line messages and the rest goes on."""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .common import PipelineError

MAX_INPUT_BYTES = 10 * 1024 * 1024  # 10 MB: per argument, file or stdin


@dataclass(frozen=True)
class Input:
    """One document to classify and where it came from."""

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


def split_inputs(text: str, source: str, path: str | None, lines: bool) -> list[Input]:
    """One document, or one per non-blank line; empty input is an error."""
    if lines:
        docs = [
            Input(f"{source}:{i}", line, path, i)
            for i, line in enumerate(text.split("\n"), start=1)
            if line.strip()
        ]
        if not docs:
            raise PipelineError(f"{source}: empty input (no non-blank line)")
        return docs
    if not text.strip():
        raise PipelineError(f"{source}: empty input")
    return [Input(source, text, path)]


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


def iter_inputs(
    texts: Sequence[str], files: Sequence[str], dirs: Sequence[str], lines: bool, use_stdin: bool,
    errors: list[str], stdin=None,
) -> Iterator[Input]:
    """Documents in input order; a bad input adds one message to `errors` and is skipped."""

    def attempt(make: Callable[[], list[Input]]) -> list[Input]:
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
            return [Input(source, text)]  # an argument is one document, --lines or not

        yield from attempt(from_arg)

    def from_file(path: Path, shown: str):
        if shown == "-":
            return split_inputs(decode(read_stdin(stdin), "stdin"), "stdin", None, lines)
        return split_inputs(decode(read_bytes(path, shown), shown), shown, shown, lines)

    for name in files:
        yield from attempt(lambda name=name: from_file(Path(name), name))
    for name in dirs:
        found = attempt(lambda name=name: walk_files(Path(name), errors))
        for path in found:
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
