"""Stage prepare: parse the archive into train / val / test tables (parquet) and data metrics."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.datasets._twenty_newsgroups import (  # the exact meaning of fetch_20newsgroups(remove=...)
    strip_newsgroup_footer,
    strip_newsgroup_header,
    strip_newsgroup_quoting,
)
from sklearn.model_selection import train_test_split

from . import params as P
from . import paths
from .common import PipelineError, atomic_path, run_main, write_json
from .corpus import iter_documents

SCHEMA = {
    "val_fraction": P.number(0, 0.5, lo_open=True),
    "seed": P.integer(0),
    "remove": P.list_of(P.choice("headers", "footers", "quotes")),
}

_STRIPPERS = {  # applied in scikit-learn's order
    "headers": strip_newsgroup_header,
    "footers": strip_newsgroup_footer,
    "quotes": strip_newsgroup_quoting,
}


def clean_text(raw: bytes, remove: list[str] = ()) -> str:
    """Bytes of one message -> text: latin-1 (every byte string decodes), LF line ends, and the
    requested parts removed."""
    text = raw.decode("latin-1").replace("\r\n", "\n").replace("\x00", "")
    for part in ("headers", "footers", "quotes"):
        if part in remove:
            text = _STRIPPERS[part](text)
    return text


def read_corpus(archive: Path, remove: list[str]) -> pd.DataFrame:
    rows = [
        (f"{d.split}/{d.group}/{d.doc_id}", d.split, d.group, clean_text(d.raw, remove))
        for d in iter_documents(archive)
    ]
    frame = pd.DataFrame(rows, columns=["id", "split", "group", "text"])
    classes = sorted(frame["group"].unique())
    frame["label"] = frame["group"].map({g: i for i, g in enumerate(classes)}).astype("int32")
    return frame


def split_corpus(frame: pd.DataFrame, val_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Carve a stratified, seeded validation split out of train; test stays as published."""
    columns = ["id", "group", "label", "text"]
    train = frame[frame["split"] == "train"]
    try:
        fit, val = train_test_split(train, test_size=val_fraction, stratify=train["label"], random_state=seed)
    except ValueError as exc:  # e.g. fewer validation documents than groups: say which param, no traceback
        raise PipelineError(
            f"params.yaml: prepare.val_fraction = {val_fraction}: no stratified split of {len(train)} "
            f"training documents in {train['label'].nunique()} groups ({exc})"
        ) from None
    test = frame[frame["split"] == "test"]
    return {
        "train": fit[columns].reset_index(drop=True),
        "val": val[columns].reset_index(drop=True),
        "test": test[columns].reset_index(drop=True),
    }


def data_metrics(splits: dict[str, pd.DataFrame], remove: list[str]) -> dict:
    out = {
        "remove": list(remove),
        "groups": int(splits["train"]["group"].nunique()),
        # as published: train = our train + val
        "published": {"train": len(splits["train"]) + len(splits["val"]), "test": len(splits["test"])},
        "documents": {},
    }
    for name, frame in splits.items():
        empty = frame["text"].str.strip().eq("")
        out["documents"][name] = {
            "total": len(frame),
            "empty": int(empty.sum()),
            "per_class": {g: int(n) for g, n in frame["group"].value_counts().sort_index().items()},
        }
    return out


def main(argv: list[str]) -> None:
    cfg = P.stage_params("prepare", SCHEMA)
    frame = read_corpus(paths.ARCHIVE, cfg["remove"])
    splits = split_corpus(frame, cfg["val_fraction"], cfg["seed"])
    with atomic_path(paths.PREPARED, directory=True) as tmp:
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
    metrics = data_metrics(splits, cfg["remove"])
    write_json(paths.DATA_METRICS, metrics)
    sizes = ", ".join(f"{n} {v['total']} ({v['empty']} empty)" for n, v in metrics["documents"].items())
    print(f"prepare: {metrics['groups']} groups; {sizes}")


if __name__ == "__main__":
    run_main(main)
