"""Stage train@<model>: fit one model of the registry, save it, and record the run in MLflow.

Outputs: data/models/<model>/ (the raw-text model, see classifier.py; no run id, so an identical
retrain leaves its hash unchanged: the run carries the model's md5 as a tag), metrics/train/<model>.json
(with the MLflow run id) and metrics/history/<model>.csv (per-epoch, for dvc plots).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import params as P
from . import paths
from .classifier import Classifier, save_keras, save_sklearn, save_val_probs, stage_name
from .common import (
    PipelineError,
    atomic_path,
    cpu_record,
    path_md5,
    read_json,
    remove_quietly,
    run_main,
    write_json,
    write_text,
)
from .keras_fit import seed_everything, sequence_length, train_keras_model
from .models import get_spec


def load_config(name: str, params_file: str = P.PARAMS_FILE) -> dict:
    """Validated params for one model, plus what it depends on (logged with the run)."""
    from .tracking import MLFLOW_SCHEMA

    params = P.load_params(params_file)
    spec = get_spec(name)
    return {
        "model": P.stage_params(f"train.{name}", spec.schema, params=params),
        "mlflow": P.stage_params("mlflow", MLFLOW_SCHEMA, params=params),
        "prepare": P.section(params, "prepare"),
        "tokenize": P.section(params, "tokenize") if spec.kind == "keras" else {},
        "embeddings": {k: P.section(params, f"embeddings.{k}") for k in ("oov", "seed")} if spec.glove else {},
    }


# ---------------------------------------------------------------- scikit-learn


def fit_sklearn(name: str, cfg: dict, out: Path) -> dict:
    from sklearn.metrics import accuracy_score, log_loss

    train = pd.read_parquet(paths.split_file("train"))
    val = pd.read_parquet(paths.split_file("val"))
    classes = sorted(train["group"].unique())
    spec = get_spec(name)
    start = time.perf_counter()
    if spec.encoded:
        # The encode stage embedded the splits once; its fitted encoder goes in front of the
        # classifier, so the saved pipeline takes raw text and computes these same features.
        from sklearn.pipeline import make_pipeline

        from .encoder import read_embeddings, read_encoder

        classifier = spec.build(cfg)
        x_train, x_val = (read_embeddings(s, len(f)) for s, f in (("train", train), ("val", val)))
        classifier.fit(x_train, train["label"].to_numpy())
        pipeline = make_pipeline(read_encoder(), classifier)
    else:
        pipeline = spec.build(cfg)
        features, classifier = pipeline[:-1], pipeline[-1]
        # The pipeline fitted step by step: the training features, computed once, also give the
        # training metrics (analysing the texts again took as long as the fit).
        x_train = features.fit_transform(train["text"].tolist())
        classifier.fit(x_train, train["label"].to_numpy())
        x_val = None
    seconds = time.perf_counter() - start
    val_probs = pipeline.predict_proba(val["text"].tolist()) if x_val is None else classifier.predict_proba(x_val)
    probs = {"": classifier.predict_proba(x_train), "val_": val_probs}
    row = {"epoch": 1}
    for split, frame in (("", train), ("val_", val)):
        row[f"{split}loss"] = float(log_loss(frame["label"], probs[split], labels=range(len(classes))))
        row[f"{split}accuracy"] = float(accuracy_score(frame["label"], probs[split].argmax(axis=1)))
    save_sklearn(out, pipeline, classes, name)
    save_val_probs(out, probs["val_"])
    return {"history": [row], "seconds": seconds, "best_epoch": 1, "classes": classes}


# ---------------------------------------------------------------- Keras


def fit_keras(name: str, cfg: dict, out: Path) -> dict:
    import mlflow

    seed_everything(cfg["seed"])
    spec = get_spec(name)
    tok = read_json(paths.TOKENIZED / "config.json")
    vocab = read_json(paths.TOKENIZED / "vocab.json")
    max_len = sequence_length(name, cfg, tok["max_len"])
    splits = {s: np.load(paths.TOKENIZED / f"{s}.npz") for s in ("train", "val")}
    x = {s: d["x"][:, :max_len] for s, d in splits.items()}
    y = {s: d["y"] for s, d in splits.items()}
    glove = np.load(paths.EMBEDDINGS / "matrix.npy") if spec.glove else None
    classes = read_json(paths.TOKENIZED / "classes.json")
    model = spec.build(cfg, len(vocab), len(classes), glove)
    start = time.perf_counter()
    fit = train_keras_model(name, cfg, model, x, y, [mlflow.keras.MlflowCallback()])
    seconds = time.perf_counter() - start
    epochs = len(fit.history["loss"])
    history = [{"epoch": i + 1, **{k: float(v[i]) for k, v in fit.history.items()}} for i in range(epochs)]
    best = int(np.argmax(fit.history["val_accuracy"])) + 1
    save_keras(out, model, vocab, {"max_len": max_len, "standardize": tok["standardize"]}, classes, name)
    # by the saved model, as evaluation and serving run it (the ensemble is fitted on these)
    val_text = pd.read_parquet(paths.split_file("val"))["text"].tolist()
    save_val_probs(out, Classifier(out).predict_proba(val_text))
    return {"history": history, "seconds": seconds, "best_epoch": best, "classes": classes}


# ---------------------------------------------------------------- stage


def summary(name: str, result: dict, run_id: str) -> dict:
    best = result["history"][result["best_epoch"] - 1]
    return {
        "model": name,
        "val_accuracy": round(best["val_accuracy"], 4),
        "val_loss": round(best["val_loss"], 4),
        "best_epoch": result["best_epoch"],
        "epochs_run": len(result["history"]),
        "train_seconds": round(result["seconds"], 1),
        # what a result depends on beyond params and data (docs/reproducibility.md)
        **cpu_record(),
        "mlflow_run_id": run_id,
    }


def flat_params(cfg: dict) -> dict:
    out = dict(cfg["model"])
    for section in ("prepare", "tokenize", "embeddings"):
        out |= {f"{section}.{k}": v for k, v in cfg[section].items()}
    return out


def train(name: str, params_file: str = P.PARAMS_FILE) -> dict:
    import mlflow

    from .tracking import MODEL_TAG, checked_tracking_uri, log_classifier, log_splits, training_run

    cfg = load_config(name, params_file)
    spec = get_spec(name)
    if spec.kind == "keras":  # a config mistake is an error before any MLflow run starts
        sequence_length(name, cfg["model"], read_json(paths.TOKENIZED / "config.json")["max_len"])
    checked_tracking_uri()  # an unreachable server fails before the old outputs go
    out = paths.MODELS / name
    remove_quietly(out, paths.TRAIN_METRICS / f"{name}.json", paths.HISTORY / f"{name}.csv")
    if spec.kind == "sklearn":
        deps = [paths.PREPARED]
    else:
        deps = [paths.TOKENIZED] + ([paths.EMBEDDINGS] if spec.glove else [])
    logged = flat_params(cfg)
    if spec.encoded:  # the encoder's settings, as the encode stage used them
        meta = read_json(paths.ENCODED / "meta.json")
        logged |= {f"encode.{k}": v for k, v in meta["settings"].items()}
        deps.append(paths.ENCODED)
    with training_run(cfg["mlflow"]["experiment"], name, stage_name(name), logged, deps) as run_id:
        log_splits([paths.split_file("train"), paths.split_file("val")], "training")
        with atomic_path(out, directory=True) as tmp:
            fit = fit_sklearn if spec.kind == "sklearn" else fit_keras
            result = fit(name, cfg["model"], tmp)
            if spec.kind == "sklearn":  # Keras runs log per epoch through MlflowCallback
                mlflow.log_metrics({k: v for k, v in result["history"][0].items() if k != "epoch"}, step=0)
            report = summary(name, result, run_id)
            mlflow.log_metrics({"best_val_accuracy": report["val_accuracy"], "train_seconds": report["train_seconds"]})
            mlflow.set_tags({MODEL_TAG: path_md5(tmp), "cpu": report["cpu"], "cpu_isa": report["cpu_isa"]})
            val_text = pd.read_parquet(paths.split_file("val"))["text"].head(2).tolist()
            log_classifier(tmp, result["classes"], val_text)
        write_json(paths.TRAIN_METRICS / f"{name}.json", report)
        write_text(paths.HISTORY / f"{name}.csv", pd.DataFrame(result["history"]).to_csv(index=False))
    return report


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise PipelineError("usage: python -m pipeline.train <model>")
    report = train(argv[0])
    print(
        f"train@{report['model']}: val accuracy {report['val_accuracy']:.4f} at epoch "
        f"{report['best_epoch']}/{report['epochs_run']}, {report['train_seconds']} s"
    )


if __name__ == "__main__":
    run_main(main)
