"""Stage evaluate@<model>: judge a trained model on the held-out test split.

Writes metrics/eval/<model>.json, the predictions for `dvc plots` (confusion template) and PNGs,
data/test_probs/<model>.npz (the test probabilities and the seconds they took), and adds the test
metrics, figures and classification report to the model's own MLflow run.

A model on sentence embeddings (minilm_logreg) is scored from the encode stage's test embeddings
(data/encoded), not by encoding the test split a second time; its seconds are the encoder's on
that split plus the classifier's.

The ensemble (evaluate_ensemble) is scored from its members' saved test probabilities, pooled
with its weights: the same numbers its Classifier computes from raw text (its members are copies
of the evaluated models; tests check the two agree), without predicting with every member again.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from . import params as P
from . import paths
from .classifier import ENSEMBLE, Classifier, load_probs, model_dir, pool, read_ensemble, stage_name
from .common import PipelineError, atomic_path, read_json, remove_quietly, run_main, write_json

SCHEMA = {"batch_size": P.integer(1, 65536)}


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro/weighted F1 and per-class precision/recall/F1/support."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4),
        "weighted_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)), 4),
        "per_class": {
            c: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
    }


def confusion_png(y_true, y_pred, classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    fig, ax = plt.subplots(figsize=(11, 9.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    high = matrix.max() / 2
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color="white" if n > high else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curve_png(history: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for column, axis in (("accuracy", acc), ("loss", loss)):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            if prefix + column in history:
                axis.plot(history["epoch"], history[prefix + column], style, label=(prefix or "train_") + column)
        axis.set_xlabel("epoch")
        axis.set_title(column)
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def member_test_probs(member: str, n_docs: int, n_classes: int) -> tuple[np.ndarray, float]:
    probs, scalars = load_probs(paths.TEST_PROBS / f"{member}.npz", (n_docs, n_classes), f"evaluate@{member}")
    return probs, float(scalars["inference_seconds"])


def ensemble_proba(directory: Path, n_docs: int) -> tuple[np.ndarray, list[str], float]:
    """The ensemble's test probabilities pooled from its members' saved ones; the seconds are the
    members' measured inference seconds plus the pooling."""
    members, weights, pooling, classes = read_ensemble(directory)
    saved = [member_test_probs(m, n_docs, len(classes)) for m in members]
    start = time.perf_counter()
    probs = pool([p for p, _ in saved], weights, pooling).astype(np.float32)
    return probs, classes, sum(s for _, s in saved) + time.perf_counter() - start


