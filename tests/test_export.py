"""TFLite export (ftwt_keras.export): builtin ops only, exact logits, clear errors."""

import collections
import random

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import builder as export_builder  # noqa: E402
from ftwt_keras.export import calibration as export_calibration  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from conftest import force_gates, global_dtype_policy, short_mobilenet  # noqa: E402
from export_helpers import (  # noqa: E402
    BUILDERS,
    GATE_OPTIONS,
    assert_builtin_only,
    assert_depthwise_convs_chain,
    assert_same_logits,
    depthwise_input_widths,
    perturb,
)


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


@pytest.mark.parametrize("rank", [None, 4])
def test_mask_thresholds_fuse_into_the_predictors(rank, cifar_images):
    """Each 0/1 mask is ceil(min(relu(logit), 1)), all XNNPACK ops, the RELU fused into the predictor's last matmul."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"](), predictor_rank=rank), seed=0)
    flatbuffer = export.convert(model, policy="dense")
    ops = collections.Counter(export.op_names(flatbuffer))
    gated = len(model.gated_layers)
    assert ops["RELU"] == 0 and ops["MINIMUM"] == ops["CEIL"] == gated  # the network's ReLUs fuse into its convs
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


def test_a_network_built_in_mixed_precision_exports_its_weights_in_float32(cifar_images):
    """A model trained under `mixed_float16` is exported as the same weights computing in float32."""
    from ftwt_keras import _graph

    reference = perturb(fk.gate(short_mobilenet(blocks=3)), seed=1)
    with global_dtype_policy("mixed_float16"):
        model = fk.gate(short_mobilenet(blocks=3))
    model.set_weights(reference.get_weights())
    assert model.gated_layers[0].compute_dtype == "float16"
    float32_network = _graph.in_float32(model.network)
    assert {layer.compute_dtype for layer in float32_network.layers} == {"float32"}
    assert [layer.name for layer in float32_network.layers] == [layer.name for layer in model.network.layers]
    assert _graph.in_float32(reference.network) is reference.network  # already float32: no copy
    flatbuffer = export.convert(model, calibration_images=cifar_images[:8])
    assert_same_logits(flatbuffer, reference, cifar_images)


def test_model_export_writes_ftwt_tflite_for_litert_and_keras_formats_otherwise(tmp_path, cifar_images):
    """`FTWTModel.export`: "litert" is the active-filters export; a SavedModel needs no call first."""
    import tensorflow as tf

    model = perturb(fk.gate(short_mobilenet(blocks=3)), seed=1)
    path = model.export(tmp_path / "model.tflite", format="litert", policy="gather", verbose=False)
    flatbuffer = open(path, "rb").read()
    assert "GATHER" in export.op_names(flatbuffer)  # not Keras's conversion, which computes every filter
    assert_same_logits(flatbuffer, model, cifar_images)
    with pytest.raises(ValueError, match="input_signature"):
        model.export(tmp_path / "other.tflite", format="litert", input_signature=[tf.TensorSpec((2, 32, 32, 3))])
    model.export(tmp_path / "saved", verbose=False)  # never called: Keras alone would refuse
    saved = tf.saved_model.load(str(tmp_path / "saved"))
    served = saved.serve(cifar_images[:4]).numpy()
    np.testing.assert_allclose(served, model.predict(cifar_images[:4], verbose=0), rtol=1e-5, atol=1e-5)


def test_layers_with_all_gates_off_or_on(cifar_images):
    """Whole layers switched off (empty tensors downstream) or on still convert and run exactly."""
    model = perturb(fk.gate(short_mobilenet(blocks=6)), seed=1)
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
            # Pruned statically, every layer is a plain unit whatever the policy: one policy suffices.
            for policy in ("gather", "auto", "chain") if not static else ("auto",):
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
    # In MobileNetV1 odd layers are depthwise (x0.25: 32-128 filters from layer 4 on): layers 6, 12 and 14
    # add regular convs with gates left (layer 6 feeds a strided depthwise conv: its predictor pools the
    # unpadded static channels).
    whole, few = layers[0:12:4], layers[2:12:8]
    partial = layers[5:12:4] + [layers[6]] + layers[12:15:2]
    capped = layers[14]  # its cap can drop gates that are always positive: those are left to it
    fk.set_gate_capacities(model, {capped.name: capped.filters // 32})
    decided = {}
    # Every gate decided; one layer all on. (A layer all off would cut MobileNetV1's signal, leaving
    # logits that do not depend on the image: test_layers_with_all_gates_off_or_on has those.)
    for index, layer in enumerate(whole):
        on = rng.random(layer.filters) < (1.0 if index == 1 else 0.6)
        decided[layer.name] = (np.flatnonzero(on), np.flatnonzero(~on))
    for layer in partial:  # 15/16 decided (>= STATIC_MIN_DECIDED), the rest per image
        order = rng.permutation(layer.filters)
        quarter, left = layer.filters // 4, layer.filters // 16
        if layer is capped:  # every gate off but those left, at most `capacity` of which are on
            decided[layer.name] = ((), order[left:])
        else:
            decided[layer.name] = (order[:quarter], order[quarter + left :])
    for layer in few:  # 1/4 decided: below STATIC_MIN_DECIDED, the per-image paths
        decided[layer.name] = ((), rng.permutation(layer.filters)[: layer.filters // 4])
    perturb(model, seed=5, decided=decided)
    gates = fk.static_gates.static_gates_of(model)
    assert [gates[layer.name].all_decided for layer in whole] == [True] * 3
    assert all(0 < gates[layer.name].decided < layer.filters for layer in partial + few)
    assert all(gates[layer.name].decided >= export.STATIC_MIN_DECIDED * layer.filters for layer in partial)
    assert not gates[capped.name].always_on.any()
    assert gates[capped.name].decided == capped.filters - capped.filters // 16 > capped.capacity
    pruned = export.statically_pruned_layers(model)
    assert set(pruned) == {layer.name for layer in whole + partial}  # not `few`
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
    for layer in layers[2:8:2]:  # block1_pw, block2_pw, block3_pw: 15/16 decided, the rest per image
        order = rng.permutation(layer.filters)
        half, left = layer.filters // 2, layer.filters // 16
        decided[layer.name] = (order[:half], order[half + left :])
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
    inputs = keras.Input((8, 8, 3))  # keras.applications.InceptionV3's batch norms have no scale
    outputs = keras.layers.BatchNormalization(scale=False)(keras.layers.Conv2D(4, 3)(inputs))
    scale_free = export.randomize_batch_norm(keras.Model(inputs, outputs)).layers[-1]
    assert scale_free.gamma is None and np.ptp(np.asarray(scale_free.beta)) > 0


def test_dense_policy_and_set_keep_ratio(cifar_images):
    model = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), keep=0.5, seed=3)
    masks = fk.flops.gate_masks_of(model, cifar_images[:2])
    for layer in model.gated_layers:
        assert float(np.mean(np.asarray(masks[layer.name]))) == pytest.approx(0.5, abs=0.05)
    policy = {layer.name: "dense" for layer in model.gated_layers[::2]}
    policy.update({layer.name: "inputs<0.6" for layer in model.gated_layers[1::4]})
    policy[model.gated_layers[0].name] = "inputs<0.6"  # it reads the images: no channel known to be zero
    assert_same_logits(export.convert(model, policy=policy), model, cifar_images[:4])
    keeps = {layer.name: 0.25 if index % 2 else 1.0 for index, layer in enumerate(model.gated_layers)}
    masks = fk.flops.gate_masks_of(export.set_keep_ratio(model, keeps), cifar_images[:2])
    for layer in model.gated_layers:  # one keep ratio per layer
        assert float(np.mean(np.asarray(masks[layer.name]))) == pytest.approx(keeps[layer.name], abs=0.05)
    first = model.gated_layers[0].name
    with pytest.raises(export.ExportError, match=rf"no keep ratio for the gated layers \['{first}'\]"):
        export.set_keep_ratio(model, {name: keep for name, keep in keeps.items() if name != first})
    with pytest.raises(export.ExportError, match=rf"must be in \(0, 1\]; got 0.0 for '{first}'"):
        export.set_keep_ratio(model, dict(keeps, **{first: 0.0}))


@pytest.mark.parametrize("name, capped", [("mobilenet_v1", False), ("resnet18", True)])
def test_per_layer_policies_drawn_at_random_export_exactly(name, capped, cifar_images):
    """Each layer its own policy, drawn from all of them (run-time cutoffs, gathered inputs, chains, ...), the
    layers around it anything else: still the Keras model's logits. (Such a mix once crashed the conversion.)"""
    draw = random.Random(name)
    model = perturb(fk.gate(BUILDERS[name]()), seed=5)
    if capped:
        fk.cap_gates(model, cifar_images, ratio=1.0)
    choices = [*export.POLICIES, "inputs<0.5", "inputs<1", 0.5, 0.9]
    policy = {layer.name: draw.choice(choices) for layer in model.gated_layers}
    assert len(set(map(str, policy.values()))) >= 7  # a real mix
    calibration = None if capped else cifar_images[:8]
    assert_same_logits(export.convert(model, policy=policy, calibration_images=calibration), model, cifar_images)


