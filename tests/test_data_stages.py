"""Unit tests of the data stages (fetch_corpus, prepare, tokenize, fetch_glove, embeddings) and of
params validation, on tiny generated data in a temporary working directory."""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny import GROUPS, ROOT, QuietHandler, make_archive, make_glove, tiny_params, write_params

from pipeline import embeddings, fetch_corpus, fetch_glove, paths, prepare, sequences, tokenize
from pipeline import params as P
from pipeline.common import MIRROR_ENV, PipelineError, run_main
from pipeline.corpus import iter_documents
from pipeline.models import get_spec

ARCHIVE = "20news-bydate.tar.gz"


# ---------------------------------------------------------------- helpers


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, f"not a one-line error: {message!r}"
    return message


def leftovers(directory: Path) -> list[str]:
    """Everything in `directory` (temporary siblings included); [] when it does not exist."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def setup_project(tmp_path: Path, monkeypatch, extra=(), **overrides) -> dict:
    """A working directory with params.yaml, a mirror holding a tiny archive, and the env set."""
    mirror, work = tmp_path / "mirror", tmp_path / "work"
    work.mkdir()
    counts = make_archive(mirror / ARCHIVE, extra=list(extra))
    glove = make_glove(tmp_path / "glove.tiny.50d.txt")
    params = tiny_params(str(glove), counts, ["tfidf_logreg"])
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    write_params(work / "params.yaml", params)
    monkeypatch.chdir(work)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    return {"work": work, "mirror": mirror, "archive": mirror / ARCHIVE, "counts": counts, "params": params}


def tar_member(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    else:
        info.linkname = link
        data = None
    return info, data


def write_prepared(directory: Path, splits: dict[str, list[tuple[str, int, str]]]) -> None:
    """data/prepared by hand: {split: [(group, label, text), ...]}."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        frame = pd.DataFrame(
            [(f"{split}/{g}/{i}", g, lab, text) for i, (g, lab, text) in enumerate(rows)],
            columns=["id", "group", "label", "text"],
        )
        frame["label"] = frame["label"].astype("int32")
        frame.to_parquet(directory / f"{split}.parquet", index=False)


# ---------------------------------------------------------------- fetch_corpus


def test_fetch_corpus_from_mirror(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch)
    fetch_corpus.main([])
    out = project["work"] / "data/raw" / ARCHIVE
    assert out.read_bytes() == project["archive"].read_bytes()
    assert leftovers(out.parent) == [ARCHIVE]  # no temporary sibling left
    info = fetch_corpus.fetch_corpus(P.stage_params("fetch_corpus", fetch_corpus.SCHEMA), tmp_path / "again.tar.gz")
    assert info == {"source": str(project["archive"]), "train": 36, "test": 18}


def _assert_fails_cleanly(project: dict, *fragments: str) -> str:
    with pytest.raises(PipelineError) as exc:
        fetch_corpus.main([])
    message = one_line(exc)
    assert str(project["archive"]) in message, message  # names the user's file, not a temp copy
    for fragment in fragments:
        assert fragment in message, message
    assert leftovers(project["work"] / "data/raw") == []  # neither the output nor a .20news... temp
    return message


