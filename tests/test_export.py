"""TFLite export (ftwt_keras.export): builtin ops only, exact logits, clear errors."""

import collections
import functools
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras import _graph  # noqa: E402
from ftwt_keras.layers import GatedConv  # noqa: E402
from ftwt_keras.export import builder as export_builder  # noqa: E402
from ftwt_keras.export import calibration as export_calibration  # noqa: E402
from ftwt_keras.export import planning as export_planning  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from conftest import benchmark_script, force_gates  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 24


@pytest.fixture(scope="module")
def cifar_images():
    """A few real CIFAR-10 test images (raw RGB 0..255); random ones if CIFAR-10 is not prepared."""
    try:
        from ftwt_keras import data

        batch = next(iter(data.cifar("cifar10", f"test[:{NUM_IMAGES}]", batch_size=NUM_IMAGES, training=False)))
        return np.asarray(batch[0], np.float32)
    except (FileNotFoundError, ImportError) as error:  # pragma: no cover - machine without the data
        pytest.skip(f"CIFAR-10 is not prepared: {error}")


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
    outputs on real images (`_statistics_images`, resized to the model's input;
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
            if bn is not None:
                outputs = np.asarray(layer.conv(inputs[0]))
                mean, std = outputs.mean(axis=(0, 1, 2)), outputs.std(axis=(0, 1, 2))
                std = np.maximum(std, 0.1 * np.median(std) + 1e-3)  # no blow-up of near-constant channels
                channels = mean.shape[0]
                bn.moving_mean.assign((mean + rng.normal(0.0, 0.2, channels) * std).astype("float32"))
                bn.moving_variance.assign((std**2 * rng.uniform(0.5, 2.0, channels)).astype("float32"))
                bn.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
                bn.beta.assign(rng.normal(0.1, 0.3, channels).astype("float32"))
            bias = np.asarray(layer.predictor.bias)
            unbiased = np.asarray(layer.predictor(inputs[0])) - bias
            off_fractions = rng.uniform(0.2, 0.8, bias.shape)
            thresholds = [_threshold_in_a_gap(unbiased[:, j], off_fractions[j]) for j in range(bias.shape[0])]
            layer.predictor.bias.assign(-np.asarray(thresholds, np.float32))
            if layer.name in (decided or {}):
                fk.fix_gates(layer, *decided[layer.name])
        tensors[id(node.outputs[0])] = layer(inputs if len(inputs) > 1 else inputs[0], training=False)
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


@pytest.mark.parametrize(
    "name, policy, expected_ops",
    [
        ("mobilenet_v1", "gather", {"WHERE", "GATHER"}),
        ("mobilenet_v1", "gather_inputs", {"WHERE", "GATHER"}),
        ("resnet20", "gather", {"WHERE", "GATHER"}),
        ("resnet18", "gather", {"WHERE", "GATHER"}),
        ("mobilenet_v1_low_rank", "gather", {"WHERE", "GATHER"}),
        ("vgg16_bn", 0.5, {"WHERE", "GATHER", "IF"}),  # IF: the run-time dense / gather choice
        # VGG's 3x3 convs with >= 256 filters at 8x8 and 4x4 have >= 16M MACs: run-time choice.
        ("vgg16_bn", "auto", {"WHERE", "GATHER", "IF"}),
    ],
)
def test_dynamic_export_matches_keras(name, policy, expected_ops, cifar_images):
    model = perturb(fk.gate(BUILDERS[name.replace("_low_rank", "")](), **GATE_OPTIONS.get(name, {})))
    masks = {k: np.asarray(v) for k, v in fk.flops.gate_masks_of(model, cifar_images).items()}
    # The test is meaningful only if masks differ between images and layers are partly on.
    assert any(len(np.unique(mask, axis=0)) > 1 for mask in masks.values())
    assert 0.1 < np.mean([mask.mean() for mask in masks.values()]) < 0.9
    # ... and if the logits follow the image: an export that lost it would match constant logits.
    logits = np.asarray(model.predict(cifar_images, verbose=0))
    assert np.ptp(logits, axis=0).max() > 0.1 * np.ptp(logits)
    flatbuffer = export.convert(model, policy=policy)
    assert_builtin_only(flatbuffer)
    assert expected_ops <= set(export.op_names(flatbuffer))
    assert_same_logits(flatbuffer, model, cifar_images)


@pytest.mark.parametrize("name", ["mobilenet_v1", "vgg16_bn"])
def test_masks_deferred_from_masked_dense_layers_fold_into_gathered_ones(name, cifar_images):
    """Masked-dense layers feeding gathered ones (what "auto" does at 224x224), exact.

    A masked-dense layer leaves its mask unapplied; the next gathered conv
    scales its weights' input side by it, and a masked-dense depthwise conv
    passes its input's mask on with an offset (batch norm's shift on channels
    whose input is off) that the next 1x1 conv folds into its bias.
    """
    model = perturb(fk.gate(BUILDERS[name]()), seed=5)
    layers = [layer.name for layer in model.gated_layers]
    if name == "mobilenet_v1":  # depthwise masked dense; pointwise masked dense, then gathered, by turns
        policy = {layer: "dense" if layer.endswith("_dw") or index % 4 == 0 else "gather"
                  for index, layer in enumerate(layers)}
    else:  # alternate: 3x3 convs gathered on a masked-dense input
        policy = {layer: "dense" if index % 2 == 0 else "gather" for index, layer in enumerate(layers)}
    flatbuffer = export.convert(model, policy=policy)
    assert_builtin_only(flatbuffer)
    # The masked-dense outputs are multiplied only where a dense layer reads them.
    muls = export.op_names(flatbuffer).count("MUL")
    assert muls < export.op_names(export.convert(model, policy="dense")).count("MUL")
    assert_same_logits(flatbuffer, model, cifar_images)


def test_auto_policy_runs_small_layers_dense(cifar_images):
    """At 32x32 every MobileNetV1 x0.25 layer is too small for a run-time branch to pay."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()))
    names = set(export.op_names(export.convert(model, policy="auto")))
    assert not names & {"IF", "WHERE", "GATHER", "BATCH_MATMUL"}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MUL"} <= names  # dense convs, then masked
    flatbuffer = export.convert(model, policy="auto")
    # Every op runs on XNNPACK, as one partition: a mask row taken as `[0]` (STRIDED_SLICE) or
    # reshaped to [-1] stays outside it and splits the graph at every layer (28 partitions).
    nodes = [op["op_name"] for op in export.interpreter(flatbuffer)._get_ops_details()]
    assert nodes.count("DELEGATE") == 1, collections.Counter(nodes)
    assert_same_logits(flatbuffer, model, cifar_images[:8])
    # The same layers above the MAC threshold get the run-time choice.
    big = perturb(fk.gate(fk.models.mobilenet_v1(input_shape=(128, 128, 3), alpha=1.0)))
    assert "IF" in export.op_names(export.convert(big, policy="auto"))


def test_auto_policy_with_calibration_images_chooses_once(cifar_images):
    """With calibration images auto picks per layer from the mean keep ratio: no IF, still exact."""
    images = np.repeat(np.repeat(cifar_images[:6], 4, axis=1), 4, axis=2)  # 128x128: layers above the MAC floor
    model = fk.gate(fk.models.mobilenet_v1(input_shape=(128, 128, 3), alpha=1.0))
    export.set_keep_ratio(model, keep=0.3, seed=4)
    sparse = export.convert(model, policy="auto", calibration_images=images[:4], static_gates=False)
    names = export.op_names(sparse)
    # Large layers compact with static capacities (TOPK_V2, no WHERE); the only IF is the overflow fallback.
    assert "WHERE" not in names and {"TOPK_V2", "BATCH_MATMUL"} <= set(names) and names.count("IF") == 1
    assert_same_logits(sparse, model, images)
    export.set_keep_ratio(model, keep=0.9, seed=4)
    names = set(export.op_names(export.convert(model, policy="auto", calibration_images=images[:4], static_gates=False)))
    assert not names & {"IF", "WHERE", "GATHER", "BATCH_MATMUL"}  # every layer dense, then masked
    with pytest.raises(export.ExportError, match=r"Calibration images must be .*\(N, 128, 128, 3\)"):
        export.convert(model, calibration_images=cifar_images[:2])
    with pytest.raises(export.ExportError, match=r"Calibration images must be .*\(N, 128, 128, 3\)"):
        export.calibrate(model, cifar_images[:2])


@pytest.mark.parametrize("name", ["mobilenet_v1", "resnet20", "resnet18", "vgg16_bn"])
def test_chain_policy_matches_keras(name, cifar_images):
    """Compact outputs end to end: without calibration (run-time shapes), and with static capacities."""
    model = perturb(fk.gate(BUILDERS[name]()))
    dynamic_shapes = export.convert(model, policy="chain")
    assert "WHERE" in export.op_names(dynamic_shapes)
    assert_same_logits(dynamic_shapes, model, cifar_images)
    # Capacities from every test image: no image overflows, so the compact path gives every logit.
    static = export.convert(model, policy="chain", calibration_images=cifar_images)
    names = export.op_names(static)
    assert_builtin_only(static)
    assert "TOPK_V2" in names and "WHERE" not in names
    if name == "mobilenet_v1":
        assert_depthwise_convs_chain(static, model)
    assert_same_logits(static, model, cifar_images)


@pytest.mark.parametrize("size, im2col", [(16, True), (32, False), (8, False)])
def test_compact_conv_on_a_dense_input_is_im2col_only_where_it_pays(size, im2col, cifar_images):
    """A 3x3 conv computing its active filters from a dense input: im2col on 14x14 to 28x28 maps.

    Elsewhere (here 32x32 and 8x8 outputs) it computes every filter on
    XNNPACK and gathers the active ones; exact either way.
    """
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(96, 3, padding="same", name="plain")(inputs)  # ungated: a dense input
    x = keras.layers.BatchNormalization(name="plain_bn")(x)
    x = keras.layers.ReLU(name="plain_relu")(x)
    x = keras.layers.Conv2D(256, 3, padding="same", use_bias=False, name="gated")(x)
    x = keras.layers.BatchNormalization(name="gated_bn")(x)
    x = keras.layers.ReLU(name="gated_relu")(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = fk.gate(export.randomize_batch_norm(keras.Model(inputs, outputs)),
                    layers_to_gate=lambda layer: layer.name == "gated")
    export.set_keep_ratio(model, keep=0.3, seed=1)
    images = np.asarray(keras.ops.image.resize(cifar_images[:8], (size, size)))
    calibration = export.calibrate(model, images)
    flatbuffer = export.convert(model, policy="chain", calibration=calibration, static_gates=False)
    names = export.op_names(flatbuffer, subgraph=0)  # not the overflow fallback's masked-dense graph
    # The plain conv is a CONV_2D either way; the gated one is a second CONV_2D only without im2col.
    assert names.count("CONV_2D") == (1 if im2col else 2), names
    assert ("BATCH_MATMUL" in names) == im2col
    assert_same_logits(flatbuffer, model, images)


def test_weights_of_layers_left_dense_are_stored_once(cifar_images):
    """Layers left ungated run in the main graph and in the overflow fallback's: one copy of their weights.

    Read as variables inside the fallback's IF branch they entered it as
    run-time inputs, stored twice (a VGG16-bn gated at six convs: 1.9x the
    dense model's size).
    """
    base = fk.models.mobilenet_v1(alpha=0.25)
    model = perturb(fk.gate(base, layers_to_gate=lambda layer: layer.name.startswith("block1_")))
    assert len(model.gated_layers) == 2
    flatbuffer = export.convert(model, policy="chain", calibration_images=cifar_images)
    assert "IF" in export.op_names(flatbuffer)  # the fallback holds every layer again
    dense = export.convert(model, dynamic=False)
    assert len(flatbuffer) < 1.1 * len(dense), (len(flatbuffer), len(dense))
    assert_same_logits(flatbuffer, model, cifar_images)


def test_capacities_add_a_margin_that_follows_each_gate_counts_spread(cifar_images):
    """Masks that never vary get no margin; varying ones the most seen plus CAPACITY_STDS deviations."""
    drawn = export.set_keep_ratio(fk.gate(BUILDERS["mobilenet_v1"]()), 0.3)
    fixed = export.calibrate(drawn, cifar_images[:8])
    for layer in drawn.gated_layers:
        filters = layer.filters
        assert fixed.capacities[layer.name] == max(1, round(0.3 * filters))
    # Benchmarks of drawn masks widen them to the margin real masks need; the export computes that many.
    widened = fixed.with_capacity_ratio(drawn, 1.5)
    for layer in drawn.gated_layers:
        filters = layer.filters
        assert widened.capacities[layer.name] == min(filters, int(np.ceil(1.5 * max(1, round(0.3 * filters)))))
    flatbuffer = export.convert(drawn, policy="chain", calibration=widened, static_gates=False)
    feeding = ["conv1"] + [f"block{index}_pw" for index in range(1, 13)]  # the layer before each depthwise conv
    assert depthwise_input_widths(flatbuffer) == [widened.capacities[name] for name in feeding]
    assert_same_logits(flatbuffer, drawn, cifar_images[:4])
    with pytest.raises(export.ExportError, match="ratio"):
        fixed.with_capacity_ratio(drawn, 0.9)
    # ... or to what independent gates would need: few of 1,000 such images overflow, against most without.
    binomial = fixed.with_binomial_spread(drawn, num_images=64)
    rng = np.random.default_rng(1)
    filters = {layer.name: layer.filters for layer in drawn.gated_layers}
    independent = {name: rng.binomial(filters[name], fixed.keep_ratios[name], 1000) for name in filters}
    assert binomial.overflows(independent).mean() < 0.01 < 0.5 < fixed.overflows(independent).mean()
    assert all(fixed.capacities[name] <= binomial.capacities[name] <= filters[name] for name in filters)
    with pytest.raises(export.ExportError, match="not both"):
        export.convert(drawn, calibration=fixed, calibration_images=cifar_images[:2])
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    counts = export.gate_counts(model, cifar_images)
    calibration = export.calibrate(model, cifar_images)
    wider = export.calibrate(model, cifar_images, capacity_stds=2 * export.CAPACITY_STDS)
    varying = [name for name, count in counts.items() if count.std() > 0]
    assert varying
    filters = {layer.name: layer.filters for layer in model.gated_layers}
    for name, count in counts.items():
        expected = min(filters[name], int(count.max()) + int(np.ceil(export.CAPACITY_STDS * count.std(ddof=1))))
        assert calibration.capacities[name] == expected
        assert wider.capacities[name] >= expected
    assert any(wider.capacities[name] > calibration.capacities[name] for name in varying)
    assert not calibration.overflows(counts).any()  # calibrated on these very images
    sparsest = int(np.argmin(sum(counts.values())))  # the image with the fewest active filters
    few = export.calibrate(model, cifar_images[sparsest : sparsest + 1])
    beyond = np.any([counts[name] > few.capacities[name] for name in varying], axis=0)
    assert beyond.any() and np.array_equal(few.overflows(counts, varying), beyond)
    with pytest.raises(export.ExportError, match="capacity_stds"):
        export.calibrate(model, cifar_images[:2], capacity_stds=-1)


def test_chain_capacity_overflow_falls_back_to_the_exact_path(cifar_images, monkeypatch):
    """An image with more active filters than calibration saw takes the masked-dense IF branch."""
    monkeypatch.setattr(export_calibration, "CAPACITY_STDS", 0.0)
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    masks = fk.flops.gate_masks_of(model, cifar_images)
    counts = {name: np.asarray(mask).sum(axis=1) for name, mask in masks.items()}
    sparsest = int(np.argmin(sum(counts.values())))  # the image with the fewest active filters
    calibration = export.calibrate(model, cifar_images[sparsest : sparsest + 1])
    overflowing = np.any([counts[name] > capacity for name, capacity in calibration.capacities.items()], axis=0)
    assert overflowing.sum() > 0 and not overflowing[sparsest]  # both paths are exercised
    flatbuffer = export.convert(model, policy="chain", calibration_images=cifar_images[sparsest : sparsest + 1])
    assert "IF" in export.op_names(flatbuffer)
    assert_same_logits(flatbuffer, model, cifar_images)


def test_capped_gates_export_compact_with_no_margin_and_no_fallback(cifar_images):
    """A capped layer computes exactly its capacity, needs no calibration, and overflows never."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    uncapped = export.gate_counts(model, cifar_images)
    capacities = fk.cap_gates(model, cifar_images, ratio=0.9)
    assert any((uncapped[name] > capacities[name]).any() for name in uncapped)  # the caps bind on some images
    flatbuffer = export.convert(model, policy="chain")  # no calibration images: the caps are the capacities
    names = export.op_names(flatbuffer)
    assert_builtin_only(flatbuffer)
    assert "IF" not in names and "WHERE" not in names
    capped = [layer for layer in model.gated_layers if layer.capacity is not None and layer.capacity < layer.filters]
    assert names.count("TOPK_V2") == len(capped)  # one per capped gate, shared with its compaction
    feeding = ["conv1"] + [f"block{index}_pw" for index in range(1, 13)]  # the layer before each depthwise conv
    assert depthwise_input_widths(flatbuffer) == [capacities[name] for name in feeding]
    assert_same_logits(flatbuffer, model, cifar_images)
    regular = [layer.name for layer in model.gated_layers if not layer.is_depthwise]
    assert export.compacted_layers(model, policy="chain") == regular
    assert export.compacted_layers(model) == []  # `auto`: no layer at 32x32 is large enough to pay
    # Calibrated capacities above a cap give way to it; `auto` compacts by the smaller one.
    calibration = export.calibrate(model, cifar_images).with_capacity_ratio(model, 1.5)
    assert export.convert(model, policy="chain", calibration=calibration) == flatbuffer
    # cap_compacted_gates caps where the export compacts only: under `auto` at 32x32, nowhere.
    assert export.cap_compacted_gates(model, cifar_images, ratio=0.9) == {}
    assert all(layer.capacity is None for layer in model.gated_layers)
    assert export.cap_compacted_gates(model, cifar_images, ratio=0.9, policy="chain") == {
        name: capacities[name] for name in regular
    }


def test_chain_carries_batch_norm_shifts_of_pruned_inputs(cifar_images):
    """A depthwise filter on over an input channel that is off outputs a constant the next conv must see."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=4)
    layers = {layer.name: layer for layer in model.gated_layers}
    force_layer = layers["block3_dw"]
    force_layer.predictor.kernel.assign(np.zeros(force_layer.predictor.kernel.shape, "float32"))
    force_layer.predictor.bias.assign(np.full(force_layer.predictor.bias.shape, 50.0, "float32"))
    unit = export.fold_batch_norm(force_layer)
    assert (unit.bias > 0).any()  # shifts that survive the ReLU
    # Per image, as if the forced gates depended on it (else block3_dw is pruned statically).
    flatbuffer = export.convert(model, policy="chain", calibration_images=cifar_images, static_gates=False)
    assert_depthwise_convs_chain(flatbuffer, model)  # block3_dw runs compact and carries the shifts
    assert_same_logits(flatbuffer, model, cifar_images)


def test_layer_times_from_truncated_exports(cifar_images):
    """`stop_at` cuts the export after a layer; `layer_times` differences their side-by-side times."""
    base = fk.models.mobilenet_v1(alpha=0.25)
    model = export.set_keep_ratio(fk.gate(base), keep=0.5)
    # The dense export cut after gated unit block2_pw is the plain network up to its activation.
    upto = keras.Model(base.inputs, base.get_layer("block2_pw_relu").output)
    expected = np.asarray(upto(cifar_images[:2], training=False)).reshape(2, -1).sum(axis=1)
    actual = export.run(export.convert(model, dynamic=False, stop_at="block2_pw"), cifar_images[:2])
    np.testing.assert_allclose(actual.reshape(2), expected, rtol=1e-4)
    rows = export.layer_times(model, cifar_images[:6], layer_names=["block1_pw", "block3_pw"], warmup=2)
    assert [row["layer"] for row in rows] == ["block1_pw", "block3_pw"]
    assert sum(row["dense_ms"] for row in rows) > 0 and sum(row["dynamic_ms"] for row in rows) > 0
    with pytest.raises(export.ExportError, match="no layer named 'nope'"):
        export.convert(model, stop_at="nope")


def test_auto_compacts_mid_size_maps_up_to_a_wider_cutoff(cifar_images, monkeypatch):
    """At 224x224 with capacities 0.63 of the filters, exactly the 28x28 and 14x14 pointwise convs compact (1 thread)."""
    model = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(input_shape=(224, 224, 3), num_classes=10)), 0.5)
    images = np.asarray(keras.ops.image.resize(cifar_images[:2], (224, 224)))
    calibration = export.calibrate(model, images).with_capacity_ratio(model, 1.26)
    compact = [layer.name for layer in model.gated_layers
               if not layer.is_depthwise and calibration.capacities[layer.name] < layer.filters]
    assert len(compact) == 14 and all(calibration.capacities[name] > 0.6 * model.network.get_layer(name).filters
                                      for name in compact)  # above the general cutoff everywhere
    ops = collections.Counter(export.op_names(export.convert(model, calibration=calibration, static_gates=False)))
    assert ops["TOPK_V2"] == 8  # one per compact layer: blocks 4-5 (28x28) and 6-11 (14x14)
    # For 2 threads XNNPACK splits the dense convs but not the compact path: at 0.63 nothing compacts,
    # nothing reads only its active inputs (keep 0.5), so no gate pays; at keep 0.3 (capacities 0.38) they do.
    ops = collections.Counter(export.op_names(export.convert(model, calibration=calibration, static_gates=False,
                                                             num_threads=2)))
    assert ops["TOPK_V2"] == 0 and ops["GATHER"] == 0
    assert export.paying_gates(model, calibration=calibration, num_threads=2) == []
    assert len(export.paying_gates(model, calibration=calibration)) == 18
    sparse = export.set_keep_ratio(model, 0.3)
    sparse_calibration = export.calibrate(sparse, images).with_capacity_ratio(sparse, 1.26)
    assert export.paying_gates(sparse, calibration=sparse_calibration, num_threads=2) == export.paying_gates(
        sparse, calibration=sparse_calibration)
    with pytest.raises(export.ExportError, match="`num_threads` must be a positive int"):
        export.paying_gates(sparse, calibration=sparse_calibration, num_threads=0)
    export.set_keep_ratio(model, 0.5)
    monkeypatch.setattr(export_planning, "AUTO_CHAIN_CUTOFF_MID", export_planning.AUTO_CHAIN_CUTOFF)
    ops = collections.Counter(export.op_names(export.convert(model, calibration=calibration, static_gates=False)))
    assert ops["TOPK_V2"] == 0


def test_calibration_on_targets_says_before_training_which_gates_will_pay(cifar_images):
    """The dense network's targets at r, not the untrained predictors, say which gates will pay."""
    model = fk.gate(fk.models.vgg16_bn(), threshold=0.3, target="uniform")
    counts = export.gate_counts(model, cifar_images[:16], targets=True)
    calibration = export.calibrate(model, cifar_images[:16], targets=True)
    for layer in model.gated_layers:
        # A uniform target keeps its layer's top 30% of filters (fewer only where some are dead).
        kept = layer.filters - int(0.7 * layer.filters)
        assert kept - 2 <= counts[layer.name].min() <= counts[layer.name].max() <= kept
        assert calibration.keep_ratios[layer.name] == pytest.approx(counts[layer.name].mean() / layer.filters)
        assert calibration.capacities[layer.name] >= counts[layer.name].max()
    # Untrained predictors keep about half of the filters; the targets do not depend on them.
    predicted = export.gate_counts(model, cifar_images[:16])
    assert np.mean([predicted[name].mean() / f for name, f in export_calibration._filter_counts(model).items()]) > 0.35
    rng = np.random.default_rng(0)
    for layer in model.gated_layers:
        for weight in layer.predictor.weights:
            weight.assign(rng.normal(size=weight.shape).astype("float32"))
    assert any((export.gate_counts(model, cifar_images[:16])[name] != predicted[name]).any() for name in counts)
    assert all((export.gate_counts(model, cifar_images[:16], targets=True)[name] == counts[name]).all()
               for name in counts)
    # conv2-conv7 (16x16 to 32x32 maps) compute only their active filters; conv8-conv10 are as large but
    # on 4x4 maps, where reading their weights dominates, and conv1 and conv11-13 are small.
    assert export.paying_gates(model, calibration=calibration) == [f"conv{i}" for i in range(2, 8)]
    # The recipes' --gate_only_paying: the same plan from a dense baseline, before any FTWT training.
    from ftwt_keras.recipes import common

    config = {"threshold": 0.3, "target": "uniform", "gate_only_paying": True}
    assert common.paying_layers(config, fk.models.vgg16_bn(), cifar_images[:16]) == [f"conv{i}" for i in range(2, 8)]
    # ... for 2 interpreter threads (--edge_threads=2): capacities of 0.3 of the filters still pay.
    assert common.paying_layers(dict(config, edge_threads=2), fk.models.vgg16_bn(), cifar_images[:16]) == [
        f"conv{i}" for i in range(2, 8)]
    assert common.paying_layers(dict(config, threshold=0.5, edge_threads=2), fk.models.vgg16_bn(),
                                cifar_images[:16]) == []
    common.check_some_gate_can_pay(dict(config, model="vgg16_bn", image_size=32, num_classes=10))
    with pytest.raises(ValueError, match="no gate of mobilenet_v1 at 32x32 can pay in the edge export"):
        common.check_some_gate_can_pay(dict(config, model="mobilenet_v1", alpha=1.0, image_size=32, num_classes=10))


def test_paying_gates_and_a_lean_export(cifar_images):
    """Only gates whose masks let a large conv read fewer inputs pay; the rest can be ungated, exactly exported."""
    model = export.set_keep_ratio(fk.gate(fk.models.vgg16_bn()), keep=0.3, seed=2)
    paying = export.paying_gates(model, cifar_images[:8])
    layers = {layer.name: layer for layer in model.gated_layers}
    macs = {term.layer_name: term.dense_macs for term in model.mac_terms if term.kind != "predictor"}
    big = [name for name in paying if layers[name].conv.filters >= 256 and macs[name] >= 16_000_000]
    assert big and set(paying) < set(layers)
    for name in big:  # each gathered conv pays with the gate in front of it
        assert model.gated_layers[[layer.name for layer in model.gated_layers].index(name) - 1].name in paying
    # With the capacities an export will use: wider ones compact fewer layers, so fewer gates pay.
    calibration = export.calibrate(model, cifar_images[:8])
    assert export.paying_gates(model, calibration=calibration) == paying
    wide = export.paying_gates(model, calibration=calibration.with_capacity_ratio(model, 2.5))
    assert wide and set(wide) < set(paying)
    with pytest.raises(export.ExportError, match="needs `calibration_images` or a `calibration`"):
        export.paying_gates(model)
    with pytest.raises(export.ExportError, match="not both"):
        export.paying_gates(model, cifar_images[:8], calibration=calibration)
    assert export.paying_gates(export.set_keep_ratio(model, keep=0.8), cifar_images[:8]) == []
    mobilenet = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), keep=0.3)
    assert export.paying_gates(mobilenet, cifar_images[:8]) == []  # at 32x32 no layer is large enough
    export.set_keep_ratio(model, keep=0.3, seed=2)
    lean = fk.ungate(perturb(model), [name for name in layers if name not in paying])
    assert [layer.name for layer in lean.gated_layers] == paying
    flatbuffer = export.convert(lean, calibration_images=cifar_images[:8], static_gates=False)  # drawn masks
    names = export.op_names(flatbuffer)
    assert "WHERE" not in names and "GATHER" in names and names.count("IF") <= 1  # at most the overflow fallback
    assert_same_logits(flatbuffer, lean, cifar_images)


