import keras
import numpy as np
import pytest
from conftest import force_gates

import ftwt_keras as fk
from ftwt_keras import flops


def test_dense_macs_equal_a_hand_count():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*9*3*4 = 6912
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False)(x)  # 4*4*9*4 = 576
    x = keras.layers.Conv2D(5, 1)(x)  # 4*4*4*5 = 320
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10)(x)  # 80*10 = 800
    model = keras.Model(inputs, x)
    assert flops.count_macs(model) == 6912 + 576 + 320 + 800
    gated = fk.gate(model)
    assert flops.count_macs(gated) == 6912 + 576 + 320 + 800
    predictors = 3 * 4 + 4 * 4 + 4 * 5
    assert flops.count_macs(gated, include_predictors=True) == 8608 + predictors
    # Rank-2 predictors: rank * (inputs + filters) where that is cheaper than inputs * filters.
    low_rank = fk.gate(model, predictor_rank=2)
    predictors = 2 * (3 + 4) + 2 * (4 + 4) + 2 * (4 + 5)
    assert flops.count_macs(low_rank, include_predictors=True) == 8608 + predictors


def test_a_model_of_unknown_input_size_is_refused_with_what_to_do():
    """A fully convolutional model built on (None, None, 3) gates and predicts, but has no MAC count."""
    model = fk.gate(fk.models.mobilenet_v1(input_shape=(None, None, 3), alpha=0.25, num_classes=10), threshold=0.9)
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 10)
    expected = r"inputs of shape \(None, None, None, 3\).*fixed input size, e.g. keras.Input"
    with pytest.raises(ValueError, match=expected):
        flops.count_macs(model)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=expected):  # its training metrics count MACs
        model.fit(np.zeros((2, 32, 32, 3), "float32"), np.zeros(2), verbose=0)

def test_zoo_macs_match_the_official_profile():
    # Official FTWT nw_profile (thop) minus what it also counts: the final
    # average pool (1024 adds) and, for VGG, conv bias adds.
    assert flops.count_macs(fk.models.mobilenet_v1()) == 46355456 - 1024
    assert flops.count_macs(fk.models.resnet_cifar(56)) == 125485760 - 64


def test_dynamic_macs_all_on_all_off_and_partial(images):
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    dense = flops.count_macs(model)
    predictors = flops.count_macs(model, include_predictors=True) - dense
    force_gates(model, on=True)
    np.testing.assert_allclose(flops.dynamic_macs(model, images), dense + predictors)
    force_gates(model, on=False)
    # Only the classifier's bias-free inputs vanish: every conv and dense term is 0.
    np.testing.assert_allclose(flops.dynamic_macs(model, images), predictors)
    # Half the filters of one pointwise layer: its own cost halves, and so does
    # the next depthwise layer's.
    force_gates(model, on=True)
    layer = model.network.get_layer("block3_pw")
    bias = np.full(layer.predictor.bias.shape, 50.0, "float32")
    bias[::2] = -50.0
    layer.predictor.bias.assign(bias)
    terms = {t.layer_name: t for t in flops.mac_terms(model)}
    saved = terms["block3_pw"].dense_macs / 2 + terms["block4_dw"].dense_macs / 2 + terms["block4_pw"].dense_macs / 2
    # block4_pw reads block4_dw's output, whose gates are all on: dense input.
    saved -= terms["block4_pw"].dense_macs / 2
    np.testing.assert_allclose(flops.dynamic_macs(model, images), dense + predictors - saved)


def test_residual_add_makes_the_input_dense_again(images):
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    terms = {t.layer_name: t for t in flops.mac_terms(model)}
    assert terms["stage1_block1_conv2"].in_gate == "stage1_block1_conv1"
    assert terms["stage1_block2_conv1"].in_gate is None  # after the add
    assert terms["logits"].in_gate is None


