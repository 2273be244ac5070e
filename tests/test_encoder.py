"""The sentence encoder (pipeline/encoder.py) and the models on its embeddings (minilm_svm,
minilm_logreg), on a tiny random BERT the tests generate: the ONNX graph computes BERT's forward
pass, a directory or zip gives the same files, a fitted model pickles whole, and bad files fail in
one line naming them (the sources: tests/test_fetch_encoder.py)."""
from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny import make_encoder, tiny_params

from pipeline import encoder as E
from pipeline import params as P
from pipeline.common import PipelineError
from pipeline.models import REGISTRY, get_spec

TEXTS = [
    "From: user1@example.edu\nSubject: about orbit\n\nthe shuttle launch into orbit and the moon",
    "",
    "engine brake tire",
    " ".join(["pixel texture render"] * 30),  # longer than max_len: truncated
    "unknownword zzz",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


@pytest.fixture(scope="module")
def fitted(model_dir) -> E.SentenceEncoder:
    return E.SentenceEncoder(str(model_dir), max_len=16).fit()


def numpy_bert(model_dir: Path, ids: list[int]) -> np.ndarray:
    """BERT's forward pass for one unpadded document, written out in numpy, mean-pooled and L2-normalised."""
    from safetensors.numpy import load_file
    from scipy.special import erf

    config = json.loads((model_dir / "config.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    heads, h = config["num_attention_heads"], config["hidden_size"]

    def norm(x, p):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + "attention.self." + n).reshape(len(ids), heads, -1).transpose(1, 0, 2) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(h // heads)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        context = (attention @ v).transpose(1, 0, 2).reshape(len(ids), h)
        x = norm(x + dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = dense(x, p + "intermediate.dense")
        x = norm(x + dense(0.5 * inner * (1 + erf(inner / np.sqrt(2))), p + "output.dense"), p + "output.LayerNorm")
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def test_graph_computes_berts_forward_pass_in_input_order(model_dir, fitted):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(16)
    got = E.SentenceEncoder(str(model_dir), max_len=16, batch_size=2).fit().transform(TEXTS)  # padded batches
    assert got.shape == (len(TEXTS), 8) and got.dtype == np.float32
    assert [len(tokenizer.encode(t).ids) for t in TEXTS] == [16, 2, 5, 16, 4]  # the empty text: [CLS] [SEP]
    for text, row in zip(TEXTS, got):
        np.testing.assert_allclose(row, numpy_bert(model_dir, tokenizer.encode(text).ids), atol=2e-5)
    np.testing.assert_allclose(fitted.transform(TEXTS), got, atol=1e-6)  # batch size does not matter
    assert fitted.transform([]).shape == (0, 8)


def test_quantized_encoder_stays_close(model_dir, fitted):
    exact = fitted.transform(TEXTS)
    int8 = E.SentenceEncoder(str(model_dir), max_len=16, quantize=True).fit()
    approx = int8.transform(TEXTS)
    import onnx

    ops = [n.op_type for n in onnx.load_from_string(int8.graph_).graph.node]
    # the 6 weight products per layer in int8; the 2 attention products (no weights) stay float
    assert ops.count("MatMulInteger") == 6 * 2 and ops.count("MatMul") == 2 * 2
    assert np.isfinite(approx).all()
    assert (np.sum(exact * approx, axis=1) > 0.9).all()  # both are unit vectors: cosine


def test_the_content_view_encodes_the_subject_and_the_body_only(model_dir):
    from pipeline.messages import content

    full = E.SentenceEncoder(str(model_dir), max_len=16).fit()
    view = E.SentenceEncoder(str(model_dir), max_len=16, text="content").fit()
    np.testing.assert_allclose(view.embed(TEXTS), full.embed([content(t) for t in TEXTS]), atol=1e-6)
    assert not np.allclose(view.embed(TEXTS[:1]), full.embed(TEXTS[:1]), atol=1e-3)  # the headers are gone
    again = pickle.loads(pickle.dumps(view, protocol=5))
    np.testing.assert_allclose(again.transform(TEXTS), view.embed(TEXTS), atol=1e-6)


@pytest.mark.parametrize("name", ["minilm_svm", "minilm_logreg"])
def test_encoder_models_are_raw_text_models_that_pickle_whole(name, model_dir, tmp_path):
    """As train@<name> builds it: the classifier fitted on cached embeddings, the encoder in
    front; the saved pipeline computes from raw text what the cached path computed."""
    from sklearn.pipeline import make_pipeline

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    encoder = E.SentenceEncoder(str(copy), max_len=16, batch_size=2).fit()
    cached = encoder.embed(TEXTS)
    cfg = P.validate(f"train.{name}", tiny_params("unused.txt", {"groups": 3, "train": 36, "test": 18})["train"][name],
                     REGISTRY[name].schema)
    # each text 5 times: the SVM's probabilities are calibrated by a 5-fold cross-validation
    head = get_spec(name).build(cfg).fit(np.repeat(cached, 5, axis=0), np.repeat([0, 1, 1, 2, 2], 5))
    model = make_pipeline(encoder, head)
    probs = head.predict_proba(cached)
    assert probs.shape == (5, 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(model.predict_proba(TEXTS), probs, atol=1e-6)
    shutil.rmtree(copy)  # the fitted model holds the encoder: its files are no longer needed
    again = pickle.loads(pickle.dumps(model, protocol=5))
    np.testing.assert_allclose(again.predict_proba(TEXTS[::-1]), probs[::-1], atol=1e-6)


def zip_of(model_dir: Path, path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in E.FILES:
            archive.write(model_dir / name, prefix + name)
    return path


def test_directory_and_zips_give_the_same_files(model_dir, tmp_path):
    expected = {name: (model_dir / name).read_bytes() for name in E.FILES}
    assert E.read_model_files(str(model_dir)) == expected
    assert E.read_model_files(zip_of(model_dir, tmp_path / "flat.zip")) == expected
    assert E.read_model_files(zip_of(model_dir, tmp_path / "nested.zip", "all-MiniLM-L6-v2/")) == expected
    # a config.json in a subfolder (the package's 1_Pooling/) does not shadow the root's
    mixed = zip_of(model_dir, tmp_path / "mixed.zip")
    with zipfile.ZipFile(mixed, "a") as archive:
        archive.writestr("1_Pooling/config.json", "{}")
    assert E.read_model_files(mixed) == expected


def break_dir(model_dir: Path, tmp_path: Path, how: str) -> str:
    bad = shutil.copytree(model_dir, tmp_path / "bad")
    if how == "no-tokenizer":
        (bad / "tokenizer.json").unlink()
    elif how == "config-not-json":
        (bad / "config.json").write_text("{oops")
    elif how == "config-not-bert":
        (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    elif how == "config-a-list":
        (bad / "config.json").write_text("[1, 2]")
    elif how == "weights-garbage":
        (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    elif how == "weights-missing-layer":
        from safetensors.numpy import load_file, save_file

        weights = {k: v for k, v in load_file(str(bad / "model.safetensors")).items() if not k.startswith("encoder.layer.1.")}
        save_file(weights, str(bad / "model.safetensors"))
    elif how == "zip-without-weights":
        with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
            archive.write(bad / "config.json", "config.json")
        return str(tmp_path / "bad.zip")
    elif how == "not-a-zip":
        (tmp_path / "bad.zip").write_text("not a zip")
        return str(tmp_path / "bad.zip")
    elif how == "missing":
        return str(tmp_path / "nowhere")
    return str(bad)


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("no-tokenizer", "bad/tokenizer.json: missing"),
        ("config-not-json", "config.json: not JSON"),
        ("config-not-bert", "config.json: no integer hidden_size"),
        ("config-a-list", "config.json: no integer hidden_size"),
        ("weights-garbage", "model.safetensors: unreadable"),
        ("weights-missing-layer", "model.safetensors: no tensor encoder.layer.1.attention.self.query.weight"),
        ("zip-without-weights", "bad.zip: has no model.safetensors"),
        ("not-a-zip", "bad.zip: not a readable zip archive"),
        ("missing", "nowhere: missing"),
    ],
)
def test_bad_sources_fail_in_one_line_naming_the_file(model_dir, tmp_path, how, fragment):
    source = break_dir(model_dir, tmp_path, how)
    with pytest.raises(PipelineError) as exc:
        E.SentenceEncoder(source, max_len=16).fit()
    message = str(exc.value)
    assert fragment in message and "\n" not in message, message


def test_max_len_beyond_the_encoders_positions_is_an_error(model_dir):
    with pytest.raises(PipelineError, match=r"^max_len = 65: above the 64 positions of the encoder in "):
        E.SentenceEncoder(str(model_dir), max_len=65).fit()
