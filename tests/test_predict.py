"""`python -m pipeline.predict`: inputs, model choice, output formats and one-line errors.

The CLI runs as a subprocess in the tiny trained project (its own copy of pipeline/, its own
mlflow.db), as a user would run it there; a few pure helpers are tested in-process."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from pipeline import inputs
from pipeline import predict as P
from pipeline.common import PipelineError

SPACE = "the nasa shuttle launch put a satellite into orbit around the moon"
AUTOS = "my car engine needs new brake pads and the dealer wants a new transmission"
HUMAN = re.compile(r"^(?P<source>.+?): (?P<groups>\S+ \d\.\d\d( \| \S+ \d\.\d\d)*)$")


def cli(project, *args: str, stdin: str | bytes | None = None, env: dict | None = None):
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "pipeline.predict", *args], cwd=project.repo, env=env or project.env,
        input=data if data is not None else b"", capture_output=True, timeout=600,
    )


def text(stream: bytes) -> str:
    return stream.decode("utf-8", "replace")


def assert_one_error(proc, *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one `error: ...` line on stderr that names the problem."""
    err = text(proc.stderr)
    assert proc.returncode == 1, (proc.returncode, err)
    assert text(proc.stdout) == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def groups_of(line: str) -> list[tuple[str, float]]:
    match = HUMAN.match(line)
    assert match, line
    return [(g.rsplit(" ", 1)[0], float(g.rsplit(" ", 1)[1])) for g in match["groups"].split(" | ")]


# ---------------------------------------------------------------- the happy paths


def test_arguments_with_the_champion(tiny_trained_project):
    proc = cli(tiny_trained_project, SPACE, AUTOS)
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stderr) == ""  # no library chatter
    lines = text(proc.stdout).splitlines()
    assert [HUMAN.match(item)["source"] for item in lines] == ["arg 1", "arg 2"]
    for line in lines:
        groups = groups_of(line)
        assert len(groups) == 3  # top 3 by default
        assert {g for g, _ in groups} <= {"comp.graphics", "rec.autos", "sci.space"}
        probs = [p for _, p in groups]
        assert probs == sorted(probs, reverse=True) and 0.98 <= sum(probs) <= 1.02
    assert groups_of(lines[0])[0][0] == "sci.space" and groups_of(lines[1])[0][0] == "rec.autos"


def test_json_matches_the_model_directory(tiny_trained_project):
    """A pipeline model name is data/models/<name>; JSON lines carry exactly its probabilities."""
    from pipeline.classifier import Classifier

    proc = cli(tiny_trained_project, "--json", "-k", "2", "-m", "tfidf_logreg", SPACE, AUTOS)
    assert proc.returncode == 0, text(proc.stderr)
    records = [json.loads(item) for item in text(proc.stdout).splitlines()]
    expected = Classifier(tiny_trained_project.repo / "data/models/tfidf_logreg").predict_proba([SPACE, AUTOS])
    classes = ["comp.graphics", "rec.autos", "sci.space"]
    for i, (record, probs) in enumerate(zip(records, expected), start=1):
        assert record["source"] == f"arg {i}"
        order = np.argsort(-probs)[:2]
        assert [t["group"] for t in record["top"]] == [classes[j] for j in order]
        assert [t["probability"] for t in record["top"]] == pytest.approx([float(probs[j]) for j in order], abs=1e-6)
        assert record["label"] == record["top"][0]["group"]


