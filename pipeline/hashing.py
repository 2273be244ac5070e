"""The hashed TF-IDF's counts for a whole batch at once: what HashingVectorizer with the
`models.word_ngrams` analyzer counts, computed with numpy instead of one Python object per n-gram.

On ASCII text (all but 73 of the corpus's 18,846 documents) scikit-learn's token pattern
`\\b\\w\\w+\\b` finds the runs of two or more of [A-Za-z0-9_]. Every ASCII text of a batch is
lowercased and its other bytes made spaces, its tokens laid out one space apart in one buffer, so
that each n-gram ("w1 w2") is one span of that buffer; the spans are then hashed together by
MurmurHash3 (x86, 32 bits, seed 0: scikit-learn's FeatureHasher) and reduced to columns as
FeatureHasher does. Other texts are analyzed by `word_ngrams` itself, their n-grams hashed the
same way. tests/test_hashing.py checks the counts against HashingVectorizer's.
"""
from __future__ import annotations

import string
from typing import Callable

import numpy as np
from scipy.sparse import csr_matrix

from .models import weight_subject, word_ngrams

SPACE = 32
# a word byte lowercased, any other byte a space
WORD_BYTES = bytes(c if chr(c) in string.ascii_letters + string.digits + "_" else SPACE for c in range(256))
WORD_BYTES = WORD_BYTES.translate(bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode()))

U32 = np.uint32
C1, C2, C3, C4, C5 = U32(0xCC9E2D51), U32(0x1B873593), U32(0xE6546B64), U32(0x85EBCA6B), U32(0xC2B2AE35)


def words_at(buffer: bytes) -> np.ndarray:
    """uint32: the 4 bytes starting at each offset of the buffer (to its last whole 4 bytes),
    little-endian: MurmurHash3's blocks, wherever a span starts."""
    count = len(buffer) // 4
    shifted = [np.frombuffer(buffer, "<u4", count=count - (offset > 0), offset=offset) for offset in range(4)]
    out = np.empty(4 * count - 3, dtype=U32)
    for offset, words in enumerate(shifted):
        out[offset::4] = words[: len(out[offset::4])]
    return out


def rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << U32(r)) | (x >> U32(32 - r))


def scramble(k: np.ndarray) -> np.ndarray:
    k *= C1
    k = rotl(k, 15)
    k *= C2
    return k


def murmur3(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """MurmurHash3_x86_32 (seed 0) of each span buffer[start : start + length], as int32 (what
    sklearn.utils.murmurhash3_32 gives); `words` is `words_at(buffer)`, the buffer padded with at
    least 3 bytes past its last span."""
    blocks = lengths // 4
    # the first block of every span at once (most have one), kept where there is one
    h = np.where(blocks > 0, rotl(scramble(words[starts]), 13) * U32(5) + C3, U32(0))
    hashing, k = np.flatnonzero(blocks > 1), 1  # the spans with a k-th block
    while len(hashing):
        h[hashing] = rotl(h[hashing] ^ scramble(words[starts[hashing] + 4 * k]), 13) * U32(5) + C3
        k += 1
        hashing = hashing[blocks[hashing] > k]
    tail = (lengths & 3).astype(U32)  # bytes after the last block: none scrambles to 0, a no-op
    h ^= scramble(words[starts + 4 * blocks] & ((U32(1) << (U32(8) * tail)) - U32(1)))
    h ^= lengths.astype(U32)
    h ^= h >> U32(16)
    h *= C4
    h ^= h >> U32(13)
    h *= C5
    h ^= h >> U32(16)
    return h.view(np.int32)


def column_of(hashes: np.ndarray, n_features: int) -> np.ndarray:
    """FeatureHasher's column for each signed 32-bit hash: |h| mod n_features (in 64 bits, so that
    -2**31 has an absolute value; scikit-learn's own rule for it gives the same column)."""
    return np.abs(hashes.astype(np.int64)) % n_features


def hash_strings(strings: list[bytes]) -> np.ndarray:
    """MurmurHash3_x86_32 (seed 0) of each string, as int32."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    return murmur3(words_at(b" ".join(strings) + b" " * 8), np.cumsum(lengths + 1) - (lengths + 1), lengths)


def ascii_ngrams(texts: list[str], subject_weight: int, ngram_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-grams of ASCII `texts` as `word_ngrams` makes them: (row of each n-gram, its hash)."""
    texts = [weight_subject(text, subject_weight).encode() for text in texts]
    # a space before the texts and after each: every word starts and ends where the byte before
    # differs, and text i starts at byte row_starts[i]
    row_starts = np.cumsum([1] + [len(t) + 1 for t in texts])[: len(texts)]
    raw = np.frombuffer(bytearray(b" " + b" ".join(texts).translate(WORD_BYTES) + b" "), dtype=np.uint8)
    word = raw != SPACE
    edges = np.flatnonzero(word[1:] != word[:-1])  # the byte before each word's first and after its last
    starts, lengths = edges[0::2] + 1, edges[1::2] - edges[0::2]
    word[starts[lengths == 1]] = False  # one-letter tokens are not tokens
    long = lengths >= 2
    starts, lengths = starts[long], lengths[long]
    # the texts' tokens are in order: each text's count, from where its first byte falls among them
    per_text = np.diff(np.searchsorted(starts, row_starts), append=len(starts))
    rows = np.repeat(np.arange(len(texts)), per_text)
    # the tokens one space apart (each word byte, and the byte after a word: a space)
    word[1:] |= word[:-1].copy()
    joined = np.concatenate([raw[word], np.full(8, SPACE, dtype=np.uint8)])
    offsets = np.cumsum(lengths + 1) - (lengths + 1)  # token i at offsets[i]
    span_rows, span_starts, span_lengths = [rows], [offsets], [lengths]
    for n in range(2, ngram_max + 1):
        first = np.flatnonzero(rows[: len(rows) - n + 1] == rows[n - 1 :])  # n tokens of one text
        last = first + n - 1
        span_rows.append(rows[first])
        span_starts.append(offsets[first])
        span_lengths.append(offsets[last] + lengths[last] - offsets[first])
    hashes = murmur3(words_at(joined.tobytes()), np.concatenate(span_starts), np.concatenate(span_lengths))
    return np.concatenate(span_rows), hashes


def count_matrix(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int], dtype) -> csr_matrix:
    """The CSR matrix counting each (row, column) pair, indices sorted: by one sort of the pairs
    as integer keys (scipy's duplicate summing, a sort per row, took three times as long), 32-bit
    where rows and columns fit (a 64-bit sort took about twice as long)."""
    bits = max(int(shape[1] - 1).bit_length(), 1)
    key_type = np.int32 if shape[0] <= 1 << (31 - bits) else np.int64
    keys = np.sort((rows.astype(key_type) << bits) | columns.astype(key_type))
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(starts, append=len(keys)).astype(dtype)
    keys = keys[starts]
    indptr = np.searchsorted(keys >> bits, np.arange(shape[0] + 1))
    return csr_matrix((counts, (keys & ((1 << bits) - 1)).astype(np.int32), indptr), shape=shape)


