"""Stage fetch_corpus: obtain 20news-bydate.tar.gz (mirror or URL) and verify it before publishing."""
from __future__ import annotations

from pathlib import Path

from . import params as P
from . import paths
from .common import PipelineError, atomic_path, run_main
from .corpus import check_counts, count_documents
from .download import fetch

ARCHIVE_NAME = "20news-bydate.tar.gz"

SCHEMA = {
    "url": P.string(),
    "md5": P.optional(P.string()),  # of the upstream tarball; mirror copies are checked by content
    "groups": P.integer(1),
    "train_docs": P.integer(1),
    "test_docs": P.integer(1),
    "timeout": P.number(0, lo_open=True),
    "retries": P.integer(0, 10),
}


def fetch_corpus(cfg: dict, out: Path = paths.ARCHIVE) -> dict:
    """Fetch into a temporary file, verify it, then rename: a bad archive leaves no output."""
    with atomic_path(out) as tmp:
        source = fetch([ARCHIVE_NAME], cfg["url"], tmp, cfg["md5"], cfg["timeout"], cfg["retries"])
        try:
            counts = count_documents(tmp)
            check_counts(tmp, counts, cfg["groups"], cfg["train_docs"], cfg["test_docs"])
        except PipelineError as exc:  # name the file the user gave, not our temporary copy
            raise PipelineError(str(exc).replace(str(tmp), source)) from None
    return {"source": source, "train": sum(counts["train"].values()), "test": sum(counts["test"].values())}


def main(argv: list[str]) -> None:
    cfg = P.stage_params("fetch_corpus", SCHEMA)
    info = fetch_corpus(cfg)
    print(f"fetch_corpus: {paths.ARCHIVE} from {info['source']}: {info['train']} train, {info['test']} test documents")


if __name__ == "__main__":
    run_main(main)
