"""Training gives the same weights whatever instruction set the CPU offers above the pipeline's cap.

oneDNN picks its kernels by instruction set, so an unpinned run's weights depend on the CPU.
`pipeline` caps it (ONEDNN_MAX_CPU_ISA, unless the user set it): a tiny CNN and LSTM trained for
one epoch by the pipeline's own code (bench/isa_check.py's child: the train stage's config,
seeding, builder and fit) must give bit-identical weights with the variable unset and set to the
cap explicitly, and different ones under a lower cap: the control that shows the variable reaches
oneDNN and that the comparison can fail. On a CPU whose best level is the cap, the first equality
holds even without the pin; on a CPU above it (AVX-512), it is the pin that makes it hold.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny import make_archive, make_project, run, tiny_params, write_params

import pipeline

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["cnn", "lstm"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("isa")
    repo, env = make_project(base, MODELS)
    counts = make_archive(base / "mirror" / "20news-bydate.tar.gz", train_per_group=60, test_per_group=5)
    write_params(repo / "params.yaml", tiny_params(str(base / "glove.tiny.50d.txt"), counts, MODELS))
    run(["dvc", "repro", "-q", "embeddings"], repo, env)
    return repo, env


def train_once(repo: Path, env: dict, isa: str | None) -> dict:
    env = {k: v for k, v in env.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    cmd = [sys.executable, str(ROOT / "bench" / "isa_check.py"), "--child", "--project", str(repo),
           "--models", ",".join(MODELS), "--epochs", "1", "--threads", "0"]
    proc = run(cmd, ROOT, env)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["model"]: r for r in rows}


def test_weights_do_not_depend_on_the_cpu_above_the_cap(project):
    repo, env = project
    unset, pinned, lower = (train_once(repo, env, isa) for isa in (None, pipeline.CPU_ISA, "SSE41"))
    for model in MODELS:
        assert unset[model]["cpu_isa"] == pipeline.CPU_ISA, unset[model]
        assert unset[model]["sha256"] == pinned[model]["sha256"], model
        assert lower[model]["cpu_isa"] == "SSE41"
        assert lower[model]["sha256"] != pinned[model]["sha256"], f"{model}: SSE41 gave the same weights"
