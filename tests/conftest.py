import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

# Real CIFAR-10 test images the export tests run on (`cifar_images`).
NUM_IMAGES = 24


def force_gates(model, on):
    """Sets every predictor so that all its gates are on (or off) for any input."""
    for layer in model.gated_layers:
        layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, "float32"))
        layer.predictor.bias.assign(np.full(layer.predictor.bias.shape, 50.0 if on else -50.0, "float32"))


def randomize_weights(layer, rng):
    """Random normal values for every weight of `layer`; variances made positive.

    Batch-norm scales come out negative for some channels, as can happen in training.
    """
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        if "variance" in variable.path:
            value = np.abs(value) + 0.1
        variable.assign(value)


def small_resnet(name="small_resnet"):
    """A plain CNN with residual adds, six gateable convs and a "logits" layer: ResNet-CIFAR's shape at a
    fraction of its tracing time, for tests of training mechanics rather than of an architecture."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)

    def unit(x, filters, strides, name, relu=True):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    x = unit(x, 8, 1, "stem")
    for stage, (filters, strides) in enumerate(((8, 1), (16, 2))):
        if strides > 1:
            x = unit(x, filters, strides, f"down{stage}")
        y = unit(unit(x, filters, 1, f"res{stage}a"), filters, 1, f"res{stage}b", relu=False)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def benchmark_script(name):
    """The module of `benchmarks/<name>.py` (the benchmarks are scripts, not a package)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def cifar_images():
    """A few real CIFAR-10 test images (raw RGB 0..255); random ones if CIFAR-10 is not prepared."""
    try:
        from ftwt_keras import data

        batch = next(iter(data.cifar("cifar10", f"test[:{NUM_IMAGES}]", batch_size=NUM_IMAGES, training=False)))
        return np.asarray(batch[0], np.float32)
    except (FileNotFoundError, ImportError) as error:  # pragma: no cover - machine without the data
        pytest.skip(f"CIFAR-10 is not prepared: {error}")
