"""A server process on a free loopback port, for the tests and the benchmark scripts.

`LocalServer` starts a command in its own process group, waits until an HTTP path answers 200 and,
leaving its `with` block however it leaves (an assertion failing included), stops the whole group:
SIGTERM, then SIGKILL. Loopback only: the command must bind 127.0.0.1, and every request goes there.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick); `LocalServer` retries if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def http_session():
    """requests, ignoring any proxy settings: every URL here is on the loopback."""
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


class ServerError(RuntimeError):
    pass


class LocalServer:
    """`command(port)` -> argv. Use as a context manager; `url` is http://127.0.0.1:<port>."""

    def __init__(self, command: Callable[[int], Sequence[str]], *, ready_path: str, log: str | os.PathLike,
                 cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 300,
                 attempts: int = 3):
        self.command, self.ready_path, self.log = command, ready_path, Path(log)
        self.cwd, self.env, self.timeout, self.attempts = cwd, env, timeout, attempts
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "LocalServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.attempts + 1):
            self.port = free_port()
            argv = [str(a) for a in self.command(self.port)]
            with open(self.log, "ab") as log:
                log.write(f"$ {' '.join(argv)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                self._wait_ready()
                return self
            except ServerError:
                self.stop()
                taken = "address already in use" in self.log_tail().lower()
                if not taken or attempt == self.attempts:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        session = http_session()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited ({self.proc.returncode}) before {self.ready_path} answered:\n{self.log_tail()}")
            try:
                if session.get(self.url + self.ready_path, timeout=5).status_code == 200:
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise ServerError(f"no answer from {self.url}{self.ready_path} within {self.timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the server's process group (it and the workers it started), SIGKILL after
        `grace` seconds; the process is reaped either way, and the call returns once the port is
        released (a killed worker closes its socket a moment after the leader is reaped)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # the group we created: start_new_session made pgid == pid
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers that outlived the leader (same group): make sure they are gone too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while self.port and port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
