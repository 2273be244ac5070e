"""Scale-out as a team runs it: the pipeline against a real tracking server (`mlflow server` on
PostgreSQL, artifacts served from one directory; scripts/tracking_server.py starts both on
loopback), and a DVC remote from which a fresh clone pulls every output so that `dvc repro` there
has nothing to do. Skipped only when PostgreSQL's binaries are absent (.ci/run installs them)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from faultkit import commit, dvc_status, mlflow_client, ran_stages, stage_runs, tiny_project, tree_digest
from tiny import ROOT, run

from pipeline.tracking import path_md5

MODELS = ["tfidf_logreg", "naive_bayes"]
EXPERIMENT = "tiny"
REGISTERED, ALIAS = "newsgroups-classifier", "champion"


def load_script():
    spec = importlib.util.spec_from_file_location("tracking_server", ROOT / "scripts" / "tracking_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_script = load_script()
pytestmark = pytest.mark.skipif(server_script.pg_bindir() is None,
                                reason="PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")


@pytest.fixture(scope="module")
def server(request):
    """PostgreSQL + mlflow server on free loopback ports, always stopped at the end. Their state
    lives outside pytest's private temporary tree: the `postgres` user must reach its data."""
    state_dir = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    state_dir.chmod(0o755)

    def finish():
        try:
            server_script.stop(state_dir)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)

    request.addfinalizer(finish)
    state = server_script.start(state_dir, timeout=300)
    state["dir"] = state_dir
    return state


@pytest.fixture(scope="module")
def project(server, tmp_path_factory):
    """The tiny project reproduced once against the server."""
    base = tmp_path_factory.mktemp("team")
    repo, env = tiny_project(base, MODELS)
    env = {**env, "MLFLOW_TRACKING_URI": server["uri"]}
    proc = run(["dvc", "repro"], repo, env)
    return {"base": base, "repo": repo, "env": env, "repro": proc.stdout}


@pytest.fixture
def tracking_uri(server):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server["uri"])
    yield server["uri"]
    mlflow.set_tracking_uri(previous)


def test_runs_params_and_metrics_are_on_the_server(server, project, tracking_uri):
    repo = project["repo"]
    client = mlflow_client(server["uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name in MODELS:
        [mlrun] = stage_runs(client, EXPERIMENT, f"train@{name}")
        assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == name
        for key, value in params["train"][name].items():
            assert mlrun.data.params[key] == ("None" if value is None else str(value))
        assert {"best_val_accuracy", "val_accuracy", "train_seconds", "test_accuracy"} <= set(mlrun.data.metrics)
        metrics = json.loads((repo / f"metrics/train/{name}.json").read_text())
        assert metrics["mlflow_run_id"] == mlrun.info.run_id
        assert mlrun.data.metrics["best_val_accuracy"] == metrics["val_accuracy"]
        assert mlrun.data.tags["model_md5"] == path_md5(repo / f"data/models/{name}")
    assert client.search_runs([experiment.experiment_id], filter_string="attributes.status != 'FINISHED'") == []
    # nothing went to a local store
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()


def test_registered_champion_and_artifacts(server, project, tracking_uri):
    import mlflow

    repo = project["repo"]
    client = mlflow_client(server["uri"])
    summary = json.loads((repo / "metrics/summary.json").read_text())
    champion = summary["champion"]["model"]
    version = client.get_model_version_by_alias(REGISTERED, ALIAS)
    assert version.run_id == summary["models"][champion]["mlflow_run_id"]
    assert str(version.version) == summary["champion"]["version"]
    artifacts = Path(server["artifacts"])
    for name in MODELS:
        run_id = json.loads((repo / f"metrics/train/{name}.json").read_text())["mlflow_run_id"]
        listed = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert {"evaluation/confusion_matrix.png", "evaluation/classification_report.txt"} <= listed
        stored = [p for p in artifacts.rglob("confusion_matrix.png") if run_id in p.parts]
        assert stored and stored[0].stat().st_size > 1000  # on the server's artifact store
    assert list(artifacts.rglob("MLmodel"))  # the logged models themselves
    model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@{ALIAS}")
    out = model.predict(["the shuttle launch into orbit", "engine and brake of the car"])
    assert list(out.columns[:1]) == ["label"] and len(out) == 2


def test_postgres_holds_the_tracking_data(server, project):
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=server["pg_port"], user=server_script.DB_USER,
                                  dbname=server_script.DB_NAME, passfile=str(server["dir"] / "pgpass"))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, status FROM runs WHERE lifecycle_stage = 'active'")
            runs = cursor.fetchall()
            cursor.execute("SELECT name FROM registered_models")
            registered = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT count(*) FROM metrics")
            metric_rows = cursor.fetchone()[0]
    finally:
        connection.close()
    assert {name for name, _ in runs} >= set(MODELS)
    assert all(status == "FINISHED" for _, status in runs)
    assert registered == [REGISTERED] and metric_rows > 0


def test_dvc_remote_push_then_pull_into_a_fresh_clone(project):
    repo, env, base = project["repo"], project["env"], project["base"]
    remote = base / "dvc-remote"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], repo, env)
    commit(repo, env, "results and the team remote")
    run(["dvc", "push"], repo, env)
    assert any(p.is_file() for p in remote.rglob("*"))
    clone = base / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], base, env)
    assert not (clone / "data").exists()  # outputs come from the remote, not from git
    run(["dvc", "pull"], clone, env)
    assert dvc_status(clone, env) == {}
    proc = run(["dvc", "repro"], clone, env)
    assert ran_stages(proc.stdout) == set(), proc.stdout
    for out in ("data/raw", "data/prepared", "data/tokenized", "data/glove", "data/embeddings",
                *(f"data/models/{m}" for m in MODELS), *(f"data/eval/{m}" for m in MODELS), "metrics"):
        assert tree_digest(clone / out) == tree_digest(repo / out), out
