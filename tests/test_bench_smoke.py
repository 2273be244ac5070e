"""Smoke tests of the benchmark harness and the multi-seed script (bench/), on generated tiny data.

They check that each script runs end to end and writes JSON with the expected keys and sane
values. Nothing here asserts a duration: timings on tiny data mean nothing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TF_CPP_MIN_LOG_LEVEL="3",
        DVC_NO_ANALYTICS="1",
        TMPDIR=str(tmp_path),
    )
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def accuracy(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def test_harness_model_parts(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script(["-m", "bench.run_bench", "--tiny", "--only", "tfidf,fasttext,epoch", "--repeats", "2",
                       "--workdir", str(tmp_path / "work"), "--out", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert result["meta"]["tiny"] is True and result["meta"]["parts"] == ["tfidf", "fasttext", "epoch"]
    assert positive(result["calibration"]["seconds"]) and "repro" not in result

    tfidf = result["tfidf"]
    for name in ("tfidf_logreg", "tfidf_linearsvc"):
        assert positive(tfidf[name]["fit_seconds"]) and len(tfidf[name]["fit_runs"]) == 2
        assert accuracy(tfidf[name]["test_accuracy"])
    assert positive(tfidf["fit_time_ratio"]) and tfidf["test_docs"] == 18

    race = result["fasttext"]
    assert race["threshold"] == 0.78
    ft, cbow = race["fasttext"], race["cbow"]
    assert ft["params"]["wordNgrams"] == 2 and ft["curve"] and ft["curve"][0]["epoch"] == 1
    assert all(accuracy(row["test_accuracy"]) and positive(row["seconds"]) for row in ft["curve"])
    assert accuracy(ft["final"]["test_accuracy"]) and positive(ft["final"]["seconds"])
    assert (ft["seconds_to_threshold"] is None) == (ft["epoch_to_threshold"] is None)
    assert cbow["params"]["epochs"] == 2 and len(cbow["curve"]) == cbow["final"]["epochs_run"] <= 2
    for row in cbow["curve"]:
        assert accuracy(row["test_accuracy"]) and positive(row["epoch_seconds"])
        assert 0 < row["train_seconds"] <= row["seconds_with_validation"]
    assert accuracy(cbow["final"]["test_accuracy"]) and 1 <= cbow["final"]["best_epoch"] <= 2
    if cbow["seconds_to_threshold"] is not None:
        assert cbow["curve"][cbow["epoch_to_threshold"] - 1]["test_accuracy"] >= 0.78
    if cbow["seconds_to_threshold"] is not None and ft["seconds_to_threshold"] is not None:
        assert positive(race["time_to_threshold_ratio"])

    epoch = result["epoch"]
    assert epoch["cnn_glove"]["epochs"] == 2 and positive(epoch["cnn_glove"]["epoch_seconds"])
    before = epoch["cnn_glove_straightforward"]
    assert before["epochs"] == 2 and positive(before["epoch_seconds"]) and before["max_len"] > 0
    assert positive(epoch["cnn_glove_speedup"])
    assert epoch["cbow"]["measured_in"] == "part fasttext" and positive(epoch["epoch_time_ratio"])

    targets = {t["name"]: t for t in result["targets"]}
    assert targets["tfidf_logreg_test_accuracy"]["value"] == tfidf["tfidf_logreg"]["test_accuracy"]
    assert targets["full_repro_seconds"]["value"] is None and targets["full_repro_seconds"]["met"] is None
    assert "| comparison" in proc.stdout and "tfidf_logreg" in proc.stdout


def test_harness_repro_part(tmp_path):
    """The repro machinery on a cheap target: a baseline commit's from-scratch repro, then the
    copy's, no-op, one param change, per-stage peak RSS through the measuring shell."""
    out = tmp_path / "bench.json"
    run_script(["-m", "bench.run_bench", "--tiny", "--only", "repro", "--repro-target", "prepare", "--baseline", "HEAD",
                "--change", "prepare.seed", "--repeats", "2", "--workdir", str(tmp_path / "work"), "--out", str(out)], tmp_path)
    repro = json.loads(out.read_text())["repro"]
    full, noop, change, baseline = repro["full"], repro["noop"], repro["change"], repro["baseline"]
    assert re.fullmatch(r"[0-9a-f]{40}", baseline["rev"]) and baseline["stages_run"] == ["check_params", "fetch_corpus", "prepare"]
    assert positive(baseline["seconds"]) and full["ratio_to_baseline"] == round(full["seconds"] / baseline["seconds"], 3)
    assert full["stages_run"] == ["check_params", "fetch_corpus", "prepare"]
    assert set(full["stages"]) == {"check_params", "fetch_corpus", "prepare"}
    for stage in full["stages"].values():
        assert stage["returncode"] == 0 and positive(stage["seconds"]) and 1 < stage["peak_rss_mib"] < 4096
    assert positive(full["seconds"]) and full["seconds"] >= max(s["seconds"] for s in full["stages"].values())
    assert positive(full["dvc_overhead_ratio"])
    assert noop["stages_run"] == [] and len(noop["runs"]) == 2 and positive(noop["seconds"])
    assert change["key"] == "prepare.seed" and change["old"] == 42 and change["new"] == 43
    # check_params reruns on any param change (cheap; its output stays the same)
    assert change["stages_run"] == ["check_params", "prepare"] and set(change["stages"]) == {"check_params", "prepare"}
    assert repro["max_stage_peak_rss_stage"] in {"check_params", "fetch_corpus", "prepare"} and positive(repro["max_stage_peak_rss_mib"])