def test_fetch_corpus_truncated_gzip(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch)
    data = project["archive"].read_bytes()
    project["archive"].write_bytes(data[: len(data) // 2])
    _assert_fails_cleanly(project, "not a readable .tar.gz")


def test_fetch_corpus_missing_gzip_trailer(tmp_path, monkeypatch):
    """All tar data present, only the gzip trailer (CRC and length) cut: still refused."""
    project = setup_project(tmp_path, monkeypatch)
    data = project["archive"].read_bytes()
    project["archive"].write_bytes(data[:-8])
    _assert_fails_cleanly(project, "not a readable .tar.gz")


def test_fetch_corpus_corrupted_content_is_refused(tmp_path, monkeypatch):
    """A flipped bit inside a document's compressed bytes must not pass with the right counts."""
    project = setup_project(tmp_path, monkeypatch)
    data = bytearray(project["archive"].read_bytes())
    data[len(data) // 2] ^= 0x01
    project["archive"].write_bytes(bytes(data))
    _assert_fails_cleanly(project, "not a readable .tar.gz")


def test_iter_documents_reads_everything_of_a_good_archive(tmp_path):
    path = tmp_path / ARCHIVE
    make_archive(path)
    docs = list(iter_documents(path))
    assert len(docs) == 54
    assert {d.group for d in docs} == set(GROUPS)
    assert all(d.raw.startswith(b"From: ") for d in docs)
    with gzip.open(path) as raw:  # the same bytes tarfile itself sees
        with tarfile.open(fileobj=io.BytesIO(raw.read())) as tar:
            first = tar.getmembers()[0]
            assert tar.extractfile(first).read() == docs[0].raw


def test_fetch_corpus_wrong_document_count(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__train_docs=37)
    _assert_fails_cleanly(project, "train split has 36 documents, expected 37", "fetch_corpus.train_docs")


def test_fetch_corpus_wrong_test_count(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__test_docs=17)
    _assert_fails_cleanly(project, "test split has 18 documents, expected 17", "fetch_corpus.test_docs")


def test_fetch_corpus_wrong_group_count(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__groups=4)
    _assert_fails_cleanly(project, "has 3 groups, expected 4", "fetch_corpus.groups")


def test_fetch_corpus_extra_group_in_one_split(tmp_path, monkeypatch):
    member = tar_member("20news-bydate-train/misc.forsale/1", b"From: x\n\nfor sale\n")
    project = setup_project(tmp_path, monkeypatch, [member], fetch_corpus__train_docs=37)
    _assert_fails_cleanly(project, "train split has 4 groups, expected 3")


@pytest.mark.parametrize(
    "member, problem",
    [
        (tar_member("../evil"), "path escapes the archive"),
        (tar_member("20news-bydate-train/../../evil"), "path escapes the archive"),
        (tar_member("/etc/evil"), "absolute path"),
        (tar_member("20news-bydate-train/comp.graphics/link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "link"),
        (tar_member("20news-bydate-train/comp.graphics/hard", kind=tarfile.LNKTYPE, link="etc/passwd"), "link"),
        (tar_member("20news-bydate-train/comp.graphics/fifo", kind=tarfile.FIFOTYPE), "special file"),
        (tar_member("20news-bydate-train/extra.txt"), "unexpected member"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "bad-layout"],
)
def test_fetch_corpus_unsafe_members(tmp_path, monkeypatch, member, problem):
    project = setup_project(tmp_path, monkeypatch, [member])
    message = _assert_fails_cleanly(project, problem)
    assert repr(member[0].name) in message
    assert not (tmp_path / "evil").exists() and not (project["work"] / "evil").exists()


def test_fetch_corpus_accepts_dot_members(tmp_path, monkeypatch):
    """Archives packed with `tar -C dir .` start with a "./" member and name files "./...": fine."""
    dot = tarfile.TarInfo("./")
    dot.type = tarfile.DIRTYPE
    folder = tarfile.TarInfo("./20news-bydate-train")
    folder.type = tarfile.DIRTYPE
    extra = [(dot, None), (folder, None), tar_member("./20news-bydate-train/comp.graphics/9", b"From: x\n\nhi\n")]
    setup_project(tmp_path, monkeypatch, extra, fetch_corpus__train_docs=37)
    fetch_corpus.main([])
    assert Path("data/raw", ARCHIVE).is_file()


def test_fetch_corpus_download_unreachable(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__url="http://127.0.0.1:9/x.tar.gz",
                            fetch_corpus__retries=0, fetch_corpus__timeout=2)
    monkeypatch.delenv(MIRROR_ENV)
    with pytest.raises(PipelineError) as exc:
        fetch_corpus.main([])
    message = one_line(exc)
    assert "http://127.0.0.1:9/x.tar.gz" in message and "1 attempts" in message
    assert MIRROR_ENV in message and ARCHIVE in message
    assert leftovers(project["work"] / "data/raw") == []


def test_fetch_corpus_mirror_without_the_file_falls_back_to_url(tmp_path, monkeypatch):
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__url="http://127.0.0.1:9/x.tar.gz",
                            fetch_corpus__retries=0, fetch_corpus__timeout=2)
    project["archive"].unlink()
    with pytest.raises(PipelineError, match=MIRROR_ENV):
        fetch_corpus.main([])


def test_mirror_that_is_not_a_directory(tmp_path, monkeypatch):
    setup_project(tmp_path, monkeypatch)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(PipelineError, match="not a directory"):
        fetch_corpus.main([])


@pytest.mark.parametrize("good_md5, label_gzip", [(True, False), (True, True), (False, False)],
                         ids=["md5-ok", "md5-ok-content-encoding-gzip", "md5-wrong"])
def test_fetch_corpus_download_checks_md5(tmp_path, monkeypatch, http_server, good_md5, label_gzip):
    """The file's own bytes are saved, even from a server that labels .gz `Content-Encoding: gzip`."""
    import hashlib

    monkeypatch.setattr(QuietHandler, "label_gzip", label_gzip)
    www, base = http_server
    make_archive(www / ARCHIVE)
    md5 = hashlib.md5((www / ARCHIVE).read_bytes()).hexdigest() if good_md5 else "0" * 32
    project = setup_project(tmp_path, monkeypatch, fetch_corpus__url=f"{base}/{ARCHIVE}", fetch_corpus__md5=md5)
    monkeypatch.delenv(MIRROR_ENV)
    out = project["work"] / "data/raw" / ARCHIVE
    if good_md5:
        fetch_corpus.main([])
        assert out.read_bytes() == (www / ARCHIVE).read_bytes()
    else:
        with pytest.raises(PipelineError) as exc:
            fetch_corpus.main([])
        assert "does not match the expected " + md5 in one_line(exc)
        assert leftovers(out.parent) == []


# ---------------------------------------------------------------- prepare


@pytest.fixture
def raw_project(tmp_path, monkeypatch):
    """A working directory whose data/raw holds the tiny archive (fetch_corpus done)."""
    project = setup_project(tmp_path, monkeypatch)
    (project["work"] / "data/raw").mkdir(parents=True)
    (project["work"] / "data/raw" / ARCHIVE).write_bytes(project["archive"].read_bytes())
    return project


def set_param(project: dict, section: str, **values) -> None:
    project["params"][section].update(values)
    write_params(project["work"] / "params.yaml", project["params"])


def load_splits() -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(f"data/prepared/{s}.parquet") for s in paths.SPLITS}


def test_clean_text_latin1_and_line_ends():
    text = prepare.clean_text(b"caf\xe9 na\xefve\r\nnext\x00 line\r\n")
    assert text == "café naïve\nnext line\n"
    assert prepare.clean_text(bytes(range(256))).encode("latin-1") == bytes(range(1, 256))  # every byte decodes


def test_clean_text_removes_headers_footers_quotes():
    raw = (b"From: a@b.c\nSubject: hi\n\nIn article <1@x>, bob writes:\n> quoted line\n"
           b"| also quoted\nreal body text\n\n--\nBob, signature\n")
    kept = prepare.clean_text(raw)
    assert "From: a@b.c" in kept and "> quoted line" in kept and "Bob, signature" in kept
    assert prepare.clean_text(raw, ["headers"]).startswith("In article")
    stripped = prepare.clean_text(raw, ["headers", "footers", "quotes"])
    assert stripped.strip() == "real body text"
    no_footer = prepare.clean_text(raw, ["footers"])
    assert "signature" not in no_footer and "From: a@b.c" in no_footer


def test_prepare_keeps_everything_by_default(raw_project):
    prepare.main([])
    splits = load_splits()
    frames = pd.concat(splits.values())
    assert len(frames) == 54 and frames["id"].is_unique
    assert all("signature line café" in t for t in frames["text"])  # byte 0xE9 read as latin-1
    assert not any("\ufffd" in t for t in frames["text"])
    assert all(t.startswith("From: ") for t in frames["text"])
    assert sorted(frames["group"].unique()) == list(GROUPS)
    assert {g: lab for g, lab in zip(frames["group"], frames["label"])} == {g: i for i, g in enumerate(GROUPS)}
    assert list(splits["train"].columns) == ["id", "group", "label", "text"]
    assert leftovers(Path("data")) == ["prepared", "raw"]  # no temporary .prepared.* directory


def test_prepare_removes_headers_footers_quotes(raw_project):
    set_param(raw_project, "prepare", remove=["headers", "footers", "quotes"])
    prepare.main([])
    frames = pd.concat(load_splits().values())
    assert len(frames) == 54
    for text in frames["text"]:
        lines = text.splitlines()
        assert not any(line.startswith(("From:", "Subject:", "Organization:", "Lines:")) for line in lines), text
        assert not any(line.startswith(">") for line in lines), text
        assert "--" not in lines and "signature" not in text, text
    metrics = json.loads(Path("metrics/data.json").read_text())
    assert metrics["remove"] == ["headers", "footers", "quotes"]
    docs = metrics["documents"]
    # one train document per group has an empty body: with everything removed it is empty
    assert docs["train"]["empty"] + docs["val"]["empty"] == 3
    assert docs["test"]["empty"] == 0
    empty_ids = sorted(frames.loc[frames["text"].str.strip() == "", "id"])
    assert empty_ids == sorted(f"train/{g}/1000" for g in GROUPS)


def test_prepare_only_headers_removed_leaves_quote_and_signature(raw_project):
    set_param(raw_project, "prepare", remove=["headers"])
    prepare.main([])
    frames = pd.concat(load_splits().values())
    assert not frames["text"].str.contains("From: ").any()
    assert frames["text"].str.contains("> someone wrote:").all()
    assert frames["text"].str.contains("signature line café").all()
    metrics = json.loads(Path("metrics/data.json").read_text())
    assert all(metrics["documents"][s]["empty"] == 0 for s in paths.SPLITS)


def test_prepare_metrics(raw_project):
    prepare.main([])
    metrics = json.loads(Path("metrics/data.json").read_text())
    assert metrics["remove"] == [] and metrics["groups"] == 3
    assert metrics["published"] == {"train": 36, "test": 18}
    docs = metrics["documents"]
    assert {s: docs[s]["total"] for s in paths.SPLITS} == {"train": 27, "val": 9, "test": 18}
    assert docs["val"]["per_class"] == {g: 3 for g in GROUPS}
    assert docs["train"]["per_class"] == {g: 9 for g in GROUPS}
    assert docs["test"]["per_class"] == {g: 6 for g in GROUPS}
    assert all(docs[s]["empty"] == 0 for s in paths.SPLITS)


def test_split_is_stratified_seeded_and_leaves_test_alone(raw_project):
    frame = prepare.read_corpus(Path("data/raw") / ARCHIVE, [])
    first = prepare.split_corpus(frame, 0.25, seed=7)
    again = prepare.split_corpus(frame, 0.25, seed=7)
    other = prepare.split_corpus(frame, 0.25, seed=8)
    for split in paths.SPLITS:
        pd.testing.assert_frame_equal(first[split], again[split])
    assert set(first["val"]["id"]) != set(other["val"]["id"])
    train_ids = set(frame.loc[frame["split"] == "train", "id"])
    assert set(first["train"]["id"]) | set(first["val"]["id"]) == train_ids
    assert not set(first["train"]["id"]) & set(first["val"]["id"])
    assert first["val"]["group"].value_counts().to_dict() == {g: 3 for g in GROUPS}  # every class, stratified
    test = first["test"]
    assert len(test) == 18 and test["id"].str.startswith("test/").all()
    expected = frame[frame["split"] == "test"].reset_index(drop=True)
    assert test["id"].tolist() == expected["id"].tolist() and test["text"].tolist() == expected["text"].tolist()
    pd.testing.assert_frame_equal(test, other["test"])


def test_val_fraction_too_small_for_the_groups(raw_project):
    set_param(raw_project, "prepare", val_fraction=0.05)  # 2 validation documents for 3 groups
    with pytest.raises(PipelineError) as exc:
        prepare.main([])
    assert one_line(exc).startswith("params.yaml: prepare.val_fraction = 0.05: no stratified split of 36 ")
    assert leftovers(Path("data")) == ["raw"] and not Path("metrics/data.json").exists()


def test_prepare_main_is_reproducible(raw_project):
    prepare.main([])
    first = load_splits()
    prepare.main([])
    for split, frame in load_splits().items():
        pd.testing.assert_frame_equal(frame, first[split])


# ---------------------------------------------------------------- tokenize


TOKENIZE_CFG = {"max_tokens": 50, "max_len": 6, "standardize": "lower_and_strip_punctuation"}


@pytest.fixture
def tokenized(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"tokenize": TOKENIZE_CFG})
    write_prepared(
        tmp_path / "data/prepared",
        {
            "train": [
                ("a.grp", 0, "alpha beta gamma alpha"),
                ("b.grp", 1, "Beta, GAMMA! delta delta delta"),
                ("a.grp", 0, "alpha alpha epsilon one two three four five six seven"),
                ("b.grp", 1, "gamma"),
            ],
            "val": [("a.grp", 0, "gamma"), ("b.grp", 1, "delta zeta")],
            "test": [("a.grp", 0, "zeta alpha"), ("b.grp", 1, "")],
        },
    )
    tokenize.main([])
    out = tmp_path / "data/tokenized"
    vocab = json.loads((out / "vocab.json").read_text())
    data = {s: np.load(out / f"{s}.npz") for s in paths.SPLITS}
    return {"dir": out, "vocab": vocab, "ids": {w: i for i, w in enumerate(vocab)}, "data": data}


def test_tokenize_vocabulary(tokenized):
    vocab = tokenized["vocab"]
    assert vocab[:2] == ["", "[UNK]"]
    assert set(vocab[2:]) == {"alpha", "beta", "gamma", "delta", "epsilon", "one", "two", "three", "four",
                              "five", "six", "seven"}
    assert "zeta" not in vocab  # only in val/test: the vocabulary is adapted on train alone
    assert vocab[2] == "alpha"  # most frequent first (4 occurrences)
    config = json.loads((tokenized["dir"] / "config.json").read_text())
    assert config == {**TOKENIZE_CFG, "vocab_size": len(vocab)}
    assert json.loads((tokenized["dir"] / "classes.json").read_text()) == ["a.grp", "b.grp"]


def test_tokenize_sequences_padded_at_the_end(tokenized):
    ids, data = tokenized["ids"], tokenized["data"]
    train = data["train"]["x"]
    assert train.shape == (4, 6) and train.dtype == np.int32
    assert train[0].tolist() == [ids["alpha"], ids["beta"], ids["gamma"], ids["alpha"], 0, 0]
    assert train[1].tolist() == [ids["beta"], ids["gamma"], ids["delta"], ids["delta"], ids["delta"], 0]
    assert train[2].tolist()[:3] == [ids["alpha"], ids["alpha"], ids["epsilon"]]  # cut at the end: first 6 kept
    assert train[2].tolist()[3:] == [ids["one"], ids["two"], ids["three"]]
    assert train[3].tolist() == [ids["gamma"], 0, 0, 0, 0, 0]
    assert data["train"]["y"].tolist() == [0, 1, 0, 1]


def test_tokenize_unknown_words_and_empty_docs(tokenized):
    ids, data = tokenized["ids"], tokenized["data"]
    assert data["val"]["x"][1].tolist() == [ids["delta"], 1, 0, 0, 0, 0]
    assert data["test"]["x"][0].tolist() == [1, ids["alpha"], 0, 0, 0, 0]  # zeta -> [UNK]
    assert data["test"]["x"][1].tolist() == [0] * 6  # empty document: all padding
    assert data["test"]["y"].tolist() == [0, 1]


def test_saved_vocabulary_reproduces_the_encoding(tokenized):
    vectorizer = sequences.load_vectorizer(tokenized["dir"])
    assert vectorizer.get_vocabulary() == tokenized["vocab"]
    x = sequences.encode(vectorizer, ["alpha beta gamma alpha", "zeta alpha", ""])
    assert x.tolist() == [tokenized["data"]["train"]["x"][0].tolist()] + tokenized["data"]["test"]["x"].tolist()
    longer = sequences.load_vectorizer(tokenized["dir"], max_len=3)
    assert sequences.encode(longer, ["alpha beta gamma alpha"]).shape == (1, 3)
    assert sequences.encode(vectorizer, []).shape == (0, 6)


def test_tokenize_max_tokens_caps_vocabulary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"tokenize": {**TOKENIZE_CFG, "max_tokens": 4}})
    write_prepared(tmp_path / "data/prepared", {
        "train": [("a", 0, "x x x y y z"), ("b", 1, "x y")], "val": [("a", 0, "z")], "test": [("b", 1, "z y")]})
    tokenize.main([])
    vocab = json.loads((tmp_path / "data/tokenized/vocab.json").read_text())
    assert vocab == ["", "[UNK]", "x", "y"]
    assert np.load(tmp_path / "data/tokenized/test.npz")["x"][0].tolist() == [1, 3, 0, 0, 0, 0]


# ---------------------------------------------------------------- fetch_glove


def test_parse_glove_lines_happy_path():
    words, vectors = fetch_glove.parse_glove_lines(["the 0.1 -0.2 3\n", "cat 1e-3 2 -4.5\r\n", "\n"], 3, "g.txt")
    assert words == ["the", "cat"]
    assert vectors.dtype == np.float32 and vectors.shape == (2, 3)
    np.testing.assert_allclose(vectors, [[0.1, -0.2, 3], [1e-3, 2, -4.5]], rtol=1e-6)


@pytest.mark.parametrize(
    "lines, line, problem",
    [
        (["a 1 2 3", "b 1 2", "c 1 2 3"], 2, "2 values, expected 3"),  # ragged
        (["a 1 2 3 4", "b 1 2 3 4"], 1, "4 values, expected 3"),  # wrong dimension
        (["a 1 2 3", "b 1 x 3"], 2, "non-numeric value for 'b'"),
        (["a 1 2 3", "b 1 nan 3"], 2, "NaN or infinite value for 'b'"),
        (["a 1 2 3", "b inf 2 3"], 2, "NaN or infinite value for 'b'"),
        (["a 1 2 3", "b 1 2 3", "a 4 5 6"], 3, "word 'a' repeats line 1"),
    ],
    ids=["ragged", "dimension", "non-numeric", "nan", "inf", "duplicate"],
)
def test_parse_glove_lines_errors(lines, line, problem):
    with pytest.raises(PipelineError) as exc:
        fetch_glove.parse_glove_lines(lines, 3, "some/glove.txt")
    message = one_line(exc)
    assert message.startswith(f"some/glove.txt: line {line}: "), message
    assert problem in message


def test_parse_glove_lines_empty():
    with pytest.raises(PipelineError, match="no vectors"):
        fetch_glove.parse_glove_lines(["", "\n"], 3, "empty.txt")


def glove_project(tmp_path, monkeypatch, source: str, dim: int = 50, mirror: Path | None = None) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch_glove"].update(source=source, dim=dim, retries=0, timeout=2, url="http://127.0.0.1:9/glove.6B.zip")
    write_params(work / "params.yaml", params)
    monkeypatch.chdir(work)
    if mirror is None:
        monkeypatch.delenv(MIRROR_ENV, raising=False)
    else:
        monkeypatch.setenv(MIRROR_ENV, str(mirror))
    return work


def read_glove_out(work: Path) -> tuple[list[str], np.ndarray]:
    return json.loads((work / "data/glove/words.json").read_text()), np.load(work / "data/glove/vectors.npy")


def test_fetch_glove_text_file(tmp_path, monkeypatch):
    glove = make_glove(tmp_path / "g.txt", words=["the", "cat", "sat"])
    work = glove_project(tmp_path, monkeypatch, str(glove))
    fetch_glove.main([])
    words, vectors = read_glove_out(work)
    expected_words, expected = fetch_glove.read_text_file(glove, 50)
    assert words == ["the", "cat", "sat"] == expected_words
    assert vectors.dtype == np.float32 and vectors.shape == (3, 50)
    np.testing.assert_array_equal(vectors, expected)
    first = [float(v) for v in glove.read_text().splitlines()[0].split()[1:]]
    np.testing.assert_allclose(vectors[0], first, rtol=1e-6)
    assert leftovers(work / "data") == ["glove"]


def test_fetch_glove_bad_file_leaves_no_output(tmp_path, monkeypatch):
    glove = make_glove(tmp_path / "g.txt", words=["the", "cat", "sat"])
    lines = glove.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # ragged row on line 2
    glove.write_text("\n".join(lines) + "\n")
    work = glove_project(tmp_path, monkeypatch, str(glove))
    with pytest.raises(PipelineError) as exc:
        fetch_glove.main([])
    assert one_line(exc).startswith(f"{glove}: line 2: 49 values, expected 50")
    assert leftovers(work / "data") == []  # no data/glove, no .glove.* nor temporary work directory


def test_fetch_glove_missing_and_non_utf8_files(tmp_path, monkeypatch):
    glove_project(tmp_path, monkeypatch, str(tmp_path / "missing.txt"))
    with pytest.raises(PipelineError, match="missing.txt: missing"):
        fetch_glove.main([])
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"caf\xe9 " + b" ".join([b"0.1"] * 50) + b"\n")
    with pytest.raises(PipelineError, match="latin.txt: line 1: not UTF-8"):
        fetch_glove.read_text_file(bad, 50)


