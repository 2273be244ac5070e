"""evaluate.score on hand-checked predictions, the report's champion / table / registry logic, and the
evaluate stage on a small scikit-learn model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import GROUPS, TOPIC_WORDS, tiny_params, write_params

from pipeline import evaluate, report
from pipeline import params as P
from pipeline.classifier import Classifier, save_sklearn
from pipeline.common import PipelineError
from pipeline.models import REGISTRY, get_spec

# ---------------------------------------------------------------- score


def test_score_by_hand_equal_supports():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    result = evaluate.score(y_true, y_pred, ["a", "b", "c"])
    # a: 1 of 2 predicted right, 1 of 2 found; b: 2 of 3 right, 2 of 2 found; c: 1 of 1 right, 1 of 2 found
    assert result["accuracy"] == 0.6667  # 4 / 6
    assert result["per_class"] == {
        "a": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "b": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
        "c": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
    }
    assert result["macro_f1"] == 0.6556  # (0.5 + 0.8 + 2/3) / 3
    assert result["weighted_f1"] == 0.6556  # equal supports: the same


def test_score_by_hand_unequal_supports_and_absent_classes():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1])
    result = evaluate.score(y_true, y_pred, ["a", "b", "c", "d"])
    assert result["accuracy"] == 0.6667
    assert result["per_class"]["a"] == {"precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3}
    assert result["per_class"]["b"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 2}
    # never predicted, and never present: zeros, no warning-driven NaN
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["macro_f1"] == 0.3667  # (0.8 + 2/3 + 0 + 0) / 4
    assert result["weighted_f1"] == 0.6222  # (0.8 * 3 + 2/3 * 2) / 6
    json.dumps(result)  # plain JSON types only


def test_score_perfect():
    y = np.array([2, 0, 1, 1])
    result = evaluate.score(y, y, ["x", "y", "z"])
    assert result["accuracy"] == result["macro_f1"] == result["weighted_f1"] == 1.0
    assert [v["support"] for v in result["per_class"].values()] == [1, 2, 1]


# ---------------------------------------------------------------- champion and table


def row(model, val, test, seconds=10.0, **params):
    return {"model": model, "val_accuracy": val, "test_accuracy": test, "test_macro_f1": test - 0.01,
            "train_seconds": seconds, "epochs_run": 3, "docs_per_second": 100.0, "params": params,
            "mlflow_run_id": f"run-{model}"}


def test_champion_is_chosen_on_validation_not_test():
    rows = [row("a", 0.80, 0.95), row("b", 0.90, 0.70), row("c", 0.85, 0.99)]
    assert report.champion(rows)["model"] == "b"


def test_champion_tie_goes_to_the_faster_model():
    rows = [row("slow", 0.9, 0.9, seconds=50.0), row("fast", 0.9, 0.8, seconds=5.0), row("low", 0.5, 1.0, seconds=1.0)]
    assert report.champion(rows)["model"] == "fast"


def test_champion_tie_between_a_model_and_an_ensemble_goes_to_the_model(tmp_path, monkeypatch):
    """The ensemble's own fit is quicker than any member's, but it needs its members trained."""
    monkeypatch.chdir(tmp_path)
    for name, seconds in (("tfidf_logreg", 0.5), ("cbow", 3.0), ("ensemble", 0.1)):
        epochs = {} if name == "ensemble" else {"epochs_run": 1}  # the ensemble's weights are one fit, no epochs
        for folder, body in (("train", {"val_accuracy": 1.0, "train_seconds": seconds, **epochs, "mlflow_run_id": name}),
                             ("eval", {"accuracy": 1.0, "macro_f1": 1.0, "docs_per_second": 100.0})):
            Path(f"metrics/{folder}").mkdir(parents=True, exist_ok=True)
            Path(f"metrics/{folder}/{name}.json").write_text(json.dumps(body))
    rows = report.gather(["tfidf_logreg", "cbow", "ensemble"], {"ensemble": {"members": ["tfidf_logreg", "cbow"]}})
    assert [r["build_seconds"] for r in rows] == [0.5, 3.0, 3.6]
    assert report.champion(rows)["model"] == "tfidf_logreg"
    table = report.markdown(rows, rows[0]).splitlines()
    assert table[-1].startswith("| ensemble | 1.0000 |") and "| 0.1 | – |" in table[-1] and "| 0.5 | 1 |" in table[2]


def test_fast_choice_leaves_out_slow_models_and_ensembles_of_them():
    rows = [row("enc", 0.95, 0.9), row("ensemble", 0.97, 0.9, members=["enc", "a"]), row("a", 0.90, 0.8), row("b", 0.92, 0.7)]
    assert report.champion(rows)["model"] == "ensemble"
    assert report.fast_choice(rows, ["enc"])["model"] == "b"
    assert report.fast_choice(rows, [])["model"] == "ensemble"  # nothing declared slow: the champion
    assert report.fast_choice(rows[:2], ["enc"]) is None


def test_champion_of_nothing_is_an_error():
    with pytest.raises(PipelineError, match="no models"):
        report.champion([])


def test_markdown_marks_the_champion():
    rows = [row("a", 0.8, 0.95, C=20.0, ngram_max=2), row("b", 0.9, 0.7, seconds=12.34)]
    best = report.champion(rows)
    text = report.markdown(rows, best)
    lines = text.splitlines()
    assert lines[0].startswith("| model | val accuracy | test accuracy |")
    assert len(lines) == 2 + len(rows) and text.endswith("\n")
    assert text.count("(champion)") == 1
    assert lines[3].startswith("| **b** (champion) | 0.9000 | 0.7000 | 0.6900 | 12.3 | 3 |")
    assert lines[2] == "| a | 0.8000 | 0.9500 | 0.9400 | 10.0 | 3 | C=20.0, ngram_max=2 |"


@pytest.mark.parametrize(
    "name, cfg, shown",
    [
        ("tfidf_logreg", {"ngram_max": None, "solver": "sgd", "C": 30.0, "alpha": 1e-5, "seed": 1}, {"solver": "sgd", "alpha": 1e-5}),
        ("tfidf_logreg", {"ngram_max": None, "solver": "saga", "C": 30.0, "alpha": 1e-5, "seed": 1}, {"solver": "saga", "C": 30.0}),
        ("lstm", {"embedding": "glove", "embedding_dim": 100, "trainable": True}, {"embedding": "glove", "trainable": True}),
        ("lstm", {"embedding": "learned", "embedding_dim": 100, "trainable": True}, {"embedding": "learned", "embedding_dim": 100}),
        ("ensemble", {"members": ["a", "b"], "pooling": "log", "seed": 1}, {"members": ["a", "b"], "pooling": "log"}),
        ("not_registered", {"C": 1.0, "alpha": 0.1}, {}),
    ],
)
def test_key_params_leave_out_what_the_config_does_not_read(name, cfg, shown):
    assert report.key_params(name, cfg) == shown


def test_gather_reads_train_and_eval_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, val, test in (("minilm_logreg", 0.7, 0.6), ("cbow", 0.8, 0.5)):
        Path("metrics/train").mkdir(parents=True, exist_ok=True)
        Path("metrics/eval").mkdir(parents=True, exist_ok=True)
        Path(f"metrics/train/{name}.json").write_text(json.dumps(
            {"model": name, "val_accuracy": val, "train_seconds": 1.5, "epochs_run": 2, "mlflow_run_id": f"id-{name}"}))
        Path(f"metrics/eval/{name}.json").write_text(json.dumps(
            {"model": name, "accuracy": test, "macro_f1": test / 2, "docs_per_second": 99.0}))
    params = {"train": {"minilm_logreg": {"C": 3.0, "max_iter": 100}, "cbow": {"dropout": 0.1, "embedding_dim": None, "epochs": 5}}}
    rows = report.gather(["minilm_logreg", "cbow"], params)
    assert [r["model"] for r in rows] == ["minilm_logreg", "cbow"]
    assert rows[0]["params"] == {"C": 3.0}  # key params only, None left out
    assert rows[1]["params"] == {"dropout": 0.1}
    assert rows[0]["test_accuracy"] == 0.6 and rows[0]["test_macro_f1"] == 0.3 and rows[0]["mlflow_run_id"] == "id-minilm_logreg"
    assert report.champion(rows)["model"] == "cbow"
    with pytest.raises(PipelineError, match="metrics/train/m3.json: missing"):
        report.gather(["m3"], params)


# ---------------------------------------------------------------- a small trained model


def tiny_corpus() -> pd.DataFrame:
    rows = []
    for label, group in enumerate(GROUPS):
        words = TOPIC_WORDS[group]
        for i in range(6):
            rows.append((f"x/{group}/{i}", group, label, " ".join(words[(i + j) % len(words)] for j in range(6))))
    frame = pd.DataFrame(rows, columns=["id", "group", "label", "text"])
    frame["label"] = frame["label"].astype("int32")
    return frame


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "tfidf_logreg"
    directory.mkdir()
    cfg = tiny_params("unused.txt", {"groups": 3, "train": 36, "test": 18})["train"]["tfidf_logreg"]
    cfg = P.validate("train.tfidf_logreg", cfg, REGISTRY["tfidf_logreg"].schema)
    frame = tiny_corpus()
    pipeline = get_spec("tfidf_logreg").build(cfg).fit(frame["text"].tolist(), frame["label"].to_numpy())
    save_sklearn(directory, pipeline, list(GROUPS), "tfidf_logreg")
    return directory


@pytest.fixture(scope="module")
def store(tmp_path_factory, sklearn_model):
    """A sqlite MLflow store with an experiment whose artifacts stay in the temporary directory, and
    two runs that each logged the model."""
    import mlflow

    from pipeline.tracking import log_classifier

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("unit", artifact_location=(base / "artifacts").as_uri())
        run_ids = []
        for name in ("first", "second"):
            with mlflow.start_run(experiment_id=exp, run_name=name) as run:
                log_classifier(sklearn_model, list(GROUPS), ["orbit launch"])
                run_ids.append(run.info.run_id)
    return {"uri": uri, "experiment_id": exp, "runs": run_ids}


@pytest.fixture
def mlflow_env(store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    return store


def test_register_champion_once_per_run(mlflow_env):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    first, second = mlflow_env["runs"]
    assert report.register_champion(first, "unit-model", "champion") == "1"
    assert report.register_champion(first, "unit-model", "champion") == "1"  # no new version
    assert len(client.search_model_versions("name = 'unit-model'")) == 1
    assert client.get_model_version_by_alias("unit-model", "champion").run_id == first
    assert report.register_champion(second, "unit-model", "champion") == "2"
    assert client.get_model_version_by_alias("unit-model", "champion").run_id == second
    assert report.register_champion(first, "unit-model", "champion") == "1"  # back to the first one
    assert len(client.search_model_versions("name = 'unit-model'")) == 2
    assert str(client.get_model_version_by_alias("unit-model", "champion").version) == "1"

    model = mlflow.pyfunc.load_model("models:/unit-model@champion")
    out = model.predict(["shuttle orbit launch rocket", "", "engine brake tire"])
    assert out.columns.tolist() == ["label", *GROUPS] and len(out) == 3
    assert out["label"][0] == "sci.space" and out["label"][2] == "rec.autos"
    np.testing.assert_allclose(out[list(GROUPS)].sum(axis=1), 1.0, atol=1e-6)


def test_register_champion_separate_aliases_and_names(mlflow_env):
    from mlflow import MlflowClient

    client = MlflowClient()
    first, second = mlflow_env["runs"]
    assert report.register_champion(second, "other-model", "best") == "1"
    assert report.register_champion(first, "other-model", "previous") == "2"
    assert client.get_model_version_by_alias("other-model", "best").run_id == second
    assert client.get_model_version_by_alias("other-model", "previous").run_id == first


def test_evaluate_stage_on_a_small_model(tmp_path, monkeypatch, sklearn_model, mlflow_env):
    import shutil

    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"evaluate": {"batch_size": 4}})
    name = "tfidf_logreg"
    shutil.copytree(sklearn_model, tmp_path / "data/models" / name)
    run_id = mlflow_env["runs"][0]
    from pipeline.tracking import MODEL_TAG, path_md5

    # evaluate finds the run that saved this very model by its md5 tag (a newer run, another
    # stage's or another model's, does not match)
    MlflowClient().set_tag(run_id, MODEL_TAG, path_md5(tmp_path / "data/models" / name))
    MlflowClient().set_tag(run_id, "dvc_stage", f"train@{name}")
    MlflowClient().set_tag(mlflow_env["runs"][1], "dvc_stage", f"train@{name}")
    test = tiny_corpus()
    test.loc[0, "text"] = "engine car brake"  # one comp.graphics document that reads like rec.autos
    Path("data/prepared").mkdir(parents=True)
    test.to_parquet("data/prepared/test.parquet", index=False)
    Path("metrics/history").mkdir(parents=True)
    pd.DataFrame({"epoch": [1], "loss": [0.5], "accuracy": [0.9], "val_loss": [0.6], "val_accuracy": [0.8]}).to_csv(
        f"metrics/history/{name}.csv", index=False)

    evaluate.main([name])

    result = json.loads(Path(f"metrics/eval/{name}.json").read_text())
    y_pred = Classifier(tmp_path / "data/models" / name).predict_proba(test["text"].tolist()).argmax(axis=1)
    assert y_pred[0] == 1
    expected = evaluate.score(test["label"].to_numpy(), y_pred, list(GROUPS))
    assert {k: result[k] for k in expected} == expected
    assert result["model"] == name and result["test_docs"] == len(test) and result["mlflow_run_id"] == run_id
    assert result["accuracy"] == round((y_pred == test["label"].to_numpy()).mean(), 4) < 1.0
    with np.load(f"data/test_probs/{name}.npz") as saved:  # for evaluate_ensemble
        np.testing.assert_allclose(saved["probs"], Classifier(tmp_path / "data/models" / name).predict_proba(test["text"].tolist()))
        assert round(float(saved["inference_seconds"]), 2) == result["inference_seconds"]  # saved as measured
    predictions = pd.read_csv(f"data/eval/{name}/predictions.csv")
    assert predictions["actual"].tolist() == test["group"].tolist()
    assert predictions["predicted"].tolist() == [GROUPS[i] for i in y_pred]
    for file in ("confusion_matrix.png", "learning_curve.png"):
        assert Path(f"data/eval/{name}/{file}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sci.space" in Path(f"data/eval/{name}/classification_report.txt").read_text()
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["test_accuracy"] == result["accuracy"]
    assert run.data.metrics["test_macro_f1"] == result["macro_f1"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/classification_report.txt"} <= artifacts

    # evaluate_ensemble: the ensemble has no learning curve (no epochs, no metrics/history file);
    # its figures come from the member's saved test probabilities
    from pipeline.common import write_json

    shutil.copytree(sklearn_model, tmp_path / "data/ensemble" / name)
    write_json(tmp_path / "data/ensemble/meta.json", {"model": "ensemble", "kind": "ensemble", "classes": list(GROUPS),
                                                      "members": [name], "weights": [1.0], "pooling": "log"})
    ensemble_run = mlflow_env["runs"][1]
    MlflowClient().set_tag(ensemble_run, MODEL_TAG, path_md5(tmp_path / "data/ensemble"))
    MlflowClient().set_tag(ensemble_run, "dvc_stage", "ensemble")
    assert not Path("metrics/history/ensemble.csv").exists()
    evaluate.main(["ensemble"])
    pooled = json.loads(Path("metrics/eval/ensemble.json").read_text())
    assert {k: pooled[k] for k in expected} == expected and pooled["mlflow_run_id"] == ensemble_run
    assert Path("data/eval/ensemble/confusion_matrix.png").is_file()
    assert not Path("data/eval/ensemble/learning_curve.png").exists()
    assert not Path("data/test_probs/ensemble.npz").exists()
