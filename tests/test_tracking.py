"""Training and MLflow tracking (pipeline/train.py, pipeline/tracking.py) in a tiny project directory:
the data stages run in-process once per module, then a Keras and a scikit-learn model are trained."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import GROUPS, make_archive, make_encoder, make_glove, tiny_params, write_params

from pipeline import embeddings, encode, fetch_corpus, fetch_encoder, fetch_glove, prepare, tokenize, tracking
from pipeline import models as M
from pipeline import train as T
from pipeline.common import MIRROR_ENV, ROOT, PipelineError, cpu_record

EXPERIMENT = "tiny"
KERAS, SKLEARN, ENCODER = "cbow", "tfidf_logreg", "minilm_logreg"
QUERIES = ["the shuttle launch into orbit and the moon", "", "engine brake tire of the car"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Data stages done in a tiny project; MLflow in a sqlite store of its own, artifacts beside it."""
    import mlflow

    base = tmp_path_factory.mktemp("tracking")
    work = base / "work"
    work.mkdir()
    counts = make_archive(base / "mirror" / "20news-bydate.tar.gz")
    glove = make_glove(base / "glove.tiny.50d.txt")
    encoder = make_encoder(base / "tiny-bert")
    params = tiny_params(str(glove), counts, [KERAS, SKLEARN, ENCODER], encoder=str(encoder))
    write_params(work / "params.yaml", params)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv(MIRROR_ENV, str(base / "mirror"))
        for stage in (fetch_corpus, prepare, tokenize, fetch_glove, embeddings, fetch_encoder, encode):
            stage.main([])
        mlflow.set_tracking_uri(uri)
        # created up front so that artifacts land in the temporary directory, not the real project
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(base / "mlartifacts").as_uri())
    return {"base": base, "work": work, "uri": uri, "params": params, "experiment_id": experiment_id}


