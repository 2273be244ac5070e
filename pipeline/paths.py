"""Where the stages read and write, relative to the project root: each path is spelled here once
(dvc.yaml wires the same paths between the stages)."""
from __future__ import annotations

from pathlib import Path

PARAMS_VALID = Path("data/params_valid")  # check_params
ARCHIVE = Path("data/raw/20news-bydate.tar.gz")  # fetch_corpus
PREPARED = Path("data/prepared")  # prepare: <split>.parquet
TOKENIZED = Path("data/tokenized")  # tokenize
GLOVE = Path("data/glove")  # fetch_glove
EMBEDDINGS = Path("data/embeddings")  # embeddings: the GloVe matrix of the vocabulary
ENCODER = Path("data/encoder")  # fetch_encoder: the sentence encoder's files
ENCODED = Path("data/encoded")  # encode: <split>.npy embeddings, encoder.pkl and meta.json
MODELS = Path("data/models")  # train@<model>: one directory a model
ENSEMBLE = Path("data/ensemble")  # not under data/models: that folder is the ensemble stage's input
EVAL = Path("data/eval")  # evaluate@<model>: predictions for the confusion plot
TEST_PROBS = Path("data/test_probs")  # evaluate@<model>: test probabilities for evaluate_ensemble

METRICS = Path("metrics")
DATA_METRICS = METRICS / "data.json"
EMBEDDINGS_METRICS = METRICS / "embeddings.json"
TRAIN_METRICS = METRICS / "train"  # <model>.json
HISTORY = METRICS / "history"  # <model>.csv, per epoch
EVAL_METRICS = METRICS / "eval"  # <model>.json
SUMMARY_JSON = METRICS / "summary.json"
SUMMARY_MD = METRICS / "summary.md"

SPLITS = ("train", "val", "test")


def split_file(split: str) -> Path:
    """prepare's parquet file of one split."""
    return PREPARED / f"{split}.parquet"
