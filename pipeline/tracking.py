"""MLflow: where runs go, what each run records, and the raw-text pyfunc model that is logged."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from .common import ROOT, PipelineError

ARTIFACTS_DIR = "mlartifacts"


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


def setup(experiment: str):
    """Point MLflow at the store and select the experiment; artifacts go to an absolute path."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if tracking_uri().startswith("sqlite:"):
                location = (project_root() / ARTIFACTS_DIR).as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        return mlflow.set_experiment(experiment)
    except Exception as exc:  # unreachable server, locked or corrupt store: say so in one line
        raise PipelineError(f"MLflow tracking at {tracking_uri()}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def path_md5(path: str | Path) -> str:
    """md5 over a file, or over a directory's files (relative names and contents), sorted."""
    path = Path(path)
    digest = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_tags(stage: str, deps: list[str | Path]) -> dict[str, str]:
    tags = {
        "dvc_stage": stage,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
    }
    for dep in deps:
        if Path(dep).exists():
            tags[f"dep_md5.{dep}"] = path_md5(dep)
    return tags


def close_stale_runs(experiment_id: str, stage: str) -> int:
    """Runs of this stage still RUNNING belong to a process that died (SIGKILL, power loss):
    mark them KILLED so none stays RUNNING forever."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    stale = client.search_runs(
        [experiment_id], filter_string=f"tags.dvc_stage = '{stage}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


@contextlib.contextmanager
def training_run(experiment: str, model: str, stage: str, params: dict, deps: list) -> Iterator[str]:
    """An MLflow run for one stage execution; an exception ends it FAILED (and propagates)."""
    import mlflow

    exp = setup(experiment)
    close_stale_runs(exp.experiment_id, stage)
    with mlflow.start_run(run_name=model, tags=run_tags(stage, deps)) as run:
        mlflow.log_params({k: ("None" if v is None else v) for k, v in params.items()})
        yield run.info.run_id


def reopen_run(run_id: str):
    """Add to the run that trained a model (evaluation); it keeps its final status."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.start_run(run_id=run_id)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ["mlflow", "tensorflow", "keras", "scikit-learn", "pandas", "numpy", "pyyaml"]
    return [f"{n}=={version(n)}" for n in names]


def log_classifier(model_dir: Path, classes: list[str], example: list[str], registered_name: str | None = None):
    """Log a model directory as a pyfunc that takes raw text: a `text` column (or a list of
    strings) in; `label` and one probability column per group out."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from .serving import NewsgroupsModel

    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),  # unnamed: a list of strings or a one-column frame
        outputs=Schema([ColSpec("string", "label")] + [ColSpec("double", c) for c in classes]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=NewsgroupsModel(),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).resolve().parent)],
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
    )