@pytest.fixture
def in_project(project, monkeypatch):
    import mlflow

    monkeypatch.chdir(project["work"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project["uri"])
    mlflow.set_tracking_uri(project["uri"])
    return project


@pytest.fixture(scope="module")
def trained(project):
    """cbow, tfidf_logreg and minilm_logreg trained once; the first cbow outputs kept for the determinism test."""
    import mlflow

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project["work"])
        mp.setenv("MLFLOW_TRACKING_URI", project["uri"])
        for name in (KERAS, SKLEARN, ENCODER):
            report = T.train(name)
            out[name] = {
                "report": report,
                "metrics": json.loads(Path(f"metrics/train/{name}.json").read_text()),
                "history": Path(f"metrics/history/{name}.csv").read_text(),
            }
        mlflow.set_tracking_uri(project["uri"])
    return out


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def runs_named(experiment_id: str, name: str):
    return client().search_runs([experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                                order_by=["attributes.start_time DESC"])


# ---------------------------------------------------------------- the data the stages made


def test_data_stages_ran_in_process(in_project):
    data = json.loads(Path("metrics/data.json").read_text())
    assert data["published"] == {"train": 36, "test": 18}
    vocab = json.loads(Path("data/tokenized/vocab.json").read_text())
    matrix = np.load("data/embeddings/matrix.npy")
    assert matrix.shape == (len(vocab), 50) and not matrix[0].any()
    assert json.loads(Path("data/tokenized/classes.json").read_text()) == list(GROUPS)


# ---------------------------------------------------------------- successful runs


def check_common(run, name: str, report: dict, project: dict) -> None:
    assert run.info.status == "FINISHED"
    assert run.info.run_name == name
    assert run.info.experiment_id == project["experiment_id"]
    params = run.data.params
    for key, value in project["params"]["train"][name].items():
        assert params[key] == ("None" if value is None else str(value)), key
    assert params["prepare.seed"] == str(project["params"]["prepare"]["seed"])
    assert params["prepare.val_fraction"] == "0.25"
    tags = run.data.tags
    assert tags["dvc_stage"] == f"train@{name}"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == (head or "unknown") and re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"])
    assert tags["git_dirty"] in ("true", "false")
    assert run.data.metrics["best_val_accuracy"] == report["val_accuracy"]
    assert report["mlflow_run_id"] == run.info.run_id
    assert not Path(f"data/models/{name}/run.json").exists()  # a run id would change the model's hash
    assert tags["model_md5"] == tracking.path_md5(f"data/models/{name}")
    # the CPU the result depends on, as the metrics file has it (docs/reproducibility.md)
    assert {k: report[k] for k in ("cpu", "cpu_isa")} == {k: tags[k] for k in ("cpu", "cpu_isa")} == cpu_record()
    assert tracking.find_model_run(f"data/models/{name}", f"train@{name}") == run.info.run_id
    assert json.loads(Path(f"metrics/train/{name}.json").read_text()) == report


def test_keras_run_is_recorded(in_project, trained):
    report = trained[KERAS]["report"]
    run = client().get_run(report["mlflow_run_id"])
    check_common(run, KERAS, report, in_project)
    assert run.data.params["tokenize.max_len"] == "60"
    assert run.data.params["tokenize.standardize"] == "lower_and_strip_punctuation"
    assert not any(k.startswith("embeddings.") for k in run.data.params)  # cbow reads no GloVe
    assert set(run.data.tags) >= {"dep_md5.data/tokenized"}
    assert not any(k.startswith(("dep_md5.data/embeddings", "dep_md5.data/prepared")) for k in run.data.tags)
    assert run.data.tags["dep_md5.data/tokenized"] == tracking.path_md5("data/tokenized")
    history = pd.read_csv(f"metrics/history/{KERAS}.csv")
    epochs = report["epochs_run"]
    assert 1 <= epochs <= in_project["params"]["train"][KERAS]["epochs"] and len(history) == epochs
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    logged = client().get_metric_history(run.info.run_id, "val_accuracy")
    assert len(logged) == epochs
    assert [m.step for m in sorted(logged, key=lambda m: m.step)] == list(range(epochs))
    np.testing.assert_allclose([m.value for m in sorted(logged, key=lambda m: m.step)], history["val_accuracy"], rtol=1e-6)
    assert report["val_accuracy"] == round(history["val_accuracy"].max(), 4)
    assert report["best_epoch"] == int(history["val_accuracy"].idxmax()) + 1
    assert {"loss", "accuracy", "val_loss"} <= set(run.data.metrics)


def test_sklearn_run_is_recorded(in_project, trained):
    report = trained[SKLEARN]["report"]
    run = client().get_run(report["mlflow_run_id"])
    check_common(run, SKLEARN, report, in_project)
    assert not any(k.startswith(("tokenize.", "embeddings.")) for k in run.data.params)
    assert run.data.tags["dep_md5.data/prepared"] == tracking.path_md5("data/prepared")
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(client().get_metric_history(run.info.run_id, metric)) == 1
    assert report["epochs_run"] == 1 and report["best_epoch"] == 1
    history = pd.read_csv(f"metrics/history/{SKLEARN}.csv")
    assert history.columns.tolist() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["accuracy"].iloc[0] == 1.0  # the tiny corpus is separable
    assert run.data.metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[0])


def test_encoder_model_fits_on_the_cached_embeddings_and_takes_raw_text(in_project, trained):
    """train@minilm_logreg reads data/encoded, not the encoder files; its saved model computes
    from raw text the validation probabilities the cached embeddings gave."""
    from pipeline.classifier import Classifier

    report = trained[ENCODER]["report"]
    run = client().get_run(report["mlflow_run_id"])
    check_common(run, ENCODER, report, in_project)
    settings = json.loads(Path("data/encoded/meta.json").read_text())["settings"]  # every encode param
    assert set(settings) == set(encode.SCHEMA) and settings["max_len"] == 32 and settings["quantize"] is True
    assert {k: run.data.params[f"encode.{k}"] for k in settings} == {k: str(v) for k, v in settings.items()}
    assert run.data.tags["dep_md5.data/encoded"] == tracking.path_md5("data/encoded")
    val = pd.read_parquet("data/prepared/val.parquet")
    saved = np.load(f"data/models/{ENCODER}/val_probs.npy")
    classifier = Classifier(f"data/models/{ENCODER}")
    cached = classifier.model[-1].predict_proba(np.load("data/encoded/val.npy"))
    np.testing.assert_allclose(saved, cached, atol=1e-6)
    np.testing.assert_allclose(classifier.predict_proba(val["text"].tolist()), saved, atol=1e-5)
    history = pd.read_csv(f"metrics/history/{ENCODER}.csv")
    assert history["val_accuracy"].iloc[0] == pytest.approx((saved.argmax(axis=1) == val["label"].to_numpy()).mean())