def test_seeds_protocol(tmp_path):
    """Queue, run and report for real, with one seed (each queued experiment costs a train and an
    evaluate stage); the statistics over several seeds are checked in the test below."""
    out, md = tmp_path / "seeds.json", tmp_path / "seeds.md"
    proc = run_script(["-m", "bench.seeds", "--tiny", "--models", "tfidf_logreg,naive_bayes", "--seed-list", "7",
                       "--workdir", str(tmp_path / "work"), "--out", str(out), "--md", str(md)], tmp_path)
    result = json.loads(out.read_text())
    assert result["protocol"]["models"] == ["tfidf_logreg"] and result["protocol"]["seeds"] == [7]
    assert result["not_seeded"] == ["naive_bayes"]
    assert result["queue"] == {"queued": ["seed-tfidf_logreg-7"], "kept": []}
    model = result["models"]["tfidf_logreg"]
    assert [(r["seed"], r["experiment"], r["state"]) for r in model["runs"]] == [(7, "seed-tfidf_logreg-7", "success")]
    stats = model["stats"]
    assert stats["n"] == 1 and accuracy(stats["mean"]) and stats["std"] == 0.0
    assert stats["min"] == stats["mean"] == stats["max"] == model["runs"][0]["accuracy"]
    assert "| tfidf_logreg | 1/1 |" in proc.stdout and md.read_text().startswith("| model |")

    # Again: nothing is queued twice; the MLflow source finds the same run.
    repo = str(tmp_path / "work" / "tiny" / "repo")
    again = tmp_path / "again.json"
    run_script(["-m", "bench.seeds", "--project", repo, "--models", "tfidf_logreg", "--seed-list", "7", "--no-run",
                "--out", str(again)], tmp_path)
    assert json.loads(again.read_text())["queue"] == {"queued": [], "kept": ["seed-tfidf_logreg-7"]}
    from_mlflow = tmp_path / "mlflow.json"
    run_script(["-m", "bench.seeds", "--project", repo, "--models", "tfidf_logreg", "--seed-list", "7", "--report-only",
                "--source", "mlflow", "--out", str(from_mlflow)], tmp_path)
    assert json.loads(from_mlflow.read_text())["models"]["tfidf_logreg"]["stats"] == stats

    # A commit made after queueing does not hide the experiments: --out recorded their baseline commit.
    baseline = result["protocol"]["baseline_rev"]
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "later"],
                   cwd=repo, check=True)
    run_script(["-m", "bench.seeds", "--project", repo, "--models", "tfidf_logreg", "--seed-list", "7", "--report-only",
                "--out", str(out)], tmp_path)
    later = json.loads(out.read_text())
    assert later["protocol"]["baseline_rev"] == baseline and later["models"]["tfidf_logreg"]["stats"] == stats


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_keeps_only_the_parts_not_rerun(tmp_path):
    bench = load_script("run_bench")
    out = tmp_path / "bench.json"
    assert bench.earlier_parts(out, ["repro"]) == {}  # nothing to merge yet
    out.write_text(json.dumps({"meta": {"finished": "then"}, "tfidf": {"ours": 1}, "repro": {"old": 1}, "targets": []}))
    kept = bench.earlier_parts(out, ["repro"])
    assert kept == {"tfidf": {"ours": 1, "measured": {"finished": "then", "from": "an earlier run"}}}
    out.write_text("{not json")
    with pytest.raises(SystemExit, match=r"bench\.json: not a results JSON"):
        bench.earlier_parts(out, ["repro"])


def test_merged_repro_part_keeps_its_own_calibration():
    bench = load_script("run_bench")
    part = {"full": {"seconds": 100.0, "stage_seconds_total": 98.0, "dvc_overhead_ratio": 1.02, "stages": {}},
            "noop": {"seconds": 2.0, "calibration_units": 8.0, "runs": [2.0], "stages_run": []},
            "change": {"key": "train.m.seed", "seconds": 10.0, "ratio_to_full": 0.1, "stages_run": [], "stages": {}}}
    results = {"calibration": {"seconds": 0.1}, "repro": part}  # a newer invocation's calibration
    row = next(line for line in bench.table(results).splitlines() if line.startswith("| no-op"))
    assert [c.strip() for c in row.split("|")[3:6]] == ["2", "0.25", "8"]  # the label holds a "|"


