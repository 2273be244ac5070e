"""The README's result tables are the committed metrics, not typed numbers."""
import importlib.util

from tiny import ROOT


def test_readme_tables_match_metrics():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts/readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert module.render(readme) == readme
    summary = (ROOT / "metrics/summary.md").read_text(encoding="utf-8").strip()
    assert summary in readme
