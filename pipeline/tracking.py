"""MLflow: where runs go, what each run records, and the raw-text pyfunc model that is logged."""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

from . import params as P
from .common import ROOT, PipelineError, file_digest, path_md5, process_alive, process_start, remove_dead_temporaries

MLFLOW_SCHEMA = {"experiment": P.string()}  # params.yaml `mlflow`, read by every stage that logs a run

ARTIFACTS_DIR = "mlartifacts"
MODEL_TAG = "model_md5"  # a run's tag: path_md5 of the model directory it saved
OUTPUT_ROOTS = ("data", "metrics")  # where stages write (relative to the project, the stages' cwd)

# MLflow's HTTP client retries a failing request for about 4 minutes by default (7 retries,
# backoff factor 2, 120 s timeout): a stage would seem to hang. These bounds (about 10 s for a
# refused connection) apply unless the user set the variables.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

PROBE_TIMEOUT = 5.0  # seconds for the reachability check of a tracking server
# A RUNNING run started on another machine cannot be checked for a live process: it is taken as
# stale only once it is this old.
STALE_AFTER_HOURS = 24.0

_reachable: set[str] = set()


def project_root() -> Path:
    """The project's own root, also from the temporary copies `dvc exp run --temp/--queue` uses
    (they live under <root>/.dvc/tmp/exps/), so every run lands in the one project store."""
    parts = ROOT.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return ROOT


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def checked_tracking_uri() -> str:
    """tracking_uri(), a tracking server checked once per process: an unreachable one is a
    one-line PipelineError within seconds, before any work, instead of minutes of retries."""
    uri = tracking_uri()
    if "MLFLOW_TRACKING_URI" not in os.environ and uri not in _reachable:
        check_own_store()
        _reachable.add(uri)
    if uri.startswith(("http://", "https://")) and uri not in _reachable:
        check_reachable(uri)
        _reachable.add(uri)
    return uri


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast unless something answers HTTP at `uri` (any status: auth may guard /health)."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise PipelineError(
            f"MLflow tracking server {uri} unreachable ({reason} within {timeout:g} s); "
            "start it or fix MLFLOW_TRACKING_URI"
        ) from None


def setup(experiment: str):
    """Point MLflow at the store and select the experiment; artifacts go to an absolute path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(checked_tracking_uri())
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if tracking_uri().startswith("sqlite:///"):  # artifacts beside the database file
                database = Path(tracking_uri()[len("sqlite:///"):]).resolve()
                location = (database.parent / ARTIFACTS_DIR).as_uri()
            try:
                mlflow.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # a parallel stage (dvc exp run -j 2) created it first
                if mlflow.get_experiment_by_name(experiment) is None:
                    raise
        return mlflow.set_experiment(experiment)
    except Exception as exc:  # unreachable server, locked or corrupt store: say so in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PipelineError(f"MLflow tracking at {tracking_uri()}: {type(exc).__name__}: {first}") from None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def process_tags() -> dict[str, str]:
    """The process that has a run open: close_stale_runs tells a dead run from a live one by it."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_started": process_start(os.getpid()) or ""}


def run_tags(stage: str, deps: list[str | Path]) -> dict[str, str]:
    tags = {
        "dvc_stage": stage,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        **process_tags(),
    }
    for dep in deps:
        if Path(dep).exists():
            tags[f"dep_md5.{dep}"] = path_md5(dep)
    return tags


def is_stale(run, host: str | None = None, now: float | None = None) -> bool:
    """Whether a RUNNING run was left by a process that died (SIGKILL, power loss). A run of
    this machine is stale when its process is gone; one of another machine (or without the
    tags) cannot be checked and counts as stale only after STALE_AFTER_HOURS, so a parallel
    experiment (`dvc exp run -j 2`, a teammate on a shared server) is never cut short."""
    tags = run.data.tags
    host = host or socket.gethostname()
    if tags.get("host") == host and tags.get("pid", "").isdigit():
        return not process_alive(int(tags["pid"]), tags.get("pid_started"))
    if "pid" not in tags:  # recorded before runs carried their process: the old rule
        return True
    age_hours = ((now or time.time()) * 1000 - (run.info.start_time or 0)) / 3.6e6
    return age_hours > STALE_AFTER_HOURS