def test_seed_statistics_and_parsing():
    """mean ± std over seeds and the `dvc exp show --json` (DVC 3) reading, without running DVC."""
    seeds = load_script("seeds")

    def data(seed, acc):
        return {"params": {"params.yaml": {"data": {"train": {"cbow": {"seed": seed}}}}},
                "metrics": {"metrics/eval/cbow.json": {"data": {"accuracy": acc}}}}

    shown = [
        {"rev": "workspace", "name": None, "data": data(42, 0.87), "experiments": None},
        {"rev": "abc", "name": "main", "data": data(42, 0.87), "experiments": [
            {"name": "seed-cbow-1", "executor": {"state": "success"}, "revs": [{"rev": "e1", "name": "seed-cbow-1", "data": data(1, 0.86)}]},
            {"name": "seed-cbow-2", "executor": None, "revs": [{"rev": "e2", "name": "seed-cbow-2", "data": data(2, 0.88)}]},
            {"name": "seed-cbow-3", "executor": {"state": "failed"}, "revs": [{"rev": "e3", "name": "seed-cbow-3", "data": {}}]},
        ]},
    ]
    parsed = seeds.parse_exp_show(shown)
    assert {k: v["state"] for k, v in parsed["experiments"].items()} == {"seed-cbow-1": "success", "seed-cbow-2": "success", "seed-cbow-3": "failed"}
    assert seeds._accuracy(parsed["experiments"]["seed-cbow-2"]["data"], "cbow") == 0.88
    assert seeds._param(parsed["workspace"], "train.cbow.seed") == 42
    stats = seeds.stats([0.86, 0.88])
    assert stats == {"n": 2, "mean": 0.87, "std": 0.0141, "min": 0.86, "max": 0.88}
    table = seeds.markdown({"cbow": {"stats": stats, "baseline": {"accuracy": 0.87, "seed": 42}, "runs": [{}, {}, {}]}}, ["naive_bayes"])
    assert "| cbow | 2/3 | 0.8700 ± 0.0141 | 0.86 | 0.88 | 0.8700 (seed 42) |" in table and "naive_bayes" in table


def test_seeds_merge_keeps_the_other_models_with_their_commit(tmp_path):
    seeds = load_script("seeds")
    out = tmp_path / "seeds.json"
    assert seeds.earlier_models(out) == {}
    entry = {"stats": seeds.stats([0.85]), "baseline": None, "runs": [{"seed": 1, "rev": "e1" * 20, "accuracy": 0.85}]}
    out.write_text(json.dumps({"protocol": {}, "models": {"cbow": entry}}))
    kept = seeds.earlier_models(out, rev_of=lambda rev: "b" * 40 if rev == "e1" * 20 else None)
    assert kept == {"cbow": {**entry, "baseline_rev": "b" * 40}}  # the parent of its first experiment
    out.write_text(json.dumps({"protocol": {"baseline_rev": "c" * 40}, "models": {"cbow": entry}}))
    assert seeds.earlier_models(out)["cbow"]["baseline_rev"] == "c" * 40
    table = seeds.markdown({**kept, "cnn": {**entry, "baseline_rev": "d" * 40}}, [])
    assert table.endswith("Experiments branched from commit bbbbbbb (cbow); ddddddd (cnn).")
    assert "branched" not in seeds.markdown({"cnn": {**entry, "baseline_rev": "d" * 40}}, [])
    out.write_text("{not json")
    with pytest.raises(SystemExit, match=r"seeds\.json: not a seeds results JSON"):
        seeds.earlier_models(out)


def test_encoder_speed_prints_a_row_per_setting(tmp_path):
    import pandas as pd
    from tiny import make_encoder

    data = tmp_path / "test.parquet"
    pd.DataFrame({"text": ["the shuttle launch", "", "engine brake tire of the car"] * 4}).to_parquet(data)
    source = make_encoder(tmp_path / "tiny-bert")
    out = run_script(["-m", "bench.encoder_speed", "--source", str(source), "--data", str(data), "--docs", "10",
                      "--max-len", "8", "16", "--batch-size", "4"], tmp_path).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("8", "float32"), ("8", "int8"), ("16", "float32"), ("16", "int8")]
    for row in rows:
        assert float(row[2]) > 0 and -1.0 <= float(row[4]) <= float(row[5]) <= 1.0001
    assert all(float(r[4]) > 0.9999 for r in rows if r[1].strip() == "float32")


def test_cnn_trial_on_a_tiny_project(tmp_path):
    """bench/cnn_trial.py prints a trial's figures for changed params (bench/isa_check.py is
    exercised by tests/test_isa.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_project, run

    repo, env = make_project(tmp_path / "project", ["cnn"])
    run(["dvc", "repro", "-q", "embeddings"], repo, env)
    log = tmp_path / "trials.jsonl"
    run_script(["-m", "bench.cnn_trial", "--project", str(repo), "cnn", "architecture=parallel", "kernel_sizes=[2,3]",
                "--log", str(log)], tmp_path)
    row = json.loads(log.read_text())
    assert row["model"] == "cnn" and row["overrides"] == "architecture=parallel kernel_sizes=[2,3]"
    assert accuracy(row["val_accuracy"]) and accuracy(row["test_accuracy"]) and positive(row["fit_seconds"])
    assert 1 <= row["best_epoch"] <= row["epochs_run"] <= 2
