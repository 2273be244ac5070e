"""Stage encode: the sentence encoder (data/encoder) embeds the train, val and test splits once.

Outputs in data/encoded: <split>.npy (float32 [documents, hidden], rows in data/prepared's order),
encoder.pkl (the fitted SentenceEncoder that computed them, which train@minilm_logreg puts in front
of its classifier so the saved model takes raw text) and meta.json (`settings`, which the train
stage logs with the model, and the seconds each split took). A change to minilm_logreg's classifier
or to the ensemble reruns without encoding again.
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import params as P
from . import paths
from .common import atomic_path, run_main, write_json
from .encoder import ENCODER_PICKLE, SentenceEncoder

SCHEMA = {
    "max_len": P.integer(2, 4096),  # wordpieces encoded per document, from its start
    "quantize": P.boolean(),  # int8 matrix products instead of float32
    "batch_size": P.integer(1, 4096),  # documents per forward pass (each batch padded to its longest)
    "text": P.choice("content", "full"),  # what is encoded of a document (see messages.content)
}


def encode_splits(encoder: SentenceEncoder, texts: dict[str, list[str]], out: Path) -> dict[str, float]:
    """Write each split's embeddings to out/<split>.npy; returns the seconds each took."""
    from tqdm import tqdm

    seconds = {}
    with tqdm(total=sum(map(len, texts.values())), desc="encode", unit="doc", disable=None) as bar:
        for split, docs in texts.items():
            bar.set_postfix_str(split)
            start = time.perf_counter()
            embeddings = encoder.embed(docs, bar)
            seconds[split] = time.perf_counter() - start
            np.save(out / f"{split}.npy", embeddings)
    return seconds


def main(argv: list[str]) -> None:
    cfg = P.stage_params("encode", SCHEMA)
    texts = {s: pd.read_parquet(paths.split_file(s))["text"].tolist() for s in paths.SPLITS}
    encoder = SentenceEncoder(str(paths.ENCODER), cfg["max_len"], cfg["quantize"], cfg["batch_size"], cfg["text"]).fit()
    with atomic_path(paths.ENCODED, directory=True) as tmp:
        seconds = encode_splits(encoder, texts, tmp)
        with open(tmp / ENCODER_PICKLE, "wb") as handle:
            pickle.dump(encoder, handle, protocol=5)
        docs = {s: len(t) for s, t in texts.items()}
        write_json(tmp / "meta.json", {
            "settings": cfg, "dim": encoder.dim_, "documents": docs,
            "seconds": {s: round(v, 1) for s, v in seconds.items()},
            "docs_per_second": round(sum(docs.values()) / max(sum(seconds.values()), 1e-9), 1),
        })
    print(f"encode: {sum(docs.values())} documents x {encoder.dim_} in {sum(seconds.values()):.1f} s "
          f"({', '.join(f'{s} {v:.1f} s' for s, v in seconds.items())})")


if __name__ == "__main__":
    run_main(main)
