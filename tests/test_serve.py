"""The registered champion served by MLflow's own scoring server, as docs/usage.md shows:

    mlflow models serve -m models:/newsgroups-classifier@champion --env-manager local -h 127.0.0.1

started on a free loopback port over the tiny trained project, stopped whatever the outcome."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.local_server import LocalServer, free_port, http_session, port_open

CHAMPION = "models:/newsgroups-classifier@champion"
CLASSES = ["comp.graphics", "rec.autos", "sci.space"]
LONG_DOC = " ".join(["the rocket engine on the launch pad"] * 40_000)  # ~1.4 MB, far past max_len


@pytest.fixture(scope="module")
def served(tiny_trained_project, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = LocalServer(
        lambda port: [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION,
                      "--env-manager", "local", "-h", "127.0.0.1", "-p", port],
        ready_path="/ping", log=log, cwd=tiny_trained_project.repo,
        env=tiny_trained_project.env_with_store(), timeout=600,
    )
    with server:  # __exit__ stops the server's whole process group, failures included
        yield server
    assert not port_open(server.port), "the server still listens after the tests"


def invoke(server, payload: dict, timeout: float = 300):
    return http_session().post(server.url + "/invocations", json=payload, timeout=timeout)


def check_predictions(predictions: list[dict], n: int) -> None:
    assert len(predictions) == n
    for row in predictions:
        assert set(row) == {"label", *CLASSES}
        probs = [row[c] for c in CLASSES]
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == CLASSES[max(range(len(CLASSES)), key=probs.__getitem__)]


def test_batch_of_raw_texts(served, tiny_trained_project):
    """`inputs`: a list of strings, an empty one and a very long one among them; the answer is one
    record per text, the same as the model loaded in-process."""
    import mlflow

    texts = ["the nasa shuttle launch reached orbit", "", LONG_DOC, "my car needs new brake pads and tires"]
    response = invoke(served, {"inputs": texts})
    assert response.status_code == 200, response.text[:2000]
    predictions = response.json()["predictions"]
    check_predictions(predictions, len(texts))
    assert predictions[0]["label"] == "sci.space" and predictions[3]["label"] == "rec.autos"

    mlflow.set_tracking_uri(tiny_trained_project.tracking_uri)
    local = mlflow.pyfunc.load_model(CHAMPION).predict(texts)
    assert local["label"].tolist() == [p["label"] for p in predictions]
    for c in CLASSES:
        assert local[c].tolist() == pytest.approx([p[c] for p in predictions], abs=1e-5)


def test_dataframe_split_with_a_text_column(served):
    payload = {"dataframe_split": {"columns": ["text"], "data": [["rocket orbit moon"], ["pixel shading render"]]}}
    response = invoke(served, payload)
    assert response.status_code == 200, response.text[:2000]
    check_predictions(response.json()["predictions"], 2)


def test_bad_request_is_a_client_error(served):
    response = invoke(served, {"no_such_key": ["text"]})
    assert 400 <= response.status_code < 500
    assert "error_code" in response.json()


@pytest.mark.parametrize("inputs, named", [([1, 2], "item 0 is int"), (["fine", 2.5], "item 1 is float"), ([], "0 inputs")])
def test_inputs_that_are_not_texts_are_a_client_error(served, inputs, named):
    """MLflow would turn numbers into strings if the signature said `string`: the model refuses them."""
    response = invoke(served, {"inputs": inputs})
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert named in response.json()["message"]


def test_benchmark_script_runs_against_the_server(served, tiny_trained_project, tmp_path):
    """bench/serve_bench.py with tiny counts: its table and JSON for both paths and every mode."""
    out = tmp_path / "serve_bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serve_bench", "--url", served.url, "--model", CHAMPION,
         "--tracking-uri", tiny_trained_project.tracking_uri,
         "--data", str(tiny_trained_project.repo / "data/prepared/test.parquet"),
         "--singles", "6", "--batches", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=tiny_trained_project.env_with_store(),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["models"][CHAMPION]
    rows = {(r["path"], r["mode"]): r for r in result["results"]}
    assert set(rows) == {("served", "single"), ("served", "batch64"), ("in-process", "single"),
                         ("in-process", "batch64"), ("in-process", "batch512")}
    for (path, mode), row in rows.items():
        assert row["requests"] == {"single": 6, "batch64": 2, "batch512": 3}[mode] and row["errors"] == 0
        assert row["requests_per_second"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"]
    # batches of 512 regroup the documents of the batches of 64, three passes: one (shorter) batch here
    assert 3 * rows[("served", "batch64")]["docs"] == rows[("in-process", "batch512")]["docs"] == 3 * 2 * 64
    assert result["label_agreement"] == 1.0
    assert "requests/s" in proc.stdout and "p95" in proc.stdout


def test_server_stops_even_when_the_test_fails(tmp_path):
    """The helper behind these tests: leaving its block by an exception still ends the process
    group and frees the port (a stdlib HTTP server stands in for MLflow's)."""
    server = LocalServer(
        lambda port: [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", tmp_path],
        ready_path="/", log=tmp_path / "http.log", cwd=tmp_path, timeout=60,
    )
    with pytest.raises(RuntimeError, match="boom"):
        with server:
            port, proc_pid = server.port, server.proc.pid
            assert port_open(port)
            raise RuntimeError("boom")
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(port) and server.proc is None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(proc_pid, 0)
    assert free_port() > 0