def test_load_calibration_images(tmp_path, cifar_images):
    path = tmp_path / "calibration.npy"
    np.save(path, cifar_images[:3])
    np.testing.assert_array_equal(export.load_calibration_images(str(path)), cifar_images[:3])
    assert export.load_calibration_images("cifar10:test[:5]").shape == (5, 32, 32, 3)
    with pytest.raises(export.ExportError, match="does not exist"):
        export.load_calibration_images(str(tmp_path / "missing.npy"))
    with pytest.raises(export.ExportError, match="NAME:SPLIT"):
        export.load_calibration_images("imagenet")


def test_dense_export_with_predictors(cifar_images):
    """The floor export: plain logits first, then every predictor's logits on the dense activations."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()))
    images = cifar_images[:4]
    flatbuffer = export.convert(model, dynamic=False, with_predictors=True)
    assert_builtin_only(flatbuffer)
    assert "WHERE" not in export.op_names(flatbuffer)
    runner = export.interpreter(flatbuffer)
    plain = export.run(export.convert(model, dynamic=False), images)
    np.testing.assert_allclose(export.run(runner, images), plain, atol=1e-5 * np.ptp(plain))
    with fk.layers.record_gates(apply_masks=False) as recorder:
        model.network(images, training=False)
    expected = np.concatenate([np.asarray(r.logits) for r in recorder.records], axis=-1)
    gate_output = runner.get_output_details()[1]["index"]
    actual = []
    for image in images:
        runner.set_tensor(runner.get_input_details()[0]["index"], image[None])
        runner.invoke()
        actual.append(np.array(runner.get_tensor(gate_output)[0]))
    np.testing.assert_allclose(np.stack(actual), expected, atol=1e-3 * np.ptp(expected))
    with pytest.raises(export.ExportError, match="dynamic=False"):
        export.convert(model, with_predictors=True)


def test_predictor_input_padding_without_a_padding_layer_in_front(cifar_images):
    """A GatedConv told to ignore a border that no ZeroPadding2D directly in front made: the export crops it too."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ZeroPadding2D(1)(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.Dropout(0.5)(x)  # zero-preserving, so the export carries no unpadded tensor past it
    x = fk.layers.GatedConv(keras.layers.Conv2D(16, 3, strides=2, use_bias=False), keras.layers.BatchNormalization(),
                            activation="relu", input_padding=1)(x)
    x = fk.layers.GatedConv(keras.layers.Conv2D(8, 3, padding="same", use_bias=False), activation="relu")(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = perturb(fk.FTWTModel(keras.Model(inputs, outputs)))
    images = cifar_images[:4]
    runner = export.interpreter(export.convert(model, dynamic=False, with_predictors=True))
    with fk.layers.record_gates(apply_masks=False) as recorder:
        model.network(images, training=False)
    expected = np.concatenate([np.asarray(r.logits) for r in recorder.records], axis=-1)
    actual = []
    for image in images:
        runner.set_tensor(runner.get_input_details()[0]["index"], image[None])
        runner.invoke()
        actual.append(np.array(runner.get_tensor(runner.get_output_details()[1]["index"])[0]))
    np.testing.assert_allclose(np.stack(actual), expected, atol=1e-4 * np.ptp(expected))
    assert_same_logits(export.convert(model, policy="gather"), model, images)


def test_dense_export_is_the_plain_model(cifar_images):
    base = fk.models.resnet_cifar(depth=20)
    model = fk.gate(base)
    flatbuffer = export.convert(model, dynamic=False)
    assert_builtin_only(flatbuffer)
    names = set(export.op_names(flatbuffer))
    assert "WHERE" not in names and "CONV_2D" in names
    expected = np.asarray(base.predict(cifar_images[:8], verbose=0))
    np.testing.assert_allclose(export.run(flatbuffer, cifar_images[:8]), expected, atol=1e-4 * np.ptp(expected))


def test_layers_with_all_gates_off_or_on(cifar_images):
    """Whole layers switched off (empty tensors downstream) or on still convert and run exactly."""
    model = perturb(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), seed=1)
    layers = {layer.name: layer for layer in model.gated_layers}

    def force(layer, on):
        layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, "float32"))
        layer.predictor.bias.assign(np.full(layer.predictor.bias.shape, 50.0 if on else -50.0, "float32"))

    force(layers["block2_dw"], on=False)  # block2_pw then has no active input
    force(layers["block2_pw"], on=True)  # ... so its filters are per-channel constants
    force(layers["block5_pw"], on=False)
    force(layers["block6_dw"], on=True)
    # Forced gates are decided by the weights: per image (the paths under test) and statically pruned.
    for static in (False, True):
        flatbuffer = export.convert(model, policy="gather", static_gates=static)
        assert_same_logits(flatbuffer, model, cifar_images[:8])
    for on in (True, False):
        force_gates(model, on)
        for static in (False, True):
            for policy in ("gather", "auto", "chain"):
                assert_same_logits(export.convert(model, policy=policy, static_gates=static), model, cifar_images[:4])
            chain = export.convert(model, policy="chain", calibration_images=cifar_images[:4], static_gates=static)
            assert_same_logits(chain, model, cifar_images[:4])
        assert "SOFTMAX" not in export.op_names(chain)  # statically pruned: no predictor runs


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v1_low_rank", "resnet20"])
def test_gates_the_weights_decide_are_pruned_statically(name, cifar_images):
    """Layers whose gates the weights decide run no predictor (or one for the rest only); exact."""
    base = BUILDERS[name.replace("_low_rank", "")]()
    model = fk.gate(base, **GATE_OPTIONS.get(name, {}))
    layers = model.gated_layers
    rng = np.random.default_rng(5)
    # In MobileNetV1 odd layers are depthwise: layers 6, 12 and 14 add regular convs with gates left
    # (layer 6 feeds a strided depthwise conv: its predictor pools the unpadded static channels).
    whole, few = layers[0:12:4], layers[2:12:8]
    partial = layers[1:12:4] + [layers[6]] + layers[12:15:2]
    capped = layers[14]  # its cap can drop gates that are always positive: those are left to it
    fk.set_gate_capacities(model, {capped.name: capped.filters // 4 + 1})
    decided = {}
    # Every gate decided; one layer all on. (A layer all off would cut MobileNetV1's signal, leaving
    # logits that do not depend on the image: test_layers_with_all_gates_off_or_on has those.)
    for index, layer in enumerate(whole):
        on = rng.random(layer.filters) < (1.0 if index == 1 else 0.6)
        decided[layer.name] = (np.flatnonzero(on), np.flatnonzero(~on))
    for layer in partial:  # 3/4 decided, the rest per image
        order = rng.permutation(layer.filters)
        quarter = layer.filters // 4
        decided[layer.name] = (order[:quarter], order[quarter : 3 * quarter])
    for layer in few:  # 1/4 decided: below STATIC_MIN_DECIDED, the per-image paths
        decided[layer.name] = ((), rng.permutation(layer.filters)[: layer.filters // 4])
    perturb(model, seed=5, decided=decided)
    gates = fk.static_gates.static_gates_of(model)
    assert [gates[layer.name].all_decided for layer in whole] == [True] * 3
    assert all(0 < gates[layer.name].decided < layer.filters for layer in partial + few)
    assert not gates[capped.name].always_on.any() and gates[capped.name].decided == capped.filters // 2
    masks = fk.flops.gate_masks_of(model, cifar_images)
    for layer in partial:  # the undecided gates really vary per image
        undecided = ~(gates[layer.name].always_on | gates[layer.name].always_off)
        assert np.asarray(masks[layer.name]).reshape(len(cifar_images), -1)[:, undecided].std(axis=0).max() > 0
    static = export.convert(model)
    per_image = export.convert(model, static_gates=False)
    assert_builtin_only(static)
    assert_same_logits(static, model, cifar_images)
    assert_same_logits(per_image, model, cifar_images)
    # One predictor per layer with gates left, against one per layer.
    assert export.op_names(per_image).count("SOFTMAX") == len(layers)
    assert export.op_names(static).count("SOFTMAX") == len(layers) - len(whole)
    chain = export.convert(model, policy="chain", calibration_images=cifar_images[:8])
    assert_same_logits(chain, model, cifar_images)


def test_filters_read_only_by_always_off_depthwise_channels_are_not_computed(cifar_images, monkeypatch):
    """A fully decided depthwise conv's off channels make its producer's filters dead: cut, still exact."""
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    layers = model.gated_layers  # conv1, block1_dw, block1_pw, block2_dw (strided: zero padding first), ...
    rng = np.random.default_rng(7)
    decided = {}
    for layer in layers[2:8:2]:  # block1_pw, block2_pw, block3_pw: 3/4 decided, the rest per image
        order = rng.permutation(layer.filters)
        quarter = layer.filters // 4
        decided[layer.name] = (order[: 2 * quarter], order[2 * quarter : 3 * quarter])
    for layer in (layers[3], layers[5]):  # block2_dw, block3_dw: every gate decided, 40% off
        on = rng.random(layer.filters) < 0.6
        decided[layer.name] = (np.flatnonzero(on), np.flatnonzero(~on))
    perturb(model, seed=7, decided=decided)
    gates = fk.static_gates.static_gates_of(model)
    static = {name: g for name, g in gates.items() if g.decided >= export.STATIC_MIN_DECIDED * len(g.always_on)}
    dead = export_builder._dead_filters(model.network, static)
    # block3_pw's reader, block4_dw, keeps its predictor (it reads every channel): nothing of block3_pw is dead.
    assert sorted(dead) == [layers[2].name, layers[4].name]
    for producer, reader in ((layers[2], layers[3]), (layers[4], layers[5])):
        np.testing.assert_array_equal(dead[producer.name], gates[reader.name].always_off)
        live = ~gates[producer.name].always_off
        assert (dead[producer.name] & live).any()  # filters the producer would compute otherwise
    flatbuffer = export.convert(model)
    assert_builtin_only(flatbuffer)
    assert_same_logits(flatbuffer, model, cifar_images)
    monkeypatch.setattr(export_builder, "_dead_filters", lambda network, static: {})
    assert len(flatbuffer) < len(export.convert(model))  # the dead filters' weights are gone


def test_randomize_batch_norm_gives_shifts_the_export_must_carry(cifar_images):
    base = fk.models.mobilenet_v1(alpha=0.25)
    unchanged = export.fold_batch_norm(fk.gate(base).gated_layers[3])
    assert not unchanged.zero_input_output.any()  # as built: act(shift) = 0, nothing to carry
    assert export.randomize_batch_norm(base, seed=1) is base
    model = export.set_keep_ratio(fk.gate(base), keep=0.5, seed=1)
    folded = [export.fold_batch_norm(layer) for layer in model.gated_layers]
    assert all(unit.zero_input_output.any() for unit in folded)  # ReLU(shift) > 0 somewhere in every layer
    flatbuffer = export.convert(model, policy="chain", calibration_images=cifar_images[:4])
    assert_depthwise_convs_chain(flatbuffer, model)
    assert_same_logits(flatbuffer, model, cifar_images[:8])


def test_dense_policy_and_set_keep_ratio(cifar_images):
    model = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), keep=0.5, seed=3)
    masks = fk.flops.gate_masks_of(model, cifar_images[:2])
    for layer in model.gated_layers:
        assert float(np.mean(np.asarray(masks[layer.name]))) == pytest.approx(0.5, abs=0.05)
    policy = {layer.name: "dense" for layer in model.gated_layers[::2]}
    policy.update({layer.name: "inputs<0.6" for layer in model.gated_layers[1::4]})
    assert_same_logits(export.convert(model, policy=policy), model, cifar_images[:4])


def test_rejects_a_model_that_is_not_ftwt():
    with pytest.raises(export.ExportError, match="FTWTModel"):
        export.convert(fk.models.mobilenet_v1(alpha=0.25))


def test_rejects_missing_and_wrong_files(tmp_path):
    with pytest.raises(export.ExportError, match="does not exist"):
        export.load_ftwt_model(tmp_path / "missing.keras")
    wrong = tmp_path / "model.h5"
    wrong.write_bytes(b"not a model")
    with pytest.raises(export.ExportError, match=r"not a \.keras file"):
        export.load_ftwt_model(wrong)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(export.ExportError, match="Could not load"):
        export.load_ftwt_model(broken)


def test_rejects_an_unsupported_layer():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = fk.gate(keras.Model(inputs, keras.layers.Dense(2)(x)))
    with pytest.raises(export.ExportError, match="layer_norm.*LayerNormalization.*not supported"):
        export.convert(model)


def test_rejects_a_bad_policy():
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    with pytest.raises(export.ExportError, match="Policy"):
        export.convert(model, policy="fast")
    with pytest.raises(export.ExportError, match="not gated layers"):
        export.convert(model, policy={"nope": "dense"})
    assert export.parse_policy("gather_inputs") == "gather_inputs" and export.parse_policy("0.4") == 0.4
    with pytest.raises(export.ExportError, match="gather_inputs"):
        export.parse_policy("fast")


def test_export_file_round_trip(tmp_path, cifar_images):
    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20)), seed=2)
    path = str(tmp_path / "resnet.keras")
    model.save(path)
    output = export.export_file(path, tmp_path / "resnet.tflite")
    assert_same_logits(open(output, "rb").read(), model, cifar_images[:8])
    # Capacities without margin from two images: the others may take the exact fallback.
    output = export.export_file(path, tmp_path / "chain.tflite", policy="chain", calibration_images=cifar_images[:2],
                                capacity_stds=0)
    assert_same_logits(open(output, "rb").read(), model, cifar_images[:8])
    # A loaded model and a calibration made beforehand (what edge/convert.py passes, so it calibrates once).
    loaded = export.load_ftwt_model(path)
    output = export.export_file(loaded, tmp_path / "loaded.tflite", policy="chain",
                                calibration=export.calibrate(loaded, cifar_images[:2], capacity_stds=0))
    flatbuffer = open(output, "rb").read()
    assert export.op_names(flatbuffer) == export.op_names(open(tmp_path / "chain.tflite", "rb").read())
    assert_same_logits(flatbuffer, loaded, cifar_images[:8])
    with pytest.raises(export.ExportError, match=".tflite"):
        export.export_file(path, tmp_path / "resnet.bin")


