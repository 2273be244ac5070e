"""The Keras fit loop of the train stage, shared with the benchmarks: seeding, length-cut tf.data
batches, the input-length checks, compile and fit with early stopping."""
from __future__ import annotations

import numpy as np

from .common import PipelineError, import_tensorflow
from .models import get_spec
from .sequences import without_autotune


def seed_everything(seed: int) -> None:
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None, min_len: int | None,
                 window: int = 32):
    """Batches of (ids, labels), each cut to its longest document (never below `min_len`).

    CBOW and the LSTM mask padding, so the cut only saves work; the CNNs see what padding is
    left (the cut keeps at least `min_len` steps for their windows), which measured no worse on
    fully padded validation data than training on fully padded batches. For training
    (`shuffle_seed` given), documents are reshuffled every epoch, then sorted by length within
    windows of `window` batches, and the batches reshuffled: batches of similar lengths waste
    little on padding, as bucketing does, while every batch still mixes groups (SGD on
    class-sorted data fails). Without a seed, the order is kept, as predictions need."""
    import tensorflow as tf

    lengths = (x > 0).sum(axis=1).astype(np.int32)  # TextVectorization pads at the end
    data = tf.data.Dataset.from_tensor_slices((x, y, lengths))
    if shuffle_seed is not None:
        data = data.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)

        def by_length(ids, labels, lens):
            order = tf.argsort(lens)
            return tf.gather(ids, order), tf.gather(labels, order), tf.gather(lens, order)

        data = data.batch(batch_size * window).map(by_length).unbatch()
    # Known length: Keras can count steps per epoch though unbatch() hides it from tf.data.
    data = data.batch(batch_size).apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))
    floor = max(min_len or 1, 1)

    def cut(ids, labels, lens):
        return ids[:, : tf.maximum(tf.reduce_max(lens), floor)], labels

    data = data.map(cut)
    if shuffle_seed is not None:
        data = data.shuffle(window * 2, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
    return without_autotune(data.prefetch(tf.data.AUTOTUNE))


def sequence_length(name: str, cfg: dict, tokenize_max_len: int) -> int:
    """The model's input length: its own max_len or tokenize's, checked against both limits."""
    max_len = cfg["max_len"] or tokenize_max_len
    key = f"train.{name}.max_len" if cfg["max_len"] else "tokenize.max_len"
    if max_len > tokenize_max_len:
        raise PipelineError(f"params.yaml: {key} = {max_len}: above tokenize.max_len {tokenize_max_len}")
    shortest = min_length(name, cfg) or 1
    if max_len < shortest:
        raise PipelineError(
            f"params.yaml: {key} = {max_len}: {name} needs at least {shortest} tokens (kernel/pool sizes)"
        )
    return max_len


def min_length(name: str, cfg: dict) -> int | None:
    """Shortest input the model's architecture accepts (convolutions), None when any length does."""
    spec = get_spec(name)
    return spec.min_len(cfg) if spec.min_len else None


def compile_model(model, cfg: dict) -> None:
    """Adam at the model's learning rate, sparse cross-entropy, accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train_keras_model(name: str, cfg: dict, model, x: dict, y: dict, callbacks: list = (), verbose: int = 2):
    """Compile and fit `model` as the train stage does (`compile_model`, early stopping on
    validation accuracy restoring the best weights); `callbacks` are added to the stage's own.
    Returns the Keras History."""
    import keras

    compile_model(model, cfg)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=cfg["patience"], restore_best_weights=True, mode="max"
    )
    floor = min_length(name, cfg)
    return model.fit(
        make_dataset(x["train"], y["train"], cfg["batch_size"], cfg["seed"], floor),
        validation_data=make_dataset(x["val"], y["val"], 512, None, floor),
        epochs=cfg["epochs"],
        shuffle=False,  # make_dataset shuffles; Keras would warn that it ignores its own for a dataset
        callbacks=[stop, *callbacks],
        verbose=verbose,
    )
