"""Stage embeddings: the GloVe matrix for the tokenize vocabulary, and its coverage metrics.

Row 0 (padding) is always zeros. Rows of words GloVe lacks, [UNK] included, are zeros
(`oov: zeros`, the Keras recipe: they add nothing to a frozen model) or small random vectors
with GloVe's own spread (`oov: random`, seeded), which a fine-tuned model can learn from.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from . import params as P
from . import paths
from .common import atomic_path, read_json, run_main, write_json

SCHEMA = {"oov": P.choice("zeros", "random"), "seed": P.integer(0), "top_oov": P.integer(0, 1000)}


def build_matrix(vocab: list[str], words: list[str], vectors: np.ndarray, oov: str, seed: int):
    """(matrix, found): row i is the GloVe vector of vocab[i]; found[i] says whether GloVe had it."""
    index = {w: i for i, w in enumerate(words)}
    rows = np.array([index.get(w, -1) for w in vocab], dtype=np.int64)
    found = rows >= 0
    found[:2] = False  # padding and [UNK] are not words
    dim = vectors.shape[1]
    if oov == "random":
        rng = np.random.default_rng(seed)
        matrix = rng.normal(0.0, float(vectors.std()), size=(len(vocab), dim)).astype(np.float32)
    else:
        matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    matrix[found] = vectors[rows[found]]
    matrix[0] = 0.0
    return matrix, found


def coverage(vocab: list[str], found: np.ndarray, train_ids: np.ndarray, top: int) -> dict:
    """Share of the vocabulary and of the (non-padding) training tokens that have a vector."""
    counts = np.bincount(train_ids.ravel(), minlength=len(vocab))[: len(vocab)]
    counts[0] = 0  # padding
    words = len(vocab) - 2
    oov_counts = Counter({vocab[i]: int(counts[i]) for i in np.flatnonzero(~found) if i >= 2})
    return {
        "vocab_size": len(vocab),
        "words_with_vector": int(found.sum()),
        "vocab_coverage": round(float(found.sum()) / max(words, 1), 4),
        "train_tokens": int(counts.sum()),
        "train_token_coverage": round(float(counts[found].sum()) / max(int(counts.sum()), 1), 4),
        "unk_token_share": round(float(counts[1]) / max(int(counts.sum()), 1), 4),
        "top_oov_words": [w for w, _ in oov_counts.most_common(top)],
    }


def main(argv: list[str]) -> None:
    cfg = P.stage_params("embeddings", SCHEMA)
    vocab = read_json(paths.TOKENIZED / "vocab.json")
    words = read_json(paths.GLOVE / "words.json")
    vectors = np.load(paths.GLOVE / "vectors.npy")
    matrix, found = build_matrix(vocab, words, vectors, cfg["oov"], cfg["seed"])
    with atomic_path(paths.EMBEDDINGS, directory=True) as tmp:
        np.save(tmp / "matrix.npy", matrix)
    report = {"dim": int(matrix.shape[1]), "oov_init": cfg["oov"]}
    report |= coverage(vocab, found, np.load(paths.TOKENIZED / "train.npz")["x"], cfg["top_oov"])
    write_json(paths.EMBEDDINGS_METRICS, report)
    print(
        f"embeddings: {matrix.shape[0]} x {matrix.shape[1]}; vocabulary coverage "
        f"{report['vocab_coverage']:.3f}, training-token coverage {report['train_token_coverage']:.3f}"
    )


if __name__ == "__main__":
    run_main(main)