def test_full_int8_dynamic_export_writes_run_time_weight_matmuls_as_fully_connected(cifar_images):
    """In full int8, LiteRT's FULLY_CONNECTED is the fast matmul with run-time weights, not BATCH_MATMUL."""
    model = export.set_keep_ratio(perturb(fk.gate(BUILDERS["resnet20"]()), seed=3), keep=0.5, seed=1)
    # Compact outputs (chain), compact inputs of a conv computed in full (inputs<1), both ways of laying out weights.
    policy = {layer.name: "inputs<1" if index % 3 == 2 else "chain" for index, layer in enumerate(model.gated_layers)}
    options = dict(policy=policy, static_gates=False)  # drawn masks: every predictor runs
    float32 = export.convert(model, **options)
    integer = export.convert(model, weight_dtype="int8", representative_images=cifar_images[:16], **options)
    float_ops, integer_ops = (collections.Counter(export.op_names(flatbuffer)) for flatbuffer in (float32, integer))
    assert float_ops["BATCH_MATMUL"] >= 10 and integer_ops["BATCH_MATMUL"] == 0
    assert integer_ops["FULLY_CONNECTED"] == float_ops["FULLY_CONNECTED"] + float_ops["BATCH_MATMUL"]
    assert integer_ops["QUANTIZE"] > 0
    assert_builtin_only(integer)
    expected = export.run(float32, cifar_images)
    actual = export.run(integer, cifar_images)
    assert np.abs(actual - expected).max() <= 0.25 * np.ptp(expected)  # int8 activations: close, not exact
    assert np.mean(actual.argmax(1) == expected.argmax(1)) >= 0.9


