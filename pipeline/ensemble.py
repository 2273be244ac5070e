"""Stage ensemble: a weighted pool of the class probabilities of chosen trained models.

Pooling is `log` (weighted geometric mean, renormalised) or `linear` (weighted mean); see
`classifier.pool`. Weights are fitted on the validation split only, by minimum log-loss, from
the validation probabilities each train stage saved with its model. Because those weights have
seen validation, the reported validation accuracy is a 2-fold cross-fit estimate (fit on one
half, score the other), so the champion choice stays fair. The ensemble is saved as a model
directory like any other (its members inside) and logged to MLflow.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from sklearn.model_selection import StratifiedKFold

from . import params as P
from . import paths
from .classifier import ENSEMBLE, META, POOLINGS, VAL_PROBS, load_probs, log_probs, pool, stage_name
from .common import PipelineError, atomic_path, path_md5, read_json, remove_quietly, run_main, write_json

NAME = ENSEMBLE

SCHEMA = {
    "members": P.list_of(P.string(), nonempty=True),
    "pooling": P.choice(*POOLINGS),
    "seed": P.integer(0),
}


def fit_weights(probs: list[np.ndarray], y: np.ndarray, pooling: str) -> np.ndarray:
    """Non-negative weights minimising the log-loss of `pool(probs, weights, pooling)` on labels y."""
    if pooling == "log":
        return fit_log_weights(probs, y)
    return fit_linear_weights(probs, y)


def log_pool_loss(w: np.ndarray, logs: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Log-loss of the geometric pool with weights w over member log-probabilities [models, n, classes],
    and its gradient: d/dw_m = mean over documents of (E_q[log p_m] - log p_m[y])."""
    rows = np.arange(len(y))
    log_q = log_softmax(np.tensordot(w, logs, axes=1), axis=1)
    grad = (np.exp(log_q)[None] * logs).sum(axis=2).mean(axis=1) - logs[:, rows, y].mean(axis=1)
    return float(-log_q[rows, y].mean()), grad


def fit_log_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Unnormalised weights (they double as inverse temperatures) for the geometric pool."""
    logs = np.stack(log_probs(probs)).astype(np.float64)
    bounds = [(0.0, None)] * len(probs)
    return minimize(log_pool_loss, np.ones(len(probs)), args=(logs, y), jac=True, method="L-BFGS-B", bounds=bounds).x


def fit_linear_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 for the arithmetic mixture."""
    stacked = np.stack([p[np.arange(len(y)), y] for p in probs], axis=1).astype(np.float64)  # [n, models]

    def loss(theta):
        w = softmax(theta)
        mixed = np.clip(stacked @ w, 1e-12, None)
        grad_w = -(stacked / mixed[:, None]).mean(axis=0)
        # chain rule through softmax: dL/dtheta = w * (grad_w - w.grad_w)
        return -np.log(mixed).mean(), w * (grad_w - w @ grad_w)

    result = minimize(loss, np.zeros(len(probs)), jac=True, method="L-BFGS-B")
    return softmax(result.x)


def crossfit_accuracy(probs: list[np.ndarray], y: np.ndarray, pooling: str, seed: int) -> float:
    """Accuracy of the ensemble on validation documents whose weights were fitted without them."""
    correct = 0
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fit_idx, score_idx in folds.split(np.zeros(len(y)), y):
        w = fit_weights([p[fit_idx] for p in probs], y[fit_idx], pooling)
        correct += int((pool([p[score_idx] for p in probs], w, pooling).argmax(axis=1) == y[score_idx]).sum())
    return correct / len(y)


def member_val_probs(members: list[str], n_docs: int) -> tuple[list[np.ndarray], list[str]]:
    """The members' saved validation probabilities and their (shared) classes."""
    missing = [m for m in members if not (paths.MODELS / m / META).is_file()]
    if missing:
        raise PipelineError(f"params.yaml: ensemble.members: {missing[0]!r} has no trained model in {paths.MODELS}")
    member_classes = [read_json(paths.MODELS / m / META)["classes"] for m in members]
    classes = member_classes[0]
    if any(c != classes for c in member_classes):
        raise PipelineError("params.yaml: ensemble.members: the models were trained on different classes")
    probs = [load_probs(paths.MODELS / m / VAL_PROBS, (n_docs, len(classes)), f"train@{m}")[0] for m in members]
    return probs, classes


