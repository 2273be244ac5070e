"""Stage report: every model in one table, and the champion (chosen on validation, never on test)
registered in the MLflow model registry under an alias."""
from __future__ import annotations

import contextlib
import io

from . import params as P
from . import paths
from .classifier import ENSEMBLE
from .common import PipelineError, read_json, run_main, write_json, write_text
from .models import REGISTRY, unused_params

SCHEMA = {
    "registered_model": P.string(),
    "alias": P.string(),
    "fast_alias": P.string(),
    "slow_models": P.list_of(P.string()),
}

ENSEMBLE_KEY = ("members", "pooling")


def key_params(name: str, cfg: dict) -> dict:
    """The params that tell one run of model `name` from another (its registry entry's `key`),
    leaving out those the config does not read (another option's)."""
    if name == ENSEMBLE:
        keys: tuple[str, ...] = ENSEMBLE_KEY
    else:
        keys = REGISTRY[name].key if name in REGISTRY else ()
    unused = unused_params(name, cfg)
    return {k: cfg[k] for k in keys if cfg.get(k) is not None and k not in unused}


def gather(models: list[str], all_params: dict) -> list[dict]:
    rows = []
    for name in models:
        train, test = read_json(paths.TRAIN_METRICS / f"{name}.json"), read_json(paths.EVAL_METRICS / f"{name}.json")
        cfg = all_params.get("train", {}).get(name) or all_params.get(name) or {}
        rows.append(
            {
                "model": name,
                "val_accuracy": train["val_accuracy"],
                "test_accuracy": test["accuracy"],
                "test_macro_f1": test["macro_f1"],
                "train_seconds": train["train_seconds"],
                "epochs_run": train.get("epochs_run"),  # none for the ensemble: its weights are one fit
                "docs_per_second": test["docs_per_second"],
                "params": key_params(name, cfg),
                "mlflow_run_id": train["mlflow_run_id"],
            }
        )
    # What a model costs to build: an ensemble's weight fit is quick, but it needs its members.
    seconds = {r["model"]: r["train_seconds"] for r in rows}
    for r in rows:
        members = sum(seconds.get(m, 0.0) for m in r["params"].get("members", []))
        r["build_seconds"] = round(r["train_seconds"] + members, 1)
    return rows


def champion(rows: list[dict]) -> dict:
    """Highest validation accuracy; ties go to the model quicker to build (an ensemble counts its
    members' training, so a single model it ties with wins). Test plays no part."""
    if not rows:
        raise PipelineError("params.yaml: train.models: no models to report")
    return max(rows, key=lambda r: (r["val_accuracy"], -r.get("build_seconds", r["train_seconds"])))


def fast_choice(rows: list[dict], slow_models: list[str]) -> dict | None:
    """The champion among the models that neither are one of `slow_models` nor have one among
    their members: a declared rule, so the choice does not depend on a timing."""
    slow = set(slow_models)
    fast = [r for r in rows if r["model"] not in slow and not slow & set(r["params"].get("members", []))]
    return champion(fast) if fast else None


def markdown(rows: list[dict], best: dict) -> str:
    lines = [
        "| model | val accuracy | test accuracy | test macro-F1 | train time (s) | epochs | params |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = f"**{r['model']}** (champion)" if r is best else r["model"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"| {name} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} "
            f"| {r['train_seconds']:.1f} | {r['epochs_run'] or '–'} | {params} |"
        )
    return "\n".join(lines) + "\n"


def register_champion(run_id: str, name: str, alias: str) -> str:
    """Register the model the run logged (once per run) and point the alias at it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from .tracking import checked_tracking_uri

    mlflow.set_tracking_uri(checked_tracking_uri())
    client = MlflowClient()
    try:
        existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
        if existing:
            version = existing[0].version
        else:  # MLflow 3 keeps a run's model as a logged model of its own, models:/<model_id>
            outputs = client.get_run(run_id).outputs
            logged = outputs.model_outputs if outputs else []
            source = f"models:/{logged[-1].model_id}" if logged else f"runs:/{run_id}/model"
            with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered" chatter
                version = mlflow.register_model(source, name).version
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise PipelineError(f"MLflow registry at {mlflow.get_tracking_uri()}: {str(exc).splitlines()[0]}") from None
    return str(version)


def clean_up(experiment: str) -> None:
    """Close the MLflow runs and remove the temporaries of killed stages: DVC may have restored
    those stages from its run cache without running them again."""
    import mlflow

    from .tracking import checked_tracking_uri, clean_up_dead_processes

    mlflow.set_tracking_uri(checked_tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        clean_up_dead_processes(found.experiment_id)


def main(argv: list[str]) -> None:
    from .tracking import MLFLOW_SCHEMA

    all_params = P.load_params()
    cfg = P.stage_params("report", SCHEMA, params=all_params)
    clean_up(P.stage_params("mlflow", MLFLOW_SCHEMA, params=all_params)["experiment"])
    models = P.list_of(P.string(), nonempty=True)("train.models", P.section(all_params, "train.models"))
    if ENSEMBLE in all_params:
        models.append(ENSEMBLE)
    rows = gather(models, all_params)
    best = champion(rows)
    version = register_champion(best["mlflow_run_id"], cfg["registered_model"], cfg["alias"])
    quick = fast_choice(rows, cfg["slow_models"])
    fast = {"model": None}
    if quick is not None:
        fast = {"model": quick["model"], "alias": cfg["fast_alias"],
                "version": register_champion(quick["mlflow_run_id"], cfg["registered_model"], cfg["fast_alias"])}
    write_json(
        paths.SUMMARY_JSON,
        {
            "champion": {"model": best["model"], "chosen_by": "val_accuracy",
                         "registered_model": cfg["registered_model"],
                         "alias": cfg["alias"], "version": version},
            "fast": {**fast, "chosen_by": "val_accuracy", "slow_models": cfg["slow_models"]},
            "models": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in rows},
        },
    )
    write_text(paths.SUMMARY_MD, markdown(rows, best))
    print(f"report: champion {best['model']} (val {best['val_accuracy']:.4f}) "
          f"-> models:/{cfg['registered_model']}@{cfg['alias']} v{version}")
    if quick is not None:
        print(f"report: fast {quick['model']} (val {quick['val_accuracy']:.4f}) "
              f"-> models:/{cfg['registered_model']}@{cfg['fast_alias']} v{fast['version']}")


if __name__ == "__main__":
    run_main(main)
