"""End to end: the real `dvc repro` on tiny generated data in a temporary git repository."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from tiny import make_project, run, write_params

MODELS = ["tfidf_logreg", "cbow", "cnn_glove", "minilm_logreg"]


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project in a fresh git repo, pointed at a tiny mirror; `dvc repro` done once."""
    repo, env = make_project(tmp_path_factory.mktemp("e2e"), MODELS)
    first = run(["dvc", "repro"], repo, env)
    return {"repo": repo, "env": env, "first": first.stdout, "first_stderr": first.stderr}


def test_repro_builds_every_output(project):
    repo = project["repo"]
    assert ran_stages(project["first"]) >= {"fetch_corpus", "prepare", "tokenize", "fetch_glove", "embeddings",
                                            "fetch_encoder", "encode", "report"}
    assert sorted(p.name for p in (repo / "data/encoder").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["published"] == {"train": 36, "test": 18} and data["groups"] == 3
    assert data["documents"]["train"]["empty"] == 0  # headers kept: no document is empty
    emb = json.loads((repo / "metrics/embeddings.json").read_text())
    assert 0.3 < emb["vocab_coverage"] <= 1.0
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert set(summary["models"]) == set(MODELS) | {"ensemble"}
    for name in MODELS + ["ensemble"]:
        assert (repo / ("data/ensemble" if name == "ensemble" else f"data/models/{name}") / "meta.json").is_file()
        evaluation = json.loads((repo / f"metrics/eval/{name}.json").read_text())
        assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["test_docs"] == 18
        assert (repo / f"data/eval/{name}/confusion_matrix.png").stat().st_size > 1000
    assert "| model |" in (repo / "metrics/summary.md").read_text()


def test_saved_probabilities_are_what_the_saved_classifiers_compute(project, monkeypatch):
    """The ensemble stage fits on the validation probabilities the train stages saved, and
    evaluate_ensemble pools the test probabilities the evaluate stages saved: both must be what
    the saved models compute from raw text (the CNN was trained on length-cut batches)."""
    import numpy as np
    import pandas as pd

    from pipeline.classifier import Classifier, read_ensemble

    repo = project["repo"]
    monkeypatch.chdir(repo)
    val, test = (pd.read_parquet(f"data/prepared/{s}.parquet") for s in ("val", "test"))
    for name in MODELS:
        classifier = Classifier(f"data/models/{name}")
        saved = np.load(f"data/models/{name}/val_probs.npy")
        np.testing.assert_allclose(saved, classifier.predict_proba(val["text"].tolist()), atol=1e-5, err_msg=name)
        with np.load(f"data/test_probs/{name}.npz") as evaluated:
            np.testing.assert_allclose(evaluated["probs"], classifier.predict_proba(test["text"].tolist()), atol=1e-5)
            assert float(evaluated["inference_seconds"]) > 0
    members, _, pooling, classes = read_ensemble(repo / "data/ensemble")
    assert members == MODELS and pooling == "log" and not (repo / "data/ensemble/cbow/val_probs.npy").exists()
    ensemble = Classifier("data/ensemble").predict_proba(test["text"].tolist())
    evaluation = json.loads(Path("metrics/eval/ensemble.json").read_text())
    assert evaluation["accuracy"] == round(float((ensemble.argmax(axis=1) == test["label"].to_numpy()).mean()), 4)
    predicted = pd.read_csv("data/eval/ensemble/predictions.csv")["predicted"]
    assert predicted.tolist() == [classes[i] for i in ensemble.argmax(axis=1)]


def test_mlflow_has_every_run_and_the_champion(project):
    import mlflow
    from mlflow import MlflowClient

    repo = project["repo"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(MODELS + ["ensemble"])
    digest = {s: hashlib.md5((repo / f"data/prepared/{s}.parquet").read_bytes()).hexdigest() for s in ("train", "val", "test")}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"test_accuracy", "val_accuracy", "train_seconds"} <= set(r.data.metrics)
        # the splits each run read, as MLflow datasets: training (train/val or, for the ensemble, val), evaluation (test)
        inputs = {(d.dataset.name, d.dataset.digest, d.dataset.source_type, json.loads(d.dataset.source)["path"],
                   {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in r.inputs.dataset_inputs}
        fitted_on = ["val"] if r.info.run_name == "ensemble" else ["train", "val"]
        assert inputs == {(s, digest[s], "dvc", f"data/prepared/{s}.parquet", "training") for s in fitted_on} | {
            ("test", digest["test"], "dvc", "data/prepared/test.parquet", "evaluation")}
        if r.info.run_name == "ensemble":
            assert r.data.tags["dvc_stage"] == "ensemble" and "weight.cbow" in r.data.metrics
            continue
        assert r.data.tags["dvc_stage"] == f"train@{r.info.run_name}"
        assert "prepare.seed" in r.data.params
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in artifacts
    keras_run = next(r for r in runs if r.info.run_name == "cbow")
    assert len(client.get_metric_history(keras_run.info.run_id, "val_accuracy")) == 2  # per epoch
    summary = json.loads((repo / "metrics/summary.json").read_text())
    champion = mlflow.pyfunc.load_model("models:/newsgroups-classifier@champion")
    out = champion.predict(["the shuttle launch into orbit", ""])
    assert list(out.columns[:1]) == ["label"] and len(out) == 2
    version = client.get_model_version_by_alias("newsgroups-classifier", "champion")
    assert version.run_id == summary["models"][summary["champion"]["model"]]["mlflow_run_id"]


def test_stages_write_nothing_on_stderr(project):
    """No library notices (TensorFlow, oneDNN, Keras masking, MLflow, quantization) from any stage."""
    assert project["first_stderr"].strip() == ""


def test_second_repro_reruns_nothing(project):
    proc = run(["dvc", "repro"], project["repo"], project["env"])
    assert ran_stages(proc.stdout) == set(), proc.stdout


def test_one_model_param_touches_only_that_model(project):
    repo, env = project["repo"], project["env"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["cbow"]["epochs"] = 3
    write_params(repo / "params.yaml", params)
    status = json.loads(run(["dvc", "status", "--json"], repo, env).stdout)
    # report reads every model's params, check_params all of them (its output stays the same)
    assert set(status) == {"check_params", "train@cbow", "report"}, status
    params["train"]["cbow"]["epochs"] = 2
    write_params(repo / "params.yaml", params)
    assert json.loads(run(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_encoder_model_param_reruns_neither_encoding_nor_other_models(project):
    repo, env = project["repo"], project["env"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    c, max_len = params["train"]["minilm_logreg"]["C"], params["encode"]["max_len"]
    params["train"]["minilm_logreg"]["C"] = c * 3
    write_params(repo / "params.yaml", params)
    status = json.loads(run(["dvc", "status", "--json"], repo, env).stdout)
    assert set(status) == {"check_params", "train@minilm_logreg", "report"}, status  # as above
    params["encode"]["max_len"] = max_len // 2
    write_params(repo / "params.yaml", params)
    assert "encode" in json.loads(run(["dvc", "status", "--json"], repo, env).stdout)
    params["train"]["minilm_logreg"]["C"], params["encode"]["max_len"] = c, max_len
    write_params(repo / "params.yaml", params)
    assert json.loads(run(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_tokenize_param_reruns_downstream_but_not_fetch(project):
    repo, env = project["repo"], project["env"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tokenize"]["max_len"] = 50
    write_params(repo / "params.yaml", params)
    proc = run(["dvc", "repro", "embeddings"], repo, env)
    assert ran_stages(proc.stdout) == {"check_params", "tokenize", "embeddings"}, proc.stdout


def test_metrics_and_plots_show(project):
    repo, env = project["repo"], project["env"]
    shown = run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "metrics/eval/cbow.json" in shown and "accuracy" in shown
    out = repo / "plots_out"
    run(["dvc", "plots", "show", "-o", str(out)], repo, env)
    assert (out / "index.html").is_file()
