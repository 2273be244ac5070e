"""A trained model as a raw-text classifier: one directory, one loader, for every model kind.

A model directory holds meta.json (kind, classes, text settings) and the model itself
(model.keras with vocab.json, or model.joblib). Evaluation, the MLflow pyfunc and the predict CLI
all go through `Classifier`, so what is evaluated is exactly what is served.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .common import PipelineError, read_json, write_json

META = "meta.json"


def model_dir(name: str) -> Path:
    """Where the pipeline keeps the model called `name` (train@<name>, or the ensemble stage)."""
    return Path("data/ensemble") if name == "ensemble" else Path("data/models") / name


def save_sklearn(directory: Path, pipeline, classes: list[str], name: str) -> None:
    import joblib

    joblib.dump(pipeline, directory / "model.joblib")
    write_json(directory / META, {"model": name, "kind": "sklearn", "classes": classes})


def save_keras(directory: Path, model, vocab: list[str], text: dict, classes: list[str], name: str) -> None:
    """`text` holds the TextVectorization settings: standardize and max_len."""
    model.save(directory / "model.keras")
    write_json(directory / "vocab.json", vocab)
    write_json(directory / META, {"model": name, "kind": "keras", "classes": classes, "text": text})


class Classifier:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta = read_json(self.directory / META)
        self.name, self.kind, self.classes = meta["model"], meta["kind"], list(meta["classes"])
        if self.kind == "sklearn":
            import joblib

            self.model = joblib.load(self.directory / "model.joblib")
        elif self.kind == "keras":
            import keras

            from .models import custom_objects
            from .tokenize import make_vectorizer

            self.model = keras.saving.load_model(self.directory / "model.keras", custom_objects=custom_objects())
            text = meta["text"]
            self.vectorizer = make_vectorizer(read_json(self.directory / "vocab.json"), text["max_len"], text["standardize"])
        elif self.kind == "ensemble":
            self.members = [Classifier(self.directory / m) for m in meta["members"]]
            self.weights = np.asarray(meta["weights"], dtype=np.float64)
        else:
            raise PipelineError(f"{self.directory / META}: unknown model kind {self.kind!r}")

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.kind == "sklearn":
            return self.model.predict_proba(texts).astype(np.float32)
        if self.kind == "ensemble":
            probs = sum(w * m.predict_proba(texts, batch_size) for w, m in zip(self.weights, self.members))
            return (probs / self.weights.sum()).astype(np.float32)
        from .tokenize import encode

        ids = encode(self.vectorizer, texts)
        return np.asarray(self.model.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)

    def predict_frame(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text: the predicted `label`, then one probability column per group."""
        probs = self.predict_proba(texts)
        frame = pd.DataFrame(probs.astype(np.float64), columns=self.classes)
        frame.insert(0, "label", [self.classes[i] for i in probs.argmax(axis=1)] if len(probs) else [])
        return frame