def test_conversion_gives_the_bytes_of_tf_s_own_freezing_path(monkeypatch):
    """`convert` skips `from_concrete_functions`'s freezing (its graphs hold constants only) yet gives its bytes.

    Compared on exports without `IF`, whose branch functions TF names afresh on every trace. A
    traced function that reads a variable takes TF's own path and still converts.
    """
    tf = pytest.importorskip("tensorflow")
    model = perturb(fk.gate(short_mobilenet(blocks=3)), seed=3)
    options = [dict(policy="gather", static_gates=False), dict(dynamic=False),
               dict(weight_dtype="int8", static_gates=False)]
    ours = [export.convert(model, **kwargs) for kwargs in options]
    monkeypatch.setattr(export, "_converter", lambda tf, function: tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function))
    assert ours == [export.convert(model, **kwargs) for kwargs in options]
    assert "WHERE" in export.op_names(ours[0])  # gated, not pruned statically
    monkeypatch.undo()
    scale = tf.Variable([[2.0, 3.0]])

    @tf.function(input_signature=[tf.TensorSpec((1, 2), tf.float32)])
    def scaled(x):
        return x * scale + tf.constant([[1.0, 0.0]])

    flatbuffer = export._converter(tf, scaled).convert()
    np.testing.assert_array_equal(export.run(flatbuffer, np.ones((2, 2), np.float32)), [[3.0, 3.0], [3.0, 3.0]])


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
    # Weights stored in float16: half the file, dequantized once at load, logits close (not exact).
    half = open(export.export_file(loaded, tmp_path / "half.tflite", policy="chain", weight_dtype="float16",
                                   calibration=export.calibrate(loaded, cifar_images[:2], capacity_stds=0)), "rb").read()
    assert len(half) < 0.6 * len(flatbuffer) and "DEQUANTIZE" in export.op_names(half)
    expected = np.asarray(loaded.predict(cifar_images[:8], verbose=0))
    actual = export.run(half, cifar_images[:8])
    assert 0 < np.abs(actual - expected).max() <= 3e-3 * np.ptp(expected)
    assert (actual.argmax(1) == expected.argmax(1)).all()
    # int8 weights (dynamic-range quantization): smaller still, builtin ops. Gates near 0 flip (this
    # perturbed network has many), so closeness is checked on the dense export of the same weights.
    small = export.convert(loaded, weight_dtype="int8")
    assert len(small) < 0.8 * len(half)
    assert_builtin_only(small)
    assert np.isfinite(export.run(small, cifar_images[:8])).all()
    dense_flatbuffer = export.convert(loaded, dynamic=False)
    dense = export.run(dense_flatbuffer, cifar_images[:8])
    dense_int8 = export.run(export.convert(loaded, dynamic=False, weight_dtype="int8"), cifar_images[:8])
    assert 0 < np.abs(dense_int8 - dense).max() <= 3e-2 * np.ptp(dense)
    with pytest.raises(export.ExportError, match="weight_dtype"):
        export.convert(loaded, weight_dtype="bfloat16")
    # Full-integer int8 (activations too, their ranges from representative images): float input and output.
    full = export.convert(loaded, dynamic=False, weight_dtype="int8", representative_images=cifar_images[:8])
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(export.op_names(full)) and len(full) < 0.35 * len(dense_flatbuffer)
    assert 0 < np.abs(export.run(full, cifar_images[:8]) - dense).max() <= 0.1 * np.ptp(dense)
    with pytest.raises(export.ExportError, match="pass them with weight_dtype='int8'"):
        export.convert(loaded, representative_images=cifar_images[:8])
    with pytest.raises(export.ExportError, match=r"Representative images must be .*\(N, 32, 32, 3\)"):
        export.convert(loaded, weight_dtype="int8", representative_images=cifar_images[:2, :16])
    # What an app feeds and reads (edge/README.md, "In an Android app"), every export alike: one input,
    # "images", raw pixels (1, H, W, 3) float32; one output, the logits (1, classes) float32. The files
    # export_file writes also name them in a signature; convert's bytes do not.
    for exported, signed in ((flatbuffer, True), (half, True), (small, False), (dense_flatbuffer, False),
                             (full, False)):
        runner = export.interpreter(exported)
        (images,), (logits,) = runner.get_input_details(), runner.get_output_details()
        assert (images["name"], images["shape"].tolist(), images["dtype"]) == ("images", [1, 32, 32, 3], np.float32)
        assert (logits["shape"].tolist(), logits["dtype"]) == ([1, 10], np.float32)
        signatures = {export.SIGNATURE_KEY: {"inputs": ["images"], "outputs": ["logits"]}} if signed else {}
        assert runner.get_signature_list() == signatures
    by_name = export.interpreter(flatbuffer).get_signature_runner()(images=cifar_images[:1])["logits"]
    np.testing.assert_array_equal(by_name, export.run(flatbuffer, cifar_images[:1]))
    assert export.op_names(export.with_signature(small)) == export.op_names(small)