@pytest.mark.parametrize("script", ["convert.py", "benchmark.py"])
def test_cli_help(script):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "edge", script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    # absl prints the help and exits (with status 1 in absl-py 2.x).
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert "--output" in result.stdout and "Traceback" not in result.stderr


def _saved_with_first_layer_decided(tmp_path):
    """A MobileNetV1 x0.25 whose first gated layer's gates are half on, half off for every image; saved."""
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    first = model.gated_layers[0]
    perturb(model, seed=6, decided={first.name: (np.arange(first.filters // 2), np.arange(first.filters // 2, first.filters))})
    path = str(tmp_path / "model.keras")
    model.save(path)
    return model, path


def test_convert_cli_prunes_decided_gates_unless_told_not_to(tmp_path, cifar_images):
    """edge/convert.py: a layer whose gates the weights decide runs no predictor; --nostatic_gates keeps it."""
    model, path = _saved_with_first_layer_decided(tmp_path)
    softmaxes = {}

    def convert(flag, *more):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "edge", "convert.py"), f"--model={path}",
             f"--output={tmp_path / f'{flag}.tflite'}", flag, *more],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    gated, first = len(model.gated_layers), model.gated_layers[0].name
    for flag, more, pruned in (("--static_gates", (), f"1 of {gated} gated layers pruned by their predictors' "
                                f"weights: {first}."),
                               ("--nostatic_gates", ("--threads=2",), f"0 of {gated} gated layers pruned")):
        result = convert(flag, *more)
        assert result.returncode == 0, result.stderr[-2000:]
        assert pruned in result.stdout and "Pass --calibration" in result.stdout
        flatbuffer = open(tmp_path / f"{flag}.tflite", "rb").read()
        assert_same_logits(flatbuffer, model, cifar_images[:8])
        softmaxes[flag] = export.op_names(flatbuffer).count("SOFTMAX")
    assert softmaxes == {"--static_gates": len(model.gated_layers) - 1, "--nostatic_gates": len(model.gated_layers)}
    bad = convert("--static_gates", "--threads=0")
    assert bad.returncode != 0 and "--threads must be >= 1" in bad.stderr


def test_convert_cli_says_which_gates_skip_work(tmp_path, cifar_images):
    """With --calibration, edge/convert.py names the gates that compute fewer filters, and what the rest cost."""
    model = export.set_keep_ratio(fk.gate(fk.models.vgg16_bn()), keep=0.3)
    path = str(tmp_path / "vgg.keras")
    model.save(path)
    np.save(tmp_path / "calibration.npy", cifar_images[:4])

    def convert(*flags):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "edge", "convert.py"), f"--model={path}",
             f"--output={tmp_path / 'vgg.tflite'}", f"--calibration={tmp_path / 'calibration.npy'}", *flags],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    # Drawn masks are decided by the weights (zero kernels, +-50 biases): without static pruning,
    # conv2-conv7 compact (as in test_calibration_on_targets_says_before_training_which_gates_will_pay).
    paying = ", ".join(f"conv{i}" for i in range(2, 8))
    out = convert("--nostatic_gates")
    assert f"6 of 13 compute fewer filters on the calibration images: {paying}." in out
    assert "The other 7 compute every filter" in out
    out = convert()  # with static pruning every layer is pruned
    assert "13 of 13 gated layers pruned by their predictors' weights" in out and "The other" not in out