def test_encoder_model_is_evaluated_from_the_cached_test_embeddings(in_project, trained, monkeypatch, capsys):
    import copy

    from pipeline import encoder as E
    from pipeline import evaluate as V
    from pipeline.classifier import Classifier

    calls = []
    embed = E.SentenceEncoder.embed
    monkeypatch.setattr(E.SentenceEncoder, "embed", lambda self, texts, progress=None: calls.append(len(texts)) or embed(self, texts, progress))
    test = pd.read_parquet("data/prepared/test.parquet")
    raw = Classifier(f"data/models/{ENCODER}").predict_proba(test["text"].tolist())
    assert calls == [len(test)]
    evaluation = V.evaluate(ENCODER, 64)
    result, probs = evaluation.result, evaluation.probs
    assert calls == [len(test)]  # not encoded again
    np.testing.assert_allclose(probs, raw, atol=1e-5)
    assert result["inference_seconds"] >= json.loads(Path("data/encoded/meta.json").read_text())["seconds"]["test"]
    other = copy.deepcopy(E.read_encoder())
    other.max_len -= 1
    monkeypatch.setattr(E, "read_encoder", lambda: other)  # data/encoded from another encoder setting
    again = V.evaluate(ENCODER, 64).probs
    assert calls == [len(test)] * 2 and "encoding the test split again" in capsys.readouterr().out
    np.testing.assert_allclose(again, raw, atol=1e-5)


@pytest.mark.parametrize("name", [KERAS, SKLEARN, ENCODER])
def test_logged_model_predicts_raw_text(in_project, trained, name):
    import mlflow

    from pipeline.classifier import Classifier

    run_id = trained[name]["report"]["mlflow_run_id"]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    out = model.predict(QUERIES)
    assert isinstance(out, pd.DataFrame) and len(out) == len(QUERIES)
    assert out.columns.tolist() == ["label", *GROUPS]
    assert set(out["label"]) <= set(GROUPS)
    probs = out[list(GROUPS)].to_numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (out["label"] == [GROUPS[i] for i in probs.argmax(axis=1)]).all()
    local = Classifier(f"data/models/{name}").predict_frame(QUERIES)
    # the served frame is classifier.Predictions; what reset_index gives back is a plain DataFrame
    same = dict(check_exact=False, atol=1e-6, check_frame_type=False)
    pd.testing.assert_frame_equal(out.reset_index(drop=True), local, **same)
    framed = model.predict(pd.DataFrame({"text": QUERIES}))
    pd.testing.assert_frame_equal(framed.reset_index(drop=True), local, **same)
    if name == SKLEARN:
        assert out["label"].tolist()[0::2] == ["sci.space", "rec.autos"]


# ---------------------------------------------------------------- failures


def boom(*args, **kwargs):
    raise RuntimeError("boom in training")


