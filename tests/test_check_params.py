"""check_params: every section of params.yaml validated by the stages' own schemas, before DVC
runs (and so deletes the outputs of) any other stage."""
from __future__ import annotations

import copy

import pytest
import yaml
from tiny import ROOT

from pipeline import check_params as C
from pipeline import paths
from pipeline.common import PipelineError

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def changed(dotted: str, value) -> dict:
    params = copy.deepcopy(PARAMS)
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return params


def test_the_projects_params_are_valid():
    C.check_params(copy.deepcopy(PARAMS))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.cbow.epochs", -1, "params.yaml: train.cbow.epochs = -1: expected an integer in [1, 1000]"),
        ("prepare.val_fraction", 0.9, "params.yaml: prepare.val_fraction = 0.9: expected a number in (0, 0.5]"),
        ("fetch_corpus.retries", "3", "params.yaml: fetch_corpus.retries = '3': expected an integer"),
        ("fetch_glove.dim", 42, "params.yaml: fetch_glove.dim = 42: expected one of 50, 100, 200, 300"),
        ("embeddings.oov", "ones", "params.yaml: embeddings.oov = 'ones': expected one of zeros, random"),
        ("evaluate.batch_size", 0, "params.yaml: evaluate.batch_size = 0: expected an integer in [1, 65536]"),
        ("report.alias", "", "params.yaml: report.alias = '': expected a non-empty string"),
        ("mlflow.experiment", None, "params.yaml: mlflow.experiment = None: expected a non-empty string"),
        ("tokenize.max_len", 100, "params.yaml: train.cnn_glove.max_len = 500: above tokenize.max_len 100"),
        ("encode.quantize", "no", "params.yaml: encode.quantize = 'no': expected true or false"),
        ("fetch_encoder.retries", 11, "params.yaml: fetch_encoder.retries = 11: expected an integer in [0, 10]"),
        ("train.models", ["cbow", "bert"], "params.yaml: train.models: unknown model 'bert'"),
        ("train.cbw", {"epochs": 1}, "params.yaml: train.cbw: unknown model"),
        ("ensemble.members", ["cbow", "bert"], "params.yaml: ensemble.members: 'bert' is not in train.models"),
        ("train.lstm.units", KeyError, "params.yaml: train.lstm.units: missing"),
        ("tokenize", KeyError, "params.yaml: tokenize: missing"),
        ("preprocess", {"a": 1}, "params.yaml: preprocess: unknown section"),
    ],
)
def test_a_bad_value_in_any_section_is_one_line_naming_the_key(key, value, message):
    with pytest.raises(PipelineError) as exc:
        C.check_params(changed(key, value))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_the_stage_writes_a_constant_file_and_keeps_it_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS), encoding="utf-8")
    C.main([])
    first = (tmp_path / paths.PARAMS_VALID).read_bytes()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed("prepare.seed", 7)), encoding="utf-8")
    C.main([])
    assert (tmp_path / paths.PARAMS_VALID).read_bytes() == first  # other valid params: nothing downstream reruns
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed("prepare.seed", -7)), encoding="utf-8")
    with pytest.raises(PipelineError, match="prepare.seed = -7"):
        C.main([])
    assert (tmp_path / paths.PARAMS_VALID).read_bytes() == first


def upstream(name: str) -> set[str]:
    """Stages whose outputs (or metrics, plots) stage `name` depends on: a dep equal to, inside or
    holding an output; a foreach stage's ${item} stands for any name."""
    outs = []
    for other, stage in DVC.items():
        body = stage.get("do", stage)
        for out in [*body.get("outs", []), *body.get("metrics", []), *body.get("plots", [])]:
            path = next(iter(out)) if isinstance(out, dict) else out
            outs.append((path.split("${item}")[0].rstrip("/"), other))
    deps = DVC[name].get("do", DVC[name]).get("deps", [])
    return {other for dep in deps for prefix, other in outs
            if other != name and (dep == prefix or dep.startswith(prefix + "/") or prefix.startswith(dep + "/"))}


def test_check_params_runs_before_every_other_stage():
    """It is upstream of every stage that has no other upstream stage, so DVC runs it first;
    it tracks every param, and DVC never deletes its output (persist)."""
    out = str(paths.PARAMS_VALID)
    stage = DVC["check_params"]
    assert stage["params"] == [{"params.yaml": None}]
    assert stage["outs"] == [{out: {"persist": True}}]
    roots = [name for name in DVC if name != "check_params" and not upstream(name) - {"check_params"}]
    assert roots and all(out in DVC[name]["deps"] for name in roots), roots


def test_every_section_has_a_check():
    assert set(PARAMS) <= set(C.SECTIONS)