@pytest.mark.parametrize("packed", [False, True], ids=["text", "zip"])
def test_fetch_glove_non_utf8_byte_names_line_and_file_offset(tmp_path, packed):
    """Far into the file (past a text reader's first buffer), the line and the byte's offset
    counted from the file's start."""
    lines = [(f"w{i} " + " ".join(["0.125"] * 50) + "\n").encode() for i in range(200)]
    lines[150] = b"caf\xe9 " + lines[150].split(b" ", 1)[1]
    data = b"".join(lines)
    offset = data.index(b"\xe9")
    assert offset > 8192
    path = tmp_path / "glove.txt"
    path.write_bytes(data)
    if packed:
        with zipfile.ZipFile(tmp_path / "glove.6B.zip", "w") as archive:
            archive.writestr("glove.6B.50d.txt", data)
    with pytest.raises(PipelineError) as exc:
        if packed:
            fetch_glove.read_glove_zip(tmp_path / "glove.6B.zip", 50, "glove.6B.zip")
        else:
            fetch_glove.read_text_file(path, 50)
    name = "glove.6B.zip:glove.6B.50d.txt" if packed else str(path)
    assert one_line(exc) == f"{name}: line 151: not UTF-8 text (invalid continuation byte at byte {offset})"


def test_fetch_glove_package_with_dim_100_is_an_error(tmp_path, monkeypatch):
    work = glove_project(tmp_path, monkeypatch, "package", dim=100)
    with pytest.raises(PipelineError) as exc:
        fetch_glove.main([])
    message = one_line(exc)
    assert "fetch_glove.dim = 100" in message and "50d" in message and "source: url" in message
    assert leftovers(work / "data") == []


