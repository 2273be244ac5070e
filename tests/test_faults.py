"""Faults on tiny data: a training stage killed mid-epoch or raising, an unreachable tracking
server, a full disk and a read-only output directory, two experiments in parallel, and the
determinism of two full runs. The pipeline must lose nothing, never take a partial output for a
valid one, and leave no MLflow run RUNNING forever.

One tiny project (tfidf_logreg + cbow) is reproduced once for the module; the tests run in file
order on it (each states what it needs). The full-disk and read-only tests use their own stage
directories and a private mount namespace (a real tmpfs that fills up, a real read-only bind).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from faultkit import (
    DATA_STAGES,
    assert_one_line_error,
    assert_restored,
    closed_port,
    commit,
    dvc_status,
    fault_env,
    in_mount_namespace,
    metrics_snapshot,
    mlflow_client,
    mount_namespaces,
    ran_stages,
    restore,
    run_stage,
    sqlite_uri,
    stage_dir,
    stage_runs,
    temporaries,
    tiny_project,
    tree_digest,
    wait_for,
    workspace,
)
from tiny import ROOT, run

MODELS = ["tfidf_logreg", "cbow"]
EXPERIMENT = "tiny"  # tiny_params' mlflow.experiment


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project reproduced once; its metrics kept for the determinism test."""
    base = tmp_path_factory.mktemp("faults")
    repo, env = tiny_project(base, MODELS)
    run(["dvc", "repro"], repo, env)
    commit(repo, env, "first repro")
    return {"base": base, "repo": repo, "env": env, "first_metrics": metrics_snapshot(repo),
            "uri": sqlite_uri(repo)}


def upstream_digests(repo: Path) -> dict[str, dict]:
    """What a failing training stage of cbow must leave untouched."""
    paths = ["data/raw", "data/prepared", "data/tokenized", "data/glove", "data/embeddings",
             "data/models/tfidf_logreg", "metrics/data.json", "metrics/embeddings.json",
             "metrics/train/tfidf_logreg.json", "metrics/history/tfidf_logreg.csv", "dvc.lock"]
    return {p: tree_digest(repo / p) for p in paths}


def no_leftovers(repo: Path) -> None:
    assert temporaries(repo / "data") == [] and temporaries(repo / "metrics") == []


# ---------------------------------------------------------------- stale runs: the rules


def test_close_stale_runs_spares_live_processes(tmp_path, monkeypatch):
    """close_stale_runs marks KILLED exactly the RUNNING runs whose process is gone: a dead pid,
    a reused pid (other start time), a run without process tags; never a live process's run
    (a parallel experiment) nor another machine's recent one."""
    import mlflow

    from pipeline import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow_client(uri)
        exp = client.create_experiment("stale", artifact_location=(tmp_path / "artifacts").as_uri())
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()  # reaped: its pid names no process now
        me = tracking.process_tags()
        stage = "train@m"
        day_ms = 24 * 3600 * 1000
        cases = {
            "live": (me, None),
            "dead": ({**me, "pid": str(child.pid), "pid_started": ""}, None),
            "reused": ({**me, "pid_started": "1"}, None),
            "legacy": ({}, None),
            "remote_recent": ({"host": "elsewhere.example", "pid": "123", "pid_started": "9"}, None),
            "remote_old": ({"host": "elsewhere.example", "pid": "123", "pid_started": "9"},
                           int(time.time() * 1000) - 2 * day_ms),
        }
        ids = {name: client.create_run(exp, start_time=start, tags={"dvc_stage": stage, **tags}, run_name=name).info.run_id
               for name, (tags, start) in cases.items()}
        other = client.create_run(exp, tags={"dvc_stage": "train@other"}).info.run_id
        assert tracking.close_stale_runs(exp, stage) == 4
        status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
        assert status == {"live": "RUNNING", "dead": "KILLED", "reused": "KILLED", "legacy": "KILLED",
                          "remote_recent": "RUNNING", "remote_old": "KILLED"}
        assert client.get_run(other).info.status == "RUNNING"  # another stage's run is not this call's to close
        assert tracking.close_stale_runs(exp, stage) == 0
        assert tracking.close_stale_runs(exp) == 1  # any stage's: the other one
    finally:
        mlflow.set_tracking_uri(previous)


# ---------------------------------------------------------------- failures under `dvc repro`