def test_keep_ratios_follow_the_gates(images):
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    force_gates(model, on=True)
    assert set(fk.flops.keep_ratios(model, images, batch_size=3).values()) == {1.0}
    force_gates(model, on=False)
    first = model.gated_layers[0]
    bias = np.full(first.predictor.bias.shape, -50.0, "float32")
    bias[: len(bias) // 4] = 50.0  # a quarter of the first layer's filters on
    first.predictor.bias.assign(bias)
    ratios = fk.flops.keep_ratios(model, images, batch_size=3)
    assert list(ratios) == [layer.name for layer in model.gated_layers]
    assert ratios[first.name] == 0.25 and set(list(ratios.values())[1:]) == {0.0}
    with pytest.raises(ValueError, match="empty"):
        fk.flops.keep_ratios(model, images[:0])


def test_firing_rates_tell_fixed_filters_from_input_dependent_ones():
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Conv2D(3, 1, activation="relu")(inputs)
    model = fk.gate(keras.Model(inputs, outputs), use_softmax=False)
    layer = model.gated_layers[0]
    kernel = np.zeros(layer.predictor.kernel.shape, "float32")
    kernel[..., 0, 0] = 1.0  # filter 0 fires on images whose red channel averages above 0.5
    layer.predictor.kernel.assign(kernel)
    layer.predictor.bias.assign(np.array([-0.5, 50.0, -50.0], "float32"))  # filter 1 always, 2 never
    images = np.zeros((4, 4, 4, 3), "float32")
    images[:3, ..., 0] = 1.0  # three red images, one black
    rates = fk.flops.firing_rates(model, images, batch_size=3)  # two batches, uneven
    assert list(rates) == [layer.name]
    np.testing.assert_allclose(rates[layer.name], [0.75, 1.0, 0.0])
    assert fk.flops.keep_ratios(model, images)[layer.name] == pytest.approx(1.75 / 3)
    macs, ratios = fk.flops.macs_and_keep_ratios(model, images, batch_size=3)  # both from one pass
    np.testing.assert_array_equal(macs, fk.flops.dynamic_macs(model, images))
    assert ratios == pytest.approx(fk.flops.keep_ratios(model, images))
    with pytest.raises(ValueError, match="empty"):
        fk.flops.firing_rates(model, images[:0])


def test_long_gate_passes_run_compiled_with_the_eager_results(images, monkeypatch):
    from conftest import randomize_weights, short_mobilenet

    from ftwt_keras.export.calibration import gate_counts

    model = fk.gate(short_mobilenet(blocks=5), threshold=0.8)
    rng = np.random.default_rng(1)
    for layer in model.gated_layers:
        randomize_weights(layer.predictor, rng)  # gates that differ from image to image
    images = np.concatenate([images, images[:3] * 0.5])  # 11 images: batches of 4, 4 and 3

    def passes():
        return (flops.dynamic_macs(model, images, batch_size=4), flops.firing_rates(model, images, batch_size=4),
                fk.target_flops_reduction(model, images, apply_masks=False),
                gate_counts(model, images, batch_size=4, targets=True))

    compiled_calls, traces = [], []
    predict_on_batch, call = flops._GatePass.predict_on_batch, flops._GatePass.call
    monkeypatch.setattr(flops._GatePass, "predict_on_batch",
                        lambda self, batch: compiled_calls.append(len(batch)) or predict_on_batch(self, batch))
    monkeypatch.setattr(flops._GatePass, "call", lambda self, batch: traces.append(self) or call(self, batch))
    macs, rates, reduction, counts = passes()  # 3 batches: eagerly
    assert not compiled_calls
    assert 0.05 < rates["block5_pw"].mean() < 0.95 and np.ptp(macs) > 0  # the results depend on the image

    def with_outputs():  # the pass's own outputs beside the summaries: `predict`'s logits, one pass for both
        pairs = list(flops.map_gate_records(model, images, lambda records: records["block5_pw"].mask,
                                            batch_size=4, with_outputs=True))
        assert [len(mask) for mask, _ in pairs] == [len(outputs) for _, outputs in pairs] == [4, 4, 3]
        return np.concatenate([outputs for _, outputs in pairs])

    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(with_outputs(), expected, rtol=1e-5, atol=1e-5)
    assert not compiled_calls  # eagerly
    monkeypatch.setattr(flops, "COMPILE_FROM_BATCHES", 1)
    traces.clear()
    compiled = passes()
    # Compiled, the last batch padded to the first one's size, so that each pass traces once
    # (target_flops_reduction: one batch of 128).
    assert compiled_calls == [4] * 6 + [11] + [4] * 3 and len(traces) == len(set(traces)) == 4
    np.testing.assert_allclose(compiled[0], macs, rtol=1e-6)
    assert compiled[0].shape == (11,)
    for name in rates:
        np.testing.assert_allclose(compiled[1][name], rates[name])
        np.testing.assert_array_equal(compiled[3][name], counts[name])
    assert compiled[2] == pytest.approx(reduction, abs=1e-6)
    np.testing.assert_allclose(with_outputs(), expected, rtol=1e-5, atol=1e-5)  # compiled, the padding cut off
    assert compiled_calls[-3:] == [4, 4, 4]
    # An iterable of unknown length: eager until COMPILE_FROM_BATCHES - 1 batches have shown it is long.
    monkeypatch.setattr(flops, "COMPILE_FROM_BATCHES", 3)
    compiled_calls.clear()
    unknown = flops.dynamic_macs(model, (images[start : start + 2] for start in range(0, 11, 2)))
    assert compiled_calls == [2] * 4
    np.testing.assert_allclose(unknown, macs, rtol=1e-6)
    with pytest.raises(ValueError, match="no gated layer.*ftwt_keras.gate"):
        next(flops.map_gate_records(fk.models.mobilenet_v1(alpha=0.25), images, lambda records: records))


def _reference_executed_macs(terms, gate_masks):
    """Term by term, as the `MacTerm` docstring states it, in numpy."""
    batch = len(next(iter(gate_masks.values())))
    total = np.zeros(batch)
    for term in terms:
        if term.kind == "predictor":
            total += term.macs_per_pair
            continue
        inputs = gate_masks.get(term.in_gate, np.ones((batch, term.in_channels)))
        outputs = gate_masks.get(term.out_gate, np.ones((batch, term.out_channels)))
        if term.kind == "depthwise":
            total += term.macs_per_pair * (inputs * outputs).sum(axis=1)
        else:
            total += term.macs_per_pair * term.in_repeat * inputs.sum(axis=1) * outputs.sum(axis=1)
    return total


@pytest.mark.parametrize("make", [lambda: fk.models.mobilenet_v1(alpha=0.25), lambda: fk.models.resnet_cifar(20)])
def test_executed_macs_equal_the_term_by_term_count_for_random_masks(make):
    model = fk.gate(make(), threshold=0.9)
    terms = flops.mac_terms(model)
    rng = np.random.default_rng(0)
    widths = {t.out_gate: t.out_channels for t in terms if t.out_gate is not None}
    gate_masks = {
        name: (rng.uniform(size=(6, width)) < rng.uniform(0.1, 0.9)).astype("float32")
        for name, width in widths.items()
    }
    for subset in (gate_masks, dict(list(gate_masks.items())[::3])):  # missing gates count as all on
        np.testing.assert_allclose(
            np.asarray(flops.executed_macs(terms, subset)), _reference_executed_macs(terms, subset), rtol=1e-6
        )
