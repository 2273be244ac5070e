"""Unit tests of the model registry (pipeline/models.py): every model builds on tiny input and gives
class probabilities; masking keeps padding out of the answer; schemas and names are checked."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from tiny import GROUPS, ROOT, TOPIC_WORDS, tiny_params

from pipeline import params as P
from pipeline.common import PipelineError
from pipeline.models import REGISTRY, custom_objects, get_spec

VOCAB, CLASSES, LENGTH = 50, 3, 30
KERAS = sorted(n for n, s in REGISTRY.items() if s.kind == "keras")
SKLEARN = sorted(n for n, s in REGISTRY.items() if s.kind == "sklearn")
TFIDF = sorted(n for n in SKLEARN if "subject_weight" in REGISTRY[n].schema)  # the encoder model: tests/test_encoder.py
MASKED = ["cbow", "cbow_glove", "lstm"]


@pytest.fixture(scope="module")
def configs() -> dict:
    """Each model's params section from params.yaml, scaled down as in the end-to-end test."""
    train = tiny_params("unused.txt", {"groups": 3, "train": 36, "test": 18})["train"]
    return {name: P.validate(f"train.{name}", train[name], REGISTRY[name].schema) for name in REGISTRY}


@pytest.fixture(scope="module")
def glove() -> np.ndarray:
    matrix = np.random.default_rng(0).normal(0, 0.5, (VOCAB, 50)).astype(np.float32)
    matrix[0] = 0.0
    return matrix


@pytest.fixture(scope="module")
def built(configs, glove) -> dict:
    import keras

    keras.utils.set_random_seed(0)
    return {name: get_spec(name).build(configs[name], VOCAB, CLASSES, glove) for name in KERAS}


def token_batch(rows: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, size=(rows, LENGTH)).astype(np.int32)
    for i in range(rows):
        x[i, LENGTH - 3 * i :] = 0  # trailing padding of different lengths
    return x


