#!/usr/bin/env python
"""One seeded trial of a Keras model of the registry with some params changed, on a built project's
data, through the train stage's own fit (pipeline/keras_fit.py: seed_everything, builder, length-cut batches, Adam,
early stopping on val_accuracy restoring the best weights). Prints one JSON line: the best val
accuracy (what settings are chosen by), the test accuracy of the restored model on full-length
inputs as the evaluate stage sees them (reported, never chosen by), the best epoch, the epochs
run and the fit seconds; --log appends it to a JSON-lines file.

    python -m bench.cnn_trial --project /work/base cnn_glove architecture=parallel kernel_sizes=[3,4,5] \\
        spatial_dropout=0.2 --log /tmp/trials.jsonl

The project is only read: its params.yaml (train.<model>), data/tokenized and data/embeddings.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("overrides", nargs="*", help="key=value (YAML value) in train.<model>")
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--log", type=Path)
    args = ap.parse_args()

    import numpy as np

    from pipeline import params as P
    from pipeline.keras_fit import seed_everything, sequence_length, train_keras_model
    from pipeline.models import get_spec
    from pipeline.sequences import id_batches

    data = args.project / "data"
    spec = get_spec(args.model)
    cfg = dict(P.load_params(args.project / "params.yaml")["train"][args.model])
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in cfg:
            raise SystemExit(f"error: train.{args.model}.{key}: unknown key")
        cfg[key] = yaml.safe_load(value)
    cfg = P.validate(f"train.{args.model}", cfg, spec.schema)

    def read(path: Path):
        return json.loads(path.read_text(encoding="utf-8"))

    seed_everything(cfg["seed"])
    max_len = sequence_length(args.model, cfg, read(data / "tokenized/config.json")["max_len"])
    arrays = {s: np.load(data / f"tokenized/{s}.npz") for s in ("train", "val", "test")}
    x = {s: a["x"][:, :max_len] for s, a in arrays.items()}
    y = {s: a["y"] for s, a in arrays.items()}
    glove = np.load(data / "embeddings/matrix.npy") if spec.glove else None
    model = spec.build(cfg, len(read(data / "tokenized/vocab.json")), len(read(data / "tokenized/classes.json")), glove)
    start = time.perf_counter()
    fit = train_keras_model(args.model, cfg, model, x, y, verbose=0)
    seconds = time.perf_counter() - start
    val = fit.history["val_accuracy"]
    test = float(np.mean(model.predict(id_batches(x["test"], 512), verbose=0).argmax(axis=1) == y["test"]))
    row = {
        "model": args.model, "overrides": " ".join(args.overrides), "val_accuracy": round(max(val), 4),
        "test_accuracy": round(test, 4), "best_epoch": int(np.argmax(val)) + 1, "epochs_run": len(val),
        "fit_seconds": round(seconds, 1), "params": model.count_params(),
    }
    print(json.dumps(row), flush=True)
    if args.log:
        with args.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
