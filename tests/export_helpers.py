"""Shared helpers of the export tests: real images, networks whose masks and logits follow the image, checks."""

import functools
import os

import keras
import numpy as np

import ftwt_keras as fk
from ftwt_keras import _graph
from ftwt_keras.export import tflite as export
from ftwt_keras.layers import GatedConv

from conftest import NUM_IMAGES


@functools.lru_cache(maxsize=None)
def _statistics_images():
    """32 CIFAR-10 training images and the tests' test images (random pixels without the data)."""
    try:
        from ftwt_keras import data

        train, _ = data.cifar_arrays("cifar10", "train[:32]")
        test, _ = data.cifar_arrays("cifar10", f"test[:{NUM_IMAGES}]")
        return np.concatenate([train, test]).astype(np.float32)
    except (FileNotFoundError, ImportError):  # pragma: no cover - machine without the data
        return np.random.default_rng(0).uniform(0, 255, (32 + NUM_IMAGES, 32, 32, 3)).astype(np.float32)


def two_paying_convs():
    """A small plain network at 28x28 whose conv1 (3x3, 48 -> 48: 16.3M multiply-adds) and conv2 (48 -> 96: 32.5M)
    compute only their active filters at a low keep ratio (conv0, from 3 channels, is too small to)."""
    inputs = keras.Input((28, 28, 3))
    x = keras.layers.Conv2D(48, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(96, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))


def _threshold_in_a_gap(values, off_fraction):
    """A threshold near the `off_fraction` quantile of `values`, midway in the widest nearby gap.

    No image then lies within float rounding of it: a gate decided differently
    by Keras (batched) and TFLite (batch 1) would flip whole later layers of
    this untrained network and fail the exactness tests for no fault of the export.
    """
    ordered = np.sort(values)
    target = int(np.clip(round(off_fraction * len(ordered)), 1, len(ordered) - 1))
    candidates = np.arange(max(1, target - 3), min(len(ordered), target + 4))
    best = candidates[np.argmax(ordered[candidates] - ordered[candidates - 1])]
    return (ordered[best - 1] + ordered[best]) / 2


def perturb(model, seed=0, decided=None):
    """Batch-norm statistics and predictor biases that make masks, and logits, vary per image.

    Each gated layer's batch norm gets statistics near those of its conv's
    outputs on real images (a layer without one, its conv's weights scaled to
    outputs of unit spread: a random VGG16's activations fade otherwise) (`_statistics_images`, resized to the model's input;
    mean shifted by ~0.2 std, variance scaled by 0.5-2x), and each predictor a
    bias that turns each filter on for 20-80% of those images (a threshold
    midway between two of them, `_threshold_in_a_gap`), so the image's signal
    survives every layer. (Statistics drawn without regard to the activations,
    or a layer whose gates are all off, leave logits that hardly depend on the
    image: an export that ignored it would pass.) Shifts are mostly positive:
    filters that are on while all their inputs are off give a non-zero
    constant, which the export must reproduce.

    `decided`: `{layer name: (on columns, off columns)}`, gates made on / off
    for every image (zero predictor column, bias +-1) along the way, so that
    the thresholds downstream see them.
    """
    rng = np.random.default_rng(seed)
    network = _graph.as_functional(model.network)
    images = _statistics_images()
    size = tuple(network.inputs[0].shape[1:3])
    if size != images.shape[1:3]:
        images = keras.ops.image.resize(images, size, interpolation="nearest")
    tensors = {id(network.inputs[0]): keras.ops.convert_to_tensor(images)}
    for node in _graph.model_nodes(network):
        if node.is_input or node.operation is None:
            continue
        layer, inputs = node.operation, [tensors[id(t)] for t in node.input_tensors]
        if isinstance(layer, GatedConv):
            bn = layer.batch_norm
            if bn is None:  # no statistics to draw: the conv's outputs scaled to unit spread instead
                scale = 1.0 / max(float(np.asarray(layer.conv(inputs[0])).std()), 1e-12)
                weights = [layer.conv.kernel] + ([layer.conv.bias] if layer.conv.use_bias else [])
                for weight in weights:
                    weight.assign(np.asarray(weight) * scale)
            else:
                outputs = np.asarray(layer.conv(inputs[0]))
                mean, std = outputs.mean(axis=(0, 1, 2)), outputs.std(axis=(0, 1, 2))
                std = np.maximum(std, 0.1 * np.median(std) + 1e-3)  # no blow-up of near-constant channels
                channels = mean.shape[0]
                bn.moving_mean.assign((mean + rng.normal(0.0, 0.2, channels) * std).astype("float32"))
                bn.moving_variance.assign((std**2 * rng.uniform(0.5, 2.0, channels)).astype("float32"))
                if bn.scale:  # keras.applications.InceptionV3's have none
                    bn.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
                if bn.center:
                    bn.beta.assign(rng.normal(0.1, 0.3, channels).astype("float32"))
            bias = np.asarray(layer.predictor.bias)
            unbiased = np.asarray(layer.predictor(inputs[0])) - bias
            off_fractions = rng.uniform(0.2, 0.8, bias.shape)
            thresholds = [_threshold_in_a_gap(unbiased[:, j], off_fractions[j]) for j in range(bias.shape[0])]
            layer.predictor.bias.assign(-np.asarray(thresholds, np.float32))
            if layer.name in (decided or {}):
                fk.fix_gates(layer, *decided[layer.name])
        if isinstance(layer, keras.layers.Layer):
            tensors[id(node.outputs[0])] = layer(inputs if len(inputs) > 1 else inputs[0], training=False)
        else:  # an operation on symbolic tensors (`x + 3.0`)
            tensors[id(node.outputs[0])] = _graph.call_operation(node, inputs)
    return model