def test_static_gates_benchmark_reports_decided_gates_exactness_and_times(tmp_path):
    _, path = _saved_with_first_layer_decided(tmp_path)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "static_gates.py"), f"--model={path}", "--num_images=8",
         "--repeats=1", "--calibration_images=4"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layers entirely." in result.stdout and "| conv1 | 8 | 4 | 4 | 0 |" in result.stdout, result.stdout
    for name in ("static", "per_image"):
        assert re.search(rf"^{name}: \d+ ops, .* same top-1 on 100.00% of 8 images$", result.stdout, re.M), result.stdout
    for name in ("static", "per_image", "all_decided"):
        assert re.search(rf"^  {name}: [0-9.]+ ms \(dense speed: [0-9.]+x\)$", result.stdout, re.M), result.stdout


def test_stage_benchmark_times_every_export():
    """benchmarks/edge_stages.py end to end on a tiny stage, ablations included."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "edge_stages.py"), "--stages=8x32", "--keeps=0.3",
         "--blocks=1", "--num_inputs=4", "--repeats=1", "--predictor_rank=8", "--ablate"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = [line for line in result.stdout.splitlines() if "keep 0.3" in line]
    assert len(line) == 1, result.stdout
    for name in ("dense", "masked", "chain", "no_predictors", "static_weights", "static_depthwise", "no_constants"):
        assert f" {name} " in line[0]


def _depthwise_filters_constant(flatbuffer):
    """For each DEPTHWISE_CONV_2D of the main graph: whether its filter is a constant (XNNPACK takes only those)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    code = schema.BuiltinOperator.DEPTHWISE_CONV_2D
    constant = []
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        op_code = model.OperatorCodes(op.OpcodeIndex())
        if max(op_code.BuiltinCode(), op_code.DeprecatedBuiltinCode()) == code:
            constant.append(model.Buffers(graph.Tensors(op.Inputs(1)).Buffer()).DataLength() > 0)
    return constant