def timed_proba(classifier: Classifier, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    return classifier.predict_proba(texts, batch_size=batch_size), time.perf_counter() - start


def encoded_proba(classifier: Classifier, n_docs: int) -> tuple[np.ndarray, float] | None:
    """For a model on the encode stage's embeddings whose encoder is that stage's: its test
    probabilities from the cached test embeddings (the same numbers as from raw text, which the
    end-to-end test checks), and the seconds the encoder took on the test split in that stage
    plus the classifier's. None otherwise: the model then runs on raw text."""
    from .encoder import ENCODER_PICKLE, read_embeddings, read_encoder
    from .models import REGISTRY

    spec = REGISTRY.get(classifier.name)
    encoded = paths.ENCODED
    if classifier.kind != "sklearn" or spec is None or not spec.encoded or not (encoded / ENCODER_PICKLE).is_file():
        return None
    saved, cached = classifier.model[0], read_encoder()
    if any(getattr(saved, k) != getattr(cached, k) for k in ("graph_", "tokenizer_", "max_len", "text")):
        print(f"evaluate@{classifier.name}: its encoder is not the one in {encoded}: encoding the test split again")
        return None
    x = read_embeddings("test", n_docs)
    start = time.perf_counter()
    probs = classifier.model[-1].predict_proba(x).astype(np.float32)
    return probs, float(read_json(encoded / "meta.json")["seconds"]["test"]) + time.perf_counter() - start


class Evaluation(NamedTuple):
    result: dict  # the metrics
    classes: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray  # on the test split
    seconds: float  # inference, as measured (the metrics round them)


def evaluate(name: str, batch_size: int) -> Evaluation:
    test = pd.read_parquet(paths.split_file("test"))
    texts = test["text"].tolist()
    if name == ENSEMBLE:
        probs, classes, seconds = ensemble_proba(model_dir(name), len(texts))
    else:
        classifier = Classifier(model_dir(name))
        probs, seconds = encoded_proba(classifier, len(texts)) or timed_proba(classifier, texts, batch_size)
        classes = classifier.classes
    y_pred = probs.argmax(axis=1)
    y_true = test["label"].to_numpy()
    result = {"model": name, **score(y_true, y_pred, classes)}
    result["test_docs"] = len(texts)
    result["inference_seconds"] = round(seconds, 2)
    result["docs_per_second"] = round(len(texts) / max(seconds, 1e-9), 1)
    return Evaluation(result, classes, y_true, y_pred, probs, seconds)


def main(argv: list[str]) -> None:
    import mlflow

    from .tracking import checked_tracking_uri, find_model_run, log_splits, reopen_run

    if len(argv) != 1:
        raise PipelineError("usage: python -m pipeline.evaluate <model>")
    name = argv[0]
    cfg = P.stage_params("evaluate", SCHEMA)
    mlflow.set_tracking_uri(checked_tracking_uri())  # an unreachable server fails now, not after the whole evaluation
    run_id = find_model_run(model_dir(name), stage_name(name))
    remove_quietly(paths.EVAL_METRICS / f"{name}.json", paths.EVAL / name, paths.TEST_PROBS / f"{name}.npz")
    result, classes, y_true, y_pred, probs, seconds = evaluate(name, cfg["batch_size"])
    with atomic_path(paths.EVAL / name, directory=True) as tmp:
        pd.DataFrame({"actual": [classes[i] for i in y_true], "predicted": [classes[i] for i in y_pred]}).to_csv(
            tmp / "predictions.csv", index=False
        )
        confusion_png(y_true, y_pred, classes, f"{name}: test confusion matrix", tmp / "confusion_matrix.png")
        figures = ["confusion_matrix.png"]
        if name != ENSEMBLE:  # the ensemble's weights are one fit, without epochs
            history = pd.read_csv(paths.HISTORY / f"{name}.csv")
            learning_curve_png(history, f"{name}: learning curves", tmp / "learning_curve.png")
            figures.append("learning_curve.png")
        report = classification_report(y_true, y_pred, labels=range(len(classes)), target_names=classes, digits=4,
                                       zero_division=0)
        (tmp / "classification_report.txt").write_text(report, encoding="utf-8")
        with reopen_run(run_id):
            log_splits([paths.split_file("test")], "evaluation")
            mlflow.log_metrics(
                {
                    "test_accuracy": result["accuracy"],
                    "test_macro_f1": result["macro_f1"],
                    "test_weighted_f1": result["weighted_f1"],
                    "test_docs_per_second": result["docs_per_second"],
                }
            )
            for file in (*figures, "classification_report.txt"):
                mlflow.log_artifact(str(tmp / file), artifact_path="evaluation")
    if name != ENSEMBLE:  # for evaluate_ensemble
        with atomic_path(paths.TEST_PROBS / f"{name}.npz") as tmp:
            with open(tmp, "wb") as handle:
                # unrounded: evaluate_ensemble sums its members' seconds
                np.savez(handle, probs=probs, inference_seconds=seconds)
    write_json(paths.EVAL_METRICS / f"{name}.json", {**result, "mlflow_run_id": run_id})
    print(f"evaluate@{name}: test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
          f"{result['docs_per_second']} docs/s")


if __name__ == "__main__":
    run_main(main)