class ColumnSet:
    """Sorted distinct columns in [0, width), looked up many at a time: which are in the set and
    their positions in it. A bitmap with the count of set bits before each 64-bit word: 2 MB for
    2**24 columns, and a tenth of the time of a binary search over tfidf_logreg's 368k."""

    def __init__(self, columns: np.ndarray, width: int):
        flags = np.zeros(-(-width // 64) * 64, dtype=bool)
        flags[columns] = True
        self.bits = np.packbits(flags, bitorder="little").view("<u8")
        ones = np.bitwise_count(self.bits)
        self.before = np.cumsum(ones, dtype=np.int64) - ones

    def positions(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether each column is in the set, its position in the set where it is)."""
        word, bit = columns >> 6, (columns & 63).astype(np.uint64)
        bits = self.bits[word]
        found = ((bits >> bit) & np.uint64(1)).astype(bool)
        return found, self.before[word] + np.bitwise_count(bits & ((np.uint64(1) << bit) - np.uint64(1)))


def bulk_counts(vectorizer, kept: np.ndarray | None = None) -> Callable[[list[str]], csr_matrix] | None:
    """texts -> `vectorizer.transform(texts)` computed in bulk, for a HashingVectorizer counting
    `word_ngrams` (None for any other vectorizer). With `kept`, sorted columns, only those columns,
    numbered in order: the counts DocFrequencyFilter(columns_=kept) leaves."""
    from sklearn.feature_extraction.text import HashingVectorizer

    analyzer = getattr(vectorizer, "analyzer", None)
    if not (isinstance(vectorizer, HashingVectorizer) and getattr(analyzer, "func", None) is word_ngrams
            and not vectorizer.alternate_sign and vectorizer.norm is None and not vectorizer.binary
            and vectorizer.input == "content"):
        return None
    weight, ngram_max = analyzer.keywords["subject_weight"], analyzer.keywords["ngram_max"]
    dtype, width = vectorizer.dtype, vectorizer.n_features if kept is None else len(kept)
    kept = None if kept is None else ColumnSet(kept, vectorizer.n_features)

    def counts(texts: list[str]) -> csr_matrix:
        plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
        rows, hashes = ascii_ngrams([t for t, a in zip(texts, plain) if a], weight, ngram_max)
        rows = np.flatnonzero(plain)[rows]
        if not plain.all():  # the analyzer itself, its n-grams hashed together
            other = np.flatnonzero(~plain)
            grams = [[g.encode() for g in analyzer(texts[i])] for i in other]
            rows = np.concatenate([rows, np.repeat(other, [len(g) for g in grams])])
            hashes = np.concatenate([hashes, hash_strings([g for row in grams for g in row])])
        columns = column_of(hashes, vectorizer.n_features)
        if kept is not None:
            found, position = kept.positions(columns)
            rows, columns = rows[found], position[found]
        return count_matrix(rows, columns, (len(texts), width), dtype)

    return counts