@pytest.mark.parametrize("name", ["naive_bayes", "cnn"])
def test_training_failure_marks_the_run_failed(in_project, trained, monkeypatch, name):
    if name == "naive_bayes":
        monkeypatch.setattr(T, "fit_sklearn", boom)
    else:
        monkeypatch.setitem(M.REGISTRY, name, dataclasses.replace(M.REGISTRY[name], build=boom))
    with pytest.raises(RuntimeError, match="boom in training"):
        T.train(name)
    runs = runs_named(in_project["experiment_id"], name)
    assert runs and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["dvc_stage"] == f"train@{name}"
    assert not Path(f"data/models/{name}").exists()
    assert not [p.name for p in Path("data/models").iterdir() if name in p.name]  # no temporary dir either
    assert not Path(f"metrics/train/{name}.json").exists() and not Path(f"metrics/history/{name}.csv").exists()


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("cbow_glove", {"max_len": 100}, r"train.cbow_glove.max_len = 100: above tokenize.max_len 60"),
        # parallel: the widest of kernel_sizes [3, 4, 5]
        ("cnn", {"architecture": "parallel", "max_len": 4}, r"train.cnn.max_len = 4: cnn needs at least 5 tokens"),
        # stacked, kernel 3, pool 2 (tiny params): conv -> pool -> conv -> pool -> conv needs 3*2+2=8, 8*2+2=18 tokens
        ("cnn", {"architecture": "stacked", "max_len": 10}, r"train.cnn.max_len = 10: cnn needs at least 18 tokens"),
    ],
)
def test_bad_max_len_is_a_params_error_before_any_run(in_project, trained, tmp_path, name, changes, message):
    params = json.loads(json.dumps(in_project["params"]))
    params["train"][name].update(changes)
    params_file = write_params(tmp_path / "params.yaml", params)
    before = len(runs_named(in_project["experiment_id"], name))
    with pytest.raises(PipelineError, match=message):
        T.train(name, str(params_file))
    assert len(runs_named(in_project["experiment_id"], name)) == before  # no run was started
    assert not Path(f"data/models/{name}").exists()


def test_bad_model_params_fail_before_any_run(in_project, tmp_path):
    params = json.loads(json.dumps(in_project["params"]))
    params["train"]["lstm"]["dropout"] = 1.5
    params_file = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(PipelineError, match=r"train.lstm.dropout = 1.5"):
        T.train("lstm", str(params_file))
    assert runs_named(in_project["experiment_id"], "lstm") == []


# ---------------------------------------------------------------- stale runs


def test_close_stale_runs(in_project):
    mlflow_client = client()
    exp = in_project["experiment_id"]
    stale = mlflow_client.create_run(exp, tags={"dvc_stage": "train@ghost"}, run_name="ghost")
    other = mlflow_client.create_run(exp, tags={"dvc_stage": "train@other"}, run_name="other")
    try:
        assert mlflow_client.get_run(stale.info.run_id).info.status == "RUNNING"
        assert tracking.close_stale_runs(exp, "train@ghost") == 1
        assert mlflow_client.get_run(stale.info.run_id).info.status == "KILLED"
        assert mlflow_client.get_run(other.info.run_id).info.status == "RUNNING"
        assert tracking.close_stale_runs(exp, "train@ghost") == 0
        mine = mlflow_client.create_run(exp, run_name="a user's own run")  # not the pipeline's
        assert tracking.close_stale_runs(exp) == 1  # every stage's
        assert mlflow_client.get_run(other.info.run_id).info.status == "KILLED"
        assert mlflow_client.get_run(mine.info.run_id).info.status == "RUNNING"
        mlflow_client.set_terminated(mine.info.run_id)
    finally:
        mlflow_client.set_terminated(other.info.run_id, status="KILLED")


def test_training_run_cleans_up_after_killed_stages(in_project):
    """Whichever stage was killed (DVC may restore it from its run cache and never run it again):
    its run is closed and its temporaries removed; a live writer's temporary stays."""
    mlflow_client = client()
    exp = in_project["experiment_id"]
    stale = mlflow_client.create_run(exp, tags={"dvc_stage": "train@phantom"}, run_name="phantom")
    elsewhere = mlflow_client.create_run(exp, tags={"dvc_stage": "train@killed"}, run_name="killed")
    child = subprocess.Popen(["true"])
    child.wait()
    dead = Path(f"data/models/.killed.tmp{child.pid}.abc")
    (dead / "sub").mkdir(parents=True)
    dead_file = Path(f"metrics/train/.killed.json.tmp{child.pid}.x")
    dead_file.parent.mkdir(parents=True, exist_ok=True)
    dead_file.write_text("{")
    live = Path(f"data/models/.other.tmp{os.getppid()}.abc")
    live.mkdir()
    try:
        with tracking.training_run(EXPERIMENT, "phantom", "train@phantom", {"a": 1, "b": None}, ["data/prepared"]) as run_id:
            assert mlflow_client.get_run(stale.info.run_id).info.status == "KILLED"
            assert mlflow_client.get_run(elsewhere.info.run_id).info.status == "KILLED"
            assert not dead.exists() and not dead_file.exists() and live.is_dir()
    finally:
        live.rmdir()
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1", "b": "None"}
    assert run.data.tags["dep_md5.data/prepared"] == tracking.path_md5("data/prepared")


