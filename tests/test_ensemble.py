"""Unit tests of the ensemble's pooling and weight fitting (pipeline/ensemble.py, classifier.pool)
on generated member probabilities, and of loading a saved ensemble directory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import check_grad

from pipeline.classifier import VAL_PROBS, Classifier, pool, save_sklearn
from pipeline.common import PipelineError
from pipeline.ensemble import crossfit_accuracy, fit_weights, log_pool_loss

CLASSES = 5


def members(n: int = 400, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Two members: `flat` is always right but barely above uniform (like one-vs-rest SGD);
    `sure` puts 0.9 on its answer and is right 60 % of the time (like an over-confident network)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    flat = np.full((n, CLASSES), 0.9 / (CLASSES - 1))
    flat[np.arange(n), y] = 0.1 + 0.9 / (CLASSES - 1)
    flat /= flat.sum(axis=1, keepdims=True)
    answer = np.where(rng.random(n) < 0.6, y, (y + rng.integers(1, CLASSES, n)) % CLASSES)
    sure = np.full((n, CLASSES), 0.1 / (CLASSES - 1))
    sure[np.arange(n), answer] = 0.9
    return [flat, sure], y


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def test_log_pool_gives_distributions_even_with_zero_probabilities():
    probs, _ = members(50)
    probs[1][:, 0] = 0.0  # a member certain a class is impossible must not veto it into NaN
    out = pool(probs, np.array([2.0, 0.5]), "log")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-9)


def test_linear_pool_is_the_weighted_mean():
    probs, _ = members(20)
    np.testing.assert_allclose(pool(probs, np.array([3.0, 1.0]), "linear"), 0.75 * probs[0] + 0.25 * probs[1])


def test_log_pool_loss_gradient_matches_finite_differences():
    probs, y = members(100)
    logs = np.stack([np.log(p) for p in probs])
    for w in ([1.0, 1.0], [5.0, 0.2], [0.0, 3.0]):
        assert check_grad(lambda v: log_pool_loss(v, logs, y)[0], lambda v: log_pool_loss(v, logs, y)[1], w) < 1e-6


def test_log_weights_sharpen_the_flat_member_that_is_right():
    probs, y = members()
    weights = fit_weights(probs, y, "log")
    assert (weights >= 0).all() and weights[0] > 5 * weights[1]
    assert weights[0] > 1.0  # sharpened: a weight above 1 is an inverse temperature below 1
    assert accuracy(pool(probs, weights, "log"), y) == 1.0


def test_linear_weights_are_a_convex_combination():
    probs, y = members()
    weights = fit_weights(probs, y, "linear")
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)


def test_crossfit_accuracy_of_separable_members():
    probs, y = members(301)
    assert crossfit_accuracy(probs, y, "log", seed=0) == 1.0
    # a weighted mean cannot sharpen the flat member: the over-confident one still outvotes it
    assert crossfit_accuracy(probs, y, "linear", seed=0) < 0.9


@pytest.fixture()
def saved_ensemble(tmp_path):
    """An ensemble directory of two tiny naive-Bayes members, as the ensemble stage lays it out."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    texts = ["space orbit nasa", "orbit launch moon", "hockey goal team", "team season goal"]
    labels = [0, 0, 1, 1]
    for name, alpha in (("a", 1.0), ("b", 0.1)):
        (tmp_path / name).mkdir()
        save_sklearn(tmp_path / name, make_pipeline(CountVectorizer(), MultinomialNB(alpha=alpha)).fit(texts, labels), ["sci", "sport"], name)

    def write(**meta):
        body = {"model": "ensemble", "kind": "ensemble", "classes": ["sci", "sport"], "members": ["a", "b"], "weights": [1.5, 0.5],
                "pooling": "linear"}
        (tmp_path / "meta.json").write_text(json.dumps({k: v for k, v in (body | meta).items() if v is not None}))
        return tmp_path

    return write


def test_saved_ensemble_predicts_with_its_pooling(saved_ensemble):
    directory = saved_ensemble(pooling="log")
    ensemble = Classifier(directory)
    texts = ["nasa moon launch", "goal for the team"]
    expected = pool([Classifier(directory / m).predict_proba(texts).astype(np.float64) for m in "ab"], np.array([1.5, 0.5]), "log")
    np.testing.assert_allclose(ensemble.predict_proba(texts), expected, rtol=1e-5)
    assert ensemble.predict_frame(texts)["label"].tolist() == ["sci", "sport"]


def test_saved_ensemble_without_pooling_names_the_file(saved_ensemble):
    """The ensemble stage always writes its pooling: a meta.json without one is not guessed at."""
    assert Classifier(saved_ensemble()).pooling == "linear"
    with pytest.raises(PipelineError, match=r"meta\.json: unknown pooling None"):
        Classifier(saved_ensemble(pooling=None))


def test_saved_ensemble_with_unknown_pooling_names_the_file(saved_ensemble):
    with pytest.raises(PipelineError, match=r"meta\.json: unknown pooling 'max'"):
        Classifier(saved_ensemble(pooling="max"))


