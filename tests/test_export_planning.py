"""Which layers `auto` compacts and which gates pay (ftwt_keras.export.planning), before and after training."""

import collections

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import calibration as export_calibration  # noqa: E402
from ftwt_keras.export import planning as export_planning  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from export_helpers import (  # noqa: E402
    BUILDERS,
    assert_same_logits,
    perturb,
)


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
    assert export.paying_gates(model, calibration=calibration, num_threads=2, static_gates=False) == []
    assert len(export.paying_gates(model, calibration=calibration, static_gates=False)) == 18
    sparse = export.set_keep_ratio(model, 0.3)
    sparse_calibration = export.calibrate(sparse, images).with_capacity_ratio(sparse, 1.26)
    assert export.paying_gates(sparse, calibration=sparse_calibration, num_threads=2,
                               static_gates=False) == export.paying_gates(sparse, calibration=sparse_calibration,
                                                                          static_gates=False)
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
    assert common.paying_layers(config, fk.models.vgg16_bn(), cifar_images[:16]) == (
        [f"conv{i}" for i in range(2, 8)], None)
    # ... for 2 interpreter threads (--edge_threads=2): capacities of 0.3 of the filters still pay.
    assert common.paying_layers(dict(config, edge_threads=2), fk.models.vgg16_bn(), cifar_images[:16]) == (
        [f"conv{i}" for i in range(2, 8)], None)
    assert common.paying_layers(dict(config, threshold=0.5, edge_threads=2), fk.models.vgg16_bn(),
                                cifar_images[:16]) == ([], None)
    common.check_some_gate_can_pay(dict(config, model="vgg16_bn", image_size=32, num_classes=10))
    with pytest.raises(ValueError, match="no gate of mobilenet_v1 at 32x32 can pay in the edge export"):
        common.check_some_gate_can_pay(dict(config, model="mobilenet_v1", alpha=1.0, image_size=32, num_classes=10))


def test_paying_gates_and_a_lean_export(cifar_images):
    """Only gates whose masks let a large conv read fewer inputs pay; the rest can be ungated, exactly exported."""
    model = export.set_keep_ratio(fk.gate(fk.models.vgg16_bn()), keep=0.3, seed=2)
    paying = export.paying_gates(model, cifar_images[:8], static_gates=False)  # drawn masks, as convert's
    layers = {layer.name: layer for layer in model.gated_layers}
    macs = {term.layer_name: term.dense_macs for term in model.mac_terms if term.kind != "predictor"}
    big = [name for name in paying if layers[name].conv.filters >= 256 and macs[name] >= 16_000_000]
    assert big and set(paying) < set(layers)
    for name in big:  # each gathered conv pays with the gate in front of it
        assert model.gated_layers[[layer.name for layer in model.gated_layers].index(name) - 1].name in paying
    # With the capacities an export will use: wider ones compact fewer layers, so fewer gates pay.
    calibration = export.calibrate(model, cifar_images[:8])
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == paying
    wide = export.paying_gates(model, calibration=calibration.with_capacity_ratio(model, 2.5), static_gates=False)
    assert wide and set(wide) < set(paying)
    with pytest.raises(export.ExportError, match="needs `calibration_images` or a `calibration`"):
        export.paying_gates(model)
    with pytest.raises(export.ExportError, match="not both"):
        export.paying_gates(model, cifar_images[:8], calibration=calibration)
    assert export.paying_gates(export.set_keep_ratio(model, keep=0.8), cifar_images[:8], static_gates=False) == []
    mobilenet = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), keep=0.3)
    assert export.paying_gates(mobilenet, cifar_images[:8], static_gates=False) == []  # at 32x32 no layer is large enough
    export.set_keep_ratio(model, keep=0.3, seed=2)
    lean = fk.ungate(perturb(model), [name for name in layers if name not in paying])
    assert [layer.name for layer in lean.gated_layers] == paying
    flatbuffer = export.convert(lean, calibration_images=cifar_images[:8], static_gates=False)  # drawn masks
    names = export.op_names(flatbuffer)
    assert "WHERE" not in names and "GATHER" in names and names.count("IF") <= 1  # at most the overflow fallback
    assert_same_logits(flatbuffer, lean, cifar_images)