def _raw_pixels():
    """A (32, 32, 3) input of raw pixels, and it scaled to [-1, 1]."""
    inputs = keras.Input((32, 32, 3))
    return inputs, keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)


APPLICATIONS = {
    "MobileNet": lambda: fk.models.application_on_raw_pixels(
        keras.applications.MobileNet, (32, 32, 3), weights=None, alpha=0.25, classes=10, classifier_activation=None),
    "MobileNetV2": lambda: fk.models.mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, alpha=0.35),
    # Squeeze-and-excitation (Multiply) and hard swish written as keras.ops on symbolic tensors; preprocessing inside.
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    # Swish, squeeze-and-excitation, Rescaling and Normalization inside.
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    # Concatenations of every layer's output; pre-activation batch norms.
    "DenseNet121": lambda: fk.models.application_on_raw_pixels(
        keras.applications.DenseNet121, (32, 32, 3), weights=None, classes=10, classifier_activation=None),
}


@pytest.mark.parametrize("application, gated, last", [
    ("MobileNet", 27, "conv_pw_13"),
    ("MobileNetV2", 52, "Conv_1"),
    ("MobileNetV3Small", 34, "conv_1"),  # its 18 squeeze-and-excitation convs read pooled features: dense
    ("EfficientNetB0", 49, "top_conv"),
    ("DenseNet121", 120, "conv5_block16_2_conv"),
])
def test_keras_applications_gate_and_export_exactly(application, gated, last, cifar_images):
    """The models users bring: feature convs gate, classifier and excitation convs stay dense, the export is exact."""
    keras.utils.set_random_seed(0)  # weights=None: a random init, the same on every run
    model = perturb(fk.gate(APPLICATIONS[application]()), seed=0)
    assert len(model.gated_layers) == gated and model.gated_layers[-1].name == last
    if application == "MobileNet":
        assert type(model.network.get_layer("conv_preds")) is keras.layers.Conv2D  # on pooled features: a classifier
    flatbuffer = export.convert(model)
    assert_builtin_only(flatbuffer)
    assert_same_logits(flatbuffer, model, cifar_images)


