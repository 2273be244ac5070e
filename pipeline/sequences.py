"""Text as token-id sequences: the TextVectorization layer every Keras model uses, the same
computation in plain Python for serving without TensorFlow, and the tf.data helpers that feed ids
to Keras.

Index 0 is the padding value (so models can mask it) and 1 is [UNK]. Sequences are padded and cut
at the end ("post"): a document keeps its first `max_len` tokens, where the headers and the
opening of the message are, and the real tokens sit at the start of every row.
"""
from __future__ import annotations

import itertools
import re
import string
from pathlib import Path
from typing import Callable

import numpy as np

from . import paths
from .common import import_tensorflow, read_json


def make_vectorizer(vocabulary: list[str] | None, max_len: int, standardize: str, max_tokens: int | None = None):
    """The one way this project turns text into ids: used to adapt, to encode, and inside the
    raw-text models that are logged to MLflow."""
    import_tensorflow()
    import keras

    layer = keras.layers.TextVectorization(
        max_tokens=max_tokens,
        standardize=standardize,
        output_mode="int",
        output_sequence_length=max_len,
    )
    if vocabulary is not None:
        layer.set_vocabulary(vocabulary[2:] if vocabulary[:2] == ["", "[UNK]"] else vocabulary)
    return layer


# TextVectorization's standardization and split, in plain Python: lowercasing of ASCII letters
# only, its punctuation set removed, runs of ASCII whitespace as separators. An ASCII text (all
# but a few documents) is done as bytes, whose translate and split are what the layer does (split
# at exactly those six characters): 1.6-1.9 times the speed of the same on str. Python's str.split
# also splits at the other characters below (which the layer keeps inside tokens): where a text
# has one, a regular expression splits it instead. tests/test_sequences.py checks the ids against
# the layer's and the list against str.isspace.
LOWER = {ord(c): c.lower() for c in string.ascii_uppercase}
PUNCTUATION = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"
ASCII_SPACE = " \t\n\r\f\v"
OTHER_SPACE = "\x1c\x1d\x1e\x1f\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
OTHER_SPACE += "\u2028\u2029\u202f\u205f\u3000"
HAS_OTHER_SPACE = re.compile(f"[{OTHER_SPACE}]")
TOKEN = re.compile(f"[^{ASCII_SPACE}]+")


def token_ids(vocabulary: list[str], max_len: int, standardize: str) -> Callable[..., np.ndarray]:
    """What `make_vectorizer(vocabulary, max_len, standardize)` computes, without TensorFlow:
    texts -> int32 ids [texts, max_len]. With `trim`, the columns after the longest row's last
    token are left out (models that mask padding give the same output without them)."""
    if vocabulary[:2] != ["", "[UNK]"]:
        vocabulary = ["", "[UNK]", *vocabulary]
    lower, strip = "lower" in standardize, "strip_punctuation" in standardize
    lookup = {word: i for i, word in enumerate(vocabulary)}.get
    ascii_lookup = {word.encode(): i for i, word in enumerate(vocabulary) if word.isascii()}.get
    table = str.maketrans({**(LOWER if lower else {}), **(dict.fromkeys(map(ord, PUNCTUATION)) if strip else {})})
    ascii_table = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode()) if lower else None
    ascii_delete = PUNCTUATION.encode() if strip else b""
    unknown = itertools.repeat(1)

    def ascii_words(text: str) -> list[bytes]:
        return text.encode().translate(ascii_table, ascii_delete).split()

    def words(text: str) -> list[str]:
        text = text.translate(table)
        return TOKEN.findall(text) if HAS_OTHER_SPACE.search(text) else text.split()

    def ids(texts: list[str], trim: bool = False) -> np.ndarray:
        flat, lengths = [], []  # every row's ids, one after another
        for text in texts:
            start = len(flat)
            if text.isascii():
                flat.extend(map(ascii_lookup, ascii_words(text)[:max_len], unknown))
            else:
                flat.extend(map(lookup, words(text)[:max_len], unknown))
            lengths.append(len(flat) - start)
        lengths = np.asarray(lengths, dtype=np.int64)
        width = max(1, int(lengths.max(initial=0))) if trim else max_len
        out = np.zeros((len(texts), width), dtype=np.int32)
        out[np.arange(width) < lengths[:, None]] = np.asarray(flat, dtype=np.int32)  # row by row, each row's ids first
        return out

    return ids


def load_vectorizer(directory: Path = paths.TOKENIZED, max_len: int | None = None):
    """Rebuild the adapted vectorizer from a tokenize output (optionally with another length)."""
    config = read_json(directory / "config.json")
    vocab = read_json(directory / "vocab.json")
    return make_vectorizer(vocab, max_len or config["max_len"], config["standardize"])


def without_autotune(data):
    """`data` (a tf.data.Dataset) with tf.data autotuning off: the same batches, in the same order.

    Under TensorFlow 2.21 the autotune thread of an iterator sleeps between its optimization rounds
    and is not woken when the iterator is destroyed. Keras drops iterators twice per fit epoch and
    once per predict, and each drop stalled the stage for 4–10 s with both cores idle (measured
    with gdb: the main thread in ~RootDataset::Iterator, waiting on Model::OptimizeLoop)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def id_batches(ids: np.ndarray, batch_size: int):
    """Token ids in order, batched for Keras `predict` (which would make an autotuned pipeline)."""
    import tensorflow as tf

    return without_autotune(tf.data.Dataset.from_tensor_slices(ids).batch(batch_size))


def encode(vectorizer, texts: list[str], batch_size: int = 2048) -> np.ndarray:
    parts = [
        np.asarray(vectorizer(np.asarray(texts[i : i + batch_size], dtype=object)), dtype=np.int32)
        for i in range(0, len(texts), batch_size)
    ]
    width = vectorizer.get_config()["output_sequence_length"]
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.int32)
