"""The hashed TF-IDF's bulk counts (pipeline/hashing.py) are HashingVectorizer's, n-gram for n-gram."""
from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.features import DocFrequencyFilter
from pipeline.hashing import ColumnSet, bulk_counts, count_matrix, hash_strings
from pipeline.models import word_ngrams

TEXTS = [
    "Subject: Re: Orbit LAUNCH\nFrom: a@b.c\n\nThe launch pad, the pad; a b c 2x 1993! snake_case __init__",
    "",
    "   \t\n ",
    "x y z",  # one-letter words only: no token
    "Subject: x\n\n",
    "über-naïve café, déjà vu",  # not ASCII: scikit-learn's analysis, hashed in bulk
    "no\xa0break\u2009thin and \x1cfile\x1fseparators",  # spaces for str.split, not for \\b\\w\\w+\\b
    "abcd abcdefgh abcdefghijkl " + "x" * 41 + " end",  # spans of whole 4-byte blocks, and a long one
    "Repeated repeated REPEATED words words, repeated.",
    "tabs\tand\r\nnewlines\vand\fform feeds",
    "g07ll6l7 hashes to -2**31",  # whose absolute value int32 lacks
]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghij0123456789_ ,.;:!?'-\n\tABCDE" + "éü\xa0"
    return [
        (f"Subject: {''.join(rng.choices(alphabet, k=rng.randint(0, 12)))}\n\n" if rng.random() < 0.5 else "")
        + "".join(rng.choices(alphabet[:-3] if rng.random() < 0.8 else alphabet, k=rng.randint(0, 80)))
        for _ in range(count)
    ]


def vectorizer(weight: int, ngram_max: int, n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    analyzer = functools.partial(word_ngrams, subject_weight=weight, ngram_max=ngram_max)
    return HashingVectorizer(analyzer=analyzer, n_features=n_features, alternate_sign=False, norm=None, dtype=np.float32)


def assert_same(ours: sp.csr_matrix, theirs: sp.csr_matrix) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert ours.has_sorted_indices
    theirs = theirs.copy()
    theirs.sum_duplicates()
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_array_equal(ours.data, theirs.data)


def test_hashes_are_scikit_learns_murmurhash3():
    from sklearn.utils import murmurhash3_32

    strings = [b"", b"a", b"ab", b"abc", b"abcd", b"the launch", "caf\xe9 d\xe9j\xe0".encode(), b"g07ll6l7"]
    strings += [bytes(random.Random(n).choices(range(256), k=n)) for n in range(1, 40)]
    assert hash_strings(strings).tolist() == [murmurhash3_32(s, seed=0) for s in strings]


@pytest.mark.parametrize("n_features", [2**10, 1000])  # few: n-grams share columns; 1000: not 2**k
@pytest.mark.parametrize("ngram_max", [1, 2, 3])
@pytest.mark.parametrize("weight", [1, 3])
def test_bulk_counts_are_hashing_vectorizers(weight, ngram_max, n_features):
    texts = TEXTS + random_texts(200)
    step = vectorizer(weight, ngram_max, n_features)
    counts = bulk_counts(step)
    assert_same(counts(texts), step.transform(texts))
    for text in TEXTS:  # one document at a time, as served
        assert_same(counts([text]), step.transform([text]))
    assert counts([]).shape == (0, n_features)  # (scikit-learn's raises)


def test_bulk_counts_keep_the_columns_the_document_frequency_filter_keeps():
    texts = TEXTS + random_texts(200, seed=1)
    step = vectorizer(3, 2, 2**12)
    hashed = step.transform(texts)
    keep = DocFrequencyFilter(min_df=2, max_df=0.2).fit(hashed)
    assert 0 < len(keep.columns_) < hashed.shape[1] / 4
    assert_same(bulk_counts(step, keep.columns_)(texts), keep.transform(hashed))


def test_other_vectorizers_are_left_to_scikit_learn():
    from sklearn.feature_extraction.text import HashingVectorizer

    assert bulk_counts(HashingVectorizer()) is None  # its own analyzer
    signed = vectorizer(3, 2, 2**10).set_params(alternate_sign=True)
    assert bulk_counts(signed) is None
    assert bulk_counts(vectorizer(3, 2, 2**10).set_params(norm="l2")) is None


def test_column_set_positions():
    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(5000, 300, replace=False))
    queries = rng.integers(0, 5000, 2000)
    found, position = ColumnSet(kept, 5000).positions(queries)
    np.testing.assert_array_equal(found, np.isin(queries, kept))
    np.testing.assert_array_equal(position[found], np.searchsorted(kept, queries[found]))


@pytest.mark.parametrize("shape", [(8, 40), (8, 2**24), (600, 2**23)])  # the last: pairs past 31 bits
def test_count_matrix_counts_pairs(shape):
    rng = np.random.default_rng(0)
    rows, columns = rng.integers(0, shape[0] - 1, 500), rng.integers(0, shape[1], 500)
    rows[rows == 3] = 4  # an empty row
    rows[:2], columns[:2] = shape[0] - 2, shape[1] - 1  # the largest pair, twice
    expected = sp.csr_matrix((np.ones(500, dtype=np.float32), (rows, columns)), shape=shape)
    assert_same(count_matrix(rows, columns, shape, np.float32), expected)
