#!/usr/bin/env python3
"""A shared MLflow tracking server on this machine: PostgreSQL (runs, metrics, the model registry)
plus `mlflow server` (artifacts kept under one directory and served over HTTP), both on loopback.

    python scripts/tracking_server.py start [--dir .tracking] [--port 5000] [--pg-port N]
    python scripts/tracking_server.py status [--dir .tracking]
    python scripts/tracking_server.py stop [--dir .tracking]

`start` prints the line to use it: export MLFLOW_TRACKING_URI=http://127.0.0.1:<port>. Nothing is
installed as a system service: PostgreSQL runs from Debian's binaries (package `postgresql`; found
through PG_BIN, pg_config or /usr/lib/postgresql/*/bin) on a cluster of its own (initdb + pg_ctl)
in --pg-data (default <dir>/pg), owned by the `postgres` user when this runs as root. The
database password is random, kept in <dir>/pgpass (mode 0600) and passed to MLflow through
PGPASSFILE, never on a command line. `start` on an existing --dir reuses its cluster and data.
tests/test_tracking_server.py drives start() and stop() the same way.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DB_USER = "mlflow"
DB_NAME = "mlflow"
STATE = "state.json"


class ServerError(Exception):
    pass


# ---------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PG_BIN, `pg_config --bindir`, the newest
    /usr/lib/postgresql/<version>/bin, or PATH."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out:
            candidates.append(Path(out))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _as_owner() -> dict:
    """subprocess arguments to run PostgreSQL's programs: as `postgres` when we are root (it
    refuses to run as root), else as ourselves."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("running as root needs a `postgres` user (Debian's postgresql package makes it)") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_to_owner(path: Path) -> None:
    owner = _as_owner()
    if owner:
        os.chown(path, owner["user"], owner["group"])


def _run(cmd: list, what: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_cluster(bindir: Path, data: Path, password: str) -> None:
    """initdb a cluster whose only role is DB_USER, password-authenticated (scram) on TCP."""
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _chown_to_owner(data)
    pwfile = data.parent / f".pwfile-{os.getpid()}"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _chown_to_owner(pwfile)
    try:
        _run([bindir / "initdb", "-D", data, "-U", DB_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
              "-E", "UTF8", "--locale=C", "--no-instructions"], "initdb", cwd="/", **_as_owner())
    finally:
        pwfile.unlink(missing_ok=True)


def start_postgres(bindir: Path, data: Path, port: int, timeout: float = 60) -> None:
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
    _run([bindir / "pg_ctl", "-D", data, "-l", data / "server.log", "-w", "-t", int(timeout), "-o", options, "start"],
         "pg_ctl start", timeout=timeout + 30, cwd="/", **_as_owner())


def stop_postgres(bindir: Path, data: Path) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                       capture_output=True, text=True, timeout=90, cwd="/", **_as_owner())


def create_database(bindir: Path, port: int, pgpass: Path) -> None:
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    listed = _run([bindir / "psql", "-h", "127.0.0.1", "-p", port, "-U", DB_USER, "-d", "postgres", "-Atc",
                   f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], "psql", env=env)
    if listed.stdout.strip() != "1":
        _run([bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", DB_USER, DB_NAME], "createdb", env=env)


# ---------------------------------------------------------------- MLflow server


def healthy(uri: str, timeout: float = 2.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(uri + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow(state_dir: Path, backend: str, artifacts: Path, port: int, pgpass: Path, timeout: float) -> int:
    log = open(state_dir / "mlflow.log", "ab")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PGPASSFILE"] = str(pgpass)
    # The GenAI job runner (seven huey worker processes) is not needed for tracking and models.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # its own session: stop() ends the server and its workers by that process group id
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=state_dir, start_new_session=True)
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state_dir / "mlflow.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerError(f"mlflow server exited ({proc.returncode}): {' | '.join(tail)}")
        if healthy(uri):
            return proc.pid
        time.sleep(0.5)
    _end_group(proc.pid)
    raise ServerError(f"mlflow server not healthy at {uri} within {timeout:g} s (see {state_dir / 'mlflow.log'})")


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which no signal can end, aside)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):  # state, ppid, pgrp
            return True
    return False


def _end_group(pgid: int, grace: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:  # reap our own child, if it is ours
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pgid, 0)
    except ChildProcessError:
        pass


# ---------------------------------------------------------------- start / stop


def start(state_dir: str | Path = ".tracking", port: int | None = None, pg_port: int | None = None,
          pg_data: str | Path | None = None, artifacts: str | Path | None = None, timeout: float = 180) -> dict:
    """Start PostgreSQL and the MLflow server; returns the state (uri, ports, paths, pids), also
    written to <state_dir>/state.json for stop()."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE).exists():
        old = json.loads((state_dir / STATE).read_text())
        if healthy(old["uri"]):
            raise ServerError(f"already running at {old['uri']} (stop it first)")
        stop(state_dir)
    bindir = pg_bindir()
    if bindir is None:
        raise ServerError("PostgreSQL binaries not found (apt-get install postgresql, or set PG_BIN)")
    data = Path(pg_data).resolve() if pg_data else state_dir / "pg"
    artifacts = Path(artifacts).resolve() if artifacts else state_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    pgpass = state_dir / "pgpass"
    pg_port = pg_port or free_port()
    if not (data / "PG_VERSION").exists():
        password = secrets.token_urlsafe(18)
        init_cluster(bindir, data, password)
    else:
        password = pgpass.read_text().rsplit(":", 1)[1].strip()
    pgpass.write_text(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
    pgpass.chmod(0o600)
    state = {"uri": None, "port": None, "pg_port": pg_port, "pg_data": str(data), "pg_bin": str(bindir),
             "artifacts": str(artifacts), "mlflow_pid": None}
    (state_dir / STATE).write_text(json.dumps(state, indent=2))
    start_postgres(bindir, data, pg_port)
    try:
        create_database(bindir, pg_port, pgpass)
        port = port or free_port()
        backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
        state.update(uri=f"http://127.0.0.1:{port}", port=port, backend_store_uri=backend)
        state["mlflow_pid"] = start_mlflow(state_dir, backend, artifacts, port, pgpass, timeout)
    except BaseException:
        stop(state_dir)
        raise
    (state_dir / STATE).write_text(json.dumps(state, indent=2))
    return state


def stop(state_dir: str | Path = ".tracking") -> None:
    """Stop what start() started in `state_dir` (the MLflow server's process group, then
    PostgreSQL); the data stays for the next start."""
    state_dir = Path(state_dir).resolve()
    path = state_dir / STATE
    if not path.exists():
        return
    state = json.loads(path.read_text())
    if state.get("mlflow_pid"):
        _end_group(int(state["mlflow_pid"]))
    stop_postgres(Path(state["pg_bin"]), Path(state["pg_data"]))
    path.unlink()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=".tracking", help="state directory (default .tracking)")
    parser.add_argument("--port", type=int, help="MLflow server port (default: a free one)")
    parser.add_argument("--pg-port", type=int, help="PostgreSQL port (default: a free one)")
    parser.add_argument("--pg-data", help="PostgreSQL data directory (default <dir>/pg)")
    parser.add_argument("--artifacts", help="artifact store directory (default <dir>/artifacts)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            state = start(args.dir, args.port, args.pg_port, args.pg_data, args.artifacts)
            print(f"MLflow at {state['uri']} (PostgreSQL on 127.0.0.1:{state['pg_port']}, artifacts in {state['artifacts']})")
            print(f"export MLFLOW_TRACKING_URI={state['uri']}")
        elif args.command == "stop":
            stop(args.dir)
            print("stopped")
        else:
            path = Path(args.dir) / STATE
            if not path.exists():
                print("not running")
                return 1
            uri = json.loads(path.read_text())["uri"]
            up = bool(uri) and healthy(uri)
            print(f"{uri}: {'healthy' if up else 'not answering'}")
            return 0 if up else 1
    except (ServerError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
