"""sequences.token_ids, the plain-Python twin of the TextVectorization layer that serving uses:
the same ids as the layer, for every standardization, on text with the corner cases of the corpus
(non-ASCII letters, Unicode whitespace, punctuation inside words, empty documents), in texts that
are all ASCII and texts that are not."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.sequences import make_vectorizer, token_ids
from pipeline.tokenize import STANDARDIZE

TEXTS = [
    "École ÉCOLE école Zürich ZÜRICH",  # only ASCII letters are lowercased
    "a\xa0b c\x1cd x\u2003y e\x85f",  # Unicode whitespace is not a separator
    "g\x1ch I\x1fJ k",  # nor, in an all-ASCII text, the ASCII separators str.split knows
    "Don't stop: A.B, (c) [d] {e} f-g h_i j@k #1 $2 ~x~ `y` \"z\" a+b=c",
    "a\tb\nb\x0ba\x0cb\rA  \t  end",  # ASCII whitespace, in runs
    "",
    "   \n\t",
    "!!! ... ---",  # nothing left after the punctuation goes
    " ".join(f"w{i % 7}" for i in range(40)),  # longer than max_len
    "unseen words only: qwerty asdfgh",
]
MAX_LEN = 12


@pytest.mark.parametrize("standardize", STANDARDIZE)
def test_token_ids_equal_the_layers(standardize):
    adapted = make_vectorizer(None, MAX_LEN, standardize, max_tokens=30)
    adapted.adapt(np.asarray(TEXTS[:-1], dtype=object))
    vocab = adapted.get_vocabulary()
    layer = make_vectorizer(vocab, MAX_LEN, standardize)
    expected = np.asarray(layer(np.asarray(TEXTS, dtype=object)))
    ids = token_ids(vocab, MAX_LEN, standardize)
    np.testing.assert_array_equal(ids(TEXTS), expected)
    assert (expected == 1).any() and (expected[TEXTS.index("")] == 0).all()  # out-of-vocabulary words and an empty row were met
    # as a vocabulary without the padding and [UNK] entries, as make_vectorizer also takes it
    np.testing.assert_array_equal(token_ids(vocab[2:], MAX_LEN, standardize)(TEXTS), expected)


def test_trim_drops_only_the_columns_of_padding():
    vocab = ["", "[UNK]", "a", "b"]
    ids = token_ids(vocab, 6, "lower_and_strip_punctuation")
    full, trimmed = ids(["a b", "B a b a", ""]), ids(["a b", "B a b a", ""], trim=True)
    assert full.shape == (3, 6) and trimmed.shape == (3, 4)
    np.testing.assert_array_equal(trimmed, full[:, :4])
    assert ids(["", "!!"], trim=True).shape == (2, 1)  # never zero columns
    assert ids([], trim=True).shape == (0, 1) and ids([]).shape == (0, 6)


def test_the_other_separators_are_those_str_split_knows():
    """token_ids splits with str.split unless a text holds a character str.split takes for
    whitespace and the layer does not: that list must be complete."""
    import sys

    from pipeline.sequences import ASCII_SPACE, OTHER_SPACE

    python_space = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    assert python_space == set(ASCII_SPACE) | set(OTHER_SPACE)