def probabilities(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


def test_registry_covers_params_yaml():
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["models"]
    assert set(models) <= set(REGISTRY)
    assert {"tfidf_logreg", "naive_bayes", "cbow", "cbow_glove", "cnn_glove", "cnn", "lstm"} <= set(REGISTRY)
    assert all(spec.kind in ("keras", "sklearn") for spec in REGISTRY.values())
    assert {n for n, s in REGISTRY.items() if s.glove} >= {"cbow_glove", "cnn_glove", "lstm"}


@pytest.mark.parametrize("name", KERAS)
def test_keras_model_gives_probabilities(built, name):
    x = token_batch()
    probs = probabilities(built[name], x)
    assert probs.shape == (4, CLASSES)
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities(built[name], x[:1]).shape == (1, CLASSES)  # any batch size


@pytest.mark.parametrize("name", KERAS)
def test_keras_model_accepts_other_lengths(built, name):
    x = np.random.default_rng(1).integers(1, VOCAB, size=(2, 45)).astype(np.int32)
    assert probabilities(built[name], x).shape == (2, CLASSES)


@pytest.mark.parametrize("name", sorted(n for n in KERAS if REGISTRY[n].glove))
def test_glove_models_start_from_the_matrix(configs, glove, name):
    import keras

    for trainable in (True, False):
        cfg = {**configs[name], "trainable": trainable}
        if name == "lstm":
            cfg["embedding"] = "glove"
        layer = get_spec(name).build(cfg, VOCAB, CLASSES, glove).get_layer("embedding")
        assert isinstance(layer, keras.layers.Embedding)
        np.testing.assert_array_equal(np.asarray(layer.embeddings), glove)
        assert layer.trainable is trainable
        # The matrix is a weight, not a Constant initializer copied as text into the saved config.
        assert layer.get_config()["embeddings_initializer"]["class_name"] == "Zeros"


def test_learned_embeddings_have_their_own_size(configs, glove):
    cbow = get_spec("cbow").build(configs["cbow"], VOCAB, CLASSES, None)
    assert tuple(cbow.get_layer("embedding").embeddings.shape) == (VOCAB, configs["cbow"]["embedding_dim"])
    cfg = {**configs["lstm"], "embedding": "learned", "embedding_dim": 6, "bidirectional": True}
    lstm = get_spec("lstm").build(cfg, VOCAB, CLASSES, glove)
    assert tuple(lstm.get_layer("embedding").embeddings.shape) == (VOCAB, 6)
    assert probabilities(lstm, token_batch()).shape == (4, CLASSES)


@pytest.mark.parametrize("name", MASKED)
def test_all_padding_row_gives_finite_output(built, name):
    x = token_batch()
    x[1] = 0  # an empty document
    probs = probabilities(built[name], x)
    assert np.isfinite(probs).all(), probs
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", MASKED)
def test_trailing_padding_does_not_change_the_answer(built, name):
    doc = np.array([[5, 7, 9, 11, 3]], dtype=np.int32)
    padded = np.concatenate([doc, np.zeros((1, 20), dtype=np.int32)], axis=1)
    np.testing.assert_allclose(probabilities(built[name], doc), probabilities(built[name], padded), atol=1e-6)


def test_unmasked_cnn_does_see_padding(built):
    """The control for the test above: without masking, padding would change the output."""
    doc = np.random.default_rng(2).integers(1, VOCAB, size=(1, 20)).astype(np.int32)
    padded = np.concatenate([doc, np.zeros((1, 30), dtype=np.int32)], axis=1)
    assert not np.allclose(probabilities(built["cnn"], doc), probabilities(built["cnn"], padded), atol=1e-6)


CNNS = ["cnn_glove", "cnn"]


def parallel(cfg: dict, widths=(2, 3, 4), filters: int = 4) -> dict:
    return {**cfg, "architecture": "parallel", "kernel_sizes": list(widths), "filters": filters}


@pytest.mark.parametrize("name", CNNS)
def test_stacked_cnn_is_the_keras_io_recipe(configs, glove, name):
    """architecture: stacked is the recipe's shape: 3 x Conv1D with max-pooling between, global max, a dense head."""
    cfg = {**configs[name], "architecture": "stacked"}
    model = get_spec(name).build(cfg, VOCAB, CLASSES, glove)
    kinds = [type(layer).__name__ for layer in model.layers if type(layer).__name__ not in ("InputLayer", "SpatialDropout1D")]
    assert kinds == ["Embedding", "Conv1D", "MaxPooling1D", "Conv1D", "MaxPooling1D", "Conv1D", "GlobalMaxPooling1D",
                     "Dense", "Dropout", "Dense"]
    assert get_spec(name).min_len(cfg) == (cfg["kernel_size"] * cfg["pool_size"] + cfg["kernel_size"] - 1) * cfg["pool_size"] + cfg["kernel_size"] - 1
    assert get_spec(name).unused(cfg) == {"kernel_sizes"}


@pytest.mark.parametrize("name", CNNS)
def test_parallel_cnn_is_one_layer_of_several_widths(configs, glove, name):
    import keras

    cfg = parallel(configs[name])
    model = get_spec(name).build(cfg, VOCAB, CLASSES, glove)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D)]
    assert sorted(conv.kernel_size[0] for conv in convs) == [2, 3, 4]
    assert all(conv.filters == 4 for conv in convs)
    # every convolution reads the embeddings (none stacked on another), each is max-pooled over time
    embedded = model.get_layer("embedding").output
    if cfg["spatial_dropout"]:
        embedded = next(layer for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout1D)).output
    assert all(conv.input is embedded for conv in convs)
    assert not any(isinstance(layer, keras.layers.MaxPooling1D) for layer in model.layers)
    assert sum(isinstance(layer, keras.layers.GlobalMaxPooling1D) for layer in model.layers) == 3
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 1 and dense[0].kernel.shape == (3 * 4, CLASSES)  # concatenated, straight to softmax
    assert get_spec(name).min_len(cfg) == 4
    assert get_spec(name).unused(cfg) == {"kernel_size", "pool_size", "dense"}
    probs = probabilities(model, token_batch())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    shortest = np.random.default_rng(4).integers(1, VOCAB, size=(2, 4)).astype(np.int32)
    assert np.isfinite(probabilities(model, shortest)).all()  # min_len tokens: one window of the widest