def test_fetch_glove_package_50d():
    words, vectors = fetch_glove.load_glove({"source": "package", "dim": 50}, Path("unused"))
    assert vectors.dtype == np.float32 and vectors.shape == (len(words), 50) and len(words) > 100_000
    assert {"the", "space", "car"} <= set(words[:5000])
    assert np.isfinite(vectors[:1000]).all()


def make_glove_zip(path: Path, member: str, words: list[str], dim: int = 50) -> np.ndarray:
    text = make_glove(path.parent / "member.txt", dim=dim, words=words)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(text, member)
    return fetch_glove.read_text_file(text, dim)[1]


def test_fetch_glove_zip_source(tmp_path, monkeypatch):
    expected = make_glove_zip(tmp_path / "glove.6B.zip", "glove.6B.50d.txt", ["a", "b", "c", "d"])
    work = glove_project(tmp_path, monkeypatch, str(tmp_path / "glove.6B.zip"))
    fetch_glove.main([])
    words, vectors = read_glove_out(work)
    assert words == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(vectors, expected)


def test_fetch_glove_zip_without_the_member(tmp_path, monkeypatch):
    make_glove_zip(tmp_path / "glove.6B.zip", "glove.6B.100d.txt", ["a", "b"], dim=100)
    work = glove_project(tmp_path, monkeypatch, str(tmp_path / "glove.6B.zip"))
    with pytest.raises(PipelineError, match=r"glove.6B.zip: has no member glove.6B.50d.txt"):
        fetch_glove.main([])
    assert leftovers(work / "data") == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("a " + " ".join(["1"] * 50) + "\na " + " ".join(["2"] * 50) + "\n", "line 2: word 'a' repeats line 1"),
        (b"caf\xe9 " + b" ".join([b"1"] * 50) + b"\n", "line 1: not UTF-8 text"),
    ],
    ids=["duplicate-word", "not-utf8"],
)
def test_fetch_glove_zip_bad_member_names_zip_and_member(tmp_path, monkeypatch, content, message):
    zip_path = tmp_path / "g.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("glove.6B.50d.txt", content)
    work = glove_project(tmp_path, monkeypatch, str(zip_path))
    with pytest.raises(PipelineError) as exc:
        fetch_glove.main([])
    assert one_line(exc).startswith(f"{zip_path}:glove.6B.50d.txt: {message}")
    assert leftovers(work / "data") == []


