"""Run a command and measure its wall time and the peak RSS of its process tree.

The command is forked from a small Python wrapper, not from the caller: Linux counts the RSS of
the process that forks (vfork included) into the child's ru_maxrss, so a caller holding
TensorFlow (a pytest worker, the harness after its model parts) would lend the child its own
1 GB or more. The wrapper waits for the command with wait4 and writes the command's exit code and
ru_maxrss (the largest process of its tree, as /usr/bin/time -v reports) to a file.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    out.write(f"{code} {usage.ru_maxrss}")
sys.exit(code if code >= 0 else 128 - code)
"""


def run(cmd: list[str], cwd: Path, env: dict, stdout, stderr, timeout: float | None = None) -> dict:
    """Run `cmd` with the given stdout/stderr; with a `timeout`, it runs in a session of its own and
    a run past the timeout is killed with its whole process group. Returns returncode (None when killed), seconds and max_rss_kib (None when killed)."""
    fd, result = tempfile.mkstemp(prefix="peak-rss-")
    os.close(fd)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, result, *cmd], cwd=cwd, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=timeout is not None)
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL)) if timeout else None
        if timer:
            timer.start()
        try:
            proc.wait()
        finally:
            if timer:
                timer.cancel()
        seconds = time.perf_counter() - start
        fields = Path(result).read_text().split()
    finally:
        os.unlink(result)
    code, rss = (int(fields[0]), int(fields[1])) if len(fields) == 2 else (None, None)
    return {"returncode": code, "seconds": seconds, "max_rss_kib": rss}