def test_parallel_cnn_with_one_width(configs):
    import keras

    model = get_spec("cnn").build(parallel(configs["cnn"], widths=(3,)), VOCAB, CLASSES, None)
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in model.layers)
    assert probabilities(model, token_batch()).shape == (4, CLASSES)


def test_parallel_cnn_learns_tiny_data(configs):
    """Through the train stage's own fit (length-cut batches at the min_len floor, early stopping):
    documents told apart by their words are learned."""
    import keras

    from pipeline.keras_fit import train_keras_model

    rng = np.random.default_rng(5)
    y = np.arange(120) % CLASSES
    x = _ragged_ids(rng, 120, 12)
    x = np.where(x > 0, 1 + 10 * y[:, None] + x % 10, 0).astype(np.int32)  # class c: ids 10c+1..10c+10
    x[:, 0] = 1 + 10 * y  # no empty document
    cfg = {**parallel(configs["cnn"]), "epochs": 15, "patience": 15, "learning_rate": 0.01, "batch_size": 16, "dropout": 0.0}
    keras.utils.set_random_seed(0)
    model = get_spec("cnn").build(cfg, VOCAB, CLASSES, None)
    fit = train_keras_model("cnn", cfg, model, {"train": x[:90], "val": x[90:]}, {"train": y[:90], "val": y[90:]}, verbose=0)
    assert max(fit.history["val_accuracy"]) >= 0.9


@pytest.mark.parametrize(
    "change, fragment",
    [({"architecture": "kim"}, "train.cnn.architecture = 'kim'"), ({"kernel_sizes": []}, "train.cnn.kernel_sizes = []"),
     ({"kernel_sizes": [3, 0]}, "train.cnn.kernel_sizes[1] = 0"), ({"kernel_sizes": 3}, "train.cnn.kernel_sizes = 3")],
)
def test_cnn_schema_checks_the_architecture(configs, change, fragment):
    with pytest.raises(PipelineError) as exc:
        P.validate("train.cnn", {**configs["cnn"], **change}, REGISTRY["cnn"].schema)
    assert fragment in str(exc.value), str(exc.value)


def test_masked_mean_by_hand():
    import keras

    layer = custom_objects()["MaskedMean"]()
    values = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[True, True, False], [False, False, False]])
    out = np.asarray(layer(keras.ops.convert_to_tensor(values), mask=keras.ops.convert_to_tensor(mask)))
    np.testing.assert_allclose(out, [[1.0, 2.0], [0.0, 0.0]])  # mean of rows 0-1; empty row: zeros
    np.testing.assert_allclose(np.asarray(layer(values)), values.mean(axis=1))  # no mask: plain mean
    assert layer.compute_output_shape((2, 3, 2)) == (2, 2)


def test_masked_max_by_hand():
    import keras

    layer = custom_objects()["MaskedMax"]()
    values = np.array([[[1.0, -5.0], [-2.0, -1.0], [9.0, 9.0]], [[-3.0, -4.0], [7.0, 7.0], [8.0, 8.0]]], np.float32)
    mask = np.array([[True, True, False], [False, False, False]])
    out = np.asarray(layer(keras.ops.convert_to_tensor(values), mask=keras.ops.convert_to_tensor(mask)))
    np.testing.assert_allclose(out, [[1.0, -1.0], [0.0, 0.0]])  # padding cannot win; empty row: zeros
    np.testing.assert_allclose(np.asarray(layer(values)), values.max(axis=1))  # no mask: plain max


