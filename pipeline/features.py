"""Feature transformers scikit-learn lacks, for the TF-IDF models. A module of its own so that
importing the model registry (report, Keras serving) does not import scikit-learn."""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.base import BaseEstimator, TransformerMixin


class DocFrequencyFilter(TransformerMixin, BaseEstimator):
    """Keeps the columns of a count matrix that TfidfVectorizer's min_df/max_df/max_features
    would keep (documents with the term: at least min_df, at most max_df of them; then the
    max_features most frequent), for hashed counts, which have no vocabulary to prune."""

    def __init__(self, min_df: int = 1, max_df: float = 1.0, max_features: int | None = None):
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features

    def fit(self, x, y=None):
        x = x.tocsr()
        df = np.bincount(x.indices[x.data != 0], minlength=x.shape[1])
        keep = np.flatnonzero((df >= self.min_df) & (df <= self.max_df * x.shape[0]))
        if self.max_features is not None and len(keep) > self.max_features:
            counts = np.asarray(x[:, keep].sum(axis=0)).ravel()
            keep = np.sort(keep[np.argsort(-counts, kind="stable")[: self.max_features]])
        if not len(keep):
            raise ValueError("After pruning, no terms remain. Try a lower min_df or a higher max_df.")
        self.columns_ = keep
        return self

    def transform(self, x):
        """x[:, columns_] (columns_ is sorted), by binary search of each stored entry's column:
        scipy's column indexing costs the width of x (2**24 hashed columns, 28 ms for one
        document), this only its entries."""
        x = x.tocsr()
        position = np.searchsorted(self.columns_, x.indices)
        kept = self.columns_[np.minimum(position, len(self.columns_) - 1)] == x.indices
        indptr = np.concatenate([[0], np.cumsum(kept)])[x.indptr]
        return csr_matrix((x.data[kept], position[kept], indptr), shape=(x.shape[0], len(self.columns_)))