def build(members: list[str], pooling: str, seed: int, out: Path) -> dict:
    val = pd.read_parquet(paths.split_file("val"))
    texts, y = val["text"].tolist(), val["label"].to_numpy()
    start = time.perf_counter()
    probs, classes = member_val_probs(members, len(y))
    weights = fit_weights(probs, y, pooling)
    seconds = time.perf_counter() - start
    saved = weights.round(6)
    # A member weighted 0 changes no pooled probability, so the saved model leaves it out and
    # serving neither loads nor runs it. The metrics keep every member's weight.
    kept = [i for i, w in enumerate(saved) if w > 0] or list(range(len(members)))
    for i in kept:
        shutil.copytree(paths.MODELS / members[i], out / members[i], ignore=shutil.ignore_patterns(VAL_PROBS))
    write_json(
        out / "meta.json",
        {"model": NAME, "kind": ENSEMBLE, "classes": classes, "members": [members[i] for i in kept],
         "pooling": pooling, "weights": [float(saved[i]) for i in kept]},
    )
    return {
        "weights": dict(zip(members, weights.round(4).tolist())),
        "val_accuracy_fitted": float((pool(probs, weights, pooling).argmax(axis=1) == y).mean()),
        "val_accuracy": crossfit_accuracy(probs, y, pooling, seed),
        "member_val_accuracy": {m: float((p.argmax(axis=1) == y).mean()) for m, p in zip(members, probs)},
        "seconds": seconds,
        "classes": classes,
        "example": texts[:2],
    }


def main(argv: list[str]) -> None:
    import mlflow

    from .tracking import MLFLOW_SCHEMA, MODEL_TAG, log_classifier, log_splits, training_run

    params = P.load_params()
    cfg = P.stage_params(NAME, SCHEMA, params=params)
    experiment = P.stage_params("mlflow", MLFLOW_SCHEMA, params=params)["experiment"]
    out = paths.ENSEMBLE
    remove_quietly(out, paths.TRAIN_METRICS / f"{NAME}.json")
    flat = {"members": ",".join(cfg["members"]), "pooling": cfg["pooling"], "seed": cfg["seed"]}
    with training_run(experiment, NAME, stage_name(NAME), flat, [paths.MODELS / m for m in cfg["members"]]) as run_id:
        log_splits([paths.split_file("val")], "training")  # the ensemble's weights are fitted on the validation split
        with atomic_path(out, directory=True) as tmp:
            result = build(cfg["members"], cfg["pooling"], cfg["seed"], tmp)
            mlflow.log_metrics(
                {"val_accuracy": result["val_accuracy"], "val_accuracy_fitted": result["val_accuracy_fitted"],
                 "best_val_accuracy": result["val_accuracy"], "train_seconds": result["seconds"]}
                | {f"weight.{m}": w for m, w in result["weights"].items()}
            )
            mlflow.set_tag(MODEL_TAG, path_md5(tmp))
            log_classifier(tmp, result["classes"], result["example"])
        report = {
            "model": NAME,
            "val_accuracy": round(result["val_accuracy"], 4),
            "val_accuracy_fitted": round(result["val_accuracy_fitted"], 4),
            "weights": result["weights"],
            "member_val_accuracy": {m: round(a, 4) for m, a in result["member_val_accuracy"].items()},
            "train_seconds": round(result["seconds"], 1),
            "mlflow_run_id": run_id,
        }
        write_json(paths.TRAIN_METRICS / f"{NAME}.json", report)
    print(f"ensemble: weights {result['weights']}; cross-fitted val accuracy {report['val_accuracy']:.4f}")


if __name__ == "__main__":
    run_main(main)
