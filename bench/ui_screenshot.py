"""A screenshot of the MLflow UI's runs table, every pipeline model's run with its test metrics.

    python -m bench.ui_screenshot --tracking-uri sqlite:///mlflow.db --out docs/mlflow_ui.png

Starts `mlflow ui` on a free loopback port over the store, drives headless Chromium (Debian's
`chromium`, through Playwright) to the experiment's runs table, adds the metric columns, checks that
every expected run shows its test accuracy, saves the screenshot and stops the server. By default
the expected runs are the latest pipeline runs (metrics/train/<model>.json); --all-runs shows every
run of the experiment instead. Requests go to 127.0.0.1 only: the browser is denied anything else.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlparse

from bench.local_server import HOST, LocalServer

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
    "--no-proxy-server",
]
DEFAULT_METRICS = ["test_accuracy", "test_macro_f1", "best_val_accuracy", "train_seconds"]
RUN_NAME_COL = "attributes.`Run Name`"
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


class UIError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """$CHROMIUM, else chromium / chromium-browser on PATH, else /usr/bin/chromium."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def ui_server(tracking_uri: str, log: Path, cwd: Path, env: dict | None = None, timeout: float = 300) -> LocalServer:
    """`mlflow ui` over `tracking_uri` on 127.0.0.1 (one worker: this machine is small)."""
    env = {**(env if env is not None else os.environ), **QUIET_ENV}
    return LocalServer(
        lambda port: [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                      "--host", HOST, "--port", port, "--workers", "1"],
        ready_path="/health", log=log, cwd=cwd, env=env, timeout=timeout,
    )


def runs_url(base: str, experiment_id: str, order_by: str | None = None, run_ids: list[str] | None = None) -> str:
    query = "workflowType=machine_learning"  # the classic ML view, not the GenAI overview
    if order_by:
        query += f"&orderByKey={quote(f'metrics.`{order_by}`')}&orderByAsc=false"
    if run_ids:
        query += "&searchFilter=" + quote("attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")")
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def _loopback_only(route) -> None:
    host = urlparse(route.request.url).hostname
    if route.request.url.startswith(("data:", "blob:")) or host in (HOST, "localhost"):
        route.continue_()
    else:
        route.abort()


def _table(page) -> list[dict[str, str]]:
    """The grid's rows as {col-id: text}; the grid splits a row across pinned and scrolled parts,
    joined here by row index."""
    return page.evaluate(
        """() => {
            const rows = {};
            for (const cell of document.querySelectorAll('[role=row][row-index] [col-id]')) {
                const index = cell.closest('[role=row]').getAttribute('row-index');
                (rows[index] = rows[index] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
            }
            return Object.keys(rows).sort((a, b) => a - b).map(k => rows[k]);
        }"""
    )


