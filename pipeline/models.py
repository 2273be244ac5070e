"""The model registry: one short builder per model, name -> builder, in the spirit of keras.io.

Keras builders take (cfg, vocab_size, n_classes, glove) where `glove` is the embedding matrix or
None; scikit-learn builders take cfg and return an unfitted Pipeline (the classifier alone for
a model on the encode stage's embeddings). Each model's params section
is validated against its schema before anything is built.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import params as P
from .common import PipelineError
from .messages import subject


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "keras" | "sklearn"
    build: Callable
    schema: dict
    glove: bool = False  # reads the GloVe embedding matrix
    min_len: Callable[[dict], int] | None = None  # shortest input the architecture accepts
    unused: Callable[[dict], set] | None = None  # params a config leaves unread (another option's)
    # fits on the encode stage's sentence embeddings (data/encoded): `build` gives the classifier
    # alone, and the saved pipeline is that stage's fitted encoder followed by it
    encoded: bool = False
    key: tuple[str, ...] = ()  # the params that tell one run from another: the report's column


REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, kind: str, schema: dict, glove: bool = False, min_len=None, unused=None, encoded: bool = False,
             key: tuple[str, ...] = ()):
    def wrap(build):
        REGISTRY[name] = ModelSpec(kind, build, schema, glove, min_len, unused, encoded, key)
        return build

    return wrap


def unused_params(name: str, cfg: dict) -> set:
    """The params in model `name`'s section that `cfg` does not read, e.g. saga's C under sgd."""
    spec = REGISTRY.get(name)
    return spec.unused(cfg) if spec and spec.unused else set()


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise PipelineError(f"params.yaml: train.models: unknown model {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


# ---------------------------------------------------------------- scikit-learn

TFIDF = {
    "subject_weight": P.integer(1, 20),  # times the Subject line counts (1: once, as written)
    "ngram_max": P.integer(1, 3),
    "min_df": P.integer(1),
    "max_df": P.number(0, 1, lo_open=True),
    "max_features": P.optional(P.integer(1)),
    "sublinear_tf": P.boolean(),
    # null: an exact n-gram vocabulary (TfidfVectorizer); b: n-grams hashed into 2**b columns
    # (HashingVectorizer), no vocabulary to build: half the fit time
    "hash_bits": P.optional(P.integer(16, 28)),
}


def weight_subject(text: str, weight: int) -> str:
    """The lowercased text with its Subject line's words added `weight - 1` more times: the
    subject is the densest summary of a message."""
    if weight > 1:
        title = subject(text)
        if title is not None:
            text += ("\n" + title) * (weight - 1)
    return text.lower()


_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


def word_ngrams(text: str, subject_weight: int, ngram_max: int) -> list[str]:
    """The features scikit-learn's word analyzer gives for `weight_subject(text)` (its default
    token pattern, n-grams 1..ngram_max), built with zip instead of its per-n-gram slicing
    loop: half the analysis time of every TF-IDF fit and prediction (tests check equality)."""
    tokens = _TOKEN.findall(weight_subject(text, subject_weight))
    features = list(tokens)
    for n in range(2, ngram_max + 1):
        features += map(" ".join, zip(*(tokens[i:] for i in range(n))))
    return features


def _tfidf(cfg):
    """TF-IDF features of raw text: TfidfVectorizer, or with `hash_bits` the same n-grams hashed
    (HashingVectorizer), pruned by document frequency, then weighted (TfidfTransformer)."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer, TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    from .features import DocFrequencyFilter

    # a partial is picklable, so the logged model takes raw text
    analyzer = functools.partial(word_ngrams, subject_weight=cfg["subject_weight"], ngram_max=cfg["ngram_max"])
    if cfg["hash_bits"] is None:
        return TfidfVectorizer(
            analyzer=analyzer,
            sublinear_tf=cfg["sublinear_tf"],
            min_df=cfg["min_df"],
            max_df=cfg["max_df"],
            max_features=cfg["max_features"],
            dtype=np.float32,
        )
    return make_pipeline(
        # raw counts, all non-negative, for the df filter and TfidfTransformer to weight
        HashingVectorizer(analyzer=analyzer, n_features=2 ** cfg["hash_bits"], alternate_sign=False, norm=None,
                          dtype=np.float32),
        DocFrequencyFilter(cfg["min_df"], cfg["max_df"], cfg["max_features"]),
        TfidfTransformer(sublinear_tf=cfg["sublinear_tf"]),
    )