def _conv_bn_relu(x, filters, size, name):
    x = keras.layers.Conv2D(filters, size, padding="same", use_bias=False, name=name)(x)
    return keras.layers.ReLU()(keras.layers.BatchNormalization()(x))


def _assert_exact_with_and_without_compact_layers(model, images):
    """Policy auto (these small convs masked dense) and gather (every gated conv compact): exact both ways."""
    for policy in ("auto", "gather"):
        flatbuffer = export.convert(model, policy=policy)
        assert_builtin_only(flatbuffer)
        assert_same_logits(flatbuffer, model, images)
    return flatbuffer


def test_convs_with_their_own_activation_export_exactly(cifar_images):
    """keras.applications.VGG16's style, Conv2D(..., activation="relu") with no batch norm, in a small network."""
    keras.utils.set_random_seed(0)
    inputs, x = _raw_pixels()
    for index, filters in enumerate((16, 16)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.BatchNormalization()(x)  # after a conv with its own activation: a plain layer
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = perturb(fk.gate(keras.Model(inputs, outputs)), seed=0)
    assert [layer.activation.__name__ for layer in model.gated_layers] == ["relu"] * 3
    _assert_exact_with_and_without_compact_layers(model, cifar_images)


def test_concatenated_branches_export_exactly(cifar_images):
    """Inception's parallel branches and DenseNet's growing concatenation (keras.applications' layouts, small)."""
    keras.utils.set_random_seed(0)
    inputs, x = _raw_pixels()
    x = _conv_bn_relu(x, 16, 3, "stem")
    branches = [_conv_bn_relu(x, 8, 1, "branch1x1"), _conv_bn_relu(x, 8, 3, "branch3x3"),
                keras.layers.AveragePooling2D(3, strides=1, padding="same")(x)]
    x = keras.layers.Concatenate(name="mixed")(branches)
    x = keras.layers.Concatenate(name="dense_concat")([x, _conv_bn_relu(x, 8, 3, "growth")])
    x = _conv_bn_relu(x, 24, 1, "after")
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = perturb(fk.gate(keras.Model(inputs, outputs)), seed=0)
    assert len(model.gated_layers) == 5
    flatbuffer = _assert_exact_with_and_without_compact_layers(model, cifar_images)
    assert "CONCATENATION" in export.op_names(flatbuffer)


def test_leaky_elu_and_prelu_activation_layers_export_exactly(cifar_images):
    """Activation layers gate() does not fuse stay plain: elementwise ones run on compact channels, PReLU on dense."""
    keras.utils.set_random_seed(0)
    inputs, x = _raw_pixels()
    for name, activation in (("leaky", keras.layers.LeakyReLU(0.1)), ("elu", keras.layers.ELU()),
                             ("prelu", keras.layers.PReLU(keras.initializers.RandomUniform(0.0, 0.5)))):
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"conv_{name}")(x)
        x = activation(keras.layers.BatchNormalization()(x))
    x = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = perturb(fk.gate(keras.Model(inputs, keras.layers.Softmax()(x))), seed=0)
    assert [layer.activation.__name__ for layer in model.gated_layers] == ["linear"] * 3
    _assert_exact_with_and_without_compact_layers(model, cifar_images)