def test_fast_path_gives_the_saved_probabilities(tiny_trained_project, tmp_path):
    """The Classifier's prediction path (a scikit-learn pipeline's steps called one by one; a Keras
    model's ONNX export on onnxruntime, its text made ids in plain Python) gives what the train
    stage saved on validation, in batches as one at a time; a Keras model's are the Keras model's
    own on the tokenize stage's ids, and its directory without the export (TensorFlow, one traced
    graph) gives them too; the ensemble pools its members' saved probabilities."""
    import shutil

    import keras
    import pandas as pd

    from pipeline.classifier import ONNX_MODEL, Classifier, pool, read_ensemble
    from pipeline.models import custom_objects

    repo = tiny_trained_project.repo
    val = pd.read_parquet(repo / "data/prepared/val.parquet")["text"].tolist()
    saved = {}
    for name in tiny_trained_project.models:
        directory = repo / "data/models" / name
        classifier = Classifier(directory)
        saved[name] = np.load(directory / "val_probs.npy")
        probs = classifier.predict_proba(val, batch_size=4)
        np.testing.assert_allclose(probs, saved[name], atol=1e-5, err_msg=name)
        assert (probs.argmax(axis=1) == saved[name].argmax(axis=1)).all(), name
        singles = np.concatenate([classifier.predict_proba([t]) for t in val[:5]])
        np.testing.assert_allclose(singles, saved[name][:5], atol=1e-5, err_msg=name)
        if classifier.kind != "keras":
            continue
        model = keras.saving.load_model(directory / "model.keras", custom_objects=custom_objects())
        ids = np.load(repo / "data/tokenized/val.npz")["x"][:, : json.loads((directory / "meta.json").read_text())["text"]["max_len"]]
        own = model.predict(ids, verbose=0)
        np.testing.assert_allclose(probs, own, atol=1e-5, err_msg=name)
        assert (probs.argmax(axis=1) == own.argmax(axis=1)).all(), name
        without_export = shutil.copytree(directory, tmp_path / name, ignore=shutil.ignore_patterns(ONNX_MODEL))
        on_tensorflow = Classifier(without_export)
        np.testing.assert_allclose(on_tensorflow.predict_proba(val, batch_size=4), probs, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(on_tensorflow.predict_proba(val[:1]), probs[:1], atol=1e-5, err_msg=name)
    members, weights, pooling, _ = read_ensemble(repo / "data/ensemble")
    expected = pool([saved[m].astype(np.float64) for m in members], weights, pooling)
    np.testing.assert_allclose(Classifier(repo / "data/ensemble").predict_proba(val), expected, atol=1e-5)


@pytest.mark.parametrize("model", ["tfidf_logreg", "cbow", "data/ensemble"])
def test_a_model_loads_without_tensorflow_or_mlflow(tiny_trained_project, model):
    """Keras models included: they run as their ONNX export."""
    code = (f"import sys; from pipeline import predict; predict.main(['-m', {model!r}, 'rocket orbit']); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tiny_trained_project.repo, env=tiny_trained_project.env,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0 and text(proc.stderr) == "", text(proc.stderr)
    assert text(proc.stdout).splitlines()[0].startswith("arg 1: ")
    assert text(proc.stdout).splitlines()[-1] == "[]"


def test_the_fast_alias(tiny_trained_project):
    """`report` registers beside the champion the best model declared fast (params.yaml report)."""
    summary = json.loads((tiny_trained_project.repo / "metrics/summary.json").read_text())
    assert summary["fast"]["alias"] == "fast" and summary["fast"]["model"] in summary["models"]
    proc = cli(tiny_trained_project, "-m", "models:/newsgroups-classifier@fast", SPACE)
    assert proc.returncode == 0 and text(proc.stderr) == "", text(proc.stderr)
    assert groups_of(text(proc.stdout).strip())[0][0] == "sci.space"


def test_directory_goes_on_past_bad_files(tiny_trained_project, tmp_path):
    """Good files are classified (JSON, a Keras model by name); every bad one is reported at the
    end, one line each, and the exit status says something failed."""
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "space.txt").write_text(SPACE + "\n", encoding="utf-8")
    (docs / "sub" / "autos.txt").write_bytes(AUTOS.encode("latin-1") + b" caf\xe9\r\n")  # latin-1, CRLF
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (docs / "empty.txt").write_text("  \n", encoding="utf-8")
    (docs / "dangling.txt").symlink_to(tmp_path / "nowhere")  # unreadable: the target is missing
    (docs / ".hidden").write_text(SPACE, encoding="utf-8")  # hidden files are skipped
    proc = cli(tiny_trained_project, "--json", "-m", "cbow", "--dir", str(docs))
    assert proc.returncode == 1
    records = [json.loads(item) for item in text(proc.stdout).splitlines()]
    assert [r["path"] for r in records] == [str(docs / "space.txt"), str(docs / "sub" / "autos.txt")]
    assert all(len(r["top"]) == 3 for r in records)
    errors = text(proc.stderr).splitlines()
    assert all(line.startswith("error: ") for line in errors), errors
    assert any(str(docs / "image.png") in item and "binary" in item for item in errors), errors
    assert any(str(docs / "empty.txt") in item and "empty" in item for item in errors), errors
    assert any(str(docs / "dangling.txt") in item and "unreadable" in item for item in errors), errors
    assert errors[-1] == "error: 3 inputs failed, 2 documents classified"


def test_stdin_one_document_per_line_with_a_run_uri(tiny_trained_project):
    summary = json.loads((tiny_trained_project.repo / "metrics/summary.json").read_text())
    run_id = summary["models"]["cbow"]["mlflow_run_id"]
    proc = cli(tiny_trained_project, "--lines", "-k", "1", "-m", f"runs:/{run_id}/model", stdin=f"{SPACE}\n\n{AUTOS}\n")
    assert proc.returncode == 0, text(proc.stderr)
    lines = text(proc.stdout).splitlines()
    assert [HUMAN.match(item)["source"] for item in lines] == ["stdin:1", "stdin:3"]  # blank line 2 skipped
    assert all(len(groups_of(item)) == 1 for item in lines)


def test_files_and_piped_stdin(tiny_trained_project, tmp_path):
    (tmp_path / "a.txt").write_text(SPACE, encoding="utf-8")
    (tmp_path / "lines.txt").write_text(f"{AUTOS}\n{SPACE}\n", encoding="utf-8")
    proc = cli(tiny_trained_project, "-m", "tfidf_logreg", "-f", str(tmp_path / "a.txt"), "-f", "-", stdin=AUTOS)
    assert proc.returncode == 0, text(proc.stderr)
    assert [HUMAN.match(item)["source"] for item in text(proc.stdout).splitlines()] == [str(tmp_path / "a.txt"), "stdin"]
    proc = cli(tiny_trained_project, "-m", "tfidf_logreg", "--lines", "-f", str(tmp_path / "lines.txt"))
    assert [HUMAN.match(item)["source"] for item in text(proc.stdout).splitlines()] == [f"{tmp_path / 'lines.txt'}:{i}" for i in (1, 2)]
    proc = cli(tiny_trained_project, "-m", "tfidf_logreg", stdin=SPACE)  # no arguments: stdin
    assert proc.returncode == 0 and text(proc.stdout).startswith("stdin: sci.space ")


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "case",
    ["empty-arg", "empty-stdin", "blank-lines", "missing-file", "a-directory", "binary-file", "too-large", "top-zero"],
)
def test_bad_input_is_one_line_and_exit_1(tiny_trained_project, tmp_path, case):
    """Refused before any model is loaded, each with its own message."""
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:  # sparse: 10 MB + 1 byte, no time spent writing it
        handle.truncate(inputs.MAX_INPUT_BYTES + 1)
    args, stdin, needles = {
        "empty-arg": ([""], None, ["arg 1", "empty"]),
        "empty-stdin": ([], "", ["stdin", "empty"]),
        "blank-lines": (["--lines"], "\n  \n\n", ["stdin", "empty"]),
        "missing-file": (["-f", str(tmp_path / "nope.txt")], None, ["nope.txt", "no such file"]),
        "a-directory": (["-f", str(tmp_path)], None, ["is a directory"]),
        "binary-file": (["-f", str(binary)], None, ["blob.bin", "binary"]),
        "too-large": (["-f", str(big)], None, ["big.txt", "larger than 10 MB"]),
        "top-zero": (["-k", "0", SPACE], None, ["--top"]),
    }[case]
    assert_one_error(cli(tiny_trained_project, *args, stdin=stdin), *needles)