@register(
    "tfidf_logreg",
    "sklearn",
    {
        **TFIDF,
        "solver": P.choice("sgd", "saga"),
        "alpha": P.number(0, lo_open=True),  # sgd's L2 penalty (about 1 / (C * training documents))
        "C": P.number(0, lo_open=True),  # saga's inverse L2 penalty
        "max_iter": P.integer(1),
        "seed": P.integer(0),
    },
    unused=lambda cfg: {"C"} if cfg.get("solver") == "sgd" else {"alpha"},
    key=("subject_weight", "ngram_max", "hash_bits", "solver", "C", "alpha"),
)
def tfidf_logreg(cfg):
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import make_pipeline

    if cfg["solver"] == "sgd":
        # L2 logistic regression (one-vs-rest) by SGD: a few passes over the sparse rows, about
        # 2 s on the bigram features where the multinomial saga fit takes 9 s.
        # n_jobs: the 20 one-vs-rest fits in threads; each class's seed is drawn up front, so the
        # result does not depend on the core count.
        clf = SGDClassifier(
            loss="log_loss", alpha=cfg["alpha"], max_iter=cfg["max_iter"], tol=1e-4, random_state=cfg["seed"], n_jobs=-1
        )
    else:
        clf = LogisticRegression(C=cfg["C"], solver="saga", max_iter=cfg["max_iter"], tol=1e-3,
                                 random_state=cfg["seed"])
    return make_pipeline(_tfidf(cfg), clf)


@register("naive_bayes", "sklearn",
          {**TFIDF, "variant": P.choice("complement", "multinomial"), "alpha": P.number(0, lo_open=True)},
          key=("subject_weight", "ngram_max", "hash_bits", "alpha", "variant"))
def naive_bayes(cfg):
    from sklearn.naive_bayes import ComplementNB, MultinomialNB
    from sklearn.pipeline import make_pipeline

    nb = ComplementNB if cfg["variant"] == "complement" else MultinomialNB
    return make_pipeline(_tfidf(cfg), nb(alpha=cfg["alpha"]))


@register(
    "minilm_logreg",
    "sklearn",
    {
        "C": P.number(0, lo_open=True),  # inverse L2 penalty of the logistic regression
        "max_iter": P.integer(1),
    },
    encoded=True,
    key=("C",),
)
def minilm_logreg(cfg):
    """Multinomial logistic regression on a frozen pretrained sentence encoder's embeddings of
    the first `encode.max_len` wordpieces: weak alone, but it knows English beyond this corpus,
    which none of the other models do, so the ensemble gains from it. This builds the classifier;
    the encoder in front of it is the encode stage's (see ModelSpec.encoded)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=cfg["C"], max_iter=cfg["max_iter"])


@register(
    "minilm_svm",
    "sklearn",
    {
        "C": P.number(0, lo_open=True),  # inverse penalty of the support-vector machine
        "gamma": P.number(0, lo_open=True),  # RBF kernel width, on unit-length embeddings
    },
    encoded=True,
    key=("C", "gamma"),
)
def minilm_svm(cfg):
    """A support-vector machine with an RBF kernel on the same embeddings as minilm_logreg. They
    are unit vectors, so exp(-gamma |x - y|^2) = exp(-2 gamma (1 - cos(x, y))): each training
    document votes by its cosine similarity, which a linear model on the embeddings cannot
    express. Probabilities by Platt scaling of its decision values, fitted on a 5-fold
    cross-validation of the training split (scikit-learn's replacement for libsvm's own)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    return CalibratedClassifierCV(SVC(C=cfg["C"], gamma=cfg["gamma"]), method="sigmoid", cv=5, ensemble=False)


# ---------------------------------------------------------------- Keras

TRAINING = {
    "seed": P.integer(0),
    "epochs": P.integer(1, 1000),
    "batch_size": P.integer(1, 4096),
    "learning_rate": P.number(0, 10, lo_open=True),
    "patience": P.integer(0, 100),
    "max_len": P.optional(P.integer(1)),  # cut sequences to their first max_len tokens; None: tokenize.max_len
}