def test_one_way_lstm_padding_repeats_real_outputs(configs, glove):
    """A masked LSTM step repeats the previous output, so for the one-way LSTM the masked max equals
    the max over every step: the mask-aware pooling changes no result, it only keeps the mask."""
    import keras

    model = get_spec("lstm").build({**configs["lstm"], "bidirectional": False}, VOCAB, CLASSES, glove)
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    steps = keras.Model(model.input, lstm.output)
    x = token_batch()
    outputs = np.asarray(steps(x))
    lengths = (x > 0).sum(axis=1)
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(outputs[row, n:], np.repeat(outputs[row, n - 1 : n], LENGTH - n, axis=0))
    pooled = np.asarray(keras.Model(model.input, model.get_layer("masked_max").output)(x))
    np.testing.assert_array_equal(pooled, outputs.max(axis=1))


def test_keras_model_round_trips_through_save(built, tmp_path):
    import keras

    path = tmp_path / "cbow.keras"
    built["cbow"].save(path)
    loaded = keras.saving.load_model(path, custom_objects=custom_objects())
    x = token_batch()
    np.testing.assert_allclose(probabilities(loaded, x), probabilities(built["cbow"], x), atol=1e-6)


def tiny_texts() -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label, group in enumerate(GROUPS):
        words = TOPIC_WORDS[group]
        for i in range(4):
            texts.append(" ".join(words[(i + j) % len(words)] for j in range(5)) + " the of and")
            labels.append(label)
    return texts, np.array(labels)


@pytest.mark.parametrize("name", TFIDF)
def test_sklearn_model_gives_probabilities(configs, name):
    texts, labels = tiny_texts()
    model = get_spec(name).build(configs[name])
    model.fit(texts, labels)
    queries = ["orbit launch of the shuttle", "engine and brake", "pixel texture render", "", "unseen words only"]
    probs = model.predict_proba(queries)
    assert probs.shape == (len(queries), CLASSES)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs[:3].argmax(axis=1).tolist() == [2, 1, 0]  # sci.space, rec.autos, comp.graphics
    assert (model.predict(texts) == labels).mean() == 1.0


def test_weight_subject_repeats_only_the_header_subject():
    from pipeline.models import weight_subject

    message = "From: a@b.org\nSubject: Shuttle LAUNCH\nLines: 3\n\nBody text.\nSubject: quoted"
    assert weight_subject(message, 1) == message.lower()
    assert weight_subject(message, 3) == message.lower() + "\n shuttle launch" * 2
    no_header = "Body only.\n\nSubject: in a forwarded message"
    assert weight_subject(no_header, 3) == no_header.lower()
    assert weight_subject("Subject: only a header", 2) == "subject: only a header\n only a header"
    assert weight_subject("", 3) == ""


@pytest.mark.parametrize("ngram_max", [1, 2, 3])
@pytest.mark.parametrize("weight", [1, 3])
def test_word_ngrams_match_scikit_learns_analyzer(ngram_max, weight):
    import functools

    from sklearn.feature_extraction.text import CountVectorizer

    from pipeline.models import weight_subject, word_ngrams

    reference = CountVectorizer(
        preprocessor=functools.partial(weight_subject, weight=weight), ngram_range=(1, ngram_max)
    ).build_analyzer()
    texts = [
        "Subject: Re: Orbit\nFrom: a@b.c\n\nThe launch pad, the pad; a b c über-naïve 2x 1993!",
        "one",
        "",
        "Subject: x\n\n",
        "  spaced   out\ttabs\nand lines  ",
    ]
    for text in texts:
        assert word_ngrams(text, weight, ngram_max) == reference(text)


@pytest.mark.parametrize("name", TFIDF)
def test_subject_weight_reaches_the_features_and_survives_pickling(configs, name):
    import pickle

    texts = ["Subject: orbit\n\nlaunch pad", "Subject: brake\n\nengine oil"]
    counts = {}
    for weight in (1, 3):
        cfg = {**configs[name], "subject_weight": weight, "min_df": 1, "max_df": 1.0, "hash_bits": None}
        vectorizer = get_spec(name).build(cfg).steps[0][1]
        x = vectorizer.fit_transform(texts)
        orbit, launch = (vectorizer.vocabulary_[w] for w in ("orbit", "launch"))
        counts[weight] = x[0, orbit] / x[0, launch]
        again = pickle.loads(pickle.dumps(vectorizer))
        assert (again.transform(texts) != x).nnz == 0
    assert counts[1] == pytest.approx(1.0) and counts[3] > 1.5  # sublinear: 1 + ln 3