def test_a_chain_through_a_depthwise_conv_on_a_112x112_map_does_not_pay(cifar_images):
    """auto compacts MobileNetV1-224's block1_pw -> block2_dw (cheaper than masking 112x112x64), yet the pair is no
    faster than ungated: paying_gates leaves both out. ResNet-18's stem chains into max pooling and still pays."""
    images = np.asarray(keras.ops.image.resize(cifar_images[:2], (224, 224)))
    model = export.set_keep_ratio(fk.gate(fk.models.mobilenet_v1(input_shape=(224, 224, 3), num_classes=10),
                                          predictor_rank=16), 0.3)
    calibration = export.calibrate(model, images).with_capacity_ratio(model, 1.26)
    assert export.compacted_layers(model, calibration, static_gates=False)[:2] == ["block1_pw", "block2_pw"]
    paying = export.paying_gates(model, calibration=calibration, static_gates=False)
    assert paying[:3] == ["block2_pw", "block3_dw", "block3_pw"]  # 56x56 maps on: the chains pay
    assert "block1_pw" not in paying and "block2_dw" not in paying
    resnet = export.set_keep_ratio(fk.gate(fk.models.resnet18(input_shape=(224, 224, 3), num_classes=10),
                                           predictor_rank=16), 0.3)
    calibration = export.calibrate(resnet, images).with_capacity_ratio(resnet, 1.26)
    assert export.paying_gates(resnet, calibration=calibration, static_gates=False)[0] == "conv1"