def test_fetch_glove_source_is_a_directory(tmp_path, monkeypatch):
    glove_project(tmp_path, monkeypatch, str(tmp_path))
    with pytest.raises(PipelineError) as exc:
        fetch_glove.main([])
    assert one_line(exc).startswith(f"{tmp_path}: cannot be read")


def test_fetch_glove_not_a_zip(tmp_path, monkeypatch):
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    glove_project(tmp_path, monkeypatch, str(fake))
    with pytest.raises(PipelineError, match="fake.zip: not a readable zip archive"):
        fetch_glove.main([])


def test_fetch_glove_url_source_uses_the_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    expected = make_glove_zip(mirror / "glove.6B.zip", "glove.6B.50d.txt", ["x", "y"])
    work = glove_project(tmp_path, monkeypatch, "url", mirror=mirror)
    fetch_glove.main([])
    words, vectors = read_glove_out(work)
    assert words == ["x", "y"]
    np.testing.assert_array_equal(vectors, expected)
    assert leftovers(work / "data") == ["glove"]  # the temporary copy of the zip is gone


def test_fetch_glove_url_source_offline_is_a_clear_error(tmp_path, monkeypatch):
    work = glove_project(tmp_path, monkeypatch, "url")
    with pytest.raises(PipelineError) as exc:
        fetch_glove.main([])
    message = one_line(exc)
    assert "download failed" in message and MIRROR_ENV in message and "glove.6B.zip" in message
    assert leftovers(work / "data") == []