@pytest.mark.parametrize(
    "pruning",
    [{"min_df": 1, "max_df": 1.0, "max_features": None}, {"min_df": 2, "max_df": 0.5, "max_features": None},
     {"min_df": 1, "max_df": 1.0, "max_features": "untied"}],
)
def test_hashed_features_equal_the_vocabulary_ones_up_to_column_order(configs, pruning):
    """With no collisions (2**24 columns, a few dozen terms), hashing + DocFrequencyFilter +
    TfidfTransformer gives TfidfVectorizer's matrix with its columns permuted, also after pickling."""
    import functools
    import pickle

    from sklearn.feature_extraction.text import CountVectorizer

    from pipeline.models import word_ngrams

    texts = [
        "Subject: orbit\n\nlaunch pad launch",
        "Subject: brake\n\nengine oil engine oil",
        "Subject: orbit decay\n\nthe pad and the oil",
        "Subject: mars\n\nthe launch of the orbit",
        "the the the brake pad",
    ]
    cfg = {**configs["tfidf_logreg"], **pruning, "ngram_max": 2}
    if pruning["max_features"] == "untied":  # a cut between two different term counts (ties may break either way)
        analyzer = functools.partial(word_ngrams, subject_weight=cfg["subject_weight"], ngram_max=2)
        counts = np.sort(np.asarray(CountVectorizer(analyzer=analyzer).fit_transform(texts).sum(axis=0)).ravel())[::-1]
        cfg["max_features"] = next(k for k in range(3, len(counts)) if counts[k - 1] > counts[k])
    exact = get_spec("tfidf_logreg").build({**cfg, "hash_bits": None}).steps[0][1].fit_transform(texts).toarray()
    hashed_features = get_spec("tfidf_logreg").build({**cfg, "hash_bits": 24}).steps[0][1]
    hashed = hashed_features.fit_transform(texts).toarray()
    assert hashed.shape == exact.shape
    # every column of one is a column of the other (same document profile, same weights)
    assert sorted(map(tuple, np.round(hashed.T, 6))) == sorted(map(tuple, np.round(exact.T, 6)))
    again = pickle.loads(pickle.dumps(hashed_features))
    assert np.array_equal(again.transform(texts).toarray(), hashed)


def test_doc_frequency_filter_rejects_pruning_everything():
    import scipy.sparse as sp

    from pipeline.features import DocFrequencyFilter

    with pytest.raises(ValueError, match="no terms remain"):
        DocFrequencyFilter(min_df=3).fit(sp.csr_matrix(np.eye(2, dtype=np.float32)))


def test_naive_bayes_variants(configs):
    from sklearn.naive_bayes import ComplementNB, MultinomialNB

    for variant, cls in (("complement", ComplementNB), ("multinomial", MultinomialNB)):
        model = get_spec("naive_bayes").build({**configs["naive_bayes"], "variant": variant})
        assert isinstance(model.steps[-1][1], cls)


def test_get_spec_unknown_model_lists_the_known_ones():
    with pytest.raises(PipelineError) as exc:
        get_spec("nope")
    message = str(exc.value)
    assert "'nope'" in message and "\n" not in message
    for name in REGISTRY:
        assert name in message