def test_too_large_stdin_is_refused(tiny_trained_project):
    assert_one_error(cli(tiny_trained_project, stdin=b"a" * (inputs.MAX_INPUT_BYTES + 1)), "stdin", "larger than 10 MB")


@pytest.mark.parametrize(
    "model, needles",
    [
        ("no_such_model", ["no_such_model", "trained models: cbow, tfidf_logreg"]),
        ("models:/newsgroups-classifier@no_such_alias", ["unknown alias 'no_such_alias'", "aliases: champion"]),
        ("models:/no-such-registered@champion", ["no registered model 'no-such-registered'"]),
        ("runs:/0123456789abcdef/model", ["no run '0123456789abcdef'"]),
    ],
)
def test_bad_model_is_one_line_and_exit_1(tiny_trained_project, model, needles):
    assert_one_error(cli(tiny_trained_project, "-m", model, SPACE), *needles)


def test_missing_store_is_reported_not_created(tiny_trained_project, tmp_path):
    store = tmp_path / "absent.db"
    env = {**tiny_trained_project.env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    assert_one_error(cli(tiny_trained_project, SPACE, env=env), "absent.db", "no such database")
    assert not store.exists()


# ---------------------------------------------------------------- helpers, in-process


def test_decode_reads_text_refuses_binary():
    assert inputs.decode("café\r\nline".encode("utf-8"), "x") == "café\nline"
    assert inputs.decode("café".encode("latin-1"), "x") == "café"  # the corpus's own encoding
    assert inputs.decode(b"\xef\xbb\xbfbom", "x") == "bom"
    for blob in (b"text\x00more", bytes(range(1, 32)) * 10):
        with pytest.raises(PipelineError, match="binary"):
            inputs.decode(blob, "x")


def test_split_documents_by_line():
    docs = inputs.split_inputs("one\n\n  \ntwo", "f.txt", "f.txt", lines=True)
    assert [(d.source, d.text, d.line) for d in docs] == [("f.txt:1", "one", 1), ("f.txt:4", "two", 4)]
    assert inputs.split_inputs("whole\ntext", "f.txt", "f.txt", lines=False)[0].source == "f.txt"


def test_no_input_on_a_terminal_is_an_error():
    class Tty(io.BytesIO):
        def isatty(self):
            return True

    with pytest.raises(PipelineError, match="no input"):
        P.main([], stdin=Tty())


def test_top_groups_orders_and_cuts():
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]], dtype=np.float32)
    assert P.top_groups(["a", "b", "c"], probs, 2) == [
        {"label": "b", "top": [{"group": "b", "probability": float(np.float32(0.7))},
                               {"group": "a", "probability": float(np.float32(0.2))}]},
        {"label": "a", "top": [{"group": "a", "probability": 0.5}, {"group": "c", "probability": float(np.float32(0.4))}]},
    ]
    assert len(P.top_groups(["a", "b", "c"], probs, 10)[0]["top"]) == 3


def test_a_foreign_pyfunc_model_is_read_through_its_frame():
    """A pyfunc model that is not one of ours answers with a frame: its probability columns are used."""
    import pandas as pd

    from pipeline.predictor import frame_predictor

    class Model:
        def predict(self, texts):
            return pd.DataFrame({"label": ["b"] * len(texts), "a": [0.3] * len(texts), "b": [0.7] * len(texts)})

    predictor = frame_predictor("runs:/x/model", Model())
    assert predictor.classes == ["a", "b"]
    assert P.classify(predictor, ["one", "two"], k=1) == [{"label": "b", "top": [{"group": "b", "probability": 0.7}]}] * 2

    class NotOurs:
        def predict(self, texts):
            return pd.DataFrame({"score": [1.0] * len(texts)})

    with pytest.raises(PipelineError, match=r"runs:/y/model: the model's output has no 'label' column"):
        frame_predictor("runs:/y/model", NotOurs())