def capture(base_url: str, experiment_id: str, run_names: list[str], out: Path, metrics: list[str],
            profile_dir: Path, chromium: str, order_by: str | None = None, run_ids: list[str] | None = None,
            timeout: float = 120, width: int = 1920, height: int = 900) -> dict[str, dict[str, str]]:
    """Open the runs table, show `metrics` as columns, wait until every run in `run_names` is there,
    screenshot to `out`. Returns {run name: {metric: shown text}}."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    ms = int(timeout * 1000)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height}, service_workers="block",
        )
        try:
            context.route("**/*", _loopback_only)
            # a fresh profile: no assistant side panel opening over the table on first load
            context.add_init_script(
                "try { localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                " localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); } catch (e) {}"
            )
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(ms)
            page.goto(runs_url(base_url, experiment_id, order_by, run_ids), wait_until="domcontentloaded")
            try:
                for name in run_names:
                    page.locator(f'[role=row] [col-id="{RUN_NAME_COL}"]', has_text=name).first.wait_for()
                page.get_by_role("button", name="Columns", exact=True).first.click()
                search = page.get_by_placeholder("Search columns")
                for metric in metrics:
                    if page.locator(f'[role=columnheader][col-id="metrics.`{metric}`"]').count():
                        continue  # already shown
                    search.fill(metric)
                    page.get_by_text(metric, exact=True).last.click()
                    page.locator(f'[role=columnheader][col-id="metrics.`{metric}`"]').first.wait_for()
                page.keyboard.press("Escape")
                page.mouse.click(width - 5, height - 5)  # drop the focus ring off the menu button
                page.wait_for_timeout(1000)
            except PlaywrightTimeout as exc:
                page.screenshot(path=str(out))
                raise UIError(f"the runs table did not show what was expected ({str(exc).splitlines()[0]}); "
                              f"screenshot of the page: {out}") from None
            page.screenshot(path=str(out), full_page=True)
            shown = {}
            for row in _table(page):
                name = row.get(RUN_NAME_COL, "").splitlines()[-1:] or [""]
                shown.setdefault(name[0], {m: row.get(f"metrics.`{m}`", "") for m in metrics})
            return shown
        finally:
            context.close()


def close_to(shown: str, value: float) -> bool:
    """The UI rounds: '0.8889' for 0.88888, '1' for 1.0."""
    try:
        number = float(shown.replace(",", ""))
    except ValueError:
        return False
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return math.isclose(number, value, abs_tol=0.5 * 10 ** -decimals + 1e-9)


def expected_runs(client, experiment, all_runs: bool, root: Path) -> list:
    """The runs to find: the latest pipeline run of each model (metrics/train/*.json), or all."""
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    if all_runs:
        return runs
    ids = set()
    for file in sorted((root / "metrics" / "train").glob("*.json")):
        try:
            ids.add(json.loads(file.read_text())["mlflow_run_id"])
        except (OSError, ValueError, KeyError):
            continue
    chosen = [r for r in runs if r.info.run_id in ids]
    return chosen or [r for r in runs if r.data.tags.get("dvc_stage", "").startswith("train@") and r.info.status == "FINISHED"]


def screenshot(uri: str, experiment_name: str, out: Path, metrics: list[str], all_runs: bool = False,
               timeout: float = 300, chromium: str | None = None, cwd: Path = ROOT, env: dict | None = None,
               work_dir: Path | None = None) -> tuple[list, dict[str, dict[str, str]], list[str]]:
    """Serve `uri` with `mlflow ui`, capture the runs table into `out`, stop the server. Returns
    (the runs expected, what the table showed per run name, the runs whose test accuracy was not
    shown as stored)."""
    from mlflow import MlflowClient

    chromium = chromium or find_chromium()
    if chromium is None:
        raise UIError("no chromium binary (apt-get install chromium, or set CHROMIUM)")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UIError(f"{uri}: no experiment {experiment_name!r}")
    runs = expected_runs(client, experiment, all_runs, ROOT)
    if not runs:
        raise UIError(f"experiment {experiment_name!r} has no pipeline runs")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-", dir=work_dir) as tmp:
        with ui_server(uri, Path(tmp) / "server.log", cwd=cwd, env=env, timeout=timeout) as server:
            shown = capture(server.url, experiment.experiment_id, sorted({r.info.run_name for r in runs}), out, metrics,
                            Path(tmp) / "profile", chromium, order_by=metrics[0] if metrics else None,
                            run_ids=None if all_runs else [r.info.run_id for r in runs], timeout=timeout)
    missing = []
    for run in runs:
        value = run.data.metrics.get("test_accuracy")
        cell = shown.get(run.info.run_name, {}).get("test_accuracy", "")
        if run.info.run_name not in shown or (value is not None and "test_accuracy" in metrics and not close_to(cell, value)):
            missing.append(f"{run.info.run_name} (test_accuracy {value}, shown {cell!r})")
    return runs, shown, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=None,
                   help="the MLflow store (default: MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db)")
    p.add_argument("--out", default=str(ROOT / "docs" / "mlflow_ui.png"), help="the PNG to write")
    p.add_argument("--experiment", default=None, help="experiment name (default: params.yaml mlflow.experiment)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="metric columns to show, comma-separated")
    p.add_argument("--all-runs", action="store_true", help="every run of the experiment, not only the latest per model")
    p.add_argument("--timeout", type=float, default=300, help="seconds for the server and for the page")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"error: {uri}: no such MLflow store (run the pipeline first)", file=sys.stderr)
        return 1
    name = args.experiment
    if name is None:
        import yaml

        name = (yaml.safe_load((ROOT / "params.yaml").read_text()) or {}).get("mlflow", {}).get("experiment", "newsgroups")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    out = Path(args.out).resolve()
    try:
        runs, shown, missing = screenshot(uri, name, out, metrics, args.all_runs, args.timeout)
    except Exception as exc:  # no server, no browser, a page that never showed the runs
        print(f"error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 1
    for run_name, cells in sorted(shown.items()):
        print(f"{run_name:16} " + "  ".join(f"{m}={v or '-'}" for m, v in cells.items()))
    print(f"screenshot: {out}")
    if missing:
        print("error: not shown as expected: " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