# ---------------------------------------------------------------- embeddings

VOCAB = ["", "[UNK]", "cat", "dog", "zebra", "emu"]
GLOVE_WORDS = ["dog", "[UNK]", "cat", "bird", "emu"]
GLOVE_VECTORS = np.arange(15, dtype=np.float32).reshape(5, 3) + 1.0


def test_build_matrix_zeros():
    matrix, found = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "zeros", 0)
    assert matrix.dtype == np.float32 and matrix.shape == (6, 3)
    assert found.tolist() == [False, False, True, True, False, True]  # [UNK] is never a word
    np.testing.assert_array_equal(matrix[0], 0)  # padding
    np.testing.assert_array_equal(matrix[1], 0)  # [UNK]
    np.testing.assert_array_equal(matrix[2], GLOVE_VECTORS[2])  # cat
    np.testing.assert_array_equal(matrix[3], GLOVE_VECTORS[0])  # dog
    np.testing.assert_array_equal(matrix[4], 0)  # zebra: not in GloVe
    np.testing.assert_array_equal(matrix[5], GLOVE_VECTORS[4])  # emu


def test_build_matrix_random_is_seeded():
    first, found = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "random", 3)
    again, _ = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "random", 3)
    other, _ = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "random", 4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[~found], other[~found])
    np.testing.assert_array_equal(first[0], 0)
    assert np.all(first[[1, 4]] != 0)  # [UNK] and zebra get small random vectors
    np.testing.assert_array_equal(first[found], GLOVE_VECTORS[[2, 0, 4]])
    np.testing.assert_array_equal(other[found], first[found])


