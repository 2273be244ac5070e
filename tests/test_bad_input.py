"""Bad input: each case gives one clear `error:` line and exit 1 with nothing half-written, or,
where the input is merely odd (invalid bytes, a 50 MB message, a 10 MB document to classify), is
processed within bounded time and memory. Plus a property-based test of prepare.clean_text.

The stages run by hand (`python -m pipeline.<stage>`) in small work directories; the params.yaml
case also goes through `dvc repro`. Archive layout problems (truncation, unsafe members) and GloVe
value errors are tests/test_data_stages.py's."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from faultkit import assert_one_line_error, run_stage, stage_dir, temporaries, tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import GROUPS, ROOT, glove_words, make_glove, make_project, message, run

from bench import peak_rss

MB = 1024 * 1024


def write_archive(path: Path, members, compresslevel: int = 1) -> None:
    """A .tar.gz of (name, bytes) members, written fast (compression level 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def tiny_members(train_per_group: int = 12, test_per_group: int = 6, seed: int = 0):
    """The members of tiny.make_archive: (name, bytes), and their counts."""
    rng = random.Random(seed)
    members = []
    for split, n in (("train", train_per_group), ("test", test_per_group)):
        for group in GROUPS:
            for i in range(n):
                members.append((f"20news-bydate-{split}/{group}/{1000 + i}", message(group, rng)))
    counts = {"groups": len(GROUPS), "train": train_per_group * len(GROUPS), "test": test_per_group * len(GROUPS)}
    return members, counts


def measured(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str, str, float, int]:
    """Run `cmd`; returns (exit code, stdout, stderr, seconds, peak RSS in MB of that process).
    A run past `timeout` is killed and fails the test: a hang."""
    out, err = cwd / ".measured.out", cwd / ".measured.err"
    with open(out, "w") as o, open(err, "w") as e:
        res = peak_rss.run(cmd, cwd, env, o, e, timeout)
    assert res["seconds"] < timeout and res["returncode"] is not None, f"{' '.join(cmd)}: no result within {timeout} s (killed)"
    stdout, stderr = out.read_text(), err.read_text()
    out.unlink()
    err.unlink()
    return res["returncode"], stdout, stderr, res["seconds"], res["max_rss_kib"] // 1024


def stage_cmd(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pipeline.{stage}", *args]


# ---------------------------------------------------------------- the archive


def test_archive_of_10000_empty_files(tmp_path):
    members = [(f"20news-bydate-{split}/{GROUPS[i % 3]}/{i}", b"") for split in ("train", "test") for i in range(5000)]
    work, env = stage_dir(tmp_path, counts={"groups": 3, "train": 36, "test": 18})
    write_archive(tmp_path / "mirror" / "20news-bydate.tar.gz", members)
    code, _, stderr, seconds, _ = measured(stage_cmd("fetch_corpus"), work, env, timeout=120)
    proc = subprocess.CompletedProcess([], code, "", stderr)
    assert_one_line_error(proc, "train split has 5000 documents, expected 36 (fetch_corpus.train_docs)")
    assert not (work / "data/raw/20news-bydate.tar.gz").exists() and temporaries(work / "data") == []


def test_invalid_bytes_in_a_message_are_accepted(tmp_path):
    """latin-1 decodes every byte: invalid UTF-8, lone continuation bytes, NULs and CRLFs go in,
    valid text (NULs and CRs dropped) comes out."""
    members, counts = tiny_members()
    bad = (b"From: x\xff\xfe@example.edu\r\nSubject: \x80\x81 caf\xe9 \xc3\x28 orbit\r\n\r\n"
           b"launch \xed\xa0\x80 rocket \xf0\x28\x8c\x28 nasa\x00 moon \xfe\xff\r\n")
    members.append(("20news-bydate-train/sci.space/9999", bad))
    counts["train"] += 1
    work, env = stage_dir(tmp_path, counts=counts)
    write_archive(tmp_path / "mirror" / "20news-bydate.tar.gz", members)
    for stage in ("fetch_corpus", "prepare"):
        proc = run_stage(stage, work, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    frames = pd.concat([pd.read_parquet(work / f"data/prepared/{s}.parquet") for s in ("train", "val", "test")])
    [text] = frames.loc[frames["id"] == "train/sci.space/9999", "text"].tolist()
    assert text == bad.decode("latin-1").replace("\r\n", "\n").replace("\x00", "")
    assert "\xff\xfe" in text and "\x00" not in text and "\r" not in text
    for value in frames["text"]:
        value.encode("utf-8")  # every text is valid Unicode


def test_a_50mb_message_is_processed_in_bounded_memory(tmp_path):
    members, counts = tiny_members()
    line = b"the orbit of the shuttle launch and the rocket to the moon, said nasa today\n"
    huge = b"From: big@example.edu\nSubject: a very long message\n\n" + line * (50 * MB // len(line) + 1)
    members.append(("20news-bydate-train/sci.space/50mb", huge))
    counts["train"] += 1
    work, env = stage_dir(tmp_path, counts=counts)
    write_archive(tmp_path / "mirror" / "20news-bydate.tar.gz", members)
    peaks = {}
    for stage, timeout in (("fetch_corpus", 120), ("prepare", 300), ("tokenize", 600)):
        code, _, stderr, seconds, peak = measured(stage_cmd(stage), work, env, timeout)
        assert code == 0, f"{stage}: {stderr[-3000:]}"
        peaks[stage] = peak
    # bounded: measured about 0.6 GB and 1.7 GB (TensorFlow's string ops), the machine has 24 GB
    assert peaks["prepare"] < 1200 and peaks["tokenize"] < 3000, peaks
    train = pd.read_parquet(work / "data/prepared/train.parquet")
    val = pd.read_parquet(work / "data/prepared/val.parquet")
    both = pd.concat([train, val])
    assert both["text"].str.len().max() >= 50 * MB
    config = json.loads((work / "data/tokenized/config.json").read_text())
    assert config["vocab_size"] > 10


# ---------------------------------------------------------------- GloVe and params


def test_glove_with_a_duplicated_word(tmp_path):
    work, env = stage_dir(tmp_path)
    words = glove_words()
    make_glove(tmp_path / "glove.tiny.50d.txt", words=words[:5] + [words[2]] + words[5:])
    proc = run_stage("fetch_glove", work, env)
    assert_one_line_error(proc, "glove.tiny.50d.txt: line 6: word", "repeats line 3")
    assert not (work / "data/glove").exists() and temporaries(work / "data") == []


BROKEN_YAML = "prepare:\n  val_fraction: 0.25\n  seed: [42\n  remove: []\n"


def test_params_yaml_syntax_error_in_a_stage(tmp_path):
    work, env = stage_dir(tmp_path)
    assert run_stage("fetch_corpus", work, env).returncode == 0
    before = tree_digest(work / "data")
    (work / "params.yaml").write_text(BROKEN_YAML)
    for stage in ("fetch_corpus", "prepare"):
        proc = run_stage(stage, work, env)
        assert_one_line_error(proc, "params.yaml: invalid YAML at line")
    assert tree_digest(work / "data") == before and not (work / "data/prepared").exists()


def test_params_yaml_syntax_error_under_dvc(tmp_path):
    repo, env = make_project(tmp_path, ["tfidf_logreg"])
    (repo / "params.yaml").write_text(BROKEN_YAML)
    proc = run(["dvc", "repro"], repo, env, check=False, timeout=300)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "params.yaml" in output and "YAML" in output and "Traceback" not in output, output[-3000:]
    assert "Running stage" not in proc.stdout
    assert not (repo / "data").exists()


# ---------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A scikit-learn model directory saved the pipeline's way (classifier.save_sklearn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.classifier import save_sklearn

    members, _ = tiny_members()
    texts = [data.decode("latin-1") for _, data in members]
    labels = [GROUPS.index(name.split("/")[1]) for name, _ in members]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200)).fit(texts, labels)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    directory.mkdir()
    save_sklearn(directory, model, list(GROUPS), "tfidf_logreg")
    return directory


def test_predict_input_over_10mb_is_refused(tiny_model, tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(10 * MB + 1)  # sparse: 10 MiB + 1 byte
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code, stdout, stderr, _, _ = measured(stage_cmd("predict", "--model", str(tiny_model), "--file", str(big)),
                                          tmp_path, env, timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], code, stdout, stderr), "big.txt", "larger than 10 MB")
    assert stdout == ""


def test_predict_input_of_10mb_is_classified(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    line = b"the engine and the brake of the car at the dealer\n"
    doc.write_bytes((line * (10_000_000 // len(line)))[:10_000_000])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code, stdout, stderr, seconds, peak = measured(
        stage_cmd("predict", "--model", str(tiny_model), "--file", str(doc), "--json"), tmp_path, env, timeout=300)
    assert code == 0, stderr[-3000:]
    [record] = [json.loads(line) for line in stdout.splitlines()]
    assert record["label"] == "rec.autos" and record["path"] == str(doc)
    assert peak < 1500, f"{peak} MB"


# ---------------------------------------------------------------- clean_text, property-based


def newsgroup_bytes():
    """Message-shaped bytes: header lines, a blank line, quoted and plain lines, a signature."""
    line = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" "))
    header = st.tuples(st.sampled_from([b"From", b"Subject", b"Organization", b"Lines", b"X-\xff"]), line).map(
        lambda kv: kv[0] + b": " + kv[1])
    body_line = st.one_of(line, line.map(lambda b: b"> " + b), line.map(lambda b: b"|" + b), st.just(b"--"),
                          st.just(b"In article <x@y> someone writes:"))
    return st.tuples(st.lists(header, max_size=6), st.lists(body_line, max_size=20),
                     st.sampled_from([b"\n", b"\r\n"])).map(
        lambda t: t[2].join(t[0]) + t[2] + t[2] + t[2].join(t[1]))


ANY_BYTES = st.one_of(st.binary(max_size=4000), st.text(max_size=1000).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      newsgroup_bytes())
REMOVE = st.lists(st.sampled_from(["headers", "footers", "quotes"]), unique=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=ANY_BYTES, remove=REMOVE)
def test_clean_text_takes_any_bytes(raw, remove):
    from pipeline.prepare import clean_text

    text = clean_text(raw, remove)
    assert isinstance(text, str)
    text.encode("utf-8")  # valid text: no lone surrogates, encodable as the parquet files are
    assert "\x00" not in text
    assert len(text) <= len(raw)
    if not remove:
        assert text == raw.decode("latin-1").replace("\r\n", "\n").replace("\x00", "")


@settings(max_examples=100, deadline=None)
@given(raw=newsgroup_bytes())
def test_clean_text_removes_what_it_is_asked_to(raw):
    from pipeline.prepare import clean_text

    everything = clean_text(raw, ["headers", "footers", "quotes"])
    assert clean_text(raw, ["quotes", "footers", "headers"]) == everything  # order of the list is irrelevant
    assert not any(line.startswith((">", "|")) for line in everything.split("\n"))
