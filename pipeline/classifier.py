"""A trained model as a raw-text classifier: one directory, one loader, for every model kind.

A model directory holds meta.json (kind, classes, text settings) and the model itself
(model.keras with vocab.json and its ONNX export model.onnx, or model.pkl). Evaluation, the MLflow
pyfunc and the predict CLI all go through `Classifier`, so what is evaluated is exactly what is
served. A Keras model runs as its ONNX export on onnxruntime, its text turned into ids in plain
Python (sequences.token_ids): no TensorFlow to import, whose import alone took longer than all
else a champion CLI run does. A directory without model.onnx (saved before the export existed)
runs on TensorFlow.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import paths
from .common import PipelineError, import_tensorflow, read_json, write_json

META = "meta.json"
SKLEARN_MODEL = "model.pkl"  # a scikit-learn Pipeline taking raw text
KERAS_MODEL = "model.keras"
ONNX_MODEL = "model.onnx"  # the Keras model exported: token ids [docs, length] int32 -> probabilities
VAL_PROBS = "val_probs.npy"  # the model's validation probabilities, saved by its train stage for the ensemble
ENSEMBLE = "ensemble"  # the ensemble stage's model: its name, and its kind in meta.json
POOLINGS = ("log", "linear")
EPS = 1e-9  # floor for member probabilities under log pooling (a member sure of another class is not a veto)


def log_probs(probs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Log-probabilities for log pooling, floored at EPS."""
    return [np.log(np.clip(p, EPS, 1.0)) for p in probs]


def pool(probs: Sequence[np.ndarray], weights: np.ndarray, pooling: str) -> np.ndarray:
    """Combine member probabilities [docs, classes] with non-negative weights.

    `linear` is the weighted mean. `log` is the renormalised weighted geometric mean (a product of
    experts): each weight also acts as an inverse temperature, so a member whose probabilities are too
    flat (one-vs-rest SGD, naive Bayes) is sharpened instead of being outvoted by confident networks.
    """
    if pooling == "linear":
        return sum(w * p for w, p in zip(weights, probs)) / weights.sum()
    if pooling == "log":
        from scipy.special import softmax

        return softmax(sum(w * lp for w, lp in zip(weights, log_probs(probs))), axis=1)
    raise PipelineError(f"unknown pooling {pooling!r} (expected one of {', '.join(POOLINGS)})")


def model_dir(name: str) -> Path:
    """Where the pipeline keeps the model called `name` (train@<name>, or the ensemble stage)."""
    return paths.ENSEMBLE if name == ENSEMBLE else paths.MODELS / name


def stage_name(name: str) -> str:
    """The DVC stage that builds the model called `name`, also its MLflow run's name."""
    return ENSEMBLE if name == ENSEMBLE else f"train@{name}"


def save_sklearn(directory: Path, pipeline, classes: list[str], name: str) -> None:
    # Plain pickle: joblib's pure-Python unpickler took 2 s to load the 355k-entry TF-IDF
    # vocabulary, pickle's C one 0.25 s (the models hold no large arrays for joblib to map).
    with open(directory / SKLEARN_MODEL, "wb") as handle:
        pickle.dump(pipeline, handle, protocol=5)
    write_json(directory / META, {"model": name, "kind": "sklearn", "classes": classes})


def save_val_probs(directory: Path, probs: np.ndarray) -> None:
    np.save(directory / VAL_PROBS, np.asarray(probs, dtype=np.float32))


