"""Throughput and latency of models: served by `mlflow models serve`, in-process, and the CLI.

    python -m bench.serve_bench                      # champion, data/prepared/test.parquet
    python -m bench.serve_bench --model cbow --singles 100 --batches 10
    python -m bench.serve_bench --model data/ensemble --model data/models/cbow --cli

For each model and path (`served`: HTTP POSTs to /invocations of a scoring server this script
starts on a free loopback port and stops; `in-process`: pipeline.predictor's load_model + pipeline.predict's classify,
what the CLI does) and each mode (`single`: one document per request; `batch64`: 64 per request;
in-process also `batch512`: the batch64 documents in batches of 512, three times over, the throughput the served
batches are held to, over the same texts), sequential requests
over test-set texts: requests/second, documents/second, p50/p95 latency. A model directory (with
meta.json, e.g. data/ensemble) is served as this checkout's code logs it (saved to a temporary
MLflow model), so code changes are measured without retraining. For an ensemble directory, each
member's in-process single-document p50 too (its share of the ensemble's); with --cli, the wall
time of `python -m pipeline.predict -m MODEL "one text"`. Prints a table and writes
metrics/serve_bench.json. Request counts are bounded (--singles, --batches, and --max-seconds per
scenario); all traffic stays on 127.0.0.1 (or the --url given, loopback only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from bench.local_server import HOST, LocalServer

ROOT = Path(__file__).resolve().parent.parent

MAX_SINGLES = 5000
MAX_BATCHES = 500
BIG_BATCH = 512
BIG_PASSES = 3  # passes over the documents in batches of 512: a single pass is two or three calls
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}


class BenchError(RuntimeError):
    pass


def serving_uri(model: str) -> str:
    """What `mlflow models serve -m` takes for `model`: URIs and MLflow model directories as they
    are; a pipeline model name (or model directory) becomes the run that saved it (found in the
    project's store by the directory's md5, tracking.find_model_run)."""
    import mlflow

    from pipeline.classifier import stage_name
    from pipeline.common import PipelineError
    from pipeline.predictor import pipeline_model_dir
    from pipeline.tracking import find_model_run, tracking_uri

    if "://" in model or model.startswith(("models:/", "runs:/")):
        return model
    path = Path(model)
    if (path / "MLmodel").is_file():
        return str(path.resolve())
    directory = path if (path / "meta.json").is_file() else ROOT / pipeline_model_dir(model)
    try:
        name = json.loads((directory / "meta.json").read_text())["model"]
        mlflow.set_tracking_uri(tracking_uri())
        run_id = find_model_run(directory, stage_name(name))
    except (OSError, ValueError, KeyError, PipelineError) as exc:
        raise BenchError(f"model {model!r}: no logged model to serve for {directory} ({exc})") from None
    return f"runs:/{run_id}/model"


def load_texts(path: Path, count: int, seed: int) -> list[str]:
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise BenchError(f"{path}: missing (the prepare stage writes it)")
    texts = pd.read_parquet(path, columns=["text"])["text"].astype(str).tolist()
    if not texts:
        raise BenchError(f"{path}: no texts")
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i % len(texts)] for i in np.resize(order, count)]


def measure(name: str, mode: str, call, payloads: list[list[str]], warmup: int, max_seconds: float) -> dict:
    """Sequential calls, one per payload (after `warmup` untimed ones), until the payloads or the
    time budget run out."""
    import numpy as np

    for payload in payloads[:warmup]:
        call(payload)
    latencies, docs, errors, labels = [], 0, 0, []
    start = time.perf_counter()
    for payload in payloads:
        t0 = time.perf_counter()
        try:
            labels.extend(call(payload))
            docs += len(payload)
        except BenchError:
            errors += 1
        latencies.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "path": name, "mode": mode, "requests": len(latencies), "docs": docs, "errors": errors,
        "seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 2),
        "docs_per_second": round(docs / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "_labels": labels,
    }


def served_call(url: str, timeout: float):
    """POSTs to /invocations over one keep-alive connection with the standard library's client, so
    that what is timed is the server: `requests` adds about 1.2 ms a request here (bench/README.md)."""
    import http.client

    parts = urlparse(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    path = f"{parts.path.rstrip('/')}/invocations"
    headers = {"Content-Type": "application/json"}

    def post(body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):  # the server may have closed an idle kept-alive connection: once more
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if attempt == 2 or not isinstance(exc, ConnectionError):  # RemoteDisconnected is one
                    raise BenchError(f"{url}/invocations: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def call(texts: list[str]) -> list[str]:
        status, data = post(json.dumps({"inputs": texts}).encode())
        if status != 200:
            raise BenchError(f"HTTP {status}: {data[:200].decode(errors='replace')}")
        predictions = json.loads(data)["predictions"]
        if len(predictions) != len(texts):
            raise BenchError(f"{len(predictions)} predictions for {len(texts)} texts")
        return [p["label"] for p in predictions]

    return call


def table(rows: list[dict]) -> str:
    head = f"{'path':<11} {'mode':<8} {'requests':>8} {'docs':>6} {'requests/s':>10} {'docs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['path']:<11} {r['mode']:<8} {r['requests']:>8} {r['docs']:>6} {r['requests_per_second']:>10.2f} "
            f"{r['docs_per_second']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['errors']:>6}"
        )
    return "\n".join(lines)


def saved_model(directory: Path, tmp: Path) -> str:
    """A pipeline model directory as this checkout logs it, saved as an MLflow model under `tmp`."""
    import mlflow

    from pipeline.classifier import META
    from pipeline.tracking import pyfunc_model

    classes = json.loads((directory / META).read_text())["classes"]
    target = tmp / "mlflow-model"
    mlflow.pyfunc.save_model(str(target), **pyfunc_model(directory.resolve(), classes, None))
    return str(target)


def member_shares(directory: Path, singles: list[list[str]], warmup: int, max_seconds: float) -> dict:
    """Each member's in-process single-document p50 (ms), for an ensemble directory."""
    from pipeline.classifier import ENSEMBLE, Classifier

    ensemble = Classifier(directory)
    if ensemble.kind != ENSEMBLE:
        return {}
    shares = {}
    for member in ensemble.members:
        row = measure("in-process", "single", lambda batch, m=member: m.predict_proba(batch).argmax(axis=1).tolist(),
                      singles, warmup, max_seconds)
        shares[member.name] = row["p50_ms"]
    return shares


