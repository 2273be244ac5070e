"""Shared helpers of the fault, bad-input and tracking-server tests (test_faults.py,
test_bad_input.py, test_tracking_server.py): tiny projects and stage directories, a fault injected
into a training stage through a `python` shim on PATH, metric snapshots without timing fields,
MLflow look-ups, free ports and private mount namespaces (a real full disk, a read-only directory)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tiny import ROOT, make_archive, make_glove, make_project, run, tiny_params, write_params

DATA_STAGES = ("fetch_corpus", "prepare", "tokenize", "fetch_glove", "embeddings")


# ---------------------------------------------------------------- projects and stage directories


def fit_params(params: dict, models: list[str]) -> dict:
    """Tiny params for `models` only: sections that name other models (the ensemble's members)
    are narrowed to the ones trained here."""
    ensemble = params.get("ensemble")
    if isinstance(ensemble, dict) and isinstance(ensemble.get("members"), list):
        ensemble["members"] = [m for m in ensemble["members"] if m in models] or list(models)
    return params


def tiny_project(base: Path, models: list[str]) -> tuple[Path, dict]:
    """tiny.make_project, its params fitted to `models` and committed: (repo, env)."""
    repo, env = make_project(base, models)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    write_params(repo / "params.yaml", fit_params(params, models))
    commit(repo, env, "tiny params")
    return repo, env


def commit(repo: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], repo, env)
    if run(["git", "status", "--porcelain"], repo, env).stdout.strip():
        run(["git", "commit", "-qm", message], repo, env)


def stage_env(mirror: Path | None = None, **extra: str) -> dict:
    """The environment of a stage run by hand (`python -m pipeline.<stage>` in a work directory):
    this checkout's package on PYTHONPATH, no MLflow/DVC settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "NEWSGROUPS_"))}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if mirror is not None:
        env["NEWSGROUPS_MIRROR"] = str(mirror)
    env.update(extra)
    return env


def stage_dir(base: Path, models: list[str] | None = None, archive_kwargs: dict | None = None,
              counts: dict | None = None) -> tuple[Path, dict]:
    """A work directory for running data stages by hand: tiny params.yaml, a mirror with a tiny
    archive (or the caller's: pass `counts`), a tiny GloVe file. Returns (work, env)."""
    work, mirror = base / "work", base / "mirror"
    work.mkdir(parents=True)
    if counts is None:
        counts = make_archive(mirror / "20news-bydate.tar.gz", **(archive_kwargs or {}))
    glove = make_glove(base / "glove.tiny.50d.txt")
    models = models or ["tfidf_logreg"]
    write_params(work / "params.yaml", fit_params(tiny_params(str(glove), counts, models), models))
    return work, stage_env(mirror)


def run_stage(stage: str, work: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a stage printed (run_main's one-line failures)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one `error:` line that holds every fragment; returns it."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def temporaries(directory: Path) -> list[str]:
    """Leftover temporary siblings made by common.atomic_path (`.<name>.tmp<pid>.*`), recursively."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*.tmp*") if re.search(r"\.tmp\d+\.", p.name))


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or the file itself) with its bytes, to compare before and after."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- fault injection


SHIM = """#!/bin/sh
# Test shim (tests/faultkit.py): with PIPELINE_FAULT set, a training stage runs with a fault.
if [ -n "$PIPELINE_FAULT" ] && [ "$1" = "-m" ] && [ "$2" = "pipeline.train" ]; then
  exec "{python}" "{inject}" "$@"
fi
exec "{python}" "$@"
"""

INJECT = '''"""`-m pipeline.train <model>` with a fault in Keras training, as PIPELINE_FAULT says:
    raise:<epoch>            an exception at the first batch of that epoch (0-based)
    hang:<epoch>:<marker>    at that point write this pid to <marker>, then wait to be killed"""
import os
import runpy
import sys
import tempfile
import time

kind, epoch, *rest = os.environ["PIPELINE_FAULT"].split(":", 2)
epoch = int(epoch)

import keras


class Fault(keras.callbacks.Callback):
    current = -1

    def on_epoch_begin(self, index, logs=None):
        self.current = index

    def on_train_batch_end(self, batch, logs=None):
        if self.current != epoch or batch != 0:
            return
        if kind == "raise":
            raise RuntimeError(f"injected fault in epoch {epoch + 1}")
        marker = rest[0]
        with open(marker + ".part", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(marker + ".part", marker)
        time.sleep(900)


fit = keras.Model.fit


def faulty_fit(self, *args, callbacks=None, **kwargs):
    return fit(self, *args, callbacks=[*(callbacks or []), Fault()], **kwargs)


keras.Model.fit = faulty_fit
sys.argv = [sys.argv[0], *sys.argv[3:]]  # inject.py -m pipeline.train <model> -> [_, <model>]
sys.path[0] = os.getcwd()  # as `python -m` has it
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
'''


def fault_env(env: dict, base: Path, fault: str) -> dict:
    """`env` with a `python` shim first on PATH and PIPELINE_FAULT set: the stage command
    `python -m pipeline.train <model>` (run by DVC through the shell) then meets the fault."""
    shim_dir = base / "fault-bin"
    if not (shim_dir / "python").exists():
        shim_dir.mkdir(parents=True, exist_ok=True)
        (shim_dir / "inject.py").write_text(INJECT)
        (shim_dir / "python").write_text(SHIM.format(python=sys.executable, inject=shim_dir / "inject.py"))
        (shim_dir / "python").chmod(0o755)
    out = dict(env)
    out["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    out["PIPELINE_FAULT"] = fault
    return out


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- DVC and metrics


def dvc_status(repo: Path, env: dict) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")


def workspace(repo: Path) -> dict[str, dict]:
    """What a failed stage, then `python -m pipeline.restore`, must give back byte for byte:
    data/, metrics/ and dvc.lock."""
    return {p: tree_digest(repo / p) for p in ("data", "metrics", "dvc.lock")}


def restore(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """The one command the docs give after a failed stage."""
    return run([sys.executable, "-m", "pipeline.restore", *args], repo, env)


def assert_restored(repo: Path, env: dict, before: dict[str, dict]) -> None:
    """`python -m pipeline.restore` brings the workspace back: `dvc status` clean, every output
    (the `cache: false` metrics too) as it was, no temporaries."""
    proc = restore(repo, env)
    assert dvc_status(repo, env) == {}, proc.stdout + proc.stderr
    after = workspace(repo)
    for path in before:
        assert sorted(after[path]) == sorted(before[path]), path
        assert after[path] == before[path], path
    assert temporaries(repo / "data") == [] and temporaries(repo / "metrics") == []


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def volatile(key: str) -> bool:
    """Fields that differ between two identical runs: timings, run ids, registry versions."""
    return key == "version" or key.endswith(("_seconds", "per_second", "run_id"))


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not volatile(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _mask_markdown_columns(text: str) -> str:
    """Blank the table columns holding times or speeds (`train time (s)`, `docs/s`)."""
    out, masked = [], set()
    for line in text.splitlines():
        cells = line.split("|")
        if line.startswith("|") and not masked and any("time" in c or "/s" in c for c in cells):
            masked = {i for i, c in enumerate(cells) if "time" in c or "/s" in c}
        elif line.startswith("|") and masked and not set(line) <= set("|-: "):
            cells = ["*" if i in masked else c for i, c in enumerate(cells)]
        out.append("|".join(cells))
    return "\n".join(out)


def metrics_snapshot(repo: Path) -> dict[str, object]:
    """Every file under metrics/, parsed, with the volatile fields removed."""
    snap: dict[str, object] = {}
    for path in sorted((repo / "metrics").rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(repo).as_posix()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            snap[rel] = _strip(json.loads(text))
        elif path.suffix == ".md":
            snap[rel] = _mask_markdown_columns(text)
        else:
            snap[rel] = text
    return snap


# ---------------------------------------------------------------- MLflow


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sqlite_uri(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def stage_runs(client, experiment: str, stage: str) -> list:
    """Runs of one DVC stage, oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dvc_stage = '{stage}'", max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time)


# ---------------------------------------------------------------- system


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connections are refused)."""
    return free_port()


def mount_namespaces() -> bool:
    """Whether this process may make a private mount namespace (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as point:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {point}"],
                               capture_output=True, timeout=30)
    return probe.returncode == 0


def in_mount_namespace(script: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace: its mounts (a small tmpfs, a read-only
    bind) are seen by it alone and vanish with it; nothing on the machine is changed."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-eu", "-c", script],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
