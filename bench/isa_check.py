#!/usr/bin/env python
"""Do Keras weights depend on the CPU's instruction set? One epoch of each model, bit for bit.

oneDNN (TensorFlow's CPU kernels, and the matrix products behind its own ops) picks its code by
the instruction set at run time; ONEDNN_MAX_CPU_ISA caps that choice, so one machine can stand in
for older ones. For every environment in the grid (ISA cap x TF_ENABLE_ONEDNN_OPTS x intra-op
threads) a fresh process trains each model for --epochs through the train stage's own code
(pipeline/keras_fit.py: seed_everything, the registry's builder, train_keras_model) and prints a SHA-256 of the weights
and the fit time; environments giving the same digest give bit-identical weights.

    python -m bench.isa_check                            # tiny generated corpus, cnn/lstm/cbow
    python -m bench.isa_check --project . --models cnn_glove --epochs 1 --isa default,AVX2
                                                          # a built project's real data: the cost

--project uses that project's data/tokenized, data/embeddings and params.yaml (read only).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def child(project: Path, models: list[str], epochs: int, threads: int) -> None:
    """In a process whose environment is already set: train each model, print one JSON line each."""
    os.chdir(project)
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401  (first: its ISA pin applies when ONEDNN_MAX_CPU_ISA is unset)

    # isort: split

    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    from pipeline.common import cpu_record, read_json
    from pipeline.keras_fit import seed_everything, sequence_length, train_keras_model
    from pipeline.models import get_spec
    from pipeline.train import load_config

    for name in models:
        cfg = {**load_config(name)["model"], "epochs": epochs}
        seed_everything(cfg["seed"])
        spec = get_spec(name)
        max_len = sequence_length(name, cfg, read_json("data/tokenized/config.json")["max_len"])
        data = {s: np.load(f"data/tokenized/{s}.npz") for s in ("train", "val")}
        x = {s: d["x"][:, :max_len] for s, d in data.items()}
        y = {s: d["y"] for s, d in data.items()}
        glove = np.load("data/embeddings/matrix.npy") if spec.glove else None
        model = spec.build(cfg, len(read_json("data/tokenized/vocab.json")), len(read_json("data/tokenized/classes.json")), glove)
        start = time.perf_counter()
        fit = train_keras_model(name, cfg, model, x, y, verbose=0)
        seconds = time.perf_counter() - start
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())).hexdigest()
        print(json.dumps({"model": name, "sha256": digest[:16], "seconds": round(seconds, 2), **cpu_record(),
                          "val_accuracy": round(float(fit.history["val_accuracy"][-1]), 4)}), flush=True)


def tiny_project(base: Path, per_group: int, models: list[str]) -> Path:
    """tests/tiny.py's generated project with `per_group` training documents per group, built up
    to its embeddings by `dvc repro`."""
    from tests.tiny import make_archive, make_project, run, tiny_params, write_params

    repo, env = make_project(base, models)
    counts = make_archive(base / "mirror" / "20news-bydate.tar.gz", train_per_group=per_group, test_per_group=10)
    write_params(repo / "params.yaml", tiny_params(str(base / "glove.tiny.50d.txt"), counts, models))
    run(["dvc", "repro", "-q", "embeddings"], repo, env)
    return repo


def environment(isa: str, onednn_opts: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    if onednn_opts != "default":
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn_opts
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, help="a built project (default: a generated tiny one)")
    ap.add_argument("--docs-per-group", type=int, default=700, help="tiny corpus: training documents per group (3 groups)")
    ap.add_argument("--models", default="cnn,lstm,cbow")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--isa", default="default,AVX2,AVX,SSE41",
                    help="ONEDNN_MAX_CPU_ISA values (default: unset, so the pipeline's own cap applies)")
    ap.add_argument("--onednn-opts", default="default,0", help="TF_ENABLE_ONEDNN_OPTS values (default: unset)")
    ap.add_argument("--threads", default="2,1", help="intra-op threads (0: TensorFlow's choice)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.child:
        return child(args.project, models, args.epochs, int(args.threads))
    with tempfile.TemporaryDirectory(prefix="isa_check_") as tmp:
        project = args.project.resolve() if args.project else tiny_project(Path(tmp), args.docs_per_group, models)
        rows = []
        grid = itertools.product(args.onednn_opts.split(","), args.threads.split(","), args.isa.split(","))
        for opts, threads, isa in grid:
            cmd = [sys.executable, __file__, "--child", "--project", str(project), "--models", ",".join(models),
                   "--epochs", str(args.epochs), "--threads", threads]
            proc = subprocess.run(cmd, env=environment(isa, opts), capture_output=True, text=True)
            if proc.returncode:
                print(f"{isa} opts={opts} threads={threads}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    row = {"isa": isa, "onednn_opts": opts, "threads": threads, **json.loads(line)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\nmodel      onednn_opts threads  " + "  ".join(f"{i:>22}" for i in args.isa.split(",")))
    for (model, opts, threads), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["model"], r["onednn_opts"], r["threads"])), key=lambda r: (r["model"], r["onednn_opts"], r["threads"])
    ):
        by_isa = {r["isa"]: r for r in group}
        cells = [f"{by_isa[i]['sha256'][:8]} {by_isa[i]['seconds']:>7.2f}s" if i in by_isa else "-" for i in args.isa.split(",")]
        print(f"{model:10} {opts:>11} {threads:>7}  " + "  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
