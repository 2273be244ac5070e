"""The model the predict CLI (and the serving benchmark) uses: a registry alias, a models:/ or
runs:/ URI, a pipeline model name or a model directory, resolved and loaded, with a one-line error
naming what is missing."""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import paths
from .common import PipelineError

DEFAULT_REGISTERED_MODEL = "newsgroups-classifier"
DEFAULT_ALIAS = "champion"


@dataclass
class Predictor:
    """A loaded model: texts -> one row of probabilities per text, a column per group."""

    uri: str  # what was asked for, resolved (models:/..., runs:/..., or a directory)
    classes: list[str]
    predict_proba: Callable[[list[str]], "object"]

    @classmethod
    def of(cls, uri: str, classifier) -> "Predictor":
        return cls(uri, list(classifier.classes), classifier.predict_proba)


def quiet_libraries() -> None:
    """No library chatter on stderr: there, only our `error:` lines."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")



def registry_defaults() -> tuple[str, str]:
    """The registered model and alias `report` uses (params.yaml `report`), else the defaults."""
    from .tracking import project_root

    try:
        from . import params as P

        report = P.load_params(project_root() / P.PARAMS_FILE).get("report") or {}
        name = str(report.get("registered_model") or DEFAULT_REGISTERED_MODEL)
        return name, str(report.get("alias") or DEFAULT_ALIAS)
    except (PipelineError, AttributeError, OSError):
        return DEFAULT_REGISTERED_MODEL, DEFAULT_ALIAS


def default_model_uri() -> str:
    name, alias = registry_defaults()
    return f"models:/{name}@{alias}"


def check_store(uri: str) -> None:
    """A sqlite store that does not exist would be created, empty, by MLflow: say what is missing."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise PipelineError(f"MLflow store {uri}: no such database (run the pipeline, `dvc repro`, first)")
    elif uri.startswith("file:"):
        from urllib.parse import urlparse

        if not Path(urlparse(uri).path).is_dir():
            raise PipelineError(f"MLflow store {uri}: no such directory")


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def check_registry_uri(model_uri: str, client) -> None:
    """Name what is missing in a models:/ URI before loading: the model, the alias or the version."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))?/?", model_uri)
    if not match:
        return
    name, alias, version = match.groups()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        try:
            known = sorted(m.name for m in client.search_registered_models())
        except MlflowException:
            known = []
        none = " (none registered: `dvc repro` registers the champion)"
        hint = f" (registered: {', '.join(known)})" if known else none
        raise PipelineError(f"{model_uri}: no registered model {name!r}{hint}") from None
    if alias is not None and alias not in (registered.aliases or {}):
        known = ", ".join(sorted(registered.aliases or {})) or "none"
        raise PipelineError(f"{model_uri}: unknown alias {alias!r} of {name!r} (aliases: {known})")
    if version is not None and version.isdigit():
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise PipelineError(f"{model_uri}: {name!r} has no version {version}") from None


def check_run_uri(model_uri: str, client) -> None:
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"runs:/([^/]+)(?:/.*)?", model_uri)
    if not match:
        return
    try:
        client.get_run(match.group(1))
    except MlflowException:
        raise PipelineError(f"{model_uri}: no run {match.group(1)!r} in the tracking store") from None


def load_mlflow(model_uri: str, tracking: str | None = None) -> Predictor:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from .tracking import tracking_uri

    quiet_libraries()
    store = tracking or tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")):
        check_store(store)
    mlflow.set_tracking_uri(store)
    client = MlflowClient(tracking_uri=store)
    try:
        check_registry_uri(model_uri, client)
        check_run_uri(model_uri, client)
        model = mlflow.pyfunc.load_model(model_uri)
    except PipelineError:
        raise
    except Exception as exc:  # unreachable store, missing artifacts, a broken model
        raise PipelineError(f"{model_uri}: cannot load the model ({type(exc).__name__}: {first_line(exc)})") from None

    try:  # one of ours: call its classifier, without MLflow's input checks and output frame
        return Predictor.of(model_uri, model.unwrap_python_model().classifier)
    except (AttributeError, MlflowException):
        return frame_predictor(model_uri, model)


def frame_predictor(model_uri: str, model) -> Predictor:
    """Another pyfunc model answering with a frame: `label` and one probability column per group."""
    import numpy as np

    probe = model.predict(["probe"])
    if "label" not in getattr(probe, "columns", ()):
        raise PipelineError(f"{model_uri}: the model's output has no 'label' column: not a newsgroups classifier")
    classes = [str(c) for c in probe.columns if c != "label"]

    def predict_proba(texts: list[str]):
        return model.predict(list(texts))[classes].to_numpy(dtype=np.float64)

    return Predictor(model_uri, classes, predict_proba)


def load_directory(directory: Path) -> Predictor:
    from .classifier import META, Classifier

    quiet_libraries()
    if (directory / META).is_file():
        try:
            classifier = Classifier(directory)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"{directory}: cannot load the model ({type(exc).__name__}: {first_line(exc)})"
            ) from None
        return Predictor.of(str(directory), classifier)
    if (directory / "MLmodel").is_file():
        return load_mlflow(str(directory))
    raise PipelineError(f"{directory}: not a model directory (no {META} or MLmodel)")


def pipeline_model_dir(name: str) -> Path:
    """data/models/<name> (train@<name>), or where classifier.py says the pipeline keeps `name`."""
    from .classifier import model_dir

    return model_dir(name)


def pipeline_models() -> list[str]:
    from .classifier import META
    from .tracking import project_root

    root = project_root() / paths.MODELS
    return sorted(p.name for p in root.glob("*") if (p / META).is_file()) if root.is_dir() else []


def load_model(spec: str | None = None, tracking: str | None = None) -> Predictor:
    """`spec`: None (the registry alias), a models:/ or runs:/ URI, a pipeline model name, or a
    model directory (with meta.json, or an MLflow model with MLmodel)."""
    from .tracking import project_root

    spec = spec or default_model_uri()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", spec):
        return load_mlflow(spec, tracking)
    if re.fullmatch(r"[A-Za-z0-9_.-]+", spec) and spec not in (".", ".."):
        directory = project_root() / pipeline_model_dir(spec)
        if directory.is_dir():
            return load_directory(directory)
        if not Path(spec).is_dir():
            known = ", ".join(pipeline_models()) or "none yet: run `dvc repro`"
            raise PipelineError(f"model {spec!r}: no {pipeline_model_dir(spec)} (trained models: {known})")
    path = Path(spec)
    if not path.exists():
        raise PipelineError(f"model {spec!r}: no such model directory")
    if not path.is_dir():
        raise PipelineError(f"model {spec!r}: not a model directory")
    return load_directory(path)