def test_separable_and_grouped_convs_left_dense_export(cifar_images):
    """gate() cannot gate them (Xception's, RegNet's); left dense with `layers_to_gate`, the model still exports."""
    keras.utils.set_random_seed(0)
    inputs, x = _raw_pixels()
    x = _conv_bn_relu(x, 16, 3, "first")
    x = keras.layers.SeparableConv2D(16, 3, padding="same", name="separable")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", groups=4, name="grouped")(x)
    x = _conv_bn_relu(x, 16, 3, "last")
    base = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
    model = perturb(fk.gate(base, layers_to_gate=lambda layer: layer.name in ("first", "last")), seed=0)
    _assert_exact_with_and_without_compact_layers(model, cifar_images)  # the separable conv reads both


def test_ungated_pointwise_conv_reads_a_compact_input_without_putting_channels_back(cifar_images, monkeypatch):
    """A plain 1x1 conv after a compact chain (a partly gated model) reads the present channels, constants in its bias."""
    keras.utils.set_random_seed(3)  # a random init without a logit at exactly 0 on these images
    model = fk.gate(BUILDERS["mobilenet_v1"](), layers_to_gate=lambda layer: layer.name != "block2_pw")
    assert type(model.network.get_layer("block2_pw")) is keras.layers.Conv2D
    model.network.get_layer("block2_pw").trainable = False  # a frozen layer's weights are non-trainable ones
    # block2_dw always on: its filters over block1_pw's off channels output non-zero constants.
    every = np.arange(model.network.get_layer("block2_dw").filters)
    model = perturb(model, seed=5, decided={"block2_dw": (every, every[:0])})
    calls = []
    compact_path = export_builder._Builder.plain_pointwise_on_compact

    def counted(builder, layer, x):
        calls.append((layer.name, x.constants is not None))
        return compact_path(builder, layer, x)

    monkeypatch.setattr(export_builder._Builder, "plain_pointwise_on_compact", counted)
    calibration = export.calibrate(model, cifar_images[:16])
    assert calibration.capacities["block1_pw"] < 16  # so some channels are absent from the chain
    flatbuffer = export.convert(model, policy="chain", calibration=calibration, static_gates=False)
    assert ("block2_pw", True) in calls
    assert_same_logits(flatbuffer, model, cifar_images)


def test_compiled_model_api_gives_the_interpreter_s_logits_for_every_kind_of_export(cifar_images, monkeypatch):
    """LiteRT 2.x's CompiledModel runs the exports' control flow, run-time shapes and int8 as the Interpreter does."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    monkeypatch.setattr(export_calibration, "CAPACITY_STDS", 0.0)
    counts = export.gate_counts(model, cifar_images)
    sparsest = int(np.argmin(sum(counts.values())))  # calibrated on it alone, other images overflow
    capacities = export.calibrate(model, cifar_images[sparsest:][:1]).capacities
    assert np.any([counts[name] > capacity for name, capacity in capacities.items()])  # the IF branch runs
    exports = {
        "run-time shapes": export.convert(model, policy="gather"),
        "overflow fallback": export.convert(model, policy="chain", calibration_images=cifar_images[sparsest:][:1]),
        "full int8": export.convert(model, calibration_images=cifar_images, weight_dtype="int8",
                                    representative_images=cifar_images),
    }
    assert "WHERE" in export.op_names(exports["run-time shapes"]) and "IF" in export.op_names(exports["overflow fallback"])
    for name, flatbuffer in exports.items():
        logits = export.run(flatbuffer, cifar_images, api="compiled_model")
        np.testing.assert_array_equal(logits, export.run(flatbuffer, cifar_images), err_msg=name)
    checked = export.agreement(model, exports["overflow fallback"], cifar_images, api="compiled_model")
    assert checked["same_top1"].all() and (checked["logit_error"] <= export.LOGIT_TOLERANCE).all()
