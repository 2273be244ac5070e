"""Stage check_params: every section of params.yaml checked with the schemas the stages use.

DVC deletes a stage's outputs before it runs the stage's command, so a bad value found by the
stage itself comes too late: the previous outputs are gone. This stage runs first (every stage
without an upstream stage depends on its output) and stops `dvc repro` before any output is
touched. Its output says only that the params are valid: it stays the same while they do, so this
stage rerunning reruns nothing downstream, and it is `persist` in dvc.yaml, so a failed check
does not delete it either.
"""
from __future__ import annotations

from typing import Any, Callable

from . import params as P
from . import paths
from .common import PipelineError, run_main, write_text
from .embeddings import SCHEMA as EMBEDDINGS
from .encode import SCHEMA as ENCODE
from .ensemble import SCHEMA as ENSEMBLE
from .evaluate import SCHEMA as EVALUATE
from .fetch_corpus import SCHEMA as FETCH_CORPUS
from .fetch_encoder import SCHEMA as FETCH_ENCODER
from .fetch_glove import SCHEMA as FETCH_GLOVE
from .keras_fit import sequence_length
from .models import REGISTRY, get_spec
from .prepare import SCHEMA as PREPARE
from .report import SCHEMA as REPORT
from .tokenize import SCHEMA as TOKENIZE
from .tracking import MLFLOW_SCHEMA

CONTENT = "params.yaml: every section valid\n"


def check_train(section: Any, params: dict) -> dict:
    """train.models (registered models, each with its section) and every model section present."""
    if not isinstance(section, dict):
        raise PipelineError(f"{P.PARAMS_FILE}: train: expected a mapping, got {type(section).__name__}")
    models = P.list_of(P.string(), nonempty=True)("train.models", P.section(params, "train.models"))
    for name in models:
        get_spec(name)
        P.section(params, f"train.{name}")
    out = {"models": models}
    for name, cfg in section.items():
        if name == "models":
            continue
        if name not in REGISTRY:
            raise PipelineError(f"{P.PARAMS_FILE}: train.{name}: unknown model (known: {', '.join(REGISTRY)})")
        spec = REGISTRY[name]
        out[name] = P.validate(f"train.{name}", cfg, spec.schema)
        if spec.kind == "keras" and isinstance(params.get("tokenize"), dict):
            sequence_length(name, out[name], params["tokenize"]["max_len"])
    return out


def check_ensemble(section: Any, params: dict) -> dict:
    cfg = P.validate("ensemble", section, ENSEMBLE)
    trained = P.section(params, "train.models")
    for member in cfg["members"]:
        if member not in trained:
            raise PipelineError(f"{P.PARAMS_FILE}: ensemble.members: {member!r} is not in train.models")
    return cfg


def schema_check(name: str, schema: dict) -> Callable[[Any, dict], dict]:
    return lambda section, params: P.validate(name, section, schema)


# Every section params.yaml may hold, in the order they are checked (train's cross-checks need
# tokenize validated first). A new stage's section is added here.
SECTIONS: dict[str, Callable[[Any, dict], dict]] = {
    "fetch_corpus": schema_check("fetch_corpus", FETCH_CORPUS),
    "prepare": schema_check("prepare", PREPARE),
    "tokenize": schema_check("tokenize", TOKENIZE),
    "fetch_glove": schema_check("fetch_glove", FETCH_GLOVE),
    "embeddings": schema_check("embeddings", EMBEDDINGS),
    "fetch_encoder": schema_check("fetch_encoder", FETCH_ENCODER),
    "encode": schema_check("encode", ENCODE),
    "mlflow": schema_check("mlflow", MLFLOW_SCHEMA),
    "train": check_train,
    "ensemble": check_ensemble,
    "evaluate": schema_check("evaluate", EVALUATE),
    "report": schema_check("report", REPORT),
}
OPTIONAL = {"ensemble"}  # report leaves the ensemble out when params.yaml has no such section


def check_params(params: dict) -> None:
    """Raise a one-line PipelineError for the first invalid, missing or unknown section or key."""
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"{P.PARAMS_FILE}: {unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    for name, check in SECTIONS.items():
        if name in params:
            check(params[name], params)
        elif name not in OPTIONAL:
            raise PipelineError(f"{P.PARAMS_FILE}: {name}: missing")


def main(argv: list[str]) -> None:
    check_params(P.load_params())
    if not paths.PARAMS_VALID.is_file() or paths.PARAMS_VALID.read_text(encoding="utf-8") != CONTENT:
        write_text(paths.PARAMS_VALID, CONTENT)
    print(f"check_params: {P.PARAMS_FILE} valid")


if __name__ == "__main__":
    run_main(main)