def test_export_ablations_cut_what_they_name(cifar_images):
    """The benchmarks' timing-only exports each remove the part of the compact path that they name."""
    ablated_exports = benchmark_script("_export_ablations").ablated_exports

    def drawn(base):
        return export.set_keep_ratio(fk.gate(base, predictor_rank=8), 0.3)

    unshifted = drawn(BUILDERS["mobilenet_v1"]())
    model = drawn(export.randomize_batch_norm(BUILDERS["mobilenet_v1"]()))
    calibration = export.calibrate(model, cifar_images[:4]).with_capacity_ratio(model, 1.26)
    exports = ablated_exports(model, unshifted, policy="chain", calibration=calibration, static_gates=False)
    exports["chain"] = export.convert(model, policy="chain", calibration=calibration, static_gates=False)
    ops = {name: collections.Counter(export.op_names(flatbuffer)) for name, flatbuffer in exports.items()}
    assert ops["chain"]["SOFTMAX"] > 0 and ops["no_predictors"]["SOFTMAX"] == 0
    assert ops["chain"]["TOPK_V2"] > 0 and ops["static_weights"]["TOPK_V2"] == 0
    assert ops["no_constants"]["FULLY_CONNECTED"] < ops["chain"]["FULLY_CONNECTED"]  # no uniform channels' matvecs
    filters_constant = _depthwise_filters_constant(exports["chain"])
    assert not all(filters_constant) and all(_depthwise_filters_constant(exports["static_depthwise"]))
    assert len(_depthwise_filters_constant(exports["static_depthwise"])) == len(filters_constant)


