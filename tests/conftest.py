"""Fixtures shared by several test files: one tiny project trained once (predict, serving and MLflow
UI tests) and a local HTTP server (download tests)."""
from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from tiny import QuietHandler, make_project, run

TINY_MODELS = ["tfidf_logreg", "cbow"]  # one scikit-learn, one Keras model


@dataclass
class TinyProject:
    repo: Path
    env: dict  # the stages' environment (no MLFLOW_* from the caller)
    tracking_uri: str  # sqlite:///<repo>/mlflow.db, where the pipeline logged its runs
    models: list[str] = field(default_factory=lambda: list(TINY_MODELS))

    def env_with_store(self, **extra: str) -> dict:
        """The environment for a process that must read this project's MLflow store."""
        return {**self.env, "MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true", **extra}


@pytest.fixture(scope="session")
def tiny_trained_project(tmp_path_factory) -> TinyProject:
    """A copy of the project on tiny generated data, `dvc repro` done: trained models under
    data/models, their runs in <repo>/mlflow.db and the champion registered under its alias."""
    repo, env = make_project(tmp_path_factory.mktemp("tiny-trained"), TINY_MODELS)
    run(["dvc", "repro"], repo, env)
    assert (repo / "metrics" / "summary.json").is_file()
    return TinyProject(repo=repo, env=env, tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/www (no network needed)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
