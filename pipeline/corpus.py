"""Reading the 20news-bydate archive safely: never trust member paths or member types."""
from __future__ import annotations

import gzip
import tarfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple

from .common import PipelineError

SPLITS = {"20news-bydate-train": "train", "20news-bydate-test": "test"}


class Document(NamedTuple):
    split: str  # train | test
    group: str
    doc_id: str
    raw: bytes


def _member_parts(path: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or (pure.parts and ":" in pure.parts[0]):  # "." has no parts
        raise PipelineError(f"{path}: unsafe member {name!r}: absolute path")
    if ".." in pure.parts or "\\" in name:
        raise PipelineError(f"{path}: unsafe member {name!r}: path escapes the archive")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise PipelineError(f"{path}: unsafe member {name!r}: {kind} (only files and folders allowed)")
    return tuple(p for p in pure.parts if p not in ("", "."))


def iter_documents(path: str | Path) -> Iterator[Document]:
    """Yield every message of the archive, refusing unsafe or unexpected members."""
    path = Path(path)
    try:
        # gzip.open, not tarfile's own "r|gz": it checks the gzip CRC and length at the end, so a
        # truncated or corrupted copy fails instead of yielding damaged or missing documents.
        with gzip.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:  # one pass
            for member in tar:
                parts = _member_parts(path, member)
                if member.isdir():
                    continue
                if len(parts) != 3 or parts[0] not in SPLITS:
                    raise PipelineError(
                        f"{path}: unexpected member {member.name!r}: expected "
                        "20news-bydate-{train,test}/<group>/<id>"
                    )
                handle = tar.extractfile(member)
                yield Document(SPLITS[parts[0]], parts[1], parts[2], handle.read())
            while raw.read(1 << 20):  # past the tar end marker to the gzip trailer (CRC, length)
                pass
    except PipelineError:
        raise
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing") from None
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise PipelineError(f"{path}: not a readable .tar.gz archive ({exc})") from None


def count_documents(path: str | Path) -> dict[str, Counter]:
    """Documents per group in each split; reads (and so checks) the whole archive."""
    counts: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    for doc in iter_documents(path):
        counts[doc.split][doc.group] += 1
    return counts


def check_counts(path: str | Path, counts: dict[str, Counter], groups: int, train: int, test: int) -> None:
    """Fail unless the archive holds exactly the configured groups and documents."""
    expected = {"train": train, "test": test}
    for split in ("train", "test"):
        if len(counts[split]) != groups:
            raise PipelineError(
                f"{path}: {split} split has {len(counts[split])} groups, expected {groups} "
                "(fetch_corpus.groups)"
            )
        total = sum(counts[split].values())
        if total != expected[split]:
            raise PipelineError(
                f"{path}: {split} split has {total} documents, expected {expected[split]} "
                f"(fetch_corpus.{split}_docs)"
            )
    if set(counts["train"]) != set(counts["test"]):
        odd = sorted(set(counts["train"]) ^ set(counts["test"]))
        raise PipelineError(f"{path}: groups differ between train and test: {', '.join(odd)}")