def assert_same_logits(flatbuffer, model, images):
    expected = np.asarray(model.predict(images, verbose=0))
    actual = export.run(flatbuffer, images)
    logit_range = float(expected.max() - expected.min())
    assert np.abs(actual - expected).max() <= 1e-3 * logit_range
    assert np.mean(actual.argmax(1) == expected.argmax(1)) >= 0.995


def assert_builtin_only(flatbuffer):
    names = export.op_names(flatbuffer)
    assert names
    assert not [name for name in names if name.startswith("Flex") or not name.isupper()]


def depthwise_input_widths(flatbuffer):
    """The channel count of each DEPTHWISE_CONV_2D's input in the graph, in op order."""
    runner = export.interpreter(flatbuffer)
    shapes = {tensor["index"]: tensor["shape"] for tensor in runner.get_tensor_details()}
    return [int(shapes[op["inputs"][0]][-1]) for op in runner._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]


def assert_depthwise_convs_chain(flatbuffer, model):
    """Every depthwise conv after the first reads its input's compact channels, not all of them."""
    dense_widths = [layer.filters for layer in model.gated_layers if layer.is_depthwise]
    widths = depthwise_input_widths(flatbuffer)
    assert len(widths) == len(dense_widths)
    assert all(width < dense for width, dense in zip(widths[1:], dense_widths[1:])), (widths, dense_widths)


BUILDERS = {
    "mobilenet_v1": lambda: fk.models.mobilenet_v1(alpha=0.25),
    "resnet20": lambda: fk.models.resnet_cifar(depth=20),
    # The ImageNet layout (7x7 stride-2 stem, padded max pool, gated projection shortcuts) on CIFAR images.
    "resnet18": lambda: fk.models.resnet18(input_shape=(32, 32, 3), num_classes=10),
    "vgg16_bn": fk.models.vgg16_bn,
}
GATE_OPTIONS = {"mobilenet_v1_low_rank": {"predictor_rank": 8}}


def stand_in_adb(folder, microseconds=1500):
    """A stand-in `adb` in `folder`: it records its calls and answers each benchmark_model run in its format.

    Returns `(environment, calls)`: the environment that puts it first on PATH, and the file of its calls
    (one line each). No phone is at hand here; this runs a device script as a user would.
    """
    folder.mkdir(exist_ok=True)
    adb = folder / "adb"
    adb.write_text('#!/bin/sh\necho "$@" >> "$ADB_CALLS"\ncase "$*" in *--graph=*) echo "INFO: Inference timings '
                   f'in us: Init: 5, First inference: 9, Warmup (avg): 8, Inference (avg): {microseconds}";; esac\n')
    adb.chmod(0o755)
    calls = folder / "calls"
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}", ADB_CALLS=str(calls)), calls
