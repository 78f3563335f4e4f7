"""Capped gates (`GatedConv.capacity`, `ftwt_keras.capping`): at most `capacity` filters on, the top logits."""

import math

import keras
import numpy as np
import pytest

import ftwt_keras as fk
from ftwt_keras.layers import GatedConv

from conftest import randomize_weights


def _gated_conv(capacity=None, filters=16):
    return GatedConv(
        keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        activation="relu",
        use_softmax=False,
        capacity=capacity,
    )


def _images_with_varied_colours(count=16, size=8, seed=0):
    """Images whose mean colour differs a lot from one to the next, so gate counts vary."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(-1.0, 1.0, (count, 1, 1, 3))
    return (colours + 0.1 * rng.normal(size=(count, size, size, 3))).astype("float32")


def _counts(model, images):
    return {name: np.asarray(mask).sum(axis=1) for name, mask in fk.flops.gate_masks_of(model, images).items()}


def test_a_capped_gate_keeps_its_largest_logits_among_those_on():
    images = _images_with_varied_colours()
    uncapped, capped = _gated_conv(), _gated_conv(capacity=5)
    uncapped.build(images.shape)
    capped.build(images.shape)
    randomize_weights(uncapped, np.random.default_rng(1))
    uncapped.predictor.bias.assign(np.zeros(16, "float32"))
    for source, target in zip(uncapped.weights, capped.weights):
        target.assign(source)
    with fk.record_gates() as recorder:
        free, limited = np.asarray(uncapped(images)), np.asarray(capped(images))
    free_mask, capped_mask = (np.asarray(record.mask) for record in recorder.records)
    logits = np.asarray(capped.gate_logits(images))
    rank = np.argsort(np.argsort(-logits, axis=1), axis=1)  # 0 for each image's largest logit
    np.testing.assert_array_equal(free_mask, logits > 0)
    np.testing.assert_array_equal(capped_mask, (logits > 0) & (rank < 5))
    on = free_mask.sum(axis=1)
    assert (on > 5).any() and (on <= 5).any()  # both the cap and the threshold decide some image
    kept = np.broadcast_to(capped_mask[:, None, None, :] == 1, free.shape)
    assert not limited[~kept].any()  # capped-off filters output zero...
    np.testing.assert_allclose(limited[kept], free[kept], rtol=1e-6)  # ...the others what they did


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_capped_gate_keeps_exactly_its_capacity_when_logits_tie(dtype):
    """16-bit logits tie often: the cap still keeps `capacity` filters, the lower index first among equals."""
    layer = _gated_conv(capacity=3, filters=6)
    logits = keras.ops.convert_to_tensor(np.array([[2.0, 1.0, 1.0, 1.0, 1.0, -1.0],   # ties at the 3rd logit
                                                   [1.0, 1.0, 1.0, 1.0, 0.5, 0.5],
                                                   [0.0, 3.0, -2.0, 3.0, 0.0, 0.0]]), dtype)  # 2 on only
    mask = np.asarray(layer._mask(logits, "float32"))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0]])
    # bfloat16 logits of a real predictor: 1024 filters, 8 bits of mantissa.
    rng = np.random.default_rng(0)
    drawn = keras.ops.convert_to_tensor(rng.normal(0, 1, (64, 1024)).astype("float32"), dtype)
    wide = _gated_conv(capacity=100, filters=1024)
    assert (np.asarray(wide._mask(drawn, "float32")).sum(axis=1) == 100).all()

def test_capacity_is_checked_and_serialized(tmp_path):
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="capacity"):
            _gated_conv(capacity=bad)
    with pytest.raises(ValueError, match="16 filters"):
        _gated_conv(capacity=17).build((1, 8, 8, 3))
    layer = _gated_conv(capacity=np.int64(4))
    assert layer.capacity == 4 and layer.get_config()["capacity"] == 4
    assert GatedConv.from_config(layer.get_config()).capacity == 4
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    fk.set_gate_capacities(model, {"block13_pw": 100, "block1_dw": 3})
    model.save(tmp_path / "capped.keras")
    loaded = keras.saving.load_model(tmp_path / "capped.keras")
    assert {layer.name: layer.capacity for layer in loaded.gated_layers if layer.capacity} == {
        "block13_pw": 100,
        "block1_dw": 3,
    }


def test_cap_gates_caps_each_layer_at_a_ratio_of_its_mean_count():
    images = _images_with_varied_colours(24, size=32, seed=2)
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    rng = np.random.default_rng(3)
    for layer in model.gated_layers:
        randomize_weights(layer.predictor, rng)
    filters = {layer.name: layer.filters for layer in model.gated_layers}
    keeps = fk.flops.keep_ratios(model, images)
    before = _counts(model, images)
    uncapped_logits = np.asarray(model.predict(images, verbose=0))  # traces the predict function

    capacities = fk.cap_gates(model, images, ratio=0.8)
    depthwise = {layer.name for layer in model.gated_layers if layer.is_depthwise}
    for name, keep in keeps.items():  # regular convs only, by default: a depthwise conv computes its input's channels
        expected = None if name in depthwise else min(filters[name], max(1, math.ceil(0.8 * keep * filters[name] - 1e-6)))
        assert capacities[name] == expected
    after = _counts(model, images)
    capped = [name for name in after if name not in depthwise]
    assert all((after[name] <= capacities[name]).all() for name in capped)
    assert any((before[name] > capacities[name]).any() for name in capped)  # the caps bind
    # The compiled predict function follows the new caps.
    capped_logits = np.asarray(model.predict(images, verbose=0))
    scale = np.abs(uncapped_logits).max()  # this untrained network's logits are tiny: compare relatively
    np.testing.assert_allclose(capped_logits / scale, np.asarray(model(images)) / scale, atol=1e-5)
    assert np.abs(capped_logits - uncapped_logits).max() > 0.1 * scale

    # Counted with the caps removed: another ratio starts from the model's own gates.
    wider = fk.cap_gates(model, images, ratio=2.0, layer_names=["block13_pw"])
    assert wider["block13_pw"] == min(filters["block13_pw"], math.ceil(2.0 * keeps["block13_pw"] * filters["block13_pw"] - 1e-6))
    assert wider["block1_pw"] == capacities["block1_pw"]  # not named: unchanged
    assert fk.set_gate_capacities(model, {"block13_pw": None})["block13_pw"] is None


def test_capping_errors_say_what_is_wrong():
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    with pytest.raises(ValueError, match="ratio"):
        fk.cap_gates(model, np.zeros((2, 32, 32, 3), "float32"), ratio=0)
    with pytest.raises(ValueError, match="not gated layers"):
        fk.set_gate_capacities(model, {"no_such_layer": 3})
    with pytest.raises(ValueError, match="capacity 9 is more"):
        fk.set_gate_capacities(model, {"conv1": 9})  # 8 filters at alpha 0.25
    with pytest.raises(ValueError, match="FTWTModel"):
        fk.set_gate_capacities(fk.models.mobilenet_v1(alpha=0.25), {"conv1": 3})
    with pytest.raises(ValueError, match="FTWTModel"):
        fk.cap_gates(fk.models.mobilenet_v1(alpha=0.25), np.zeros((2, 32, 32, 3), "float32"))
