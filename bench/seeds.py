#!/usr/bin/env python
"""Multi-seed protocol: N seeds per model as DVC experiments, then mean ± std of test accuracy.

Published tables report the mean of 10 runs. This script
  1. queues one experiment per (model, seed) that is not already done or queued:
       dvc exp run --queue -n seed-<model>-<seed> -S train.<model>.seed=<seed> evaluate@<model>
     (the target keeps each experiment to that model's train + evaluate stages; --full drops it
     and reruns the whole pipeline, ensemble and report included, in every experiment);
  2. runs the queue:  dvc exp run --run-all -j <jobs>;
  3. reads every experiment's metrics/eval/<model>.json `accuracy` from `dvc exp show --json`
     (or, with --source mlflow, the `test_accuracy` of the matching MLflow runs) and writes
     metrics/seeds.json plus a Markdown table (printed; --md also writes it to a file).

Experiments are named seed-<model>-<seed>, so running the script again resumes: finished or
queued ones are kept (--force reruns them), failed ones are queued again.

    python -m bench.seeds --models cbow,cnn_glove --seeds 10 --jobs 1
    python -m bench.seeds --models cbow --seeds 10 --report-only
    python -m bench.seeds --models cnn --seeds 10 --merge    # the other models' results stay
    python -m bench.seeds --tiny --out /tmp/seeds.json        # seconds-scale check, generated data
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.subproject import project_env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DONE_STATES = {"success", "queued", "running"}


def log(msg: str) -> None:
    print(f"[seeds {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def exp_name(model: str, seed: int) -> str:
    return f"seed-{model}-{seed}"


def dvc_bin() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def dvc(args: list[str], project: Path, env: dict, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([dvc_bin(), *args], cwd=project, env=env, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode:
        detail = ((proc.stderr or "") + (proc.stdout or "")).strip()[-3000:] if capture else ""
        raise SystemExit(f"error: dvc {' '.join(args)} failed ({proc.returncode}){': ' + detail if detail else ''}")
    return proc


def load_params(project: Path) -> dict:
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))


def choose_models(params: dict, requested: str | None) -> tuple[list[str], list[str]]:
    """The requested models (default: train.models) that have a `seed` param; the others."""
    names = [m.strip() for m in requested.split(",") if m.strip()] if requested else list(params["train"]["models"])
    unknown = [m for m in names if m not in params["train"]]
    if unknown:
        raise SystemExit(f"error: --models: no train.{unknown[0]} section in params.yaml")
    seeded = [m for m in names if isinstance(params["train"][m], dict) and "seed" in params["train"][m]]
    return seeded, [m for m in names if m not in seeded]


def seed_list(args) -> list[int]:
    if args.seed_list:
        return [int(s) for s in args.seed_list.split(",") if s.strip()]
    return list(range(args.first_seed, args.first_seed + args.seeds))


# ---------------------------------------------------------------- dvc exp show


def _param(data: dict, dotted: str):
    node = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _accuracy(data: dict, model: str):
    entry = (data.get("metrics") or {}).get(f"metrics/eval/{model}.json") or {}
    value = (entry.get("data") or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def exp_show(project: Path, env: dict, rev: str = "HEAD") -> dict:
    """Experiments whose baseline is `rev`: a commit made after queueing must not hide them."""
    return parse_exp_show(json.loads(dvc(["exp", "show", "--json", "--rev", rev], project, env).stdout or "[]"))


def head_commit(project: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout.strip()


def parse_exp_show(out: list) -> dict:
    """{'experiments': name -> {state, rev, data}, 'baseline': data of the HEAD commit,
    'workspace': data of the workspace} from the list `dvc exp show --json` prints (DVC 3)."""
    result = {"experiments": {}, "baseline": None, "workspace": None}
    for entry in out:
        if entry.get("rev") == "workspace":
            result["workspace"] = entry.get("data") or {}
            continue
        if result["baseline"] is None:
            result["baseline"] = entry.get("data") or {}
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            name = exp.get("name") or revs[0].get("name")
            if not name:
                continue
            state = (exp.get("executor") or {}).get("state")
            data = revs[0].get("data") or {}
            if state is None:  # finished long ago, queue entry cleaned: done if it has metrics
                state = "success" if data.get("metrics") else "unknown"
            result["experiments"][name] = {"state": state, "rev": revs[0].get("rev"), "data": data}
    return result


# ---------------------------------------------------------------- phases


def queue(project: Path, env: dict, models: list[str], seeds: list[int], full: bool, force: bool) -> dict:
    known = exp_show(project, env)["experiments"]
    queued, kept = [], []
    for model in models:
        for seed in seeds:
            name = exp_name(model, seed)
            state = known.get(name, {}).get("state")
            if state in DONE_STATES and not force:
                kept.append(name)
                continue
            if state == "failed":  # drop the failed queue entry, then queue it again
                dvc(["queue", "remove", name], project, env, check=False)
            cmd = ["exp", "run", "--queue", "-n", name, "-S", f"train.{model}.seed={seed}"]
            if force and state in ("success", "unknown"):
                cmd.append("-f")
            if not full:
                cmd.append(f"evaluate@{model}")
            dvc(cmd, project, env)
            queued.append(name)
            log(f"queued {name}")
    log(f"{len(queued)} experiment(s) queued, {len(kept)} already done or queued")
    return {"queued": queued, "kept": kept}


def run_queue(project: Path, env: dict, jobs: int, quiet: bool) -> float:
    log(f"running the queue: dvc exp run --run-all -j {jobs}")
    start = time.perf_counter()
    proc = dvc(["exp", "run", "--run-all", "-j", str(jobs)], project, env, capture=quiet, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        log(f"dvc exp run --run-all exited {proc.returncode}; failed experiments are reported as such")
    return seconds


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,  # sample std (n - 1)
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def collect_dvc(project: Path, env: dict, models: list[str], seeds: list[int], rev: str) -> tuple[dict, dict]:
    shown = exp_show(project, env, rev)
    runs, baseline = {}, {}
    for model in models:
        rows = []
        for seed in seeds:
            name = exp_name(model, seed)
            exp = shown["experiments"].get(name)
            row = {"seed": seed, "experiment": name, "state": exp["state"] if exp else "missing", "accuracy": None}
            if exp:
                row["rev"] = exp["rev"]
                got = _param(exp["data"], f"train.{model}.seed")
                if got is not None and got != seed:
                    row["state"] = f"seed mismatch ({got})"
                else:
                    row["accuracy"] = _accuracy(exp["data"], model)
            rows.append(row)
        runs[model] = rows
        for label in ("workspace", "baseline"):
            data = shown[label] or {}
            if _accuracy(data, model) is not None:
                baseline[model] = {"accuracy": _accuracy(data, model), "seed": _param(data, f"train.{model}.seed"), "from": label}
                break
    return runs, baseline


def collect_mlflow(project: Path, models: list[str], seeds: list[int]) -> tuple[dict, dict]:
    """The latest FINISHED train@<model> run per seed whose logged params all equal the current
    params.yaml with that seed, and its `test_accuracy` (logged by evaluate)."""
    sys.path.insert(0, str(project))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        import mlflow
        from mlflow import MlflowClient

        from pipeline.tracking import tracking_uri
        from pipeline.train import flat_params, load_config

        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        runs = {}
        for model in models:
            cfg = load_config(model, "params.yaml")
            experiment = client.get_experiment_by_name(cfg["mlflow"]["experiment"])
            rows = []
            for seed in seeds:
                cfg["model"]["seed"] = seed
                want = {k: ("None" if v is None else str(v)) for k, v in flat_params(cfg).items()}
                found = [] if experiment is None else client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"tags.dvc_stage = 'train@{model}' and params.seed = '{seed}' and attributes.status = 'FINISHED'",
                    order_by=["attributes.start_time DESC"],
                )
                match = next((r for r in found if all(r.data.params.get(k) == v for k, v in want.items())
                              and "test_accuracy" in r.data.metrics), None)
                rows.append({"seed": seed, "mlflow_run_id": match.info.run_id if match else None,
                             "state": "success" if match else "missing",
                             "accuracy": float(match.data.metrics["test_accuracy"]) if match else None})
            runs[model] = rows
        return runs, {}
    finally:
        os.chdir(cwd)


def parent_commit(project: Path, rev: str) -> str | None:
    proc = subprocess.run(["git", "rev-parse", f"{rev}^"], cwd=project, capture_output=True, text=True)
    return proc.stdout.strip() or None


def earlier_models(path: Path, rev_of=None) -> dict:
    """The per-model results already in `path` (for --merge), each with the baseline commit its
    experiments were queued on: recorded, or else the parent commit of its first experiment."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        models = dict(earlier["models"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: {path}: not a seeds results JSON ({type(exc).__name__}); move it away or drop --merge") from None
    fallback = (earlier.get("protocol") or {}).get("baseline_rev")
    for entry in models.values():
        if not entry.get("baseline_rev"):
            first = next((r["rev"] for r in entry.get("runs", []) if r.get("rev")), None)
            entry["baseline_rev"] = fallback or (rev_of(first) if rev_of and first else None)
    return models