def cli_seconds(model: str, text: str, env: dict, repeats: int = 3) -> dict:
    """Median wall time of `python -m pipeline.predict -m MODEL TEXT`, and what it wrote on stderr."""
    import statistics
    import subprocess

    walls, stderr = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline.predict", "-m", model, text], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise BenchError(f"pipeline.predict -m {model}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        stderr = stderr or proc.stderr
    return {"seconds": round(statistics.median(walls), 2), "stderr": stderr}


def bench_model(model: str, args, uri: str, singles: list[list[str]], batches: list[list[str]], big: list[list[str]]) -> dict:
    from pipeline.predict import classify
    from pipeline.predictor import load_model

    print(f"in-process: loading {model}", file=sys.stderr)
    start = time.perf_counter()
    predictor = load_model(model, uri)
    load_seconds = time.perf_counter() - start
    local = lambda batch: [r["label"] for r in classify(predictor, batch, k=3)]  # noqa: E731
    mode = f"batch{args.batch_size}"
    rows = [
        measure("in-process", "single", local, singles, args.warmup, args.max_seconds),
        measure("in-process", mode, local, batches, args.warmup, args.max_seconds),
        measure("in-process", f"batch{BIG_BATCH}", local, big, 1, args.max_seconds),
    ]

    def bench_served(url: str) -> None:
        call = served_call(url, args.timeout)
        rows.append(measure("served", "single", call, singles, args.warmup, args.max_seconds))
        rows.append(measure("served", mode, call, batches, args.warmup, args.max_seconds))

    directory = Path(model)
    is_directory = (directory / "meta.json").is_file()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        if args.url:
            bench_served(args.url.rstrip("/"))
        else:
            target = saved_model(directory, Path(tmp)) if is_directory else serving_uri(model)
            server = LocalServer(
                lambda port: [sys.executable, "-m", "mlflow", "models", "serve", "-m", target,
                              "--env-manager", "local", "-h", HOST, "-p", port],
                ready_path="/ping", log=Path(tmp) / "server.log", cwd=ROOT,
                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=args.timeout,
            )
            print(f"served: starting mlflow models serve -m {target}", file=sys.stderr)
            with server:
                bench_served(server.url)
                served_stderr = server.log_tail()
    # the two paths must agree on what they predict (the same model, the same texts)
    by = {(r["path"], r["mode"]): r.pop("_labels") for r in rows}
    pairs = [(a, b) for m in ("single", mode) for a, b in zip(by[("in-process", m)], by[("served", m)])]
    result = {
        "label_agreement": round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None,
        "load_seconds": round(load_seconds, 2),
        "results": sorted(rows, key=lambda r: (r["path"] != "served", r["mode"] != "single")),
    }
    if not args.url:
        result["server_log_tail"] = served_stderr[-2000:]
    if is_directory:
        shares = member_shares(directory, singles, args.warmup, args.max_seconds)
        if shares:
            result["member_single_p50_ms"] = shares
    if args.cli is not None and (not args.cli or model in args.cli):
        result["cli"] = cli_seconds(model, singles[0][0][:2000], {**os.environ, "MLFLOW_TRACKING_URI": uri})
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None,
                   help="models:/..., runs:/..., a pipeline model name, a pipeline model directory or an MLflow "
                   "model directory; repeatable (default: models:/newsgroups-classifier@champion)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI or the project's mlflow.db)")
    p.add_argument("--data", default=str(ROOT / "data/prepared/test.parquet"), help="parquet file with a `text` column")
    p.add_argument("--singles", type=int, default=200, help=f"single-document requests per path (at most {MAX_SINGLES})")
    p.add_argument("--batches", type=int, default=20, help=f"batch requests per path (at most {MAX_BATCHES})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each scenario")
    p.add_argument("--max-seconds", type=float, default=300, help="time budget per scenario")
    p.add_argument("--url", default=None, help="an already running scoring server on the loopback (none is started; one model)")
    p.add_argument("--cli", nargs="*", default=None, metavar="MODEL",
                   help="also time `python -m pipeline.predict -m MODEL TEXT` (median of 3) for these models (none given: all)")
    p.add_argument("--timeout", type=float, default=900, help="seconds for the server to start and per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "metrics/serve_bench.json"))
    args = p.parse_args(argv)
    if not (1 <= args.singles <= MAX_SINGLES and 1 <= args.batches <= MAX_BATCHES and 1 <= args.batch_size <= 1024):
        p.error(f"--singles in [1, {MAX_SINGLES}], --batches in [1, {MAX_BATCHES}], --batch-size in [1, 1024]")
    if args.url and urlparse(args.url).hostname not in (HOST, "localhost", "::1"):
        p.error("--url: loopback addresses only (127.0.0.1, localhost)")
    if args.url and args.model and len(args.model) > 1:
        p.error("--url: one --model, the one that server serves")
    os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})

    from pipeline.common import PipelineError, write_json
    from pipeline.predictor import default_model_uri
    from pipeline.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    models = args.model or [default_model_uri()]
    load = os.getloadavg()
    results = {}

    def write() -> None:  # after each model: an interrupted run keeps the models done
        write_json(args.out, {
            "models": results,
            "data": str(args.data),
            "batch_size": args.batch_size,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_average_before": [round(x, 2) for x in load],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()]},
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    try:
        texts = load_texts(Path(args.data), max(args.singles, args.batches * args.batch_size), args.seed)
        singles = [[t] for t in texts[: args.singles]]
        documents = texts[: args.batches * args.batch_size]
        batches = [documents[i : i + args.batch_size] for i in range(0, len(documents), args.batch_size)]
        # the same documents in batches of 512 (the last one shorter unless --batches x --batch-size
        # is a multiple of 512): throughputs compared over the same texts, whose lengths vary a lot
        big = [documents[i : i + BIG_BATCH] for i in range(0, len(documents), BIG_BATCH)] * BIG_PASSES
        for model in models:
            results[model] = bench_model(model, args, uri, singles, batches, big)
            write()
            print(f"\n{model}\n{table(results[model]['results'])}")
            print(f"label agreement served vs in-process: {results[model]['label_agreement']}"
                  + (f"; members' single p50 ms: {results[model]['member_single_p50_ms']}" if "member_single_p50_ms" in results[model] else "")
                  + (f"; CLI {results[model]['cli']['seconds']} s" if "cli" in results[model] else ""))
    except (PipelineError, BenchError, RuntimeError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
