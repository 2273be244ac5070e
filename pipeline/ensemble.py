"""Stage ensemble: a weighted average of the class probabilities of chosen trained models.

Weights are fitted on the validation split only (minimum log-loss over softmax-parametrised
weights). Because those weights have seen validation, the reported validation accuracy is a
2-fold cross-fit estimate (fit on one half, score the other), so the champion choice stays fair.
The ensemble is saved as a model directory like any other (its members inside) and logged to MLflow.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.model_selection import StratifiedKFold

from . import params as P
from .classifier import Classifier
from .common import PipelineError, atomic_path, remove_quietly, run_main, write_json, write_text

NAME = "ensemble"
VAL = Path("data/prepared/val.parquet")
MODELS = Path("data/models")
OUT = Path("data/ensemble")  # not under data/models: that folder is this stage's input
METRICS = Path("metrics/train")
HISTORY = Path("metrics/history")

SCHEMA = {"members": P.list_of(P.string(), nonempty=True), "seed": P.integer(0)}


def fit_weights(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log-loss of the mixture on (probs, y)."""
    stacked = np.stack([p[np.arange(len(y)), y] for p in probs], axis=1).astype(np.float64)  # [n, models]

    def loss(theta):
        w = softmax(theta)
        mixed = np.clip(stacked @ w, 1e-12, None)
        grad_w = -(stacked / mixed[:, None]).mean(axis=0)
        # chain rule through softmax: dL/dtheta = w * (grad_w - w.grad_w)
        return -np.log(mixed).mean(), w * (grad_w - w @ grad_w)

    result = minimize(loss, np.zeros(len(probs)), jac=True, method="L-BFGS-B")
    return softmax(result.x)


def mix(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, probs))


def crossfit_accuracy(probs: list[np.ndarray], y: np.ndarray, seed: int) -> float:
    """Accuracy of the ensemble on validation documents whose weights were fitted without them."""
    correct = 0
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fit_idx, score_idx in folds.split(np.zeros(len(y)), y):
        w = fit_weights([p[fit_idx] for p in probs], y[fit_idx])
        correct += int((mix([p[score_idx] for p in probs], w).argmax(axis=1) == y[score_idx]).sum())
    return correct / len(y)


def build(members: list[str], seed: int, out: Path) -> dict:
    val = pd.read_parquet(VAL)
    texts, y = val["text"].tolist(), val["label"].to_numpy()
    missing = [m for m in members if not (MODELS / m / "meta.json").is_file()]
    if missing:
        raise PipelineError(f"params.yaml: ensemble.members: {missing[0]!r} has no trained model in {MODELS}")
    start = time.perf_counter()
    classifiers = [Classifier(MODELS / m) for m in members]
    classes = classifiers[0].classes
    if any(c.classes != classes for c in classifiers):
        raise PipelineError("params.yaml: ensemble.members: the models were trained on different classes")
    probs = [c.predict_proba(texts) for c in classifiers]
    weights = fit_weights(probs, y)
    seconds = time.perf_counter() - start
    for m in members:
        shutil.copytree(MODELS / m, out / m)
    write_json(
        out / "meta.json",
        {"model": NAME, "kind": "ensemble", "classes": classes, "members": members, "weights": weights.round(6).tolist()},
    )
    return {
        "weights": dict(zip(members, weights.round(4).tolist())),
        "val_accuracy_fitted": float((mix(probs, weights).argmax(axis=1) == y).mean()),
        "val_accuracy": crossfit_accuracy(probs, y, seed),
        "member_val_accuracy": {m: float((p.argmax(axis=1) == y).mean()) for m, p in zip(members, probs)},
        "seconds": seconds,
        "classes": classes,
        "example": texts[:2],
    }


def main(argv: list[str]) -> None:
    import mlflow

    from .tracking import log_classifier, training_run

    params = P.load_params()
    cfg = P.validate("ensemble", P.section(params, "ensemble"), SCHEMA)
    experiment = P.section(params, "mlflow.experiment")
    out = OUT
    remove_quietly(out, METRICS / f"{NAME}.json", HISTORY / f"{NAME}.csv")
    flat = {"members": ",".join(cfg["members"]), "seed": cfg["seed"]}
    with training_run(experiment, NAME, NAME, flat, [MODELS / m for m in cfg["members"]]) as run_id:
        with atomic_path(out, directory=True) as tmp:
            result = build(cfg["members"], cfg["seed"], tmp)
            mlflow.log_metrics(
                {"val_accuracy": result["val_accuracy"], "val_accuracy_fitted": result["val_accuracy_fitted"],
                 "best_val_accuracy": result["val_accuracy"], "train_seconds": result["seconds"]}
                | {f"weight.{m}": w for m, w in result["weights"].items()}
            )
            write_json(tmp / "run.json", {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()})
            log_classifier(tmp, result["classes"], result["example"])
        report = {
            "model": NAME,
            "val_accuracy": round(result["val_accuracy"], 4),
            "val_accuracy_fitted": round(result["val_accuracy_fitted"], 4),
            "weights": result["weights"],
            "member_val_accuracy": {m: round(a, 4) for m, a in result["member_val_accuracy"].items()},
            "best_epoch": 1,
            "epochs_run": 1,
            "train_seconds": round(result["seconds"], 1),
            "mlflow_run_id": run_id,
        }
        write_json(METRICS / f"{NAME}.json", report)
        row = {"epoch": 1, "val_accuracy": report["val_accuracy"]}
        write_text(HISTORY / f"{NAME}.csv", pd.DataFrame([row]).to_csv(index=False))
    print(f"ensemble: weights {result['weights']}; cross-fitted val accuracy {report['val_accuracy']:.4f}")


if __name__ == "__main__":
    run_main(main)