def test_whole_network_ablation_benchmark_runs(cifar_images):
    """benchmarks/edge_ablation.py end to end on a tiny MobileNetV1 at 32x32."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "edge_ablation.py"), "--resolution=32", "--alpha=0.25",
         "--predictor_rank=8", "--num_images=3", "--calibration_images=4", "--repeats=1", "--capped_ratio=1.0"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 8 predictors, keep 0.3, caps 1x the count, 1 thread, 3 images x 1:" in result.stdout
    for name in ("no_predictors", "static_weights", "static_depthwise", "no_constants"):
        assert re.search(rf"^  {name} +[0-9.]+ ms .*that part costs [-+][0-9.]+ ms", result.stdout, re.M), result.stdout


def test_benchmark_redraws_its_chart_from_rows(tmp_path):
    pytest.importorskip("matplotlib")
    row = {"model": "mobilenet_v1_1", "predictor_rank": None, "dense_ms": 10.0, "predictors_ms": 11.0,
           "masked_dense_ms": 12.0, "gates": 27}
    rows = [
        {**row, "resolution": resolution, "threads": threads, "flops_reduction": reduction, "keep": 1 - reduction,
         "masks": f"random, keep {1 - reduction:g} per layer", "dynamic_ms": 10.0 / (0.8 + reduction / threads),
         "speedup": 0.8 + reduction / threads, "ideal_speedup": 1 / (1 - reduction)}
        for resolution in (32, 224) for threads in (1, 2) for reduction in (0.0, 0.5, 0.9)
    ]
    for lean in (rows[8], rows[11]):  # the 224x224 keep-0.1 line (both threads) also timed gated at the paying layers only
        lean.update(lean_gates=20, lean_ms=5.0, lean_speedup=2.0 / lean["threads"], lean_flops_reduction=0.8,
                    lean_ideal_speedup=5.0)
        lean.update(capped_ratio=1.1, capped_gates=14, capped_ms=4.0, capped_speedup=2.5 / lean["threads"],
                    capped_flops_reduction=0.9)
    for field in [field for field in rows[11] if field.startswith("capped_")]:
        del rows[11][field]  # with 2 threads no conv compacted, so nothing was capped
    rows.append({**rows[1], "model": "vgg16_bn_rank16", "predictor_rank": 16})  # --network=vgg16_bn
    output = tmp_path / "latency.json"
    output.write_text(json.dumps({"rows": rows}))

    def run(*flags):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "edge", "benchmark.py"), "--plot_only", *flags],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT},
        )

    result = run(f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    chart = tmp_path / "latency.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = (tmp_path / "latency.md").read_text().split("\n\n")
    main = tables[0].splitlines()
    assert len(main) == 2 + 7  # header, rule, one line per network, resolution and keep (threads side by side)
    assert main[2].startswith("| 224x224 | full | 0.10 | 90.0% | 10.00 ms | 11.00 ms | 12.00 ms | 5.88 ms | 1.70x (10.00x) | 1.25x |")
    assert main[2].endswith("| 4.00 ms: 2.50x / - |")  # the capped model beside it (1 thread only)
    assert main[-2].startswith("| 32x32 | full | 1.00 | 0.0% |") and main[-2].endswith("| - |")
    assert main[-1].startswith("| 32x32, vgg16_bn | rank 16 | 0.50 | 50.0% |")  # the network named where not MobileNetV1
    assert any(table.startswith("Capped gates:") and "1.1x" in table for table in tables)
    lean = tables[-1].splitlines()
    assert lean[2:] == ["| 224x224 | full | 0.10 | 20 of 27 | 80.0% | 10.00 ms | 5.00 ms | 2.00x (5.00x) | 1.00x | 1.70x |"]
    missing = run(f"--output={tmp_path / 'none.json'}")
    assert missing.returncode != 0 and "--plot_only needs" in missing.stderr


def test_benchmark_times_drawn_masks_with_the_capacity_margin_asked_for(tmp_path, cifar_images):
    """edge/benchmark.py end to end on a tiny MobileNetV1: rows, tables and the --drawn_capacities rule."""

    def run(*flags):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "edge", "benchmark.py"), "--mode=cifar", "--alpha=0.25",
             "--keeps=0.3", "--threads=1", "--num_images=3", "--warmup=1", "--calibration_images=4",
             f"--output={tmp_path / 'latency.json'}", f"--tflite_dir={tmp_path}", *flags],
            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT},
        )

    # Every layer compact (`auto` compacts nothing at 32x32): the convs also timed capped at 1.2x the count.
    result = run("--drawn_capacities=binomial", "--policy=chain", "--capped_ratio=1.2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "latency.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["drawn_capacities"] == "binomial" and rows[0]["images"] == 3
    assert rows[0]["dense_ms"] > 0 and rows[0]["dynamic_ms"] > 0 and rows[0]["flops_reduction"] > 0.5
    tables = (tmp_path / "latency.md").read_text()
    assert "capacities of the compact layers" in tables and "Capped gates" in tables
    assert rows[0]["capped_ratio"] == 1.2 and rows[0]["capped_gates"] == 14 and rows[0]["capped_ms"] > 0
    assert rows[0]["capped_flops_reduction"] == rows[0]["flops_reduction"]  # drawn masks: the caps never bind
    bad = run("--drawn_capacities=0.5")
    assert bad.returncode != 0 and "--drawn_capacities takes 'binomial' or a number >= 1" in bad.stderr


def run_benchmark(script, *flags):
    """Runs `benchmarks/<script>` with `flags` in a subprocess (this checkout on its path)."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_capacity_overflow_benchmark_counts_images_beyond_capacities(tmp_path, cifar_images):
    """benchmarks/capacity_overflow.py end to end: capacities from one sparse image leave others beyond them."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    model.save(tmp_path / "m.keras")
    counts = export.gate_counts(model, cifar_images)
    sparsest = int(np.argmin(sum(counts.values())))  # calibrated on it alone, other images overflow
    np.save(tmp_path / "calibration.npy", cifar_images[sparsest : sparsest + 1])
    np.save(tmp_path / "images.npy", cifar_images)
    result = run_benchmark("capacity_overflow.py", f"--model={tmp_path / 'm.keras'}",
                           f"--calibration={tmp_path / 'calibration.npy'}", f"--images={tmp_path / 'images.npy'}",
                           "--capacity_stds=0,10", "--per_layer")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in result.stdout.splitlines()
            if line.startswith("| max")}
    assert set(rows) == {"max + 0 std", "max + 10 std", "max + 0.05 of the filters"}, result.stdout
    beyond = {label: int(cell.split("(")[1].rstrip(") ")) for label, cell in rows.items()}
    assert beyond["max + 0 std"] > 0 and beyond["max + 10 std"] <= beyond["max + 0 std"]
    # --per_layer: each layer's count spread on the checked images, against independent gates'.
    layers = {cells[1].strip(): cells[2:-1] for cells in (line.split("|") for line in result.stdout.splitlines())
              if len(cells) == 9 and cells[1].strip() in counts}
    assert set(layers) == set(counts), result.stdout
    for name, count in counts.items():
        filters, keep, std, binomial = (float(cell) for cell in layers[name][:4])
        assert keep == pytest.approx(count.mean() / filters, abs=6e-4)
        assert std == pytest.approx(count.std(ddof=1), abs=6e-3)
        assert binomial == pytest.approx(np.sqrt(filters * keep * (1 - keep)), abs=2e-2)


def test_capped_accuracy_benchmark_caps_evaluates_and_fine_tunes(tmp_path, cifar_images):
    """benchmarks/capped_accuracy.py end to end: tighter caps skip more work; both fine-tunings reported."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    model.save(tmp_path / "m.keras")
    result = run_benchmark("capped_accuracy.py", f"--model={tmp_path / 'm.keras'}", "--calibration_images=32",
                           "--test_images=24", "--ratios=1.5,0.5", "--finetune_ratio=0.5", "--train_images=128",
                           "--batch_size=32", "--export_ratio=0.5", "--nofinetune_gate_loss")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {cells[1].strip(): [cell.strip() for cell in cells[2:-1]]
            for cells in (line.split("|") for line in result.stdout.splitlines()) if len(cells) == 7}
    reduction = {label: float(cells[2].rstrip("%")) for label, cells in rows.items() if cells[2].endswith("%")}
    assert reduction["0.5x mean count"] > reduction["1.5x mean count"] >= reduction["none"] - 0.1, result.stdout
    assert 0.5 <= float(rows["0.5x mean count"][0]) <= 0.7
    assert float(rows["0.5x mean count"][3].rstrip("%")) < 100.0  # the caps change some image's top-1
    assert {"0.5x mean count, fine-tuned (backbone only) 1 epoch(s) at lr 0.002",
            "none, fine-tuned (backbone only) 1 epoch(s) at lr 0.002"} <= set(rows)
    # The capped model's export: every regular conv compact at its cap, no fallback, Keras's logits.
    check = re.search(r"\((\d+) BATCH_MATMUL, (\d+) IF\): same top-1 on ([\d.]+)% .* (\d+) above 1e-3", result.stdout)
    assert check, result.stdout
    assert check.groups() == ("13", "0", "100.00", "0")  # the 13 pointwise convs (the stem: dense, then selected)
