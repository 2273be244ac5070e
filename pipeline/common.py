"""Helpers every stage shares: one-line errors, atomic outputs, JSON, digests, the mirror directory."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

# Environment variable naming a local directory that holds copies of the downloads
# (20news-bydate.tar.gz, glove.6B.zip or glove.6B.<d>d.txt); it is searched before the network.
MIRROR_ENV = "NEWSGROUPS_MIRROR"

ROOT = Path(__file__).resolve().parent.parent


class PipelineError(Exception):
    """An expected failure (bad input, bad params): reported as one line, no traceback."""


def os_error_text(exc: OSError) -> str:
    """One line for an OSError: its reason and, when it has one, the file it is about."""
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{reason}: {exc.filename}" if exc.filename else reason


def run_main(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main(); expected failures print `error: ...` on one line and exit 1. So do
    system errors (disk full, read-only or missing directory, permissions): they name the path."""
    try:
        main(sys.argv[1:])
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        sys.exit(1)


def mirror_dir() -> Path | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise PipelineError(f"{MIRROR_ENV}={value}: not a directory")
    return path


def mirror_file(*names: str) -> Path | None:
    """First of `names` present in the mirror directory, if one is configured."""
    mirror = mirror_dir()
    if mirror is None:
        return None
    for name in names:
        if (mirror / name).is_file():
            return mirror / name
    return None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, from /proc), None if it is gone
    or a zombie; "" where /proc is missing. With the pid it names one process, reuse or not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "" if not Path("/proc/self/stat").exists() else None
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime 22
    return None if fields[0] in ("Z", "X") else fields[19]


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` runs (and, given its start time, is still the same process)."""
    now = process_start(pid)
    if now == "":  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError):
            return True
        return True
    return now is not None and (not started or now == started)


# atomic_path's temporaries: .<target name>.tmp<writer's pid>.<random>
TEMPORARY = re.compile(r"^\.(.+)\.tmp(\d+)\.")


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _dead_writer(name: str, target: str | None = None) -> bool:
    match = TEMPORARY.match(name)
    if not match or (target is not None and match.group(1) != target):
        return False
    pid = int(match.group(2))
    return pid != os.getpid() and not process_alive(pid)


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporary siblings of `target` left by a writer that died (SIGKILL, power loss): a
    partial output must never linger next to the real one. Each temporary carries its writer's pid."""
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        if _dead_writer(path.name, target.name):
            _remove(path)


def remove_dead_temporaries(*roots: str | os.PathLike) -> list[Path]:
    """Every temporary under `roots` whose writer died, wherever it is: a killed stage that DVC
    later restores from its run cache never runs again to clear its own (temporaries of a live
    writer, such as a parallel experiment's, stay). Returns what was removed."""
    removed = []
    for root in map(Path, roots):
        for directory, subdirs, files in os.walk(root):
            for name in [*subdirs, *files]:
                if _dead_writer(name):
                    _remove(Path(directory) / name)
                    removed.append(Path(directory) / name)
            subdirs[:] = [d for d in subdirs if not TEMPORARY.match(d)]
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target`, on failure it
    is removed, so a reader never sees a half-written output. A system error on the way (disk
    full, read-only directory) becomes a one-line PipelineError naming `target`."""
    target = Path(target)
    prefix = f".{target.name}.tmp{os.getpid()}."
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if directory else 0o666) & ~umask)  # mkstemp/mkdtemp create private files
    except OSError as exc:
        raise PipelineError(f"{target}: cannot write ({os_error_text(exc)})") from None
    try:
        yield tmp
        if directory and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise PipelineError(f"{target}: not written ({os_error_text(exc)})") from None
        raise


def _hash_file(digest, path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """A file's hex digest (`algorithm`: a hashlib name such as md5 or sha256)."""
    digest = hashlib.new(algorithm)
    _hash_file(digest, path)
    return digest.hexdigest()


def path_md5(path: str | os.PathLike) -> str:
    """md5 over a file, or over a directory's files (relative names and contents), sorted."""
    path = Path(path)
    digest = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        _hash_file(digest, file)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing (run the stage that makes it first)") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


def remove_quietly(*paths: str | os.PathLike) -> None:
    """Delete stale outputs before a stage rewrites them (DVC does this too; runs by hand don't)."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def silenced_fd2() -> Iterator[None]:
    """TensorFlow's C++ side logs to file descriptor 2 at import, whatever TF_CPP_MIN_LOG_LEVEL
    says; hide it while a model loads (Python errors still surface as exceptions)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)



def import_tensorflow():
    """TensorFlow, imported and its devices set up with the notices it writes to file descriptor
    2 hidden (no CUDA driver, oneDNN): the stages' stderr stays for real errors."""
    with silenced_fd2():
        import tensorflow as tf

        tf.config.list_logical_devices()  # the failed CUDA probe logs an error line here
    return tf


# oneDNN's names for the instruction-set levels, lowest first, with the /proc/cpuinfo flag that
# marks each (AVX512_CORE also needs avx512bw/vl/dq, which every CPU with avx512f and AVX-512 in
# oneDNN's sense has).
ISA_LEVELS = {"SSE41": "sse4_1", "AVX": "avx", "AVX2": "avx2", "AVX512_CORE": "avx512f"}


def cpu_record() -> dict:
    """The CPU a model is trained on and the instruction-set level oneDNN uses on it: the lower of
    the CPU's own and the ONEDNN_MAX_CPU_ISA cap (as named by oneDNN; the cap as given when it
    is not one of ISA_LEVELS)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    levels = list(ISA_LEVELS)
    own = [level for level, flag in ISA_LEVELS.items() if flag in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if own and cap in levels:
        used = levels[min(levels.index(own[-1]), levels.index(cap))]
    elif own and cap == "ALL":
        used = own[-1]
    else:
        used = cap
    return {"cpu": name or platform.processor() or platform.machine(), "cpu_isa": used}
