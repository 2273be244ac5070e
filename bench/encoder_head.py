"""Choose the settings of a classifier on the sentence embeddings (minilm_logreg, minilm_svm) on
validation: for each combination of the values given, the classifier fitted as train@<model> fits
it (on the encode stage's cached embeddings), then the ensemble's cross-fit validation accuracy
with the other members' saved validation probabilities (ensemble.crossfit_accuracy, as the
ensemble stage reports it). Prints a table; the test accuracy is printed for the chosen settings
only (the best cross-fit validation, ties to the model's own better validation accuracy), never
used to choose.

    python -m bench.encoder_head --model minilm_logreg --set C=0.3,1,3,10,30
        [--models data/models --test-probs data/test_probs --encoded data/encoded]

Run in a project whose data/encoded is built (`dvc repro encode`); --models and --test-probs may
point at another checkout's trained members (their validation split must be this one's). The
ensemble's members are `ensemble.members` without any other classifier on the embeddings.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params as P
from pipeline import paths
from pipeline.classifier import VAL_PROBS, load_probs, pool
from pipeline.encoder import read_embeddings
from pipeline.ensemble import crossfit_accuracy, fit_weights
from pipeline.models import REGISTRY, get_spec


def grid(settings: list[str]) -> list[dict]:
    """['C=3,10', 'gamma=1'] -> [{'C': 3.0, 'gamma': 1.0}, {'C': 10.0, 'gamma': 1.0}]"""
    axes = {}
    for item in settings:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--set {item!r}: expected KEY=V1,V2,...")
        axes[key] = [float(v) for v in values.split(",")]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm_svm", choices=[m for m, s in REGISTRY.items() if s.encoded])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=V1,V2", help="values to try of the model's params")
    parser.add_argument("--models", default=str(paths.MODELS), help="the other members' trained model directories")
    parser.add_argument("--test-probs", default=str(paths.TEST_PROBS), help="their test probabilities (evaluate@<model>)")
    parser.add_argument("--encoded", default=str(paths.ENCODED), help="the encode stage's embeddings")
    args = parser.parse_args(argv)
    name, params = args.model, P.load_params()
    members = [m for m in P.section(params, "ensemble.members") if not (m in REGISTRY and REGISTRY[m].encoded)]
    pooling, seed = P.section(params, "ensemble.pooling"), P.section(params, "ensemble.seed")
    base_cfg = P.validate(f"train.{name}", P.section(params, f"train.{name}"), get_spec(name).schema)
    split = {s: pd.read_parquet(paths.split_file(s)) for s in paths.SPLITS}
    encoded = Path(args.encoded)
    x = {s: read_embeddings(s, len(f), encoded) for s, f in split.items() if s != "test" or (encoded / "test.npy").is_file()}
    y = {s: f["label"].to_numpy() for s, f in split.items()}
    n_classes = len(np.unique(y["train"]))
    val = [load_probs(Path(args.models) / m / VAL_PROBS, (len(y["val"]), n_classes), f"train@{m}")[0] for m in members]
    print(f"members {members} + {name}; pooling {pooling}; cross-fit seed {seed}")
    print(f"ensemble without {name}: cross-fit val {crossfit_accuracy(val, y['val'], pooling, seed):.4f}")
    settings = grid(args.set) or [{}]
    keys = list(settings[0])
    print("| " + " | ".join(keys + [f"{name} val", "fit (s)", "ensemble cross-fit val", "weight"]) + " |")
    print("|" + "---:|" * (len(keys) + 4))
    results = []
    for setting in settings:
        start = time.perf_counter()
        head = get_spec(name).build({**base_cfg, **setting}).fit(x["train"], y["train"])
        seconds = time.perf_counter() - start
        probs = head.predict_proba(x["val"]).astype(np.float32).astype(np.float64)  # as saved (val_probs.npy)
        crossfit = crossfit_accuracy(val + [probs], y["val"], pooling, seed)
        weight = fit_weights(val + [probs], y["val"], pooling)[-1]
        alone = float((probs.argmax(1) == y["val"]).mean())
        results.append((crossfit, alone, setting, head))
        cells = [f"{setting[k]:g}" for k in keys] + [f"{alone:.4f}", f"{seconds:.1f}", f"{crossfit:.4f}", f"{weight:.3f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    best, _, setting, head = max(results, key=lambda r: r[:2])
    chosen = ", ".join(f"{k} {v:g}" for k, v in setting.items()) or "params.yaml's settings"
    if "test" not in x:
        print(f"chosen on validation: {chosen} (cross-fit val {best:.4f}); no test embeddings in {encoded}")
        return
    test = [load_probs(Path(args.test_probs) / f"{m}.npz", (len(y["test"]), n_classes), f"evaluate@{m}")[0]
            for m in members]
    probs = {s: head.predict_proba(x[s]).astype(np.float32).astype(np.float64) for s in ("val", "test")}
    weights = fit_weights(val + [probs["val"]], y["val"], pooling)
    ensemble = pool(test + [probs["test"]], weights, pooling).argmax(1)
    print(f"chosen on validation: {chosen} (cross-fit val {best:.4f}); test: {name} "
          f"{(probs['test'].argmax(1) == y['test']).mean():.4f}, ensemble {(ensemble == y['test']).mean():.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