@pytest.mark.parametrize(
    "name, change, fragment",
    [
        ("cbow", {"dropout": 1.5}, "train.cbow.dropout = 1.5"),
        ("cbow", {"epochs": 0}, "train.cbow.epochs = 0"),
        ("cbow", {"learning_rate": 0}, "train.cbow.learning_rate = 0"),
        ("cbow", {"embedding_dim": "big"}, "train.cbow.embedding_dim = 'big'"),
        ("cbow", {"max_len": 0}, "train.cbow.max_len = 0"),
        ("cbow_glove", {"trainable": "yes"}, "train.cbow_glove.trainable = 'yes'"),
        ("cnn", {"spatial_dropout": -0.1}, "train.cnn.spatial_dropout = -0.1"),
        ("lstm", {"embedding": "word2vec"}, "train.lstm.embedding = 'word2vec'"),
        ("lstm", {"units": 0}, "train.lstm.units = 0"),
        ("tfidf_logreg", {"ngram_max": 4}, "train.tfidf_logreg.ngram_max = 4"),
        ("tfidf_logreg", {"C": 0}, "train.tfidf_logreg.C = 0"),
        ("naive_bayes", {"variant": "bernoulli"}, "train.naive_bayes.variant = 'bernoulli'"),
        ("naive_bayes", {"max_df": 0.0}, "train.naive_bayes.max_df = 0.0"),
        ("naive_bayes", {"subject_weight": 0}, "train.naive_bayes.subject_weight = 0"),
        ("tfidf_logreg", {"hash_bits": 40}, "train.tfidf_logreg.hash_bits = 40"),
        ("cnn_glove", {"kernel": 3}, "train.cnn_glove.kernel: unknown key"),
    ],
)
def test_model_schemas_reject_bad_values(configs, name, change, fragment):
    with pytest.raises(PipelineError) as exc:
        P.validate(f"train.{name}", {**configs[name], **change}, REGISTRY[name].schema)
    assert fragment in str(exc.value), str(exc.value)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_model_schema_requires_every_key(configs, name):
    cfg = dict(configs[name])
    key = next(iter(cfg))
    del cfg[key]
    with pytest.raises(PipelineError, match=rf"^params.yaml: train.{name}.{key}: missing$"):
        P.validate(f"train.{name}", cfg, REGISTRY[name].schema)


def _ragged_ids(rng, n: int, width: int) -> np.ndarray:
    """Token ids padded at the end, as TextVectorization writes them, of random lengths 0..width."""
    lengths = rng.integers(0, width + 1, n)
    return np.where(np.arange(width) < lengths[:, None], rng.integers(1, VOCAB, (n, width)), 0).astype(np.int32)


def _batches(data) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(ids.numpy(), labels.numpy()) for ids, labels in data]


def test_training_batches_are_length_bucketed_and_cover_every_document():
    from pipeline.keras_fit import make_dataset

    rng = np.random.default_rng(1)
    x = _ragged_ids(rng, 1000, 60)
    y = np.arange(1000) % CLASSES
    epoch = _batches(make_dataset(x, y, 16, shuffle_seed=3, min_len=None, window=8))
    assert len(epoch) == 63  # ceil(1000 / 16)
    seen = np.concatenate([labels for _, labels in epoch])
    assert np.array_equal(np.sort(seen), np.sort(y))  # every document exactly once
    widths = [ids.shape[1] for ids, _ in epoch]
    for ids, _ in epoch:  # cut to the batch's longest document, nothing real cut off
        assert ids.shape[1] == max((ids > 0).sum(axis=1).max(), 1)
    # sorting within windows: far less padding than batches of a plain shuffle
    padding = sum(ids.size - (ids > 0).sum() for ids, _ in epoch)
    assert padding < 0.25 * (x > 0).sum(), padding
    assert len(set(widths)) > 20  # lengths vary between batches: the buckets are shuffled, not sorted
    assert widths != sorted(widths)
    again = _batches(make_dataset(x, y, 16, shuffle_seed=3, min_len=None, window=8))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch, again))  # seeded: reproducible


def test_prediction_batches_keep_order_and_the_convolution_floor():
    from pipeline.keras_fit import make_dataset

    rng = np.random.default_rng(2)
    x = _ragged_ids(rng, 100, 40)
    x[:50, 10:] = 0  # the first batches are short documents
    y = np.arange(100) % CLASSES
    batches = _batches(make_dataset(x, y, 25, shuffle_seed=None, min_len=20))
    assert np.array_equal(np.concatenate([labels for _, labels in batches]), y)
    assert [ids.shape[1] for ids, _ in batches][:2] == [20, 20]  # never below min_len
    assert np.array_equal(np.concatenate([ids[:, :10] for ids, _ in batches]), x[:, :10])


