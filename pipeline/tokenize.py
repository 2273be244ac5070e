"""Stage tokenize: a TextVectorization vocabulary adapted on train only; integer sequences per split
(the vectorizer and its conventions: sequences.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import params as P
from . import paths
from .common import atomic_path, run_main, write_json
from .sequences import encode, make_vectorizer

STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation")

SCHEMA = {
    "max_tokens": P.integer(3),
    "max_len": P.integer(1),
    "standardize": P.choice(*STANDARDIZE),
}


def adapt(texts: list[str], cfg: dict):
    vectorizer = make_vectorizer(None, cfg["max_len"], cfg["standardize"], cfg["max_tokens"])
    vectorizer.adapt(np.asarray(texts, dtype=object), batch_size=1024)
    return vectorizer


def main(argv: list[str]) -> None:
    cfg = P.stage_params("tokenize", SCHEMA)
    frames = {s: pd.read_parquet(paths.split_file(s)) for s in paths.SPLITS}
    vectorizer = adapt(frames["train"]["text"].tolist(), cfg)
    vocab = vectorizer.get_vocabulary()
    with atomic_path(paths.TOKENIZED, directory=True) as tmp:
        write_json(tmp / "vocab.json", vocab)
        write_json(tmp / "config.json", {**cfg, "vocab_size": len(vocab)})
        train = frames["train"]
        write_json(tmp / "classes.json", train.drop_duplicates("label").sort_values("label")["group"].tolist())
        for split, frame in frames.items():
            x = encode(vectorizer, frame["text"].tolist())
            np.savez(tmp / f"{split}.npz", x=x, y=frame["label"].to_numpy(np.int32))
    print(f"tokenize: vocabulary of {len(vocab)} (max_tokens {cfg['max_tokens']}), sequences of {cfg['max_len']}")


if __name__ == "__main__":
    run_main(main)
