#!/usr/bin/env python
"""Benchmark harness: our models against their peers, and the pipeline's own costs.

Parts (select with --only, comma-separated; default all):
  tfidf     scikit-learn TF-IDF + LinearSVC vs our `tfidf_logreg` (same vectorizer): fit time
            (median of --repeats) and test accuracy.
  fasttext  fastText supervised vs our `cbow`: wall time to reach --threshold test accuracy,
            and the final test accuracy of each.
  epoch     `cnn_glove` epoch time, against a `cbow` epoch measured in the same invocation.
  repro     in a temporary copy of the project: `dvc repro` from scratch, a no-op `dvc repro`
            (median of --repeats) and the stages rerun after changing one param; the wall time
            and peak RSS of every stage.

Every timing is reported with the peer it is compared to in the same invocation (a ratio), and in
"calibration units": a fixed single-threaded CPU workload timed at the start and end of the
invocation, so runs on differently loaded machines can be compared. Results go to
metrics/bench.json (see --out) and a table is printed. bench/README.md says what each figure means.

Run it from the project root with the project's virtualenv, e.g.
    python -m bench.run_bench                       # everything (~25-30 min on 2 cores)
    python -m bench.run_bench --only tfidf,fasttext --repeats 5
    python -m bench.run_bench --tiny --out /tmp/bench.json   # seconds, on generated tiny data
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import peak_rss
from bench.subproject import project_env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

PARTS = ("tfidf", "fasttext", "epoch", "repro")
GIB = 1024**3

# The targets (2 CPU cores). The harness reports them; it does not enforce them.
TARGETS = {
    "full_repro_seconds": ("<=", 900.0),
    "noop_repro_seconds": ("<=", 3.0),
    "cbow_vs_fasttext_time_to_threshold_ratio": ("<=", 1.0),
    "cbow_vs_fasttext_time_to_fasttext_accuracy_ratio": ("<=", 1.0),
    "tfidf_logreg_fit_seconds": ("<=", 10.0),
    "tfidf_logreg_test_accuracy": (">=", 0.86),
    "cnn_glove_epoch_speedup": (">=", 2.0),  # straightforward epoch seconds / ours: "halve it"
    "max_stage_peak_rss_gib": ("<=", 4.0),
}

# What `dvc repro` copies into the temporary project (besides a fresh git + DVC repo).
COPY_DEFAULT = ("pipeline", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")

# keras.layers.TextVectorization's "lower_and_strip_punctuation", in Python: tf.strings.lower
# lowercases ASCII only; the punctuation class is Keras' DEFAULT_STRIP_REGEX; split on whitespace.
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
STRIP_PUNCT = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")


def perf() -> float:
    return time.perf_counter()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def r3(x):
    return None if x is None else round(float(x), 3)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def use_pipeline(root: Path = ROOT) -> None:
    """Make `import pipeline` resolve to the project's package."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


# ---------------------------------------------------------------- calibration


def calibration_workload() -> float:
    """A fixed, single-threaded CPU workload (hashing + sorting), about 0.5 s on a quiet core."""
    import hashlib

    start = perf()
    h = b"bench"
    for _ in range(150_000):
        h = hashlib.sha256(h).digest()
    rng = random.Random(0)
    sorted(rng.random() for _ in range(400_000))
    return perf() - start


def calibrate(repeats: int) -> dict:
    runs = [calibration_workload() for _ in range(max(1, repeats))]
    return {"seconds": r3(median(runs)), "runs": [r3(r) for r in runs]}


# ---------------------------------------------------------------- data


class Data:
    """The pipeline's prepared and tokenized outputs (read-only), and its params file."""

    def __init__(self, data_dir: Path, params_file: Path):
        self.dir = Path(data_dir)
        self.params_file = Path(params_file)
        for sub in ("prepared", "tokenized"):
            if not (self.dir / sub).is_dir():
                raise SystemExit(f"error: {self.dir / sub}: missing (run `dvc repro tokenize` first, or use --tiny)")

    def frame(self, split: str):
        import pandas as pd

        return pd.read_parquet(self.dir / "prepared" / f"{split}.parquet")

    def model_cfg(self, name: str) -> dict:
        use_pipeline()
        from pipeline.train import load_config

        return load_config(name, str(self.params_file))["model"]

    def tokenize_max_len(self) -> int:
        return read_json(self.dir / "tokenized" / "config.json")["max_len"]


# ---------------------------------------------------------------- part: tfidf


def part_tfidf(data: Data, args) -> dict:
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    use_pipeline()
    from pipeline import models

    cfg = data.model_cfg("tfidf_logreg")
    train, test = data.frame("train"), data.frame("test")
    x_train, y_train = train["text"].tolist(), train["label"].to_numpy()
    x_test, y_test = test["text"].tolist(), test["label"].to_numpy()

    def vectorizer():  # the very TfidfVectorizer our model uses (same params section)
        return models.get_spec("tfidf_logreg").build(cfg).steps[0][1]

    builders = {
        "tfidf_logreg": lambda: models.get_spec("tfidf_logreg").build(cfg),
        "tfidf_linearsvc": lambda: make_pipeline(vectorizer(), LinearSVC(C=args.svc_c, random_state=0)),
    }
    out = {}
    for name, build in builders.items():
        seconds, accs = [], []
        for i in range(args.repeats):
            model = build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                start = perf()
                model.fit(x_train, y_train)
                seconds.append(perf() - start)
            accs.append(float(np.mean(model.predict(x_test) == y_test)))
            log(f"tfidf: {name} run {i + 1}/{args.repeats}: fit {seconds[-1]:.2f} s, test accuracy {accs[-1]:.4f}")
        out[name] = {
            "fit_seconds": r3(median(seconds)),
            "fit_runs": [r3(s) for s in seconds],
            "test_accuracy": round(statistics.mean(accs), 4),
        }
    out["tfidf_linearsvc"]["C"] = args.svc_c
    out["tfidf_logreg"]["params"] = cfg
    out["fit_time_ratio"] = ratio(out["tfidf_logreg"]["fit_seconds"], out["tfidf_linearsvc"]["fit_seconds"])
    out["train_docs"], out["test_docs"] = len(x_train), len(x_test)
    return out