def test_training_run_exception_ends_failed(in_project):
    with pytest.raises(ValueError):
        with tracking.training_run(EXPERIMENT, "broken", "train@broken", {}, []) as run_id:
            raise ValueError("inside the run")
    assert client().get_run(run_id).info.status == "FAILED"


# ---------------------------------------------------------------- determinism


def test_same_seed_same_results(in_project, trained):
    first = trained[KERAS]
    report = T.train(KERAS)
    assert report["mlflow_run_id"] != first["report"]["mlflow_run_id"]
    again = json.loads(Path(f"metrics/train/{KERAS}.json").read_text())
    assert again["val_accuracy"] == first["metrics"]["val_accuracy"]
    assert again["val_loss"] == first["metrics"]["val_loss"]
    assert again["best_epoch"] == first["metrics"]["best_epoch"]
    assert Path(f"metrics/history/{KERAS}.csv").read_text() == first["history"]


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "root, expected",
    [
        ("/x/.dvc/tmp/exps/tmpabc", "/x"),
        ("/x/.dvc/tmp/exps/tmpabc/", "/x"),
        ("/home/me/proj/.dvc/tmp/exps/tmp1234/sub", "/home/me/proj"),
        ("/home/me/proj", "/home/me/proj"),
        ("/x/.dvc/tmp/other/tmpabc", "/x/.dvc/tmp/other/tmpabc"),
    ],
)
def test_project_root(monkeypatch, root, expected):
    monkeypatch.setattr(tracking, "ROOT", Path(root))
    assert tracking.project_root() == Path(expected)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{Path(expected) / 'mlflow.db'}"


def test_tracking_uri_from_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_path_md5(tmp_path):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one")
    (folder / "sub" / "b.txt").write_text("two")
    first = tracking.path_md5(folder)
    assert re.fullmatch(r"[0-9a-f]{32}", first) and tracking.path_md5(folder) == first
    (folder / "sub" / "b.txt").write_text("TWO")
    assert tracking.path_md5(folder) != first
    (folder / "sub" / "b.txt").write_text("two")
    assert tracking.path_md5(folder) == first
    (folder / "sub" / "b.txt").rename(folder / "sub" / "c.txt")  # a rename changes it too
    assert tracking.path_md5(folder) != first
    assert tracking.path_md5(folder / "a.txt") != tracking.path_md5(folder)


def test_setup_reports_a_broken_store_in_one_line(monkeypatch, tmp_path):
    (tmp_path / "not-a-db").write_text("garbage " * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-a-db'}")
    with pytest.raises(PipelineError) as exc:
        tracking.setup("x")
    message = str(exc.value)
    assert message.startswith(f"MLflow tracking at sqlite:///{tmp_path / 'not-a-db'}: ") and "\n" not in message


def test_load_config_sections(in_project):
    sklearn = T.load_config(SKLEARN)
    assert sklearn["tokenize"] == {} and sklearn["embeddings"] == {}
    assert sklearn["mlflow"] == {"experiment": EXPERIMENT}
    glove = T.load_config("cbow_glove")
    assert glove["embeddings"] == {"oov": "zeros", "seed": 42}
    assert glove["tokenize"]["max_len"] == 60
    flat = T.flat_params(glove)
    assert flat["embeddings.oov"] == "zeros" and flat["tokenize.max_tokens"] == 200 and flat["trainable"] is True
    with pytest.raises(PipelineError, match="unknown model 'nope'"):
        T.load_config("nope")