def test_keras_input_pipelines_run_without_autotune_and_keep_order():
    """Autotune's thread stalled every dropped iterator (see sequences.without_autotune): the
    training, validation and prediction pipelines all turn it off, and predictions keep order."""
    from pipeline.keras_fit import make_dataset
    from pipeline.sequences import id_batches

    rng = np.random.default_rng(3)
    x = _ragged_ids(rng, 50, 12)
    y = np.arange(50) % CLASSES
    for data in (make_dataset(x, y, 8, 1, None), make_dataset(x, y, 8, None, None), id_batches(x, 8)):
        assert data.options().autotune.enabled is False
    batches = [b.numpy() for b in id_batches(x, 8)]
    assert [len(b) for b in batches] == [8] * 6 + [2]
    assert np.array_equal(np.concatenate(batches), x)


@pytest.mark.parametrize("name", KERAS)
def test_onnx_export_gives_the_keras_probabilities(built, name):
    """What serving runs (classifier.py): the export on onnxruntime, on full rows and, for the
    models that mask padding, on rows cut after the longest document."""
    import onnxruntime

    from pipeline.classifier import masks_padding
    from pipeline.onnx_export import export_onnx

    session = onnxruntime.InferenceSession(export_onnx(built[name]), providers=["CPUExecutionProvider"])
    x = token_batch(6)
    x[0, LENGTH - 4 :] = 0  # no row longer than LENGTH - 4
    x[1] = 0  # an empty document
    expected = probabilities(built[name], x)
    np.testing.assert_allclose(session.run(None, {"ids": x})[0], expected, atol=1e-5)
    assert masks_padding(built[name]) == (name in MASKED)
    if name in MASKED:
        np.testing.assert_allclose(session.run(None, {"ids": x[:, :LENGTH - 4]})[0], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["cbow", "cbow_glove"])
def test_onnx_export_sums_a_masked_mean_without_the_mask_product(built, name):
    """The masked mean's product of every embedded token with its mask is left out, the table's
    padding row made zeros (the export's outputs are checked against Keras's above)."""
    import onnx
    from onnx import numpy_helper

    from pipeline.onnx_export import export_onnx

    graph = onnx.load_from_string(export_onnx(built[name])).graph
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    assert not any(n.op_type == "Mul" and {g.output[0] for g in gathers} & set(n.input) for n in graph.node)
    table = numpy_helper.to_array(next(t for t in graph.initializer if t.name == gathers[0].input[0]))
    assert table.shape[0] == VOCAB and not table[0].any() and table[1:].all()


@pytest.mark.parametrize("summed", [True, False])
def test_a_product_that_is_not_the_mask_is_kept(summed):
    """The rewrite is checked by running both graphs: a product with anything but the padding
    mask changes the outputs, and the graph is left as it was; so is a product that is the graph's
    output."""
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.onnx_export import INPUT, without_mask_products

    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2) + 1, "table")
    scale = numpy_helper.from_array(np.full((1, 1, 1), 2.0, dtype=np.float32), "scale")
    nodes = [helper.make_node("Gather", ["table", INPUT], ["rows"]), helper.make_node("Mul", ["rows", "scale"], ["scaled"])]
    if summed:
        nodes.append(helper.make_node("ReduceSum", ["scaled"], ["out"], keepdims=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(INPUT, TensorProto.INT32, [None, None])],
        [helper.make_tensor_value_info("out" if summed else "scaled", TensorProto.FLOAT, None)], [table, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert without_mask_products(model) is model


@pytest.mark.parametrize("name", ["cbow", "lstm"])
def test_onnx_export_is_the_same_bytes_each_time(built, name):
    """The converter's node order and constant names vary from call to call; the export must not,
    or DVC would see every retrain of the same weights as a new model."""
    from pipeline.onnx_export import export_onnx

    assert len({export_onnx(built[name]) for _ in range(4)}) == 1