def close_stale_runs(experiment_id: str, stage: str | None = None) -> int:
    """Pipeline runs (of `stage`, or of any stage) still RUNNING whose process died (SIGKILL,
    power loss) are marked KILLED, so none stays RUNNING forever; runs of live processes, and
    runs the pipeline did not start (no dvc_stage tag), are left alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    query = "attributes.status = 'RUNNING'" + (f" and tags.dvc_stage = '{stage}'" if stage else "")
    running = client.search_runs([experiment_id], filter_string=query)
    stale = [run for run in running if run.data.tags.get("dvc_stage") and is_stale(run)]
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def clean_up_dead_processes(experiment_id: str) -> None:
    """What a killed stage left, whichever stage it was: its MLflow run (KILLED) and its
    temporaries. Every stage that talks to MLflow calls this, since DVC may restore the killed
    stage from its run cache and never run it again."""
    close_stale_runs(experiment_id)
    remove_dead_temporaries(*OUTPUT_ROOTS)


def check_own_store(root: Path | None = None) -> None:
    """The project's own store (mlflow.db) must keep its artifacts inside the project: in a copy
    (`cp -a project copy`) its absolute artifact URIs still name the original's mlartifacts/, and
    runs of the copy would be written there."""
    root = (root or project_root()).resolve()
    database = root / "mlflow.db"
    if not database.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            locations = [row[0] for row in db.execute("SELECT artifact_location FROM experiments")]
    except sqlite3.Error:  # not an MLflow store yet, or busy: MLflow itself reports that
        return
    other = foreign_root(locations, root)
    if other is not None:
        raise PipelineError(
            f"{database}: artifacts go to {other}, not this project (copied from it?): run "
            "`python -m pipeline.restore --adopt-store` to use this copy's mlartifacts/, or set MLFLOW_TRACKING_URI"
        )


def foreign_root(locations: list[str], root: Path) -> Path | None:
    """The other project that local artifact locations name (the folder holding their
    mlartifacts/ or mlruns/), None if they are all inside `root` (or remote, or relative)."""
    for location in filter(None, locations):
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme not in ("", "file") or not (parsed.path or "").startswith("/"):
            continue
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        if path.is_relative_to(root):
            continue
        for parent in path.parents:
            if path.relative_to(parent).parts[0] in (ARTIFACTS_DIR, "mlruns"):
                return parent
        return path
    return None


def find_model_run(directory: str | Path, stage: str) -> str:
    """The newest finished run of `stage` that saved exactly the model in `directory` (its
    model_md5 tag): the model directory itself names no run, so an identical retrain leaves its
    hash, and everything downstream, unchanged."""
    from mlflow.tracking import MlflowClient

    digest = path_md5(directory)
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        experiments,
        filter_string=f"tags.{MODEL_TAG} = '{digest}' and tags.dvc_stage = '{stage}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    ) if experiments else []
    if not found:
        raise PipelineError(f"{directory}: no finished MLflow run of {stage} saved this model in {tracking_uri()} "
                            f"(run `dvc repro -f -s {stage}`)")
    return found[0].info.run_id


@contextlib.contextmanager
def training_run(experiment: str, model: str, stage: str, params: dict, deps: list) -> Iterator[str]:
    """An MLflow run for one stage execution; an exception ends it FAILED (and propagates)."""
    import mlflow

    exp = setup(experiment)
    clean_up_dead_processes(exp.experiment_id)
    with mlflow.start_run(run_name=model, tags=run_tags(stage, deps)) as run:
        mlflow.log_params({k: ("None" if v is None else v) for k, v in params.items()})
        yield run.info.run_id


def reopen_run(run_id: str):
    """Add to the run that trained a model (evaluation); it keeps its final status."""
    import mlflow

    mlflow.set_tracking_uri(checked_tracking_uri())
    clean_up_dead_processes(mlflow.get_run(run_id).info.experiment_id)
    run = mlflow.start_run(run_id=run_id)
    try:
        mlflow.set_tags(process_tags())  # RUNNING again, now held by this process
    except Exception:
        mlflow.end_run("FAILED")
        raise
    return run


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    # what loading and running any saved model needs, the sentence encoder's runtime included, and
    # the scoring server's C HTTP parser and event loop
    names = ["mlflow", "tensorflow", "keras", "scikit-learn", "scipy", "pandas", "numpy", "pyyaml",
             "onnxruntime", "tokenizers", "tqdm", "httptools", "uvloop"]
    return [f"{n}=={version(n)}" for n in names]


def pyfunc_model(model_dir: Path, classes: list[str], example: list[str]) -> dict:
    """What mlflow.pyfunc's log_model and save_model take to make a model directory a pyfunc that
    takes raw text: a `text` column (or a list of strings) in; `label` and one probability column
    per group out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    from . import serving

    signature = ModelSignature(
        # unnamed: a list of strings or a one-column frame. `any`, not `string`: MLflow would
        # turn numbers (and nulls) into strings before the model could refuse them
        inputs=Schema([ColSpec(AnyType())]),
        outputs=Schema([ColSpec("string", "label")] + [ColSpec("double", c) for c in classes]),
    )
    return {
        "python_model": serving.__file__,  # models from code: MLflow runs the file to load the model
        "artifacts": {"model_dir": str(model_dir)},
        "code_paths": [str(Path(__file__).resolve().parent)],
        "signature": signature,
        "input_example": example,
        "pip_requirements": pip_requirements(),
    }


def log_classifier(model_dir: Path, classes: list[str], example: list[str], registered_name: str | None = None):
    import mlflow

    return mlflow.pyfunc.log_model(name="model", registered_model_name=registered_name,
                                   **pyfunc_model(model_dir, classes, example))


@functools.cache
def _dvc_path_source():
    """An MLflow dataset source for a file the pipeline made: its path in the DVC project."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcPathSource(DatasetSource):
        def __init__(self, path: str):
            self.path = path

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, **kwargs):
            return str(project_root() / self.path)

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            raise NotImplementedError

        def to_dict(self) -> dict:
            return {"path": self.path}

        @classmethod
        def from_dict(cls, source_dict: dict):
            return cls(source_dict["path"])

    return DvcPathSource


def log_splits(paths: list[str | Path], context: str) -> None:
    """The data splits the active run read, as MLflow dataset inputs (the UI's Dataset column):
    the split's name, the md5 of its file (as DVC computes it) and its path in the project."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    source = _dvc_path_source()
    for path in map(Path, paths):
        digest = file_digest(path, "md5")
        mlflow.log_input(MetaDataset(source(path.as_posix()), name=path.stem, digest=digest), context=context)