def load_probs(path: Path, shape: tuple[int, int], stage: str) -> tuple[np.ndarray, dict]:
    """Probabilities [docs, classes] that `stage` saved (.npy, or .npz with `probs` beside
    scalars), as float64 with the .npz's scalars. Missing or mis-shaped (the split changed since):
    a one-line error naming the file and the stage to rerun."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing: run {stage} first (dvc repro {stage})")
    with open(path, "rb") as handle:
        saved = np.load(handle)
        if isinstance(saved, np.ndarray):
            probs, scalars = saved, {}
        else:
            probs, scalars = saved["probs"], {k: saved[k].item() for k in saved.files if k != "probs"}
    if probs.shape != tuple(shape):
        raise PipelineError(f"{path}: shape {probs.shape}, expected {tuple(shape)} (the split changed? rerun {stage})")
    return probs.astype(np.float64), scalars


def masks_padding(model) -> bool:
    return any(getattr(layer, "mask_zero", False) for layer in model.layers)


def save_keras(directory: Path, model, vocab: list[str], text: dict, classes: list[str], name: str) -> None:
    """`text` holds the TextVectorization settings: standardize and max_len."""
    from .onnx_export import export_onnx

    model.save(directory / KERAS_MODEL)
    without_save_time(directory / KERAS_MODEL)
    (directory / ONNX_MODEL).write_bytes(export_onnx(model))
    write_json(directory / "vocab.json", vocab)
    text = {**text, "masked": masks_padding(model)}
    write_json(directory / META, {"model": name, "kind": "keras", "classes": classes, "text": text})


def without_save_time(path: Path) -> None:
    """Rewrite a .keras file without what differs between two saves of the same model: the save
    time (zip entry times, metadata's date_saved) and the memory addresses Keras uses to mark
    shared objects (config's shared_object_id, renumbered in order). The same weights then give
    the same bytes, and DVC sees an identical retrain as unchanged."""
    import zipfile

    def renumber(node, ids: dict):
        if isinstance(node, dict):
            return {k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else renumber(v, ids)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [renumber(v, ids) for v in node]
        return node

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(renumber(json.loads(data), {})).encode()
            archive.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=info.compress_type)


def read_ensemble(directory: Path) -> tuple[list[str], np.ndarray, str, list[str]]:
    """An ensemble directory's members, weights, pooling and classes."""
    meta = read_json(directory / META)
    pooling = meta.get("pooling")
    if pooling not in POOLINGS:
        raise PipelineError(f"{directory / META}: unknown pooling {pooling!r}")
    return list(meta["members"]), np.asarray(meta["weights"], dtype=np.float64), pooling, list(meta["classes"])


def onnx_call(directory: Path, meta: dict, spin: bool = True):
    """(texts, batch size) -> probabilities, by the model's ONNX export on onnxruntime. `spin`: its
    threads wait for work spinning, faster alone, but beside other models they take the cores
    those need."""
    import onnxruntime

    from .sequences import token_ids

    text = meta["text"]
    ids = token_ids(read_json(directory / "vocab.json"), text["max_len"], text["standardize"])
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its notices are not errors; errors raise
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # one thread per core this process may use: left to choose, onnxruntime's pool ran cbow at two
    # thirds of the speed on this 2-core machine
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    options.intra_op_num_threads = len(cores)
    session = onnxruntime.InferenceSession(str(directory / ONNX_MODEL), options, providers=["CPUExecutionProvider"])
    # The model masks padding (id 0, after a row's tokens): columns holding nothing else change
    # no probability, and cost most of the time for short documents.
    trim = bool(text["masked"])

    def call(texts: list[str], batch_size: int) -> np.ndarray:
        matrix = ids(texts, trim=trim)
        # rows in order of their count of tokens, each run cut to its longest row: less padding
        # than the texts' order by characters gives (1.04-1.09 times the speed, five models)
        lengths = np.count_nonzero(matrix, axis=1) if trim else np.zeros(len(texts), dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        runs = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        out = np.concatenate([session.run(None, {"ids": cut(matrix, rows, lengths, trim)})[0] for rows in runs])
        return out[np.argsort(order)]

    return call


def cut(matrix: np.ndarray, rows: np.ndarray, lengths: np.ndarray, trim: bool) -> np.ndarray:
    """`matrix`'s `rows` (in order of length), without the columns after the last one's tokens."""
    return matrix[rows, : max(1, int(lengths[rows[-1]]))] if trim else matrix[rows]


def tensorflow_call(directory: Path, meta: dict):
    """(texts, batch size) -> probabilities, by the Keras model on TensorFlow, with the vectorizer
    in the same traced function (called eagerly, TextVectorization took 9 ms a document; Keras
    `predict` would build a tf.data pipeline and trace again on each call)."""
    import keras
    import tensorflow as tf

    from .models import custom_objects
    from .sequences import make_vectorizer

    model = keras.saving.load_model(directory / KERAS_MODEL, custom_objects=custom_objects())
    text = meta["text"]
    vectorizer = make_vectorizer(read_json(directory / "vocab.json"), text["max_len"], text["standardize"])
    masked = masks_padding(model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])  # traced once: no retracing per call
    def graph(texts):
        ids = vectorizer(texts)
        if masked:  # as onnx_call's trim
            width = tf.reduce_max(tf.math.count_nonzero(ids, axis=1, dtype=tf.int32))
            ids = ids[:, : tf.maximum(width, 1)]
        return model(ids, training=False)

    def call(texts: list[str], batch_size: int) -> np.ndarray:
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return np.concatenate([graph(tf.constant(batch)).numpy() for batch in batches])

    return call


CHUNK = 8  # batches tokenized at once: 1,024 texts, 4 MB of ids at a max_len of 1,000


def run_batches(call, texts: list[str], batch_size: int) -> np.ndarray:
    """`call(texts, batch_size)` on `texts` a few batches at a time (bounded memory), the outputs
    joined in the texts' order."""
    # texts of similar lengths together: less padding for masked models to cut
    order = np.argsort([len(t) for t in texts], kind="stable")
    ordered = [texts[i] for i in order]
    step = CHUNK * batch_size
    out = np.concatenate([call(ordered[i : i + step], batch_size) for i in range(0, len(texts), step)])
    return out[np.argsort(order)]


class Classifier:
    def __init__(self, directory: str | Path, alone: bool = True):
        """`alone`: False for an ensemble's member, which shares the CPU with the others."""
        self.directory = Path(directory)
        meta = read_json(self.directory / META)
        self.name, self.kind, self.classes = meta["model"], meta["kind"], list(meta["classes"])
        self.columns = pd.Index(self.classes)  # built once: from a list, a third of a frame's cost
        if self.kind == "sklearn":
            with open(self.directory / SKLEARN_MODEL, "rb") as handle:
                self.model = pickle.load(handle)
            from .fastpath import compile_pipeline

            self.fast = compile_pipeline(self.model)
        elif self.kind == "keras":
            if (self.directory / ONNX_MODEL).is_file():
                self.call = onnx_call(self.directory, meta, spin=alone)
            else:
                import_tensorflow()
                self.call = tensorflow_call(self.directory, meta)
        elif self.kind == ENSEMBLE:
            members, self.weights, self.pooling, _ = read_ensemble(self.directory)
            # not alone: onnxruntime threads spinning between calls took the cores the other members
            # needed (the champion's time for one document doubled)
            self.members = [Classifier(self.directory / m, alone=False) for m in members]
        else:
            raise PipelineError(f"{self.directory / META}: unknown model kind {self.kind!r}")

    def predict_proba(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.kind == "sklearn":
            return self.fast(texts).astype(np.float32)
        if self.kind == "keras":
            return run_batches(self.call, texts, batch_size).astype(np.float32)
        probs = [m.predict_proba(texts, batch_size).astype(np.float64) for m in self.members]
        return pool(probs, self.weights, self.pooling).astype(np.float32)

    def predict_frame(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text: the predicted `label`, then one probability column per group."""
        probs = self.predict_proba(texts)
        frame = Predictions(probs.astype(np.float64), columns=self.columns)
        frame.insert(0, "label", [self.classes[i] for i in probs.argmax(axis=1)] if len(probs) else [])
        return frame


class Predictions(pd.DataFrame):
    """A DataFrame whose `to_dict(orient="records")`, which MLflow's scoring server calls to
    answer, is built from one object array of Python values: pandas' own took 1 ms for one row,
    4 ms for 64; going through the columns as Series, 0.6 ms for one."""

    def to_dict(self, orient="dict", *args, **kwargs):
        if orient != "records" or args or kwargs:
            return super().to_dict(orient, *args, **kwargs)
        names = [str(c) for c in self.columns]
        return [dict(zip(names, row)) for row in self.to_numpy(dtype=object).tolist()]
