"""The MLflow UI over the store the pipeline wrote: `mlflow ui` on a free loopback port, headless
Chromium (Debian's package, driven by Playwright) on the experiment's runs table; every model's
run must be there with its test accuracy. The screenshot stays in the test's temporary directory."""
from __future__ import annotations

import pytest

from bench.ui_screenshot import close_to, find_chromium, screenshot


@pytest.fixture(scope="session")
def chromium() -> str:
    """Session-scoped like tiny_trained_project and requested before it, so that a skip comes
    before the tiny project is built for nothing."""
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium binary (CI installs Debian's chromium package; or set CHROMIUM)")
    return path


def test_runs_table_shows_every_model_with_test_accuracy(chromium, tiny_trained_project, tmp_path):
    """What bench/ui_screenshot.py does for docs/mlflow_ui.png, over the tiny project's store."""
    from mlflow import MlflowClient

    project = tiny_trained_project
    client = MlflowClient(tracking_uri=project.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    stored = {r.info.run_name: r.data.metrics["test_accuracy"] for r in runs if "test_accuracy" in r.data.metrics}
    assert set(project.models) <= set(stored)  # every trained model was evaluated on its run

    shot = tmp_path / "mlflow_ui.png"
    runs, shown, missing = screenshot(project.tracking_uri, "tiny", shot, ["test_accuracy", "best_val_accuracy"],
                                      all_runs=True, timeout=600, chromium=chromium, cwd=project.repo,
                                      env=project.env, work_dir=tmp_path)
    print(f"\nscreenshot: {shot}")
    assert missing == []
    assert set(stored) <= set(shown), shown
    for name, value in stored.items():
        assert close_to(shown[name]["test_accuracy"], value), (name, shown[name], value)
        assert shown[name]["best_val_accuracy"] != ""
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_close_to_follows_the_ui_rounding():
    assert close_to("0.8889", 0.88888) and close_to("1", 1.0) and close_to("0.85", 0.8512)
    assert not close_to("0.85", 0.8612) and not close_to("", 0.5) and not close_to("-", 0.5)