def test_coverage_hand_made():
    _, found = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "zeros", 0)
    train_ids = np.array([[2, 2, 3, 1, 4, 0], [4, 2, 1, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    # tokens: cat 3, dog 1, [UNK] 2, zebra 2, emu 1 -> 9; with a vector: cat, dog, emu -> 5
    report = embeddings.coverage(VOCAB, found, train_ids, top=5)
    assert report == {
        "vocab_size": 6,
        "words_with_vector": 3,
        "vocab_coverage": 0.75,  # 3 of the 4 real words
        "train_tokens": 9,
        "train_token_coverage": round(5 / 9, 4),
        "unk_token_share": round(2 / 9, 4),
        "top_oov_words": ["zebra"],
    }
    assert embeddings.coverage(VOCAB, found, train_ids, top=0)["top_oov_words"] == []


def test_embeddings_main(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"embeddings": {"oov": "zeros", "seed": 1, "top_oov": 3}})
    (tmp_path / "data/tokenized").mkdir(parents=True)
    (tmp_path / "data/glove").mkdir(parents=True)
    (tmp_path / "data/tokenized/vocab.json").write_text(json.dumps(VOCAB))
    np.savez(tmp_path / "data/tokenized/train.npz", x=np.array([[2, 4, 4, 0], [1, 3, 0, 0]], dtype=np.int32),
             y=np.array([0, 1], dtype=np.int32))
    (tmp_path / "data/glove/words.json").write_text(json.dumps(GLOVE_WORDS))
    np.save(tmp_path / "data/glove/vectors.npy", GLOVE_VECTORS)
    embeddings.main([])
    matrix = np.load(tmp_path / "data/embeddings/matrix.npy")
    expected, _ = embeddings.build_matrix(VOCAB, GLOVE_WORDS, GLOVE_VECTORS, "zeros", 1)
    np.testing.assert_array_equal(matrix, expected)
    report = json.loads((tmp_path / "metrics/embeddings.json").read_text())
    assert report["dim"] == 3 and report["oov_init"] == "zeros"
    assert report["train_tokens"] == 5 and report["train_token_coverage"] == 0.4
    assert report["top_oov_words"] == ["zebra"] and report["unk_token_share"] == 0.2


# ---------------------------------------------------------------- params validation


@pytest.fixture
def params_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return tmp_path, params


def prepare_error(tmp_path: Path, params) -> str:
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(PipelineError) as exc:
        P.stage_params("prepare", prepare.SCHEMA)
    return one_line(exc)


def test_params_valid_section(params_dir):
    tmp_path, params = params_dir
    write_params(tmp_path / "params.yaml", params)
    assert P.stage_params("prepare", prepare.SCHEMA) == params["prepare"]
    assert P.stage_params("train.cbow", get_spec("cbow").schema) == params["train"]["cbow"]


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"colour": "red"}, ["params.yaml: prepare.colour: unknown key", "val_fraction"]),
        ({"seed": "forty-two"}, ["prepare.seed = 'forty-two'", "an integer"]),
        ({"seed": 1.5}, ["prepare.seed = 1.5", "an integer"]),
        ({"seed": True}, ["prepare.seed = True", "an integer"]),
        ({"seed": -1}, ["prepare.seed = -1", "an integer in [0, inf]"]),
        ({"val_fraction": 0.7}, ["prepare.val_fraction = 0.7", "(0, 0.5]"]),
        ({"val_fraction": 0}, ["prepare.val_fraction = 0", "(0, 0.5]"]),
        ({"val_fraction": float("nan")}, ["prepare.val_fraction = nan", "finite"]),
        ({"val_fraction": "0.1"}, ["prepare.val_fraction = '0.1'", "a finite number"]),
        ({"remove": "headers"}, ["prepare.remove = 'headers'", "a list"]),
        ({"remove": ["body"]}, ["prepare.remove[0] = 'body'", "one of headers, footers, quotes"]),
        ({"remove": ["headers", "headers"]}, ["prepare.remove", "without repeats"]),
    ],
)
def test_params_bad_values_name_the_key(params_dir, change, fragments):
    tmp_path, params = params_dir
    params["prepare"].update(change)
    message = prepare_error(tmp_path, params)
    for fragment in fragments:
        assert fragment in message, message


