"""Choose minilm_logreg's C on validation: for each C, the classifier fitted as train@minilm_logreg
fits it (on the encode stage's cached embeddings), then the ensemble's cross-fit validation
accuracy with the other members' saved validation probabilities (ensemble.crossfit_accuracy, as
the ensemble stage reports it). Prints a table; the test accuracy is printed for the chosen C only
(the best cross-fit validation), never used to choose.

    python -m bench.encoder_c --C 1 3 10 30 100 [--models data/models --test-probs data/test_probs]

Run in a project whose data/encoded is built (`dvc repro encode`); --models and --test-probs may
point at another checkout's trained members (their validation split must be this one's).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params as P
from pipeline.classifier import VAL_PROBS, load_probs, pool
from pipeline.encoder import read_embeddings
from pipeline.ensemble import crossfit_accuracy, fit_weights
from pipeline.models import get_spec

NAME = "minilm_logreg"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--C", type=float, nargs="+", default=[1, 3, 10, 30, 100])
    parser.add_argument("--models", default="data/models", help="the other members' trained model directories")
    parser.add_argument("--test-probs", default="data/test_probs", help="their saved test probabilities (evaluate@<model>)")
    parser.add_argument("--encoded", default="data/encoded", help="the encode stage's embeddings")
    args = parser.parse_args(argv)
    params = P.load_params()
    members = [m for m in P.section(params, "ensemble.members") if m != NAME]
    pooling, seed = P.section(params, "ensemble.pooling"), P.section(params, "ensemble.seed")
    base_cfg = P.validate(f"train.{NAME}", P.section(params, f"train.{NAME}"), get_spec(NAME).schema)
    split = {s: pd.read_parquet(f"data/prepared/{s}.parquet") for s in ("train", "val", "test")}
    encoded = Path(args.encoded)
    x = {s: read_embeddings(s, len(f), encoded) for s, f in split.items() if s != "test" or (encoded / "test.npy").is_file()}
    y = {s: f["label"].to_numpy() for s, f in split.items()}
    n_classes = len(np.unique(y["train"]))
    val = [load_probs(Path(args.models) / m / VAL_PROBS, (len(y["val"]), n_classes), f"train@{m}")[0] for m in members]
    print(f"members {members} + {NAME}; pooling {pooling}; cross-fit seed {seed}")
    print(f"ensemble without {NAME}: cross-fit val {crossfit_accuracy(val, y['val'], pooling, seed):.4f}")
    print(f"| C | {NAME} val | fit (s) | ensemble cross-fit val | weight |")
    print("|---:|---:|---:|---:|---:|")
    results = []
    for c in args.C:
        start = time.perf_counter()
        head = get_spec(NAME).build({**base_cfg, "C": c}).fit(x["train"], y["train"])
        seconds = time.perf_counter() - start
        probs = head.predict_proba(x["val"]).astype(np.float32).astype(np.float64)  # as saved (val_probs.npy)
        crossfit = crossfit_accuracy(val + [probs], y["val"], pooling, seed)
        weight = fit_weights(val + [probs], y["val"], pooling)[-1]
        results.append((crossfit, c, head))
        print(f"| {c:g} | {(probs.argmax(1) == y['val']).mean():.4f} | {seconds:.1f} | {crossfit:.4f} | {weight:.3f} |", flush=True)
    best, c, head = max(results, key=lambda r: r[0])  # ties: the first (smallest) C listed
    if "test" not in x:
        print(f"chosen on validation: C {c:g} (cross-fit val {best:.4f}); no test embeddings in {encoded}")
        return
    test = [load_probs(Path(args.test_probs) / f"{m}.npz", (len(y["test"]), n_classes), f"evaluate@{m}")[0] for m in members]
    probs = {s: head.predict_proba(x[s]).astype(np.float32).astype(np.float64) for s in ("val", "test")}
    weights = fit_weights(val + [probs["val"]], y["val"], pooling)
    ensemble = pool(test + [probs["test"]], weights, pooling).argmax(1)
    print(f"chosen on validation: C {c:g} (cross-fit val {best:.4f}); test: {NAME} {(probs['test'].argmax(1) == y['test']).mean():.4f}, "
          f"ensemble {(ensemble == y['test']).mean():.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
