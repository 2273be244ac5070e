"""A fitted scikit-learn text pipeline as a chain of plain functions, for serving.

For one document, scikit-learn's per-call work (input validation, dataframe detection, sparse
matrix checks) costs more than the arithmetic: the TF-IDF models took 1.6 ms a document. The
steps below do that arithmetic on the fitted attributes directly, in the same order and dtype;
a step of any other kind runs as itself. tests/test_fastpath.py checks each against
scikit-learn's own `transform`/`predict_proba`.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.special import expit, softmax

# texts per pass through the steps: the hashed counts of 512 texts make temporaries of megabytes,
# which the allocator handed back to the system and faulted in again on every call; 256 at a time,
# tfidf_logreg's batches of 512 ran 1.2-1.5 times as fast
BATCH = 256


def flatten(pipeline) -> list:
    """A fitted Pipeline's steps, nested pipelines flattened."""
    steps = []
    for step in getattr(pipeline, "steps", None) or [(None, pipeline)]:
        steps += flatten(step[1]) if hasattr(step[1], "steps") else [step[1]]
    return steps


def row_of_each_entry(x: csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))


def tfidf_weights(x: csr_matrix, idf: np.ndarray | None, sublinear: bool, norm: str | None) -> csr_matrix:
    """TfidfTransformer.transform's arithmetic on a fresh count matrix (changed in place)."""
    if sublinear:
        np.log(x.data, out=x.data)
        x.data += 1
    if idf is not None:
        x.data *= idf[x.indices]
    if norm is not None:  # as sklearn.preprocessing.normalize: sums in float64, zero rows kept
        row = row_of_each_entry(x)
        values = x.data.astype(np.float64)
        total = np.bincount(row, values * values if norm == "l2" else np.abs(values), minlength=x.shape[0])
        if norm == "l2":
            total = np.sqrt(total)
        total[total == 0] = 1
        x.data /= total[row]
    return x


def term_counts(vectorizer, texts: list[str]) -> csr_matrix:
    """CountVectorizer.transform: the counts of the vocabulary's terms, one row per text."""
    analyze, column = vectorizer.build_analyzer(), vectorizer.vocabulary_.get
    indptr, indices, values = [0], [], []
    for text in texts:
        for term, count in Counter(analyze(text)).items():
            j = column(term)
            if j is not None:
                indices.append(j)
                values.append(1 if vectorizer.binary else count)
        indptr.append(len(indices))
    x = csr_matrix((np.asarray(values, dtype=vectorizer.dtype), np.asarray(indices, dtype=np.int32),
                    np.asarray(indptr, dtype=np.int32)), shape=(len(texts), len(vectorizer.vocabulary_)))
    x.sort_indices()
    return x


def transform_of(step) -> Callable:
    from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

    if isinstance(step, TfidfVectorizer):  # before TfidfTransformer's check: it is a CountVectorizer
        idf = step.idf_ if step.use_idf else None
        return lambda texts: tfidf_weights(term_counts(step, texts), idf, step.sublinear_tf, step.norm)
    if isinstance(step, TfidfTransformer):
        idf = step.idf_ if step.use_idf else None
        return lambda x: tfidf_weights(csr_matrix(x, copy=True), idf, step.sublinear_tf, step.norm)
    return step.transform


def transforms_of(steps: list) -> list[Callable]:
    """The steps' transforms; hashed n-gram counts made in bulk (hashing.py), fused with the
    column filter after them."""
    from .features import DocFrequencyFilter
    from .hashing import bulk_counts

    calls, i = [], 0
    while i < len(steps):
        after = steps[i + 1] if i + 1 < len(steps) else None
        fused = bulk_counts(steps[i], after.columns_) if isinstance(after, DocFrequencyFilter) else None
        calls.append(fused or bulk_counts(steps[i]) or transform_of(steps[i]))
        i += 2 if fused else 1
    return calls


def proba_of(step) -> Callable:
    """The final step's predict_proba; for the linear models, x @ W + b then their link, with W
    stored in Fortran order (scipy would copy a transposed C-ordered coef_ on every call: 20 x
    368k floats for tfidf_logreg, 10 ms a document)."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.naive_bayes import ComplementNB, MultinomialNB

    def linear(matrix: np.ndarray, bias: np.ndarray | None, link: Callable) -> Callable:
        weights = np.asfortranarray(matrix).T

        def predict(x):
            scores = np.asarray(x @ weights)
            return link(scores + bias if bias is not None else scores)

        return predict

    n_classes = len(getattr(step, "classes_", ()))
    if isinstance(step, SGDClassifier) and step.loss == "log_loss" and n_classes > 2:
        def one_vs_rest(scores):  # SGDClassifier._predict_proba_lr
            prob = expit(scores)
            total = prob.sum(axis=1, keepdims=True)
            return np.where(total == 0, 1.0 / prob.shape[1], prob / np.where(total == 0, 1, total))

        return linear(step.coef_, step.intercept_, one_vs_rest)
    if isinstance(step, LogisticRegression) and n_classes > 2:
        return linear(step.coef_, step.intercept_, lambda scores: softmax(scores, axis=1))
    if isinstance(step, ComplementNB) and n_classes > 1:
        return linear(step.feature_log_prob_, None, lambda scores: softmax(scores, axis=1))
    if isinstance(step, MultinomialNB):
        return linear(step.feature_log_prob_, step.class_log_prior_, lambda scores: softmax(scores, axis=1))
    return step.predict_proba


def compile_pipeline(pipeline) -> Callable[[list[str]], np.ndarray]:
    """texts -> probabilities [texts, classes], as `pipeline.predict_proba` computes them."""
    from sklearn import config_context

    steps = flatten(pipeline)
    calls = transforms_of(steps[:-1]) + [proba_of(steps[-1])]

    def run(texts: list[str]) -> np.ndarray:
        for call in calls:
            texts = call(texts)
        return texts

    def predict_proba(texts: list[str]) -> np.ndarray:
        # the steps left to scikit-learn (the sentence encoder, other vectorizers): the inputs
        # are texts, no NaN to look for, and the fitted parameters were checked when fitted
        with config_context(assume_finite=True, skip_parameter_validation=True):
            return np.concatenate([run(texts[i : i + BATCH]) for i in range(0, max(len(texts), 1), BATCH)])

    return predict_proba