@pytest.mark.parametrize("key, value", [("prepare.val_fraction", 0.9), ("train.cbow.epochs", -1)])
def test_bad_params_stop_repro_before_any_output_is_deleted(project, key, value):
    """check_params runs first: DVC deletes no output of the stages the bad value is for."""
    repo, env = project["repo"], project["env"]
    params_file = repo / "params.yaml"
    good = params_file.read_text()
    before = workspace(repo)
    params = yaml.safe_load(good)
    section, *inner, last = key.split(".")
    node = params[section]
    for part in inner:
        node = node[part]
    node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = run(["dvc", "repro"], repo, env, check=False)
        assert proc.returncode != 0
        assert ran_stages(proc.stdout) == {"check_params"}, proc.stdout
        [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert line.startswith(f"error: params.yaml: {key} = {value}: expected"), line
        assert workspace(repo) == before  # every output, metrics and dvc.lock untouched
    finally:
        params_file.write_text(good)
    assert dvc_status(repo, env) == {}  # nothing to restore


# ---------------------------------------------------------------- an exception inside training


def test_exception_in_training_fails_run_and_stage(project):
    repo, env, base = project["repo"], project["env"], project["base"]
    whole = workspace(repo)
    before = upstream_digests(repo)
    proc = run(["dvc", "repro", "-f", "-s", "train@cbow"], repo, fault_env(env, base, "raise:1"), check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "injected fault in epoch 2" in proc.stdout + proc.stderr
    runs = stage_runs(mlflow_client(project["uri"]), EXPERIMENT, "train@cbow")
    failed = runs[-1]
    assert failed.info.status == "FAILED" and failed.info.end_time
    history = mlflow_client(project["uri"]).get_metric_history(failed.info.run_id, "val_accuracy")
    assert len(history) == 1  # epoch 1 was logged, then epoch 2 failed
    assert not (repo / "data/models/cbow").exists()  # no partial model
    assert not (repo / "metrics/train/cbow.json").exists()
    no_leftovers(repo)
    assert upstream_digests(repo) == before  # earlier outputs and dvc.lock intact
    status = dvc_status(repo, env)
    assert "train@cbow" in status and not set(status) & {*DATA_STAGES, "train@tfidf_logreg"}, status
    assert_restored(repo, env, whole)


# ---------------------------------------------------------------- unreachable tracking server


def test_unreachable_tracking_server_fails_fast_in_one_line(project):
    repo, env = project["repo"], project["env"]
    uri = f"http://127.0.0.1:{closed_port()}"
    lock = (repo / "dvc.lock").read_bytes()
    before = workspace(repo)
    start = time.monotonic()
    proc = run(["dvc", "repro", "-f", "-s", "train@tfidf_logreg"], repo, {**env, "MLFLOW_TRACKING_URI": uri},
               check=False, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: MLflow tracking server {uri} unreachable (ConnectionError within 5 s); "
                      "start it or fix MLFLOW_TRACKING_URI"], proc.stderr[-3000:]
    assert not (repo / "data/models/tfidf_logreg").exists()
    assert not (repo / "metrics/train/tfidf_logreg.json").exists()
    no_leftovers(repo)
    assert (repo / "dvc.lock").read_bytes() == lock
    assert_restored(repo, env, before)


def test_broken_archive_then_restore(project):
    """The mirror's archive is damaged: fetch_corpus fails in one line, DVC has deleted data/raw;
    restore brings it back."""
    repo, env = project["repo"], project["env"]
    archive = Path(env["NEWSGROUPS_MIRROR"]) / "20news-bydate.tar.gz"
    good = archive.read_bytes()
    before = workspace(repo)
    archive.write_bytes(good[: len(good) // 2])
    try:
        proc = run(["dvc", "repro", "-f", "-s", "fetch_corpus"], repo, env, check=False)
    finally:
        archive.write_bytes(good)
    assert proc.returncode != 0
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert str(archive) in line, line
    assert not (repo / "data/raw/20news-bydate.tar.gz").exists()
    assert_restored(repo, env, before)


def test_empty_glove_then_restore(project):
    repo, env = project["repo"], project["env"]
    glove = Path(yaml.safe_load((repo / "params.yaml").read_text())["fetch_glove"]["source"])
    good = glove.read_bytes()
    before = workspace(repo)
    glove.write_bytes(b"")
    try:
        proc = run(["dvc", "repro", "-f", "-s", "fetch_glove"], repo, env, check=False)
    finally:
        glove.write_bytes(good)
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [f"error: {glove}: no vectors found"]
    assert not (repo / "data/glove").exists()
    assert_restored(repo, env, before)


def test_http_retries_are_bounded():
    """Past the start-up check (the server goes away mid-run), MLflow's own client gives up in
    seconds, not its default ~4 minutes: pipeline.tracking sets bounds unless the user did."""
    uri = f"http://127.0.0.1:{closed_port()}"
    code = (
        "import time, pipeline.tracking\n"
        "from mlflow import MlflowClient\n"
        "start = time.monotonic()\n"
        f"try:\n    MlflowClient({uri!r}).search_experiments()\n"
        "except Exception as exc:\n    print(type(exc).__name__, round(time.monotonic() - start, 1))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 45, proc.stdout
    name, seconds = proc.stdout.split()
    assert name == "MlflowException" and float(seconds) < 30


# ---------------------------------------------------------------- SIGKILL mid-epoch


def test_sigkill_mid_epoch_then_repro_recovers(project):
    repo, env, base = project["repo"], project["env"], project["base"]
    marker = base / "killed-here"
    client = mlflow_client(project["uri"])
    before = {r.info.run_id for r in stage_runs(client, EXPERIMENT, "train@cbow")}
    log = open(base / "kill.log", "w")
    dvc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train@cbow"], cwd=repo,
                           env=fault_env(env, base, f"hang:1:{marker}"), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(marker.exists, timeout=600, what="training to reach epoch 2")
        pid = int(marker.read_text())
        [killed] = [r for r in stage_runs(client, EXPERIMENT, "train@cbow") if r.info.run_id not in before]
        assert killed.info.status == "RUNNING" and killed.data.tags["pid"] == str(pid)
        assert len(client.get_metric_history(killed.info.run_id, "val_accuracy")) == 1  # mid-epoch 2
        os.kill(pid, signal.SIGKILL)
        assert dvc.wait(timeout=120) != 0
    finally:
        if dvc.poll() is None:
            dvc.kill()
            dvc.wait()
        log.close()
    # what the kill left: a temporary with the partial model, never data/models/cbow itself
    assert not (repo / "data/models/cbow").exists()
    assert [t for t in temporaries(repo / "data/models") if t.startswith(".cbow.tmp")], "expected the killed writer's temporary"
    assert client.get_run(killed.info.run_id).info.status == "RUNNING"
    assert "train@cbow" in dvc_status(repo, env)  # DVC does not take it as up to date: repro reruns it

    # the rerun comes from DVC's run cache: no stage of the pipeline runs, the killed run stays
    # RUNNING and the temporary stays, but it counts in no stage's hash (.dvcignore)
    proc = run(["dvc", "repro", "train@cbow"], repo, env)
    assert ran_stages(proc.stdout) == set() and "train@cbow' is cached" in proc.stdout, proc.stdout
    assert client.get_run(killed.info.run_id).info.status == "RUNNING"
    assert dvc_status(repo, env) == {}
    # what the docs give after a failure clears both (as does any stage that talks to MLflow)
    proc = restore(repo, env)
    assert "1 killed MLflow runs closed" in proc.stdout, proc.stdout
    no_leftovers(repo)
    killed_now = client.get_run(killed.info.run_id).info
    assert killed_now.status == "KILLED" and killed_now.end_time
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'") == []
    assert dvc_status(repo, env) == {}
    assert (repo / "data/models/cbow/meta.json").is_file()


def locked_md5(repo: Path, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] == path)


def test_identical_retrain_reruns_nothing_downstream(project):
    """The model directory holds no run id: a forced retrain with the same weights leaves its hash
    as it was, so only report (which lists the new run) is out of date."""
    repo, env = project["repo"], project["env"]
    client = mlflow_client(project["uri"])
    for name in MODELS:
        model = locked_md5(repo, f"data/models/{name}")
        old_run = json.loads((repo / f"metrics/train/{name}.json").read_text())["mlflow_run_id"]
        proc = run(["dvc", "repro", "-f", "-s", f"train@{name}"], repo, env)
        assert ran_stages(proc.stdout) == {f"train@{name}"}
        assert not (repo / f"data/models/{name}/run.json").exists()
        assert locked_md5(repo, f"data/models/{name}") == model, name
        assert set(dvc_status(repo, env)) == {"report"}
        new_run = json.loads((repo / f"metrics/train/{name}.json").read_text())["mlflow_run_id"]
        assert new_run != old_run and client.get_run(new_run).info.status == "FINISHED"
        assert client.get_run(new_run).data.tags["model_md5"] == client.get_run(old_run).data.tags["model_md5"]
    proc = run(["dvc", "repro"], repo, env)
    assert ran_stages(proc.stdout) == {"report"}
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert {m: summary["models"][m]["mlflow_run_id"] for m in MODELS} == {
        m: json.loads((repo / f"metrics/train/{m}.json").read_text())["mlflow_run_id"] for m in MODELS}


def test_a_copied_project_does_not_write_into_the_original(project):
    """`cp -a project copy`: the copy's mlflow.db names the original's mlartifacts/. A stage that
    would log there stops in one line saying what to do; after that, the copy logs to its own."""
    repo, env, base = project["repo"], project["env"], project["base"]
    copy = base / "copy"
    subprocess.run(["cp", "-a", str(repo), str(copy)], check=True)
    original = {p: tree_digest(repo / p) for p in ("mlartifacts", "mlflow.db")}
    proc = run(["dvc", "repro", "-f", "-s", "train@tfidf_logreg"], copy, env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {copy / 'mlflow.db'}: artifacts go to {repo}, not this project"), line
    assert "python -m pipeline.restore --adopt-store" in line
    restore(copy, env)  # the failed stage's outputs back
    assert dvc_status(copy, env) == {}
    assert "now keeps artifacts in" in restore(copy, env, "--adopt-store").stdout
    copied_files = len(tree_digest(copy / "mlartifacts"))
    run(["dvc", "repro", "-f", "-s", "train@tfidf_logreg"], copy, env)
    run(["dvc", "repro"], copy, env)  # report registers the champion in the copy's store
    assert {p: tree_digest(repo / p) for p in ("mlartifacts", "mlflow.db")} == original
    assert len(tree_digest(copy / "mlartifacts")) > copied_files  # the new model went to the copy's
    copied = mlflow_client(sqlite_uri(copy))
    exp = copied.get_experiment_by_name(EXPERIMENT)
    uris = [r.info.artifact_uri for r in copied.search_runs([exp.experiment_id], max_results=1000)]
    assert uris and all(u.startswith((copy / "mlartifacts").as_uri() + "/") for u in uris), uris


# ---------------------------------------------------------------- determinism


def test_two_full_runs_give_identical_metrics(project):
    """Every metrics/ file of two full runs is the same, timings, run ids and registry versions
    aside (the second run is the forced repro of the SIGKILL test, or one made here)."""
    repo, env = project["repo"], project["env"]
    if "second_metrics" not in project:
        run(["dvc", "repro", "-f"], repo, env)
        project["second_metrics"] = metrics_snapshot(repo)
    first, second = project["first_metrics"], project["second_metrics"]
    assert {"metrics/train/cbow.json", "metrics/history/cbow.csv", "metrics/eval/cbow.json",
            "metrics/summary.json", "metrics/data.json"} <= set(first)
    assert sorted(first) == sorted(second)
    for path in first:
        assert first[path] == second[path], path


# ---------------------------------------------------------------- parallel experiments


def find_experiments(node, names: set[str], found: dict) -> dict:
    """Walk `dvc exp show --json` for the experiments called `names`: name -> their data."""
    if isinstance(node, dict):
        if node.get("name") in names and isinstance(node.get("data"), dict) and node["data"].get("metrics"):
            found[node["name"]] = node["data"]
        for value in node.values():
            find_experiments(value, names, found)
    elif isinstance(node, list):
        for value in node:
            find_experiments(value, names, found)
    return found


def test_parallel_queued_experiments(project):
    repo, env = project["repo"], project["env"]
    if dvc_status(repo, env):
        run(["dvc", "repro"], repo, env)
    commit(repo, env, "baseline for experiments")
    # alpha, not C: the default solver (sgd) reads alpha, so the two models differ and evaluate,
    # which finds a model's run by the model's md5, can tell their runs apart
    variants = {"alpha-low": 0.0001, "alpha-high": 0.001}  # decimals: a YAML exponent without a dot reads as a string
    for name, c in variants.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.tfidf_logreg.alpha={c}"], repo, env)
    proc = run(["dvc", "exp", "run", "--run-all", "-j", "2"], repo, env, timeout=1500)
    assert "database is locked" not in proc.stdout + proc.stderr

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    found = find_experiments(shown, set(variants), {})
    assert set(found) == set(variants), list(found)
    client = mlflow_client(project["uri"])  # the project's own store, also from the temp copies
    run_ids = {}
    for name, c in variants.items():
        params = found[name]["params"]["params.yaml"]["data"]
        assert params["train"]["tfidf_logreg"]["alpha"] == c
        train_metrics = found[name]["metrics"]["metrics/train/tfidf_logreg.json"]["data"]
        run_id = train_metrics["mlflow_run_id"]
        mlrun = client.get_run(run_id)
        assert mlrun.info.status == "FINISHED", name
        assert mlrun.data.tags["dvc_stage"] == "train@tfidf_logreg"
        assert float(mlrun.data.params["alpha"]) == c
        assert mlrun.data.metrics["best_val_accuracy"] == train_metrics["val_accuracy"]
        test_accuracy = found[name]["metrics"]["metrics/eval/tfidf_logreg.json"]["data"]["accuracy"]
        assert mlrun.data.metrics["test_accuracy"] == test_accuracy  # evaluate found the same run
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in artifacts
        run_ids[name] = run_id
    assert len(set(run_ids.values())) == 2
    runs = stage_runs(client, EXPERIMENT, "train@tfidf_logreg")
    starts = {r.info.run_id: (r.info.start_time, r.info.end_time) for r in runs}
    (s1, e1), (s2, e2) = (starts[i] for i in run_ids.values())
    assert s1 < e2 and s2 < e1, "the two experiments did not overlap in time"
    with sqlite3.connect(repo / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [p for p in repo.rglob("mlflow.db")] == [repo / "mlflow.db"]  # no store in the temp copies


# ---------------------------------------------------------------- full disk, read-only directory


needs_mounts = pytest.mark.skipif(not mount_namespaces(), reason="needs a private mount namespace (root or user namespaces)")


@pytest.fixture
def prepared(tmp_path):
    """A stage directory where fetch_corpus and prepare have run: outputs to keep intact."""
    work, env = stage_dir(tmp_path)
    for stage in ("fetch_corpus", "prepare"):
        proc = run_stage(stage, work, env)
        assert proc.returncode == 0, proc.stderr
    return work, env, {p: tree_digest(work / p) for p in ("data/prepared", "metrics/data.json")}


@needs_mounts
def test_disk_full_during_write(prepared):
    """data/ on a tmpfs with 8 kB left: writing data/prepared fails half-way; the error is one
    line naming it, the old outputs are intact and no temporary is left."""
    work, env, before = prepared
    script = f"""
orig=$(mktemp -d)
cp -a data/. "$orig"/
mount -t tmpfs -o size=256k tmpfs data
cp -a "$orig"/. data/
rm -rf "$orig"
dd if=/dev/zero of=data/.filler bs=4k 2>/dev/null || true
truncate -s -8K data/.filler
set +e
"{sys.executable}" -m pipeline.prepare
echo "exit=$?"
set -e
rm data/.filler
find data -name '.*' | sort | sed 's/^/left: /'
md5sum data/prepared/* | sed 's/^/md5: /'
"""
    proc = in_mount_namespace(script, work, env)
    assert "exit=1" in proc.stdout, proc.stdout + proc.stderr
    fake = subprocess.CompletedProcess(proc.args, 1, proc.stdout, proc.stderr)
    line = assert_one_line_error(fake, "data/prepared: not written", "No space left on device")
    assert line.count("\n") == 0
    assert [out for out in proc.stdout.splitlines() if out.startswith("left: ")] == []
    expected = sorted(f"md5: {hashlib.md5(data).hexdigest()}  data/prepared/{name}" for name, data in before["data/prepared"].items())
    assert sorted(out for out in proc.stdout.splitlines() if out.startswith("md5: ")) == expected
    assert {p: tree_digest(work / p) for p in before} == before


@needs_mounts
def test_read_only_output_directory(prepared):
    work, env, before = prepared
    script = f"""
mount --bind data data
mount -o remount,bind,ro data
set +e
"{sys.executable}" -m pipeline.prepare
echo "exit=$?"
"""
    proc = in_mount_namespace(script, work, env)
    assert "exit=1" in proc.stdout, proc.stdout + proc.stderr
    fake = subprocess.CompletedProcess(proc.args, 1, proc.stdout, proc.stderr)
    assert_one_line_error(fake, "data/prepared: cannot write", "Read-only file system")
    assert {p: tree_digest(work / p) for p in before} == before
    assert temporaries(work / "data") == []


def test_os_error_outside_atomic_writes_is_one_line(tmp_path):
    """run_main turns any OSError into one line: here a params.yaml that is a directory."""
    work, env = stage_dir(tmp_path)
    (work / "params.yaml").unlink()
    (work / "params.yaml").mkdir()
    proc = run_stage("prepare", work, env)
    assert_one_line_error(proc, "params.yaml")
