"""Put the workspace back as dvc.lock records it, after a failed or killed stage.

    python -m pipeline.restore                 # then `dvc status` lists only what you changed
    python -m pipeline.restore --adopt-store   # a copied project: its mlflow.db points here

DVC deletes a stage's outputs before running it, so a stage that fails leaves them missing.
`dvc checkout` brings back the cached ones; the `cache: false` ones (metrics/, plots) it does
not, but DVC's run cache stored them in the cache too, under the md5 dvc.lock records, and git
may hold them: they are copied back from there. Files present but different from dvc.lock are
left as they are (they may be yours). Then what killed processes left is cleared: their
temporaries, and their MLflow runs still RUNNING (marked KILLED).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from .common import PipelineError, remove_dead_temporaries, run_main
from .tracking import OUTPUT_ROOTS, foreign_root, project_root

LOCK = Path("dvc.lock")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locked_files(lock: Path = LOCK) -> dict[str, str]:
    """path -> md5 of every single-file output dvc.lock records (directories are DVC's to restore)."""
    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PipelineError(f"{lock}: missing (nothing has been reproduced yet)") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{lock}: invalid YAML ({str(exc).splitlines()[0]})") from None
    files = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            md5 = str(out.get("md5") or "")
            if md5 and not md5.endswith(".dir"):
                files[out["path"]] = md5
    return files


def dvc(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["dvc", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError("dvc: not found on PATH") from None


def cache_object(cache: Path, md5: str) -> Path | None:
    for path in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):  # DVC 3, DVC 2
        if path.is_file():
            return path
    return None


def from_git(path: str, md5: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True)
    if proc.returncode == 0 and hashlib.md5(proc.stdout).hexdigest() == md5:
        return proc.stdout
    return None


def restore_uncached(files: dict[str, str], cache: Path) -> tuple[list[str], list[str], list[str]]:
    """Copy back every missing file output: (restored, not found anywhere, present but different)."""
    restored, lost, differing = [], [], []
    for name, md5 in files.items():
        path = Path(name)
        if path.is_file():
            if file_md5(path) != md5:
                differing.append(name)
            continue
        source = cache_object(cache, md5)
        data = None if source else from_git(name, md5)
        if source is None and data is None:
            lost.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path) if source else path.write_bytes(data)
        restored.append(name)
    return restored, lost, differing


def close_killed_runs() -> int:
    """Mark KILLED the pipeline's RUNNING runs whose process died, in every experiment."""
    import mlflow

    from .tracking import checked_tracking_uri, close_stale_runs

    mlflow.set_tracking_uri(checked_tracking_uri())
    return sum(close_stale_runs(e.experiment_id) for e in mlflow.MlflowClient().search_experiments())


# Columns of MLflow's SQL store that hold artifact locations.
LOCATION_COLUMNS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "logged_models": ["artifact_location"],
    "model_versions": ["source", "storage_location"],
}


def adopt_store(root: Path) -> int:
    """Point a copied mlflow.db at this project's own mlartifacts/ (the copy holds the same
    files): every artifact location under the original project is rewritten under `root`."""
    database = root / "mlflow.db"
    if not database.is_file():
        raise PipelineError(f"{database}: missing (no MLflow store to adopt)")
    with sqlite3.connect(database) as db:
        old = foreign_root([r[0] or "" for r in db.execute("SELECT artifact_location FROM experiments")], root)
        if old is None:
            return 0
        changed = 0
        for table, columns in LOCATION_COLUMNS.items():
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                continue
            for column in columns:
                for before, after in ((f"{old.as_uri()}/", f"{root.as_uri()}/"), (f"{old}/", f"{root}/")):
                    changed += db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (after, len(before) + 1, len(before), before),
                    ).rowcount
    print(f"restore: {database} now keeps artifacts in {root} (was {old}; {changed} locations)")
    return changed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.restore", description=__doc__.splitlines()[0])
    parser.add_argument("--adopt-store", action="store_true",
                        help="in a copied project, point mlflow.db's artifact locations at this copy's mlartifacts/")
    args = parser.parse_args(argv)
    if args.adopt_store:
        adopt_store(project_root().resolve())
        return
    files = locked_files()
    checkout = dvc("checkout")
    if checkout.returncode != 0:
        print(checkout.stdout + checkout.stderr, file=sys.stderr, end="")
    cache = dvc("cache", "dir")
    if cache.returncode != 0:
        raise PipelineError(f"dvc cache dir: {(cache.stderr.strip().splitlines() or ['failed'])[-1]}")
    restored, lost, differing = restore_uncached(files, Path(cache.stdout.strip()))
    removed = remove_dead_temporaries(*OUTPUT_ROOTS)
    try:
        closed = close_killed_runs()
    except PipelineError as exc:  # the store is unreachable: the rest is done all the same
        print(f"restore: warning: stale MLflow runs not checked ({exc})", file=sys.stderr)
        closed = 0
    summary = [f"dvc checkout {'done' if checkout.returncode == 0 else 'failed (above)'}",
               f"{len(restored)} uncached outputs restored", f"{len(removed)} dead temporaries removed",
               f"{closed} killed MLflow runs closed"]
    print("restore: " + "; ".join(summary))
    for name in differing:
        print(f"restore: {name} differs from dvc.lock: left as it is", file=sys.stderr)
    if lost or checkout.returncode != 0:
        what = ", ".join(lost) or "cached outputs"
        raise PipelineError(
            f"cannot restore {what} (not in the DVC cache nor git HEAD): rerun its stage with dvc repro"
        )


if __name__ == "__main__":
    run_main(main)
