"""The seeds' Keras recipe, timed: run by benchmarks/peers.py in its own TensorFlow virtualenv.

    data/bench/peers-venv/bin/python benchmarks/keras_seed.py job.json    # prints one JSON line

``job.json`` holds ``train`` and ``val`` (lists of ``[path, label]``), ``image_size``,
``batch_size``, ``frozen_epochs``, ``finetune_epochs``, ``fine_tune_at`` and ``lr``. The
recipe is the TensorFlow transfer-learning guide's, which the seed notebooks follow:
JPEGs decoded and resized every epoch by tf.data (``image_dataset_from_directory``'s own
steps), ``RandomFlip("horizontal")`` + ``RandomRotation(0.2)``, ``preprocess_input``,
MobileNetV2 (``weights=None``: nothing to download) called with ``training=False``, global
average pooling, dropout 0.2, one logit; Adam at ``lr`` with the base frozen, then the
base's layers from ``fine_tune_at`` on trainable at ``lr / 10``. Validation after every
epoch. Imports neither torch nor this project.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's import: no start-up chatter

import tensorflow as tf  # noqa: E402

keras = tf.keras


class EpochTimer(keras.callbacks.Callback):
    """Per epoch: seconds of training (to the last batch) and of the whole epoch (validation included)."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"train_s": self._last - self._start, "epoch_s": time.perf_counter() - self._start})


def dataset(pairs: list, size: int, batch: int, shuffle: bool) -> tf.data.Dataset:
    paths = tf.constant([p for p, _ in pairs])
    labels = tf.constant([float(y) for _, y in pairs])
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=0, reshuffle_each_iteration=True)

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size), method="bilinear"), label

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


def build(size: int):
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    base.trainable = False
    inputs = keras.Input(shape=(size, size, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(augment(inputs))
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x)), base


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    tf.keras.utils.set_random_seed(0)
    size, batch = job["image_size"], job["batch_size"]
    train = dataset(job["train"], size, batch, shuffle=True)
    val = dataset(job["val"], size, batch, shuffle=False)
    model, base = build(size)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(job["lr"]), loss=loss, metrics=["accuracy"])
    frozen = EpochTimer()
    model.fit(train, epochs=job["frozen_epochs"], validation_data=val, callbacks=[frozen], verbose=0)
    base.trainable = True
    for layer in base.layers[:job["fine_tune_at"]]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(job["lr"] / 10), loss=loss, metrics=["accuracy"])
    tuned = EpochTimer()
    total = job["frozen_epochs"] + job["finetune_epochs"]
    model.fit(train, epochs=total, initial_epoch=job["frozen_epochs"], validation_data=val, callbacks=[tuned], verbose=0)
    trainable = sum(int(tf.size(w)) for w in base.trainable_weights)
    print(json.dumps({"tensorflow": tf.__version__, "images": len(job["train"]), "frozen": frozen.epochs,
                      "finetune": tuned.epochs, "base_trainable_params": trainable,
                      "first_trainable_layer": base.layers[job["fine_tune_at"]].name}))


if __name__ == "__main__":
    main()
