"""The environment a copy of the project runs its `dvc` commands in (benchmarks, seeds, tests)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def project_env(mirror: Path | None, author: str = "bench", keep_tracking: bool = False, **extra: str) -> dict:
    """This interpreter's tools first on PATH; no MLflow or DVC settings of the caller (a copy has
    its own store), unless `keep_tracking` keeps the caller's MLFLOW_TRACKING_URI; TensorFlow quiet;
    a git identity for the copy's commits (the caller's, if set); the corpus mirror, or none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TF_CPP_MIN_LOG_LEVEL="3",
        DVC_NO_ANALYTICS="1",
    )
    for key, value in (("NAME", author), ("EMAIL", f"{author}@localhost")):
        for who in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{who}_{key}", value)
    if keep_tracking and os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    if mirror is not None:
        env["NEWSGROUPS_MIRROR"] = str(mirror)
    else:
        env.pop("NEWSGROUPS_MIRROR", None)
    env.update(extra)
    return env
