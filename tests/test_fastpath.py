"""The serving fast path (pipeline/fastpath.py) computes what scikit-learn's own pipeline does,
for every TF-IDF model setting that changes its steps."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from test_models import TFIDF, configs, tiny_texts  # noqa: F401 (configs: a fixture)

from pipeline.fastpath import BATCH, compile_pipeline, tfidf_weights
from pipeline.models import get_spec

QUERIES = ["orbit launch of the shuttle", "engine and brake brake brake", "pixel texture render", "",
           "unseen words only", "Subject: the moon\n\norbit orbit nasa and the tire"]
SETTINGS = [
    {},
    {"hash_bits": None},
    {"hash_bits": 20},
    {"sublinear_tf": False},
    {"solver": "saga"},
    {"variant": "multinomial"},
    {"ngram_max": 1, "max_features": 5},
]


@pytest.mark.parametrize("change", SETTINGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "params")
@pytest.mark.parametrize("name", TFIDF)
def test_fast_path_gives_scikit_learns_probabilities(configs, name, change):  # noqa: F811
    cfg = {**configs[name], **{k: v for k, v in change.items() if k in configs[name]}}
    texts, labels = tiny_texts()
    model = get_spec(name).build(cfg).fit(texts, labels)
    fast = compile_pipeline(model)
    expected = model.predict_proba(QUERIES)
    np.testing.assert_allclose(fast(QUERIES), expected, rtol=1e-5, atol=1e-7)
    for query, row in zip(QUERIES, expected):  # one document at a time, as served
        np.testing.assert_allclose(fast([query])[0], row, rtol=1e-5, atol=1e-7)
    many = QUERIES * (BATCH // len(QUERIES) + 2)  # more than one pass through the steps
    np.testing.assert_allclose(fast(many), model.predict_proba(many), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", ["l2", "l1", None])
@pytest.mark.parametrize("sublinear", [True, False])
def test_tfidf_weights_are_tfidf_transformers(norm, sublinear):
    from sklearn.feature_extraction.text import TfidfTransformer

    rng = np.random.default_rng(0)
    counts = sp.random(6, 30, density=0.3, format="csr", random_state=1, dtype=np.float32)
    counts.data = rng.integers(1, 5, counts.nnz).astype(np.float32)
    counts = sp.csr_matrix(counts.toarray() * (np.arange(6) != 2)[:, None])  # row 2 empty
    step = TfidfTransformer(norm=norm, sublinear_tf=sublinear).fit(counts)
    ours = tfidf_weights(counts.copy(), step.idf_, sublinear, norm)
    np.testing.assert_allclose(ours.toarray(), step.transform(counts).toarray(), rtol=1e-6)
    assert ours.dtype == np.float32


def test_prediction_records_are_pandas_records():
    import pandas as pd

    from pipeline.classifier import Predictions

    frame = Predictions(np.random.default_rng(0).random((3, 4)), columns=["a.b", "c", "d", "e"])
    frame.insert(0, "label", ["c", "d", "a.b"])
    plain = pd.DataFrame(frame)
    records = frame.to_dict(orient="records")
    assert records == plain.to_dict(orient="records")
    assert [list(map(type, r.values())) for r in records] == [[str] + [float] * 4] * 3  # what JSON takes
    assert frame.to_dict() == plain.to_dict() and frame.to_dict("list") == plain.to_dict("list")
    assert Predictions(columns=["label", "a"]).to_dict(orient="records") == []