def markdown(models: dict, skipped: list[str]) -> str:
    lines = ["| model | runs | test accuracy (mean ± std) | min | max | baseline |",
             "|---|---|---|---|---|---|"]
    for model, m in models.items():
        s = m["stats"]
        acc = f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n"] else "-"
        base = m.get("baseline")
        base_text = f"{base['accuracy']:.4f} (seed {base['seed']})" if base else "-"
        runs = f"{s['n']}/{len(m['runs'])}"
        lines.append(f"| {model} | {runs} | {acc} | {s['min'] if s['n'] else '-'} | {s['max'] if s['n'] else '-'} | {base_text} |")
    text = "\n".join(lines)
    revs = {}
    for model, m in models.items():
        if m.get("baseline_rev"):
            revs.setdefault(m["baseline_rev"][:7], []).append(model)
    if len(revs) > 1:  # merged from runs at different commits: say which
        text += "\n\nExperiments branched from commit " + "; ".join(f"{rev} ({', '.join(ms)})" for rev, ms in revs.items()) + "."
    if skipped:
        text += f"\n\nNot seeded (no `seed` param, deterministic): {', '.join(skipped)}"
    return text


# ---------------------------------------------------------------- tiny mode


def tiny_project(work: Path, models: list[str]) -> tuple[Path, dict]:
    """A tiny copy of the project whose upstream stages are done and committed (made in-process,
    recorded with `dvc commit`), so the seed experiments only train and evaluate."""
    from bench import run_bench

    repo, mirror = run_bench.tiny_setup(work, models, need_data=True)
    env = seeds_env(mirror)
    dvc(["commit", "-f", "-q", *run_bench.DATA_STAGES], repo, env)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny baseline"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def seeds_env(mirror: Path | None) -> dict:
    return project_env(mirror, author="seeds", keep_tracking=True)  # the caller's tracking server, if any