@functools.cache
def _layers() -> dict:
    """The project's own Keras layers, defined once (TensorFlow is imported lazily) and
    registered so saved models load anywhere `pipeline` is importable."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="newsgroups")
    class MaskedMean(keras.layers.Layer):
        """Mean over the non-padding positions; an all-padding row gives zeros, not NaN."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            if mask is None:
                return ops.mean(inputs, axis=1)
            weights = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
            total = ops.sum(inputs * weights, axis=1)
            return total / ops.maximum(ops.sum(weights, axis=1), 1.0)

        def compute_mask(self, inputs, mask=None):
            return None

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[2])

    @keras.saving.register_keras_serializable(package="newsgroups")
    class MaskedMax(keras.layers.Layer):
        """Max over the non-padding positions; an all-padding row gives zeros."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            if mask is None:
                return ops.max(inputs, axis=1)
            real = ops.expand_dims(mask, -1)
            # the lowest float, not -inf: the ONNX export computes `where` as arithmetic, and 0 * -inf is NaN
            lowest = float(np.finfo(np.float32).min)
            top = ops.max(ops.where(real, inputs, ops.full_like(inputs, lowest)), axis=1)
            return ops.where(ops.any(real, axis=1), top, ops.zeros_like(top))

        def compute_mask(self, inputs, mask=None):
            return None

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[2])

    @keras.saving.register_keras_serializable(package="newsgroups")
    class HashedBigrams(keras.layers.Layer):
        """fastText's word bigrams: append, to the token ids, one id per adjacent pair of real
        tokens, hashed into `buckets` ids after the vocabulary (pairs touching padding get 0)."""

        def __init__(self, vocab_size: int, buckets: int, **kwargs):
            super().__init__(**kwargs)
            self.vocab_size, self.buckets = int(vocab_size), int(buckets)

        def call(self, ids):
            ids = ops.cast(ids, "int64")
            first, second = ids[:, :-1], ids[:, 1:]
            hashed = ops.mod(first * 1_000_003 + second, self.buckets) + self.vocab_size
            bigrams = ops.where(ops.logical_and(first > 0, second > 0), hashed, ops.zeros_like(hashed))
            return ops.concatenate([ids, bigrams], axis=1)

        def compute_output_shape(self, input_shape):
            length = input_shape[1]
            return (input_shape[0], None if length is None else max(2 * length - 1, length))

        def get_config(self):
            return {**super().get_config(), "vocab_size": self.vocab_size, "buckets": self.buckets}

    return {"MaskedMean": MaskedMean, "MaskedMax": MaskedMax, "HashedBigrams": HashedBigrams}


def custom_objects() -> dict:
    return dict(_layers())


def _embedding(vocab_size, glove, dim, trainable, mask_zero):
    import keras

    if glove is None:
        return keras.layers.Embedding(vocab_size, dim, mask_zero=mask_zero, name="embedding")
    # `weights`, not a Constant initializer: an initializer is saved in the model's JSON config,
    # a whole copy of the matrix as text that made saving and loading seconds slower. The zeros
    # initializer draws no random numbers, so the other layers start as they did with Constant.
    return keras.layers.Embedding(
        glove.shape[0], glove.shape[1], embeddings_initializer="zeros", weights=glove,
        trainable=trainable, mask_zero=mask_zero, name="embedding",
    )


def _cbow(cfg, vocab_size, n_classes, glove):
    import keras

    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x, buckets = inputs, cfg.get("bigram_buckets", 0)
    if buckets:
        x = _layers()["HashedBigrams"](vocab_size, buckets, name="bigrams")(x)
    x = _embedding(vocab_size + buckets, glove, cfg.get("embedding_dim"), cfg.get("trainable", True), True)(x)
    x = _layers()["MaskedMean"](name="masked_mean")(x)
    if cfg["dropout"]:
        x = keras.layers.Dropout(cfg["dropout"])(x)
    if cfg["hidden"]:
        x = keras.layers.Dense(cfg["hidden"], activation="relu")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


CBOW = {**TRAINING, "dropout": P.number(0, 0.9), "hidden": P.integer(0)}
FIT_KEY = ("batch_size", "learning_rate", "dropout")


@register("cbow", "keras", {**CBOW, "embedding_dim": P.integer(1), "bigram_buckets": P.integer(0)},
          key=("embedding_dim", *FIT_KEY))
def cbow(cfg, vocab_size, n_classes, glove=None):
    """fastText-style: learned embeddings, masked average, softmax."""
    return _cbow(cfg, vocab_size, n_classes, None)


@register("cbow_glove", "keras", {**CBOW, "trainable": P.boolean()}, glove=True, key=("trainable", *FIT_KEY))
def cbow_glove(cfg, vocab_size, n_classes, glove):
    """The same average over GloVe vectors, frozen or fine-tuned."""
    return _cbow(cfg, vocab_size, n_classes, glove)


def _cnn(cfg, vocab_size, n_classes, glove):
    """A 1D CNN over word embeddings, in one of two shapes (`architecture`):
    stacked: the keras.io recipe, 3 x Conv1D(filters, kernel_size) with max-pooling, a dense head;
    parallel: Kim's sentence CNN, one convolution per width in `kernel_sizes`, each global-max-pooled,
    concatenated, straight to the softmax."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = _embedding(vocab_size, glove, cfg.get("embedding_dim"), cfg.get("trainable", True), False)(inputs)
    if cfg["spatial_dropout"]:
        x = layers.SpatialDropout1D(cfg["spatial_dropout"])(x)
    if cfg["architecture"] == "parallel":
        pooled = [
            layers.GlobalMaxPooling1D()(layers.Conv1D(cfg["filters"], width, activation="relu")(x))
            for width in cfg["kernel_sizes"]
        ]
        x = layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]
    else:
        for _ in range(2):
            x = layers.Conv1D(cfg["filters"], cfg["kernel_size"], activation="relu")(x)
            x = layers.MaxPooling1D(cfg["pool_size"])(x)
        x = layers.Conv1D(cfg["filters"], cfg["kernel_size"], activation="relu")(x)
        x = layers.GlobalMaxPooling1D()(x)
        x = layers.Dense(cfg["dense"], activation="relu")(x)
    if cfg["dropout"]:
        x = layers.Dropout(cfg["dropout"])(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def cnn_min_len(cfg) -> int:
    """Shortest sequence every convolution can read one window of: the widest kernel (parallel),
    or one that survives conv -> pool -> conv -> pool -> conv with >= 1 step left (stacked)."""
    if cfg["architecture"] == "parallel":
        return max(cfg["kernel_sizes"])
    length = cfg["kernel_size"]  # the last convolution needs one window
    for _ in range(2):
        length = length * cfg["pool_size"] + cfg["kernel_size"] - 1
    return length


def cnn_unused(cfg) -> set:
    return {"kernel_size", "pool_size", "dense"} if cfg.get("architecture") == "parallel" else {"kernel_sizes"}


CNN = {
    **TRAINING,
    "architecture": P.choice("stacked", "parallel"),
    "filters": P.integer(1),  # per convolution layer (stacked) or per width (parallel)
    "kernel_size": P.integer(1),  # stacked
    "pool_size": P.integer(1),  # stacked
    "dense": P.integer(1),  # stacked: the hidden layer's units
    "kernel_sizes": P.list_of(P.integer(1), nonempty=True),  # parallel: the convolution widths
    "dropout": P.number(0, 0.9),
    "spatial_dropout": P.number(0, 0.9),
}
CNN_KEY = ("max_len", "architecture", "filters", *FIT_KEY)


@register("cnn_glove", "keras", {**CNN, "trainable": P.boolean()}, glove=True, min_len=cnn_min_len, unused=cnn_unused,
          key=("trainable", *CNN_KEY))
def cnn_glove(cfg, vocab_size, n_classes, glove):
    return _cnn(cfg, vocab_size, n_classes, glove)


@register("cnn", "keras", {**CNN, "embedding_dim": P.integer(1)}, min_len=cnn_min_len, unused=cnn_unused,
          key=("embedding_dim", *CNN_KEY))
def cnn(cfg, vocab_size, n_classes, glove=None):
    return _cnn(cfg, vocab_size, n_classes, None)


@register(
    "lstm",
    "keras",
    {
        **TRAINING,
        "embedding": P.choice("glove", "learned"),
        "embedding_dim": P.integer(1),  # for learned embeddings
        "trainable": P.boolean(),  # for GloVe embeddings
        "units": P.integer(1),
        "bidirectional": P.boolean(),
        "pooling": P.choice("max", "last"),  # max over every step's output, or the last state
        "dropout": P.number(0, 0.9),
    },
    glove=True,
    unused=lambda cfg: {"trainable"} if cfg.get("embedding") == "learned" else {"embedding_dim"},
    key=("pooling", "embedding", "embedding_dim", "trainable", "max_len", "units", *FIT_KEY),
)
def lstm(cfg, vocab_size, n_classes, glove):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    matrix = glove if cfg["embedding"] == "glove" else None
    x = _embedding(vocab_size, matrix, cfg["embedding_dim"], cfg["trainable"], True)(inputs)
    # Max-pooling every step's output trains far more easily over 200 steps than the last state alone
    rnn = layers.LSTM(cfg["units"], return_sequences=cfg["pooling"] == "max")
    x = layers.Bidirectional(rnn)(x) if cfg["bidirectional"] else rnn(x)
    if cfg["pooling"] == "max":
        x = _layers()["MaskedMax"](name="masked_max")(x)
    if cfg["dropout"]:
        x = layers.Dropout(cfg["dropout"])(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)
