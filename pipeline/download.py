"""Fetching a file: the mirror directory first, then the canonical URL (progress, timeout, retries)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests
from tqdm import tqdm

from .common import MIRROR_ENV, PipelineError, file_digest, mirror_file


def _download(url: str, dest: Path, timeout: float) -> None:
    # The file's own bytes: no on-the-fly compression asked for, and none undone (a server that
    # labels .gz files `Content-Encoding: gzip` would otherwise have them decompressed).
    with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0) or None
        with open(dest, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=None
        ) as bar:
            for chunk in response.raw.stream(1 << 20, decode_content=False):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and dest.stat().st_size != total:
            raise OSError(f"got {dest.stat().st_size} of {total} bytes")


def fetch(
    names: list[str],
    url: str,
    dest: Path,
    md5: str | None,
    timeout: float,
    retries: int,
) -> str:
    """Put the file at `dest`: a copy from the mirror if it holds one of `names`, else a download
    of `url` whose md5 must match. Returns where it came from."""
    local = mirror_file(*names)
    if local is not None:
        shutil.copyfile(local, dest)
        return str(local)
    last: Exception | None = None
    for attempt in range(1, retries + 2):
        try:
            _download(url, dest, timeout)
            break
        except (requests.RequestException, OSError) as exc:
            last = exc
            if attempt <= retries:
                time.sleep(min(2**attempt, 30))
    else:
        raise PipelineError(
            f"{url}: download failed after {retries + 1} attempts ({last}); "
            f"offline? put {names[0]} in a directory and set {MIRROR_ENV} to it"
        )
    if md5:
        got = file_digest(dest, "md5")
        if got != md5:
            raise PipelineError(f"{url}: md5 {got} does not match the expected {md5}")
    return url