# ---------------------------------------------------------------- main


def recorded_rev(path: Path) -> str | None:
    """The baseline commit a previous run of this script wrote into its results JSON, if any."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["protocol"].get("baseline_rev")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See bench/README.md.")
    p.add_argument("--models", help="comma-separated models (default: train.models; models without a seed are skipped)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per model (default 10)")
    p.add_argument("--first-seed", type=int, default=1, help="seeds are first..first+N-1 (default 1)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds (overrides --seeds/--first-seed)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="parallel queue workers (default 1: each Keras run already uses both cores)")
    p.add_argument("--full", action="store_true", help="each experiment reruns the whole pipeline, not just evaluate@<model>")
    p.add_argument("--force", action="store_true", help="queue and rerun experiments that already finished")
    p.add_argument("--no-run", action="store_true", help="queue only (start them later with dvc exp run --run-all -j N)")
    p.add_argument("--report-only", action="store_true", help="neither queue nor run: just read the results")
    p.add_argument("--rev", help="baseline commit the experiments were queued on (default: HEAD when queueing "
                   "in this invocation, else the one recorded in --out, else HEAD)")
    p.add_argument("--source", choices=("dvc", "mlflow"), default="dvc", help="where accuracies are read (default dvc exp show)")
    p.add_argument("--project", type=Path, default=ROOT, help="the project (a git + DVC repo; default this one)")
    p.add_argument("--out", type=Path, help="results JSON (default <project>/metrics/seeds.json; with --tiny, $TMPDIR/seeds.tiny.json)")
    p.add_argument("--md", type=Path, help="also write the Markdown table to this file")
    p.add_argument("--merge", action="store_true", help="keep the results of the models not given here from the results JSON")
    p.add_argument("--quiet", action="store_true", help="do not stream the experiments' output")
    p.add_argument("--tiny", action="store_true", help="a generated tiny project (tfidf_logreg, 2 seeds unless given)")
    p.add_argument("--workdir", type=Path, help="with --tiny: where the tiny project goes (kept); default a temp dir, removed")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds: at least 1")
    if args.jobs < 1:
        p.error("--jobs: at least 1")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    work = None
    if args.tiny:
        work = (args.workdir or Path(tempfile.mkdtemp(prefix="seeds-"))).resolve()
        if "--seeds" not in argv and not args.seed_list:
            args.seeds = 2
        args.models = args.models or "tfidf_logreg"
        log(f"tiny: generating a tiny project in {work / 'tiny'}")
        project, env = tiny_project(work, args.models.split(","))
    else:
        project = args.project.resolve()
        mirror = os.environ.get("NEWSGROUPS_MIRROR") or (str(project.parent / "shared" / "data") if (project.parent / "shared" / "data").is_dir() else None)
        env = seeds_env(Path(mirror).resolve() if mirror else None)
    default_out = Path(tempfile.gettempdir()) / "seeds.tiny.json" if args.tiny else project / "metrics" / "seeds.json"
    out_path = (args.out or default_out).resolve()
    try:
        params = load_params(project)
        models, skipped = choose_models(params, args.models)
        seeds = seed_list(args)
        if not models:
            raise SystemExit(f"error: none of the models has a seed param ({', '.join(skipped)})")
        result = {"protocol": {
            "models": models, "seeds": seeds, "jobs": args.jobs, "source": args.source,
            "targets": "whole pipeline" if args.full else "evaluate@<model>", "project": str(project),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }}
        if args.rev:
            rev = args.rev
        elif args.report_only:  # the commit the experiments were queued on, if an earlier run recorded it
            rev = recorded_rev(out_path) or head_commit(project)
        else:
            rev = head_commit(project)
        result["protocol"]["baseline_rev"] = rev
        if not args.report_only:
            result["queue"] = queue(project, env, models, seeds, args.full, args.force)
            if not args.no_run:
                result["run_seconds"] = round(run_queue(project, env, args.jobs, args.quiet or args.tiny), 1)
        runs, baseline = collect_dvc(project, env, models, seeds, rev) if args.source == "dvc" else collect_mlflow(project, models, seeds)
        result["models"] = {}
        if args.merge:  # the other models' results stay, with the commit they were measured at
            earlier = earlier_models(out_path, lambda r: parent_commit(project, r))
            result["models"] = {m: e for m, e in earlier.items() if m not in models}
        for model in models:
            accs = [r["accuracy"] for r in runs[model] if r["accuracy"] is not None]
            result["models"][model] = {"stats": stats(accs), "baseline": baseline.get(model), "runs": runs[model], "baseline_rev": rev}
        result["not_seeded"] = skipped
        result["markdown"] = markdown(result["models"], skipped)
        result["protocol"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if args.md:
            args.md.write_text(result["markdown"] + "\n", encoding="utf-8")
        print(result["markdown"])
        missing = sum(r["accuracy"] is None for m in runs.values() for r in m)
        if missing:
            print(f"\n{missing} run(s) without a result (queued, running, failed or missing): see {out_path}")
        print(f"\nwrote {out_path}")
    finally:
        if args.tiny and args.workdir is None and work is not None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