def test_evaluate_ensemble_pools_the_members_saved_test_probabilities(saved_ensemble, tmp_path, monkeypatch):
    """evaluate_ensemble's figures come from the members' saved test probabilities: they must be
    what the saved ensemble computes from raw text."""
    from pipeline import evaluate

    directory = saved_ensemble(pooling="log")
    monkeypatch.chdir(tmp_path)
    texts = ["nasa moon launch", "goal for the team", "orbit team"]
    Path("data/test_probs").mkdir(parents=True)
    for m, seconds in (("a", 0.25), ("b", 0.5)):
        np.savez(f"data/test_probs/{m}.npz", probs=Classifier(directory / m).predict_proba(texts), inference_seconds=seconds)
    probs, classes, seconds = evaluate.ensemble_proba(directory, len(texts))
    np.testing.assert_allclose(probs, Classifier(directory).predict_proba(texts), rtol=1e-5)
    assert classes == ["sci", "sport"] and 0.75 <= seconds < 1.0
    with pytest.raises(PipelineError, match=r"^data/test_probs/a\.npz: shape \(3, 2\), expected \(4, 2\)"):
        evaluate.ensemble_proba(directory, 4)
    Path("data/test_probs/b.npz").unlink()
    with pytest.raises(PipelineError, match=r"^data/test_probs/b\.npz: missing: run evaluate@b first"):
        evaluate.ensemble_proba(directory, len(texts))


def members_in_data_models(saved_ensemble, tmp_path, monkeypatch) -> Path:
    """The fixture's members a and b moved to data/models/ (the ensemble stage's input), cwd tmp_path."""
    directory = saved_ensemble()
    monkeypatch.chdir(tmp_path)
    models = Path("data/models")
    models.mkdir(parents=True)
    for m in "ab":
        (directory / m).rename(models / m)
    return models


def test_ensemble_stage_needs_the_members_validation_probabilities(saved_ensemble, tmp_path, monkeypatch):
    from pipeline import ensemble

    models = members_in_data_models(saved_ensemble, tmp_path, monkeypatch)
    np.save(models / "a" / VAL_PROBS, np.full((3, 2), 0.5, dtype=np.float32))
    with pytest.raises(PipelineError, match=r"^data/models/b/val_probs\.npy: missing"):
        ensemble.member_val_probs(["a", "b"], 3)
    np.save(models / "b" / VAL_PROBS, np.full((2, 2), 0.5, dtype=np.float32))
    with pytest.raises(PipelineError, match=r"^data/models/b/val_probs\.npy: shape \(2, 2\), expected \(3, 2\)"):
        ensemble.member_val_probs(["a", "b"], 3)
    np.save(models / "b" / VAL_PROBS, np.eye(2, dtype=np.float32)[[0, 1, 1]])
    probs, classes = ensemble.member_val_probs(["a", "b"], 3)
    assert classes == ["sci", "sport"] and probs[1].tolist() == [[1, 0], [0, 1], [0, 1]]
    with pytest.raises(PipelineError, match=r"ensemble\.members: 'c' has no trained model in data/models"):
        ensemble.member_val_probs(["a", "c"], 3)


def test_ensemble_stage_saves_only_the_members_it_weights(saved_ensemble, tmp_path, monkeypatch):
    """A member whose fitted weight is 0 (here: sure of the wrong class on every validation
    document) is left out of the saved model; the saved ensemble then pools exactly what the weights say."""
    import shutil

    import pandas as pd

    from pipeline import ensemble, paths

    models = members_in_data_models(saved_ensemble, tmp_path, monkeypatch)
    shutil.copytree(models / "b", models / "c")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)

    def member(right: float, sure: float) -> np.ndarray:
        """2-class probabilities that put `sure` on the true class for a `right` share of documents."""
        answer = np.where(rng.random(len(y)) < right, y, 1 - y)
        return np.where(np.eye(2)[answer] == 1, sure, 1 - sure).astype(np.float32)

    paths.PREPARED.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": ["some text"] * len(y), "label": y}).to_parquet(paths.split_file("val"))
    for m, probs in (("a", member(0.8, 0.7)), ("b", member(0.7, 0.6)), ("c", member(0.0, 0.9))):
        np.save(models / m / VAL_PROBS, probs)
    out = tmp_path / "out"
    out.mkdir()
    result = ensemble.build(["a", "b", "c"], "log", 0, out)
    assert result["weights"]["c"] == 0.0 and result["weights"]["a"] + result["weights"]["b"] > 0
    meta = json.loads((out / "meta.json").read_text())
    kept = [m for m in "abc" if result["weights"][m] > 0]
    assert meta["members"] == kept and sorted(p.name for p in out.iterdir() if p.is_dir()) == kept
    texts = ["nasa moon launch", "goal for the team", "orbit team"]
    expected = pool([Classifier(models / m).predict_proba(texts).astype(np.float64) for m in kept], np.array(meta["weights"]), "log")
    np.testing.assert_allclose(Classifier(out).predict_proba(texts), expected, rtol=1e-5)
