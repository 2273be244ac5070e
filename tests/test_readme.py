"""The README's and docs' result tables are the committed metrics, not typed numbers.

They are checked against metrics/ as committed (HEAD), not the work tree: a user's own
`dvc repro` rewrites metrics/ (train times always differ) and must not fail the suite.
"""
import importlib.util
import subprocess

import pytest
from tiny import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts/readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    inside = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True)
    if inside.returncode != 0:
        pytest.skip("not a git checkout: no committed metrics to compare with")
    return load_script()


@pytest.mark.parametrize("document", ["README.md", "docs/models.md", "docs/experiments.md"])
def test_tables_match_committed_metrics(script, document):
    text = (ROOT / document).read_text(encoding="utf-8")
    blocks = [(name, source) for doc, name, source in script.BLOCKS if doc == document]
    assert blocks, f"{document} has no generated tables"
    for name, source in blocks:
        assert f"<!-- {name}:start -->" in text and f"<!-- {name}:end -->" in text, f"{document}: no {name} markers"
        committed = script.read_committed(source)
        assert committed is not None, f"{source} is not committed"
        assert committed.strip() in text, f"{document}: the {name} table is not {source} as committed"
    assert script.render(document, text, script.read_committed) == text


def test_a_changed_table_is_caught(script):
    summary = script.read_committed("metrics/summary.md")
    changed = summary.replace("|", "| x", 1)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.render("README.md", readme, lambda path: changed if path == "metrics/summary.md" else None) != readme


def test_the_leakage_free_variant_ran_at_the_default_configuration(script):
    """The variant's table must describe today's models: the same models, each with the same key
    params as the committed default run (only prepare.remove differs), or it is a stale table."""
    import json

    default = json.loads(script.read_committed("metrics/summary.json"))["models"]
    variant = json.loads(script.read_committed("metrics/variants/remove_all.json"))["models"]
    assert list(variant) == list(default)
    for model, row in variant.items():
        assert row["params"] == default[model]["params"], f"{model}: the variant ran with other params"
    removed = json.loads(script.read_committed("metrics/variants/remove_all_data.json"))["remove"]
    assert removed == ["headers", "footers", "quotes"]
