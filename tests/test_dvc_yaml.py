"""dvc.yaml declares, for every stage, the pipeline modules its command can import: a change to
any of them must rerun the stage (a missed one leaves stale outputs that `dvc status` calls fresh)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pipeline_imports(module: str) -> set[str]:
    """The pipeline modules `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / "pipeline" / f"{module}.py").read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 or (node.module or "").split(".")[0] == "pipeline":
            parts = (node.module or "").split(".")
            inner = parts[0] if node.level == 1 else (parts[1] if len(parts) > 1 else "")
            found |= {inner} if inner else {a.name for a in node.names}
    return {m for m in found if (ROOT / "pipeline" / f"{m}.py").is_file()}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(pipeline_imports(m))
    return seen


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(name):
    stage = STAGES[name].get("do", STAGES[name])
    module = stage["cmd"].split()[2]  # python -m pipeline.<module> ...
    assert module.startswith("pipeline.")
    # `python -m pipeline.<module>` runs pipeline/__init__.py first: it sets the environment
    needed = {f"pipeline/{m}.py" for m in closure(module.split(".", 1)[1])} | {"pipeline/__init__.py"}
    assert needed - set(stage["deps"]) == set()


def test_the_import_scan_sees_lazy_imports():
    assert {"tracking", "classifier", "models", "sequences", "serving"} <= closure("evaluate")
    assert closure("fetch_corpus") == {"fetch_corpus", "params", "paths", "common", "corpus", "download"}


def test_dvc_reads_yaml_with_ruamels_c_parser():
    """A no-op `dvc repro` is mostly DVC parsing `dvc.lock` and `params.yaml` with ruamel
    (`YAML(typ="safe")`); without ruamel.yaml.clib that falls back to pure Python, 3.1-3.8 s
    instead of 2.1-2.3 s here (bench/README.md)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is missing (requirements.txt pins it)"
    assert YAML(typ="safe").Parser is CParser