def _chain_model(cifar_images, reader, keep, kernel=3, filters=48, size=28):
    """conv1 (default: 3x3, 48 -> 48 filters on a 28x28 map, 16.3M MACs) read by `reader` (a function of it and conv0)."""
    inputs = keras.Input((size, size, 3))
    first = keras.layers.Conv2D(filters, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.Conv2D(filters, kernel, padding="same", name="conv1")(first)
    x = keras.layers.GlobalAveragePooling2D()(reader(x, first))
    model = export.set_keep_ratio(fk.gate(keras.Model(inputs, keras.layers.Dense(10)(x))), keep)
    images = np.asarray(keras.ops.image.resize(cifar_images[:2], (size, size)))
    return model, export.calibrate(model, images).with_capacity_ratio(model, 1.26)


def test_a_concatenated_conv_compacts_only_below_the_general_cutoff(cifar_images):
    """A compact output a concatenation reads is put back at once: the wider mid-size cutoff is not for it.
    (128 filters: the 3x3 conv saves enough per element put back at both keeps, see the test below.)"""
    conv = keras.layers.Conv2D(8, 1, name="conv2")
    model, calibration = _chain_model(cifar_images, lambda x, first: conv(x), keep=0.5, filters=128)
    assert 0.6 * 128 < calibration.capacities["conv1"] <= 0.7 * 128  # between the cutoffs
    assert export.compacted_layers(model, calibration, static_gates=False) == ["conv1"]
    joined = keras.layers.Concatenate()
    model, calibration = _chain_model(cifar_images, lambda x, first: joined([x, first]), keep=0.5, filters=128)
    assert export.compacted_layers(model, calibration, static_gates=False) == []
    model, calibration = _chain_model(cifar_images, lambda x, first: joined([x, first]), keep=0.3, filters=128)
    assert export.compacted_layers(model, calibration, static_gates=False) == ["conv1"]  # below 0.6 it pays


@pytest.mark.parametrize("kernel, pays", [(1, True), (3, False)])
def test_a_chain_whose_output_an_ungated_3x3_conv_puts_back_does_not_pay(kernel, pays, cifar_images):
    """conv1 chains; conv2 (too small to compact) will be a plain conv in the network gated where gates pay:
    as a 1x1 conv it reads conv1's present channels, as a 3x3 one it scatters them back first (a loss on 28x28)."""
    model, calibration = _chain_model(
        cifar_images, lambda x, first: keras.layers.Conv2D(8, kernel, padding="same", name="conv2")(x), keep=0.3)
    assert export.compacted_layers(model, calibration, static_gates=False) == ["conv1"]
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == (["conv1"] if pays else [])


def test_a_chain_read_by_a_gated_conv_that_masks_it_dense_is_put_back(cifar_images):
    """conv1 (1x1, 144 -> 144 on 28x28) saves ~90 multiply-adds per element of its output: compact, it pays
    where gated conv2 reads it as it is (`auto`, `gather`); where conv2's policy masks it dense, conv2 puts it
    back to full width first, and conv1's chain does not pay: `auto` masks it too. The export is exact either
    way."""
    reader = keras.layers.Conv2D(144, 1, name="conv2")
    model, calibration = _chain_model(cifar_images, lambda x, first: reader(x), keep=0.3, kernel=1, filters=144)
    assert export.compacted_layers(model, calibration, static_gates=False) == ["conv1", "conv2"]
    assert export.compacted_layers(model, calibration, policy={"conv2": "gather"}, static_gates=False) == ["conv1"]
    assert export.compacted_layers(model, calibration, policy={"conv2": "dense"}, static_gates=False) == []
    flatbuffer = export.convert(model, calibration=calibration, policy={"conv2": "dense"}, static_gates=False)
    assert "TOPK_V2" not in export.op_names(flatbuffer)


@pytest.mark.parametrize("join", [keras.layers.Add, keras.layers.Concatenate])
def test_a_chain_whose_every_reader_puts_it_back_pays_by_its_own_saving_only(join, cifar_images):
    """A residual Add or a concatenation puts conv1's compact output back to full width, so its chain pays only
    where conv1 saves PAYING_MIN_SAVED_MACS_PER_SCATTERED multiply-adds per element put back (~350 as a 3x3
    conv, ~90 as a 1x1 one: Xception's shortcuts); the same 3x3 conv on a 56x56 map computes every filter, then
    selects: it saves none. Where it does not pay, `auto` masks it dense (no top-k) and no gate pays."""
    for kernel, filters, size, pays in ((3, 64, 28, True), (1, 144, 28, False), (3, 64, 56, False)):
        model, calibration = _chain_model(cifar_images, lambda x, first: join()([x, first]), keep=0.3,
                                          kernel=kernel, filters=filters, size=size)
        expected = ["conv1"] if pays else []
        assert export.compacted_layers(model, calibration, static_gates=False) == expected
        assert export.compacted_layers(model, calibration, policy={"conv1": "chain"}, static_gates=False) == ["conv1"]
        assert export.paying_gates(model, calibration=calibration, static_gates=False) == expected
        flatbuffer = export.convert(model, calibration=calibration, static_gates=False)
        assert export.op_names(flatbuffer).count("TOPK_V2") == len(expected)


def _pooled_residual(pool):
    """A reader of conv1: a gated 1x1 conv (it reads conv1 compact) and a residual Add (it puts conv1 back), after `pool`."""
    def reader(x, first):
        x = pool(x)
        return keras.layers.Add()([x, keras.layers.Conv2D(64, 1, name="conv2")(x)])
    return reader


def test_a_chain_that_saves_nothing_itself_is_not_put_back_at_full_size(cifar_images):
    """conv1, 3x3 on a 56x56 dense input, computes every filter, then selects: compact, it saves only what its
    readers do. With an Add putting its whole output back (Xception's stem conv), `auto` masks it instead; after
    a max pooling (ResNet-18's stem) the Add puts back a quarter of it, and it stays compact; after a zero padding
    it puts back all of it, and more."""
    for pool, compact in ((lambda x: x, False), (keras.layers.MaxPooling2D(), True),
                          (keras.layers.ZeroPadding2D(1), False)):
        model, calibration = _chain_model(cifar_images, _pooled_residual(pool), keep=0.3, filters=64, size=56)
        assert export.compacted_layers(model, calibration, static_gates=False) == (["conv1"] if compact else [])


def test_a_chain_read_through_a_global_pooling_puts_back_only_the_pooled_values(cifar_images):
    """The 1x1 conv above, read by the classifier through global average pooling (MobileNetV2's Conv_1): only
    144 pooled values are put back, not its 28x28x144 map, so it pays."""
    model, calibration = _chain_model(cifar_images, lambda x, first: x, keep=0.3, kernel=1, filters=144)
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == ["conv1"]


def test_paying_gates_leave_out_layers_pruned_by_their_weights(cifar_images):
    """A layer the export prunes by its weights skips work on every image, not per image: neither it nor a gate
    that paid by its reading only present channels is listed (as the export then computes them)."""
    model = export.set_keep_ratio(fk.gate(fk.models.vgg16_bn(), use_softmax=False), keep=0.3, seed=2)
    # Capacities too wide for any conv to compact: conv4-conv7 pay in pairs, each conv reading the previous
    # one's active channels only.
    calibration = export.calibrate(model, cifar_images[:8]).with_capacity_ratio(model, 2.5)
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == ["conv4", "conv5", "conv6", "conv7"]
    assert export.paying_gates(model, calibration=calibration) == []  # drawn masks: every layer pruned at export
    # Only conv5's weights decide its gates: a tiny predictor column elsewhere, under the +-50 biases, undecides
    # the others' (without the softmax the pooled input is unbounded) and changes no mask.
    rng = np.random.default_rng(0)
    for layer in model.gated_layers:
        kernel = layer.predictor.kernel
        kernel.assign((0.0 if layer.name == "conv5" else 1e-4) * rng.standard_normal(kernel.shape).astype("float32"))
    assert export.statically_pruned_layers(model) == ["conv5"]
    # conv5's kernel is cut at export and it reads conv4's output as a whole: conv4's gates no longer pay.
    # conv6 reads conv5's channels as fixed at export, and pays for conv7, which reads only its active ones.
    assert export.paying_gates(model, calibration=calibration) == ["conv6", "conv7"]
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == ["conv4", "conv5", "conv6", "conv7"]
    # The network gated only where gates pay keeps conv5's gates too: they skip its off filters on every image.
    assert export.kept_gates(model, calibration) == ["conv5", "conv6", "conv7"]
    assert export.kept_gates(model, calibration, static_gates=False) == ["conv4", "conv5", "conv6", "conv7"]

def test_layers_pruned_by_their_weights_are_neither_compacted_nor_capped(cifar_images):
    """The static path takes a layer whose weights decide its gates: no capacity, no cap (which would undecide them)."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    regular = [layer.name for layer in model.gated_layers if not layer.is_depthwise]
    calibration = export.calibrate(model, cifar_images)
    assert export.compacted_layers(model, calibration, policy="chain") == regular
    decided = model.network.get_layer(regular[2])
    odd = np.arange(decided.filters) % 2 == 1
    fk.fix_gates(decided, always_on=~odd, always_off=odd)
    assert export.statically_pruned_layers(model) == [decided.name]
    others = [name for name in regular if name != decided.name]
    calibration = export.calibrate(model, cifar_images)
    assert export.compacted_layers(model, calibration, policy="chain") == others
    assert export.compacted_layers(model, calibration, policy="chain", static_gates=False) == regular
    capped = export.cap_compacted_gates(model, cifar_images, ratio=0.9, policy="chain")
    assert list(capped) == others and decided.capacity is None
    assert export.statically_pruned_layers(model) == [decided.name]  # still pruned by its weights
    assert_same_logits(export.convert(model, policy="chain"), model, cifar_images)