# ---------------------------------------------------------------- Keras (the pipeline's code path)


def padded_batches(x, y, batch_size: int, seed: int | None):
    """The straightforward input of the source recipes: every document padded to the full length,
    batches of a plain shuffle (no per-batch cut, no length bucketing)."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def keras_fit(name: str, data: Data, *, epochs: int | None = None, test_each_epoch: bool = True,
              threshold: float | None = None, verbose: int = 0, plain: bool = False) -> dict:
    """Train one Keras model of the registry through pipeline/keras_fit.py's `train_keras_model` (same
    builder, seed, batches, optimizer, loss, early stopping on val_accuracy), timing every epoch.

    With `plain`, the straightforward version instead: the model's layers and optimizer, but every
    document padded to tokenize.max_len (1,000) in plainly shuffled batches.

    The clock runs from the start of fit(); a callback measures test accuracy after each epoch and
    its own time is excluded. `train_seconds` also excludes the per-epoch validation pass (fastText
    does none); `seconds_with_validation` keeps it, as the train stage spends it."""
    import keras
    import numpy as np

    use_pipeline()
    from pipeline.keras_fit import compile_model, make_dataset, min_length, seed_everything, train_keras_model
    from pipeline.models import get_spec

    cfg = dict(data.model_cfg(name))
    if epochs is not None:
        cfg["epochs"] = epochs
    seed_everything(cfg["seed"])
    spec = get_spec(name)
    tok_dir = data.dir / "tokenized"
    tok = read_json(tok_dir / "config.json")
    vocab = read_json(tok_dir / "vocab.json")
    classes = read_json(tok_dir / "classes.json")
    max_len = tok["max_len"] if plain else (cfg["max_len"] or tok["max_len"])
    arrays = {s: np.load(tok_dir / f"{s}.npz") for s in ("train", "val", "test")}
    x = {s: a["x"][:, :max_len] for s, a in arrays.items()}
    y = {s: a["y"] for s, a in arrays.items()}
    glove = np.load(data.dir / "embeddings" / "matrix.npy") if spec.glove else None
    test_data = make_dataset(x["test"], y["test"], 512, None, min_length(name, cfg))

    def test_accuracy(model) -> float:
        probs = model.predict(test_data, verbose=0)
        return float(np.mean(np.argmax(probs, axis=1) == y["test"]))

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.rows, self.excluded, self.validation = [], 0.0, 0.0
            self.reached = None
            self.start = perf()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start, self.epoch_validation = perf(), 0.0

        def on_test_begin(self, logs=None):
            self.test_start = perf()

        def on_test_end(self, logs=None):
            self.epoch_validation += perf() - self.test_start

        def on_epoch_end(self, epoch, logs=None):
            now = perf()
            self.validation += self.epoch_validation
            with_val = now - self.start - self.excluded
            row = {
                "epoch": epoch + 1,
                "epoch_seconds": r3(now - self.epoch_start - self.epoch_validation),
                "train_seconds": r3(with_val - self.validation),
                "seconds_with_validation": r3(with_val),
                "val_accuracy": r3((logs or {}).get("val_accuracy")),
            }
            if test_each_epoch:
                t = perf()
                row["test_accuracy"] = round(test_accuracy(self.model), 4)
                self.excluded += perf() - t
                if self.reached is None and threshold is not None and row["test_accuracy"] >= threshold:
                    self.reached = row
            self.rows.append(row)
            log(f"{name}: epoch {row['epoch']}: {row['epoch_seconds']} s" + (f", test accuracy {row['test_accuracy']}" if test_each_epoch else ""))

    clock = EpochClock()
    model = spec.build(cfg, len(vocab), len(classes), glove)
    start = perf()
    if plain:
        compile_model(model, cfg)
        fit = model.fit(
            padded_batches(x["train"], y["train"], cfg["batch_size"], cfg["seed"]),
            validation_data=padded_batches(x["val"], y["val"], 512, None),
            epochs=cfg["epochs"],
            callbacks=[clock],
            verbose=verbose,
        )
    else:
        fit = train_keras_model(name, cfg, model, x, y, [clock], verbose)
    fit_seconds = perf() - start - clock.excluded
    best = int(np.argmax(fit.history["val_accuracy"])) + 1
    result = {
        "params": cfg,
        "curve": clock.rows,
        "final": {
            "test_accuracy": round(test_accuracy(model), 4) if test_each_epoch else None,  # best-val weights, as saved
            "best_epoch": best,
            "epochs_run": len(fit.history["loss"]),
            "train_seconds": clock.rows[-1]["train_seconds"],
            "seconds_with_validation": r3(fit_seconds),
        },
    }
    if threshold is not None:
        result["threshold"] = threshold
        result["epoch_to_threshold"] = clock.reached["epoch"] if clock.reached else None
        result["seconds_to_threshold"] = clock.reached["train_seconds"] if clock.reached else None
        result["seconds_to_threshold_with_validation"] = clock.reached["seconds_with_validation"] if clock.reached else None
    keras.backend.clear_session()
    return result


def first_reaching(curve: list[dict], accuracy: float | None, key: str = "train_seconds"):
    if accuracy is None:
        return None
    for row in curve:
        if row.get("test_accuracy") is not None and row["test_accuracy"] >= accuracy:
            return row[key]
    return None


# ---------------------------------------------------------------- part: fasttext


def standardize(text: str) -> list[str]:
    return [t for t in WHITESPACE.split(STRIP_PUNCT.sub("", text.translate(ASCII_LOWER))) if t]


def fasttext_lines(data: Data, split: str, mode: str, max_len: int) -> list[str]:
    """One document per line, `__label__<group>` first, then the text our Keras models see."""
    import numpy as np

    frame = data.frame(split)
    labels = ["__label__" + g.replace(" ", "_") for g in frame["group"]]
    if mode == "text":  # the same standardization and cut, over fastText's own (full) vocabulary
        docs = [" ".join(standardize(t)[:max_len]) for t in frame["text"]]
    else:  # "ids": exactly our token ids, decoded through our vocabulary ([UNK] -> <unk>)
        vocab = read_json(data.dir / "tokenized" / "vocab.json")
        words = np.array(["", "<unk>"] + list(vocab[2:]), dtype=object)
        ids = np.load(data.dir / "tokenized" / f"{split}.npz")["x"][:, :max_len]
        docs = [" ".join(words[row[row > 0]]) for row in ids]
    return [f"{label} {doc}" for label, doc in zip(labels, docs)]


NAN_RETRIES = 3
nan_retries = 0  # fastText runs retried after "Encountered NaN" (training diverged: lr too high)


def fasttext_train(path: Path, ft_args: dict):
    """Train once; the wall time covers all of train_supervised (reading, dictionary, training)."""
    global nan_retries
    import fasttext

    for attempt in range(NAN_RETRIES):
        start = perf()
        try:
            model = fasttext.train_supervised(input=str(path), verbose=0, **ft_args)
        except RuntimeError as exc:
            if "NaN" not in str(exc) or attempt == NAN_RETRIES - 1:
                raise SystemExit(f"error: fastText {ft_args}: {exc} (try a lower --ft-lr)") from None
            nan_retries += 1
            continue
        return model, perf() - start


def fasttext_accuracy(model, lines: list[str]) -> float:
    texts = [line.split(" ", 1)[1] if " " in line else "" for line in lines]
    truth = [line.split(" ", 1)[0] for line in lines]
    predicted, _ = model.predict(texts, k=1)
    return sum(p[0] == t for p, t in zip(predicted, truth)) / len(truth)


def epoch_schedule(final: int) -> list[int]:
    steps = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50]
    return sorted({e for e in steps if e < final} | {final})


def part_fasttext(data: Data, args, work: Path) -> dict:
    tok = read_json(data.dir / "tokenized" / "config.json")
    max_len = tok["max_len"]
    lines = {s: fasttext_lines(data, s, args.ft_input, max_len) for s in ("train", "val", "test")}
    random.Random(args.ft_seed).shuffle(lines["train"])
    train_path = work / "fasttext.train.txt"
    train_path.write_text("\n".join(lines["train"]) + "\n", encoding="utf-8")
    base = {
        "lr": args.ft_lr, "epoch": args.ft_epoch, "wordNgrams": args.ft_ngrams, "dim": args.ft_dim,
        "thread": args.ft_thread, "minCount": 1, "bucket": args.ft_bucket, "loss": "softmax", "seed": args.ft_seed,
    }
    ft = {"input": args.ft_input, "max_len": max_len, "threshold": args.threshold}
    if args.ft_tune:  # choose lr and epoch on validation, never on test
        grid = []
        for lr in (0.5, 1.0):
            for epoch in (10, 25):
                model, _ = fasttext_train(train_path, {**base, "lr": lr, "epoch": epoch})
                grid.append({"lr": lr, "epoch": epoch, "val_accuracy": round(fasttext_accuracy(model, lines["val"]), 4)})
                log(f"fasttext tune: lr {lr} epoch {epoch}: val accuracy {grid[-1]['val_accuracy']}")
        best = max(grid, key=lambda g: (g["val_accuracy"], -g["epoch"]))
        base.update(lr=best["lr"], epoch=best["epoch"])
        ft["tuning"] = grid
    ft["params"] = dict(base)

    # Time to threshold: fastText's lr decays to 0 over `epoch`, so k epochs = a run with epoch=k.
    curve, reached = [], None
    for k in epoch_schedule(base["epoch"]):
        model, seconds = fasttext_train(train_path, {**base, "epoch": k})
        acc = fasttext_accuracy(model, lines["test"])
        curve.append({"epoch": k, "seconds": r3(seconds), "test_accuracy": round(acc, 4)})
        log(f"fasttext: epoch={k}: {seconds:.2f} s, test accuracy {acc:.4f}")
        if acc >= args.threshold:
            reached = k
            break
    ft["curve"] = curve
    ft["epoch_to_threshold"] = reached
    if reached is not None:
        runs = [curve[-1]["seconds"]]
        for _ in range(args.repeats - 1):
            runs.append(r3(fasttext_train(train_path, {**base, "epoch": reached})[1]))
        ft["seconds_to_threshold"] = r3(median(runs))
        ft["runs_to_threshold"] = runs
    else:
        ft["seconds_to_threshold"] = None
    final_runs, final_accs = [], []
    for i in range(args.repeats):
        if i == 0 and curve[-1]["epoch"] == base["epoch"]:
            final_runs.append(curve[-1]["seconds"])
            final_accs.append(curve[-1]["test_accuracy"])
            continue
        model, seconds = fasttext_train(train_path, base)
        final_runs.append(r3(seconds))
        final_accs.append(round(fasttext_accuracy(model, lines["test"]), 4))
        log(f"fasttext: final epoch={base['epoch']}: {seconds:.2f} s, test accuracy {final_accs[-1]:.4f}")
    ft["final"] = {
        "epoch": base["epoch"],
        "seconds": r3(median(final_runs)),
        "runs": final_runs,
        "test_accuracy": round(statistics.mean(final_accs), 4),
        "test_accuracy_runs": final_accs,
        "epoch_seconds": r3(median(final_runs) / base["epoch"]),
    }
    ft["nan_retries"] = nan_retries
    train_path.unlink()

    log("fasttext: now our cbow (the pipeline's training code path)")
    cbow = keras_fit("cbow", data, epochs=args.cbow_epochs, threshold=args.threshold)
    cbow["seconds_to_fasttext_accuracy"] = first_reaching(cbow["curve"], ft["final"]["test_accuracy"])
    return {
        "threshold": args.threshold,
        "fasttext": ft,
        "cbow": cbow,
        # < 1: cbow reaches the threshold faster than fastText
        "time_to_threshold_ratio": ratio(cbow.get("seconds_to_threshold"), ft["seconds_to_threshold"]),
        # cbow's time to fastText's final accuracy over fastText's time to it (null: never reached)
        "time_to_fasttext_accuracy_ratio": ratio(cbow["seconds_to_fasttext_accuracy"], ft["final"]["seconds"]),
        "final_accuracy_difference": round(cbow["final"]["test_accuracy"] - ft["final"]["test_accuracy"], 4),
    }


# ---------------------------------------------------------------- part: epoch


def part_epoch(data: Data, args, results: dict) -> dict:
    def steady(curve):  # the first epoch also traces the graph: report it apart
        later = [r["epoch_seconds"] for r in curve[1:]]
        return r3(median(later)) if later else curve[0]["epoch_seconds"]

    cnn = keras_fit("cnn_glove", data, epochs=args.epoch_epochs, test_each_epoch=False)
    before = keras_fit("cnn_glove", data, epochs=args.epoch_epochs, test_each_epoch=False, plain=True)
    out = {"cnn_glove": {
        "epochs": len(cnn["curve"]),
        "first_epoch_seconds": cnn["curve"][0]["epoch_seconds"],
        "epoch_seconds": steady(cnn["curve"]),
        "curve": cnn["curve"],
    }, "cnn_glove_straightforward": {
        "max_len": data.tokenize_max_len(),
        "epochs": len(before["curve"]),
        "first_epoch_seconds": before["curve"][0]["epoch_seconds"],
        "epoch_seconds": steady(before["curve"]),
        "curve": before["curve"],
    }}
    out["cnn_glove_speedup"] = ratio(out["cnn_glove_straightforward"]["epoch_seconds"], out["cnn_glove"]["epoch_seconds"])
    prior = results.get("fasttext", {}).get("cbow")
    if prior:  # cbow already trained in this invocation (part fasttext)
        curve, source = prior["curve"], "part fasttext"
    else:
        curve, source = keras_fit("cbow", data, epochs=args.epoch_epochs, test_each_epoch=False)["curve"], "part epoch"
    out["cbow"] = {"first_epoch_seconds": curve[0]["epoch_seconds"], "epoch_seconds": steady(curve), "measured_in": source}
    out["epoch_time_ratio"] = ratio(out["cnn_glove"]["epoch_seconds"], out["cbow"]["epoch_seconds"])
    return out


# ---------------------------------------------------------------- part: repro

# Installed as $SHELL for `dvc repro`: DVC runs each stage as `$SHELL -c <cmd>` with DVC_STAGE set
# (dvc/stage/run.py), so this records every stage's wall time and peak RSS (wait4's ru_maxrss: the
# largest process of the stage's tree, as /usr/bin/time -v reports) without touching dvc.yaml.
SHELL_WRAPPER = r'''#!{python}
import json, os, subprocess, sys, time
args = sys.argv[1:]
real = os.environ.get("BENCH_REAL_SHELL") or "/bin/sh"
opts = {{"bash": ["--noprofile", "--norc"], "zsh": ["--no-rcs"]}}.get(os.path.basename(real), [])
if "-c" not in args:
    os.execv(real, [real, *args])
cmd = args[args.index("-c") + 1]
start, began = time.perf_counter(), time.time()
proc = subprocess.Popen([real, *opts, "-c", cmd])
while True:
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        break
    except InterruptedError:
        continue
proc.returncode = code = os.waitstatus_to_exitcode(status)
record = {{"stage": os.environ.get("DVC_STAGE", "?"), "cmd": cmd, "returncode": code, "started": began,
          "seconds": round(time.perf_counter() - start, 3), "max_rss_kib": usage.ru_maxrss,
          "user_seconds": round(usage.ru_utime, 3), "system_seconds": round(usage.ru_stime, 3)}}
with open(os.environ["BENCH_STAGE_LOG"], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\n")
sys.exit(code if code >= 0 else 128 - code)
'''


def measured_env(mirror: Path | None, shell: Path, stage_log: Path) -> dict:
    """The temporary project's environment (subproject.project_env) with the measuring shell."""
    real_shell = os.environ.get("SHELL") or "/bin/sh"
    if not Path(real_shell).exists() or Path(real_shell).name not in ("bash", "sh", "dash", "zsh"):
        real_shell = "/bin/sh"
    return project_env(mirror, SHELL=str(shell), BENCH_REAL_SHELL=real_shell, BENCH_STAGE_LOG=str(stage_log))