def test_params_missing_key_and_section(params_dir):
    tmp_path, params = params_dir
    del params["prepare"]["seed"]
    assert prepare_error(tmp_path, params) == "params.yaml: prepare.seed: missing"
    del params["prepare"]
    assert prepare_error(tmp_path, params) == "params.yaml: prepare: missing"
    params["prepare"] = [1, 2]
    assert "prepare: expected a mapping, got list" in prepare_error(tmp_path, params)


def test_params_nested_section_missing_names_dotted_key(params_dir):
    tmp_path, params = params_dir
    del params["train"]["cbow"]
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(PipelineError, match=r"^params.yaml: train.cbow: missing$"):
        P.section(P.load_params(), "train.cbow.epochs")


def test_params_invalid_yaml_names_file_and_line(params_dir):
    tmp_path, _ = params_dir
    (tmp_path / "params.yaml").write_text("prepare:\n  seed: 42\n  remove: [headers\n  val_fraction: 0.1\n")
    with pytest.raises(PipelineError) as exc:
        P.stage_params("prepare", prepare.SCHEMA)
    message = one_line(exc)
    assert message.startswith("params.yaml: invalid YAML at line "), message
    line = int(message.split("at line ")[1].split(":")[0])
    assert 3 <= line <= 5


def test_params_not_a_mapping_and_missing_file(params_dir):
    tmp_path, _ = params_dir
    (tmp_path / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(PipelineError, match="expected a mapping of stage sections"):
        P.load_params()
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(PipelineError, match="params.yaml: missing"):
        P.load_params()


def test_params_exponents_without_a_dot_are_numbers(params_dir):
    """`dvc exp run -S train.tfidf_logreg.alpha=1e-6` writes `alpha: 1e-06`, a string to YAML 1.1."""
    tmp_path, _ = params_dir
    (tmp_path / "params.yaml").write_text("train:\n  a: 1e-06\n  b: -2E3\n  c: 3.0e-6\n  d: 1e\n  e: 0.5\n")
    assert P.load_params()["train"] == {"a": 1e-06, "b": -2000.0, "c": 3e-06, "d": "1e", "e": 0.5}


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_stage_subprocess_reports_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  val_fraction: 0.9\n  seed: 1\n  remove: []\n")
    proc = run_stage("pipeline.prepare", tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: params.yaml: prepare.val_fraction = 0.9: expected a number in (0, 0.5]")
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_run_main_turns_errors_into_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prepare"])
    (tmp_path / "params.yaml").write_text("prepare:\n  val_fraction: 0.1\n  seed: 1\n  remove: [\n")
    with pytest.raises(SystemExit) as exc:
        run_main(prepare.main)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: params.yaml: invalid YAML at line "), err