def run_measured(cmd: list[str], cwd: Path, env: dict, log_file: Path) -> dict:
    """Run a command, its output to log_file; wall seconds, exit code and its tree's peak RSS."""
    with open(log_file, "w", encoding="utf-8") as out:
        res = peak_rss.run(cmd, cwd, env, out, subprocess.STDOUT)
    return {**res, "output": log_file.read_text(encoding="utf-8", errors="replace")}


def stages_ran(output: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^Running stage '([^']+)'", output, re.M)]


def take_stage_records(stage_log: Path) -> list[dict]:
    if not stage_log.exists():
        return []
    records = [json.loads(line) for line in stage_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    stage_log.unlink()
    return records


def stage_table(records: list[dict]) -> dict:
    table = {}
    for rec in records:  # a stage runs once per repro; a foreach/matrix name is its full address
        table[rec["stage"]] = {
            "seconds": r3(rec["seconds"]),
            "peak_rss_mib": round(rec["max_rss_kib"] / 1024, 1),
            "cpu_seconds": r3(rec["user_seconds"] + rec["system_seconds"]),
            "returncode": rec["returncode"],
        }
    return table


def parse_change(spec: str) -> tuple[str, str | None]:
    key, sep, value = spec.partition("=")
    return key.strip(), (value.strip() if sep else None)


def yaml_get(params: dict, key: str):
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def yaml_set(params: dict, key: str, value) -> None:
    parts = key.split(".")
    node = params
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def changed_value(old, given: str | None):
    import yaml

    if given is not None:
        return yaml.safe_load(given)
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return old + 1
    if isinstance(old, float):
        return old / 2
    raise SystemExit(f"error: --change: give a value for a non-numeric param (now {old!r})")


def git_rev(project: Path, rev: str) -> str:
    proc = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=project, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: --baseline {rev}: not a commit of {project}")
    return proc.stdout.strip()


def export_rev(project: Path, rev: str, dest: Path) -> Path:
    """The files of commit `rev` of the git repo `project` (no history) in `dest`."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=project, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def make_repro_copy(src: Path, dest: Path, copy: list[str], models: list[str] | None, env: dict) -> None:
    import yaml

    dest.mkdir(parents=True)
    for item in copy:
        path = src / item
        if path.is_dir():
            shutil.copytree(path, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, dest / item)
    if models:
        params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
        params["train"]["models"] = models
        members = (params.get("ensemble") or {}).get("members")
        if members is not None:
            params["ensemble"]["members"] = [m for m in members if m in models] or models[:1]
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench copy"]):
        proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"error: {' '.join(cmd)} in {dest}: {proc.stderr.strip()}")


def part_repro(args, work: Path, source: Path, mirror: Path | None, calibration: float | None) -> dict:
    import yaml

    shell = work / "bench-shell"
    shell.write_text(SHELL_WRAPPER.format(python=sys.executable), encoding="utf-8")
    shell.chmod(0o755)
    stage_log = work / "stages.jsonl"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    env = measured_env(mirror, shell, stage_log)
    repo = work / "project"
    models = [m for m in args.repro_models.split(",") if m] if args.repro_models else None
    make_repro_copy(source, repo, args.copy, models, env)
    dvc = str(Path(sys.executable).parent / "dvc") if (Path(sys.executable).parent / "dvc").exists() else "dvc"
    targets = [t for t in (args.repro_target or "").split(",") if t]

    def repro(label: str, where: Path = repo) -> dict:
        res = run_measured([dvc, "repro", *targets], where, env, logs / f"{label}.log")
        records = take_stage_records(stage_log)
        if res["returncode"]:
            tail = "\n".join(res["output"].splitlines()[-30:])
            raise SystemExit(f"error: dvc repro ({label}) failed with {res['returncode']} in {where}:\n{tail}")
        return {
            "seconds": r3(res["seconds"]),
            "calibration_units": ratio(res["seconds"], calibration),
            "stages_run": stages_ran(res["output"]),
            "stages": stage_table(records),
            "dvc_tree_peak_rss_mib": round(res["max_rss_kib"] / 1024, 1),
        }

    out = {"project": str(repo), "mirror": str(mirror) if mirror else None, "targets": targets or None,
           "models": yaml.safe_load((repo / "params.yaml").read_text())["train"]["models"]}
    if args.baseline:  # the same from-scratch repro of another commit, first, on the same machine
        rev = git_rev(source, args.baseline)
        base_repo = work / "baseline"
        make_repro_copy(export_rev(source, rev, work / "baseline-src"), base_repo, args.copy, models, env)
        log(f"repro: baseline {rev[:12]}: full `dvc repro` from scratch in {base_repo}")
        baseline = repro("baseline", base_repo)
        baseline["rev"] = rev
        out["baseline"] = baseline
        log(f"repro: baseline {baseline['seconds']} s, {len(baseline['stages_run'])} stages")
    log(f"repro: full `dvc repro` from scratch in {repo} (this is the long one)")
    full = repro("full")
    stage_sum = sum(s["seconds"] for s in full["stages"].values())
    full["stage_seconds_total"] = r3(stage_sum)
    full["dvc_overhead_ratio"] = ratio(full["seconds"], stage_sum)  # repro wall / its stages' wall
    if args.baseline:
        full["ratio_to_baseline"] = ratio(full["seconds"], out["baseline"]["seconds"])
    out["full"] = full
    log(f"repro: full {full['seconds']} s, {len(full['stages_run'])} stages")

    noop_runs = []
    for i in range(args.repeats):
        run = repro(f"noop{i + 1}")
        noop_runs.append(run)
        log(f"repro: no-op run {i + 1}/{args.repeats}: {run['seconds']} s, stages run: {run['stages_run'] or 'none'}")
    noop_seconds = median([r["seconds"] for r in noop_runs])
    out["noop"] = {
        "seconds": r3(noop_seconds),
        "runs": [r["seconds"] for r in noop_runs],
        "calibration_units": ratio(noop_seconds, calibration),
        "stages_run": sorted({s for r in noop_runs for s in r["stages_run"]}),
        "ratio_to_full": ratio(noop_seconds, full["seconds"]),
    }

    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    key, given = parse_change(args.change) if args.change else (None, None)
    if key is None:  # default: the first model's seed (every model but naive_bayes has one)
        model = out["models"][0]
        cfg = params["train"][model]
        key = f"train.{model}.seed" if "seed" in cfg else f"train.{model}.{next(k for k, v in cfg.items() if isinstance(v, (int, float)) and not isinstance(v, bool))}"
    old = yaml_get(params, key)
    new = changed_value(old, given)
    yaml_set(params, key, new)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    log(f"repro: after {key}: {old!r} -> {new!r}")
    change = repro("change")
    change.update(key=key, old=old, new=new)
    change["ratio_to_full"] = ratio(change["seconds"], full["seconds"])
    out["change"] = change

    every = {**{f"full:{k}": v for k, v in full["stages"].items()}, **{f"change:{k}": v for k, v in change["stages"].items()}}
    if every:
        where, top = max(every.items(), key=lambda kv: kv[1]["peak_rss_mib"])
        out["max_stage_peak_rss_mib"] = top["peak_rss_mib"]
        out["max_stage_peak_rss_stage"] = where.split(":", 1)[1]
    return out


# ---------------------------------------------------------------- tiny mode


# The stages upstream of training, in order: tiny mode makes their outputs in this process.
DATA_STAGES = ("check_params", "fetch_corpus", "prepare", "tokenize", "fetch_glove", "embeddings", "fetch_encoder", "encode")


def tiny_setup(work: Path, models: list[str], need_data: bool) -> tuple[Path, Path]:
    """A tiny copy of the project (tests/tiny.py) with generated data; with need_data, its
    prepared/tokenized/embeddings outputs are made in this process (no DVC). Returns (repo, mirror)."""
    import yaml

    from tests.tiny import make_project

    repo, env = make_project(work / "tiny", models)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    members = (params.get("ensemble") or {}).get("members")
    if members is not None:  # keep the ensemble stage runnable with the tiny model list
        params["ensemble"]["members"] = [m for m in members if m in models] or models[:1]
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        subprocess.run(["git", "commit", "-qam", "tiny ensemble"], cwd=repo, env=env, capture_output=True)
    if need_data:
        use_pipeline()
        import importlib

        previous, os.environ["NEWSGROUPS_MIRROR"] = os.environ.get("NEWSGROUPS_MIRROR"), env["NEWSGROUPS_MIRROR"]
        cwd = os.getcwd()
        os.chdir(repo)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the results table
                for stage in DATA_STAGES:
                    importlib.import_module(f"pipeline.{stage}").main([])
        finally:
            os.chdir(cwd)
            if previous is None:
                os.environ.pop("NEWSGROUPS_MIRROR", None)
            else:
                os.environ["NEWSGROUPS_MIRROR"] = previous
    return repo, Path(env["NEWSGROUPS_MIRROR"])


# ---------------------------------------------------------------- report


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "keras", "scikit-learn", "dvc", "mlflow", "numpy", "fasttext-numpy2", "fasttext"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def target_rows(results: dict) -> list[dict]:
    def get(*path):
        node = results
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    rss = get("repro", "max_stage_peak_rss_mib")
    values = {
        "full_repro_seconds": get("repro", "full", "seconds"),
        "noop_repro_seconds": get("repro", "noop", "seconds"),
        "cbow_vs_fasttext_time_to_threshold_ratio": get("fasttext", "time_to_threshold_ratio"),
        "cbow_vs_fasttext_time_to_fasttext_accuracy_ratio": get("fasttext", "time_to_fasttext_accuracy_ratio"),
        "tfidf_logreg_fit_seconds": get("tfidf", "tfidf_logreg", "fit_seconds"),
        "tfidf_logreg_test_accuracy": get("tfidf", "tfidf_logreg", "test_accuracy"),
        "cnn_glove_epoch_speedup": get("epoch", "cnn_glove_speedup"),
        "max_stage_peak_rss_gib": None if rss is None else round(rss / 1024, 3),
    }
    rows = []
    for name, value in values.items():
        op, limit = TARGETS[name]
        met = None
        if value is not None and op is not None:
            met = value <= limit if op == "<=" else value >= limit
        elif op is not None and name.startswith("cbow_vs_fasttext") and get("fasttext") is not None:
            # no ratio: one side never got there (fastText's own final accuracy it always has)
            if "threshold" in name:
                ours, peer = get("fasttext", "cbow", "seconds_to_threshold"), get("fasttext", "fasttext", "seconds_to_threshold")
            else:
                ours, peer = get("fasttext", "cbow", "seconds_to_fasttext_accuracy"), 1.0
            if (ours is None) != (peer is None):
                met = ours is not None
        rows.append({"name": name, "value": value, "target": None if op is None else f"{op} {limit:g}", "met": met})
    return rows


def fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.0f}"
    return str(x)


def table(results: dict) -> str:
    """The side-by-side table: ours | peer | ratio, then the targets."""
    rows = [("comparison", "ours", "peer", "ours/peer")]
    ft = results.get("fasttext")
    if ft:
        rows.append((f"s to {ft['threshold']} test acc: cbow | fastText", fmt(ft["cbow"].get("seconds_to_threshold")),
                     fmt(ft["fasttext"].get("seconds_to_threshold")), fmt(ft["time_to_threshold_ratio"])))
        rows.append(("final test acc: cbow | fastText", fmt(ft["cbow"]["final"]["test_accuracy"], 4),
                     fmt(ft["fasttext"]["final"]["test_accuracy"], 4), ""))
        rows.append(("s to fastText's final acc: cbow | fastText", fmt(ft["cbow"].get("seconds_to_fasttext_accuracy")),
                     fmt(ft["fasttext"]["final"]["seconds"]), fmt(ft["time_to_fasttext_accuracy_ratio"])))
    tf = results.get("tfidf")
    if tf:
        rows.append(("fit s: tfidf_logreg | TF-IDF+LinearSVC", fmt(tf["tfidf_logreg"]["fit_seconds"]),
                     fmt(tf["tfidf_linearsvc"]["fit_seconds"]), fmt(tf["fit_time_ratio"])))
        rows.append(("test acc: tfidf_logreg | TF-IDF+LinearSVC", fmt(tf["tfidf_logreg"]["test_accuracy"], 4),
                     fmt(tf["tfidf_linearsvc"]["test_accuracy"], 4), ""))
    ep = results.get("epoch")
    if ep:
        rows.append(("epoch s: cnn_glove | straightforward (padded to 1,000)", fmt(ep["cnn_glove"]["epoch_seconds"]),
                     fmt(ep["cnn_glove_straightforward"]["epoch_seconds"]), fmt(ratio(ep["cnn_glove"]["epoch_seconds"], ep["cnn_glove_straightforward"]["epoch_seconds"]))))
        rows.append(("epoch s: cnn_glove | cbow", fmt(ep["cnn_glove"]["epoch_seconds"]), fmt(ep["cbow"]["epoch_seconds"]),
                     fmt(ep["epoch_time_ratio"])))
    rp = results.get("repro")
    if rp:
        rows.append(("full dvc repro s | its stages' s", fmt(rp["full"]["seconds"]), fmt(rp["full"]["stage_seconds_total"]),
                     fmt(rp["full"]["dvc_overhead_ratio"])))
        if rp.get("baseline"):
            rows.append((f"full dvc repro s | baseline {rp['baseline']['rev'][:7]}'s", fmt(rp["full"]["seconds"]),
                         fmt(rp["baseline"]["seconds"]), fmt(rp["full"]["ratio_to_baseline"])))
        noop = rp["noop"]
        # The calibration of the invocation that ran this part (a --merge run brings its own).
        cal = noop["seconds"] / noop["calibration_units"] if noop.get("calibration_units") else None
        rows.append(("no-op dvc repro s | calibration s", fmt(noop["seconds"]), fmt(cal), fmt(noop["calibration_units"])))
        rows.append((f"after {rp['change']['key']} change s | full s", fmt(rp["change"]["seconds"]), fmt(rp["full"]["seconds"]),
                     fmt(rp["change"]["ratio_to_full"])))
        rows.append(("max stage peak RSS MiB", fmt(rp.get("max_stage_peak_rss_mib")), rp.get("max_stage_peak_rss_stage") or "", ""))
    lines = _md(rows)
    if rp:
        lines.append(f"stages rerun after {rp['change']['key']}: {', '.join(rp['change']['stages_run']) or 'none'}")
        lines.append(f"stages run by the no-op repro: {', '.join(rp['noop']['stages_run']) or 'none'}")
        stage_rows = [("stage (full repro, then after the change)", "seconds", "peak RSS MiB", "CPU s")]
        for label, part in (("", rp["full"]), ("change: ", rp["change"])):
            for name, s in part["stages"].items():
                stage_rows.append((label + name, fmt(s["seconds"]), fmt(s["peak_rss_mib"]), fmt(s["cpu_seconds"])))
        lines += [""] + _md(stage_rows)
        if rp.get("baseline"):
            base = rp["baseline"]["stages"]
            cmp_rows = [("stage (full repro)", "seconds", f"baseline {rp['baseline']['rev'][:7]} s")]
            for name in [*rp["full"]["stages"], *(n for n in base if n not in rp["full"]["stages"])]:
                cmp_rows.append((name, fmt(rp["full"]["stages"].get(name, {}).get("seconds")), fmt(base.get(name, {}).get("seconds"))))
            lines += [""] + _md(cmp_rows)
    target = [("target", "value", "wanted", "met")]
    for row in results.get("targets", []):
        target.append((row["name"], fmt(row["value"]), row["target"] or "(none set)", {True: "yes", False: "NO", None: "-"}[row["met"]]))
    return "\n".join(lines + [""] + _md(target))


def _md(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]]


def earlier_parts(path: Path, now: list[str]) -> dict:
    """The parts of an earlier results file that this run does not redo (for --merge)."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise SystemExit(f"error: {path}: not a results JSON ({e}); drop --merge or fix the file")
    kept = {p: earlier[p] for p in PARTS if p not in now and isinstance(earlier.get(p), dict)}
    for part in kept.values():
        part.setdefault("measured", {"finished": earlier.get("meta", {}).get("finished"), "from": "an earlier run"})
    return kept


def write_results(path: Path, results: dict) -> None:
    results["targets"] = target_rows(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See bench/README.md for what every figure means.")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each short measurement; the median is reported (default 3)")
    p.add_argument("--out", type=Path, help="results JSON (default metrics/bench.json; with --tiny, $TMPDIR/bench.tiny.json)")
    p.add_argument("--data", type=Path, default=ROOT / "data", help="the pipeline's data/ (prepared, tokenized, embeddings)")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file the models are built from")
    p.add_argument("--workdir", type=Path, help="where temporary files and the repro copy go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, the repro copy)")
    p.add_argument("--merge", action="store_true",
                   help="keep the parts not run now from the existing --out file (each part is timed against its peer on its own)")
    p.add_argument("--tiny", action="store_true", help="generated tiny data and tiny settings: checks the harness in seconds")
    p.add_argument("--threshold", type=float, default=0.78, help="test accuracy for the time-to-accuracy race (default 0.78)")
    g = p.add_argument_group("fasttext part")
    g.add_argument("--ft-lr", type=float, default=1.0)
    g.add_argument("--ft-epoch", type=int, default=20, help="epochs of the final fastText model (default 20)")
    g.add_argument("--ft-ngrams", type=int, default=2, help="wordNgrams (default 2)")
    g.add_argument("--ft-dim", type=int, default=100)
    g.add_argument("--ft-thread", type=int, default=2)
    g.add_argument("--ft-bucket", type=int, default=2_000_000, help="hash buckets for n-grams (fastText's default)")
    g.add_argument("--ft-seed", type=int, default=42, help="line shuffle and fastText seed")
    g.add_argument("--ft-input", choices=("text", "ids"), default="text",
                   help="text: our standardization and length cut, fastText's own vocabulary (default); "
                        "ids: our token ids decoded through our vocabulary (identical input)")
    g.add_argument("--ft-tune", action="store_true", help="pick lr in {0.5,1} and epoch in {10,25} on validation first")
    g.add_argument("--cbow-epochs", type=int, help="cap cbow's epochs (default: params.yaml, with its early stopping)")
    g = p.add_argument_group("tfidf part")
    g.add_argument("--svc-c", type=float, default=1.0, help="LinearSVC C (default 1.0)")
    g = p.add_argument_group("epoch part")
    g.add_argument("--epoch-epochs", type=int, default=3, help="epochs of cnn_glove (and cbow) to time (default 3)")
    g = p.add_argument_group("repro part")
    g.add_argument("--project", type=Path, default=ROOT, help="project to copy for dvc repro (default: this one)")
    g.add_argument("--mirror", type=Path, help="NEWSGROUPS_MIRROR for the copy (default: $NEWSGROUPS_MIRROR, else ../shared/data)")
    g.add_argument("--copy", default=",".join(COPY_DEFAULT), help="comma-separated files/dirs copied into the temp project")
    g.add_argument("--repro-models", help="comma-separated train.models for the copy (default: as in params.yaml)")
    g.add_argument("--repro-target", help="comma-separated stages given to every dvc repro (default: none, all stages)")
    g.add_argument("--baseline", metavar="REV", help="also time a from-scratch repro of this commit of --project, first, "
                                                     "and report the full repro's ratio to it (e.g. --baseline dc31c61)")
    g.add_argument("--change", help="KEY[=VALUE] changed before the last repro, e.g. train.cbow.epochs=30 "
                                    "(default: train.<first model>.seed + 1; no VALUE: ints +1, floats /2, bools flipped)")
    args = p.parse_args(argv)
    given = {opt.split("=")[0] for opt in argv if opt.startswith("--")}
    args.given = {a.dest for a in p._actions if given & set(a.option_strings)}
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)} (known: {', '.join(PARTS)})")
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    args.copy = [c.strip() for c in args.copy.split(",") if c.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    if args.tiny:  # tiny settings, unless given on the command line
        for name, value in (("ft_dim", 10), ("ft_epoch", 5), ("ft_bucket", 10_000), ("ft_thread", 1), ("repeats", 2), ("epoch_epochs", 2)):
            if name not in args.given:
                setattr(args, name, value)
        args.repro_models = args.repro_models or "tfidf_logreg"
    default_out = Path(tempfile.gettempdir()) / "bench.tiny.json" if args.tiny else ROOT / "metrics" / "bench.json"
    out_path = (args.out or default_out).resolve()

    results = {"meta": {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "parts": args.parts,
        "tiny": args.tiny,
        "repeats": args.repeats,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": versions(),
    }}
    if args.merge:
        results.update(earlier_parts(out_path, args.parts))
    try:
        in_process = [p for p in args.parts if p != "repro"]
        if args.tiny:
            log(f"tiny: generating a tiny project in {work / 'tiny'}")
            repo, mirror = tiny_setup(work, ["tfidf_logreg", "cbow", "cnn_glove"], need_data=bool(in_process))
            args.data, args.params, args.project = repo / "data", repo / "params.yaml", repo
        else:
            mirror = args.mirror or (Path(os.environ["NEWSGROUPS_MIRROR"]) if os.environ.get("NEWSGROUPS_MIRROR") else None)
            if mirror is None and (ROOT.parent / "shared" / "data").is_dir():
                mirror = ROOT.parent / "shared" / "data"
        mirror = mirror.resolve() if mirror else None
        results["meta"].update(data=str(args.data), params=str(args.params))
        results["calibration"] = calibrate(3)
        log(f"calibration: {results['calibration']['seconds']} s")
        data = Data(args.data, args.params) if in_process else None
        for part in PARTS:
            if part not in args.parts:
                continue
            log(f"part {part}")
            start = perf()
            if part == "tfidf":
                results["tfidf"] = part_tfidf(data, args)
            elif part == "fasttext":
                results["fasttext"] = part_fasttext(data, args, work)
            elif part == "epoch":
                results["epoch"] = part_epoch(data, args, results)
            elif part == "repro":
                results["repro"] = part_repro(args, work, args.project.resolve(), mirror, results["calibration"]["seconds"])
            results[part]["part_seconds"] = r3(perf() - start)
            results[part]["measured"] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_at_start": results["meta"]["load_average"]}
            write_results(out_path, results)  # after every part: a crash keeps what was measured
        end = calibrate(3)
        results["calibration"].update(end_seconds=end["seconds"], end_runs=end["runs"])
        results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_results(out_path, results)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = table(results)
    md_path = out_path.with_suffix(".md")  # the README's benchmark table (scripts/readme_results.py)
    md_path.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwrote {out_path} and {md_path.name}" + (f" (work dir kept: {work})" if args.keep or args.workdir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
