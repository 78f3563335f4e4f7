"""Frozen gates (`ftwt_keras.freezing`): decisions written into the predictor's weights."""

import keras
import numpy as np
import pytest

import ftwt_keras as fk

from conftest import randomize_weights


def _images(count=48, size=16, seed=0):
    """Images whose mean colour differs a lot from one to the next, so gate decisions vary."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.0, 255.0, (count, 1, 1, 3))
    return np.clip(colours + 20.0 * rng.normal(size=(count, size, size, 3)), 0, 255).astype("float32")


def _model(use_softmax=False, predictor_rank=None, seed=0):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    model = fk.gate(keras.Model(inputs, outputs), use_softmax=use_softmax, predictor_rank=predictor_rank)
    model(np.zeros((1, 16, 16, 3), "float32"))
    rng = np.random.default_rng(seed)
    for layer in model.gated_layers:
        randomize_weights(layer.conv, rng)
        randomize_weights(layer.predictor, rng)
    return model


def _set_biases(model, images):
    """Per layer: gates 0-1 on for every image, 2-3 off for every image, 4-5 on for 1/6 of them, the rest about half.

    Layer by layer, so each layer's biases see the masks of the layers before it.
    Returns `{layer name: (always on, always off)}` index lists.
    """
    groups = {}
    for layer in model.gated_layers:
        with fk.record_gates() as recorder:
            model.network(images, training=False)
        logits = np.asarray(recorder.by_layer_name()[layer.name].logits)
        unbiased = logits - np.asarray(layer.predictor.bias)
        bias = -np.median(unbiased, axis=0)
        bias[:2] = -unbiased[:, :2].min(axis=0) + 1.0
        bias[2:4] = -unbiased[:, 2:4].max(axis=0) - 1.0
        bias[4:6] = -np.quantile(unbiased[:, 4:6], 5 / 6, axis=0)
        layer.predictor.bias.assign(bias.astype("float32"))
        groups[layer.name] = ([0, 1], [2, 3])
    return groups


def _outputs_and_masks(model, images):
    with fk.record_gates() as recorder:
        outputs = np.asarray(model.network(images, training=False))
    return outputs, {name: np.asarray(r.mask) for name, r in recorder.by_layer_name().items()}


@pytest.mark.parametrize("options", [{}, {"use_softmax": True}, {"predictor_rank": 2}])
def test_fixed_gates_are_constant_and_decided_by_the_weights(options):
    model = _model(**options)
    images = _images()
    layer = model.gated_layers[1]
    before = np.asarray(layer.gate_logits(layer_input := _input_of(model, layer, images)))
    fixed = fk.fix_gates(layer, always_on=[0, 5], always_off=np.arange(16) == 7)
    after = np.asarray(layer.gate_logits(layer_input))
    np.testing.assert_array_equal(np.flatnonzero(fixed.always_on), [0, 5])
    np.testing.assert_array_equal(np.flatnonzero(fixed.always_off), [7])
    np.testing.assert_array_equal(after[:, [0, 5, 7]], np.broadcast_to([1.0, 1.0, -1.0], (len(images), 3)))
    others = np.setdiff1d(np.arange(16), [0, 5, 7])
    np.testing.assert_allclose(after[:, others], before[:, others], rtol=1e-5, atol=1e-6)
    gates = fk.static_gates.static_gates(layer)
    assert gates.always_on[[0, 5]].all() and gates.always_off[7]
    if not options.get("use_softmax"):  # the softmax bounds can decide unfixed gates too
        assert gates.decided == 3


def _input_of(model, layer, images):
    inputs = keras.Model(model.network.inputs[0], layer.input)  # the gated layer's input tensor
    return np.asarray(inputs(images))


def test_fixed_logits_are_used_and_checked():
    model = _model()
    layer = model.gated_layers[0]
    logits = np.linspace(-2.0, 2.0, 8)
    fk.fix_gates(layer, always_on=[6, 7], always_off=[0], logits=logits)
    bias = np.asarray(layer.predictor.bias)
    np.testing.assert_allclose(bias[[0, 6, 7]], logits[[0, 6, 7]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Gates \[0\].*logit > 0"):
        fk.fix_gates(layer, always_on=[0], logits=logits)
    with pytest.raises(ValueError, match="one value per filter"):
        fk.fix_gates(layer, always_on=[0], logits=[1.0])


def test_fix_gates_errors():
    model = _model()
    layer = model.gated_layers[0]
    with pytest.raises(ValueError, match="both in `always_on` and `always_off`"):
        fk.fix_gates(layer, always_on=[1, 2], always_off=[2])
    with pytest.raises(ValueError, match=r"indices in \[0, 8\)"):
        fk.fix_gates(layer, always_on=[8])
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        fk.fix_gates(layer, always_off=np.zeros(4, bool))
    with pytest.raises(TypeError, match="takes a GatedConv"):
        fk.fix_gates(keras.layers.Dense(3), always_on=[0])
    unbuilt = fk.GatedConv(keras.layers.Conv2D(4, 3))
    with pytest.raises(ValueError, match="not built"):
        fk.fix_gates(unbuilt, always_on=[0])


def test_freezing_at_full_agreement_keeps_the_model_on_its_images():
    """Gates constant on every calibration image are frozen, the others left; outputs unchanged there."""
    model = _model()
    images = _images()
    groups = _set_biases(model, images)
    outputs, masks = _outputs_and_masks(model, images)
    frozen = fk.freeze_gates(model, images, min_agreement=1.0, batch_size=20)
    assert list(frozen) == [layer.name for layer in model.gated_layers]
    for name, (on, off) in groups.items():
        rates = masks[name].mean(axis=0)
        np.testing.assert_array_equal(frozen[name].always_on, rates == 1.0)
        np.testing.assert_array_equal(frozen[name].always_off, rates == 0.0)
        assert frozen[name].always_on[on].all() and frozen[name].always_off[off].all()
        assert not frozen[name].always_on[4:6].any() and not frozen[name].always_off[4:6].any()
    after, masks_after = _outputs_and_masks(model, images)
    for name in masks:
        np.testing.assert_array_equal(masks_after[name], masks[name])
    np.testing.assert_allclose(after, outputs, rtol=1e-5, atol=1e-5)
    gates = fk.static_gates.static_gates_of(model)
    for name in groups:
        np.testing.assert_array_equal(gates[name].always_on, frozen[name].always_on)
        np.testing.assert_array_equal(gates[name].always_off, frozen[name].always_off)


def test_freezing_at_lower_agreement_takes_each_gates_majority():
    model = _model()
    images = _images()
    _set_biases(model, images)
    rates = fk.flops.firing_rates(model, images)
    frozen = fk.freeze_gates(model, images, min_agreement=0.8)
    for name, rate in rates.items():
        np.testing.assert_array_equal(frozen[name].always_on, rate >= 0.8)
        np.testing.assert_array_equal(frozen[name].always_off, rate <= 0.2)
    first = model.gated_layers[0].name
    assert frozen[first].always_off[4:6].all()  # on for 1/6 of the images: frozen off at 0.8
    masks = fk.flops.gate_masks_of(model, images)
    for name, gates in frozen.items():
        mask = np.asarray(masks[name])
        assert mask[:, gates.always_on].all() and not mask[:, gates.always_off].any()


def test_freezing_only_named_layers():
    model = _model()
    images = _images()
    _set_biases(model, images)
    first, second = (layer.name for layer in model.gated_layers)
    kernel = np.asarray(model.gated_layers[1].predictor.kernel).copy()
    frozen = fk.freeze_gates(model, images, min_agreement=0.5, layer_names=[first])
    assert list(frozen) == [first] and frozen[first].decided == 8
    np.testing.assert_array_equal(np.asarray(model.gated_layers[1].predictor.kernel), kernel)


def test_a_capped_layer_keeps_its_always_on_gates_with_the_predictor():
    model = _model()
    images = _images()
    _set_biases(model, images)
    second = model.gated_layers[1]
    fk.set_gate_capacities(model, {second.name: 9})  # 2 of 16 always off: the cap can bind
    outputs, masks = _outputs_and_masks(model, images)
    rates = masks[second.name].mean(axis=0)
    frozen = fk.freeze_gates(model, images, min_agreement=1.0)
    assert not frozen[second.name].always_on.any()
    np.testing.assert_array_equal(frozen[second.name].always_off, rates == 0.0)
    after, masks_after = _outputs_and_masks(model, images)
    np.testing.assert_array_equal(masks_after[second.name], masks[second.name])
    np.testing.assert_allclose(after, outputs, rtol=1e-5, atol=1e-5)


def test_freeze_gates_errors():
    model = _model()
    images = _images(count=4)
    for bad in (0.4, 1.1):
        with pytest.raises(ValueError, match=r"`min_agreement` must be in \[0.5, 1.0\]"):
            fk.freeze_gates(model, images, min_agreement=bad)
    with pytest.raises(ValueError, match="not gated layers"):
        fk.freeze_gates(model, images, layer_names=["nope"])
    with pytest.raises(ValueError, match="Expected an ftwt_keras.FTWTModel"):
        fk.freeze_gates(model.network, images)
    with pytest.raises(ValueError, match="`images` is empty"):
        fk.freeze_gates(model, images[:0])


def test_a_network_frozen_at_one_half_exports_without_predictors():
    """Every gate frozen: the export computes the frozen model exactly and runs no predictor."""
    pytest.importorskip("ai_edge_litert")
    from ftwt_keras.export import tflite as export

    model = _model()
    images = _images()
    _set_biases(model, images)
    fk.freeze_gates(model, images, min_agreement=0.5)
    assert fk.static_gates.decided_fraction(model) == 1.0
    flatbuffer = export.convert(model)
    dense = export.convert(model, dynamic=False)
    assert export.op_names(flatbuffer).count("MEAN") == export.op_names(dense).count("MEAN") == 1
    expected = np.asarray(model.predict(images, verbose=0))
    actual = export.run(flatbuffer, images)
    assert np.abs(actual - expected).max() <= 1e-3 * np.ptp(expected)


def test_frozen_gates_benchmark_reports_accuracy_exactness_and_times(tmp_path):
    """benchmarks/frozen_gates.py end to end on an untrained MobileNetV1 x0.25, timed at 64x64."""
    import json
    import re

    from conftest import run_python
    from ftwt_keras.export import cpu_name, planning

    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25), use_softmax=False)
    _set_biases(model, np.random.default_rng(1).uniform(0, 255, (16, 32, 32, 3)).astype("float32"))
    path, results = str(tmp_path / "model.keras"), str(tmp_path / "rows.json")
    model.save(path)
    result = run_python("benchmarks/frozen_gates.py", f"--model={path}", "--agreements=none,1.0,0.5",
                        "--calibration_images=16", "--accuracy_images=16", "--check_images=4", "--timed_images=4",
                        "--repeats=1", "--resolution=64", "--static_min_decided=0", f"--results={results}")
    assert result.returncode == 0, result.stderr[-2000:]
    for agreement in ("none", "1", "0.5"):
        assert re.search(rf"^\| {agreement} \| [0-9.]+% \| [0-9.]+% \| [0-9.]+% \| -?[0-9.]+% \(-?[0-9.]+%\) \| [0-9.e-]+, 100.0% "
                         r"\| [0-9.]+ \| [0-9.]+x \([0-9.]+\) \|$", result.stdout, re.M), result.stdout
    rows = json.load(open(results))["rows"]
    assert [row["agreement"] for row in rows] == ["none", "1", "0.5"]
    assert all(row["resolution"] == 64 and row["export_max_difference"] <= 1e-3 for row in rows)
    assert all(row["cpu"] == cpu_name() for row in rows)  # the CPU the times come from
    assert rows[-1]["decided"] == 1.0 and rows[0]["same_top1_as_trained"] == 1.0
    # Cutoff 0 sends every layer down the static path, decided gates or not, and it stays exact.
    layers = len(model.gated_layers)
    for row in rows:
        at_zero = row["static_min_decided"]["0"]
        assert at_zero["static_layers"] == layers and at_zero["export_max_difference"] <= 1e-3, row
        assert re.search(rf"^\| {row['agreement']} \| 0 \| {layers} of {layers} \| [0-9.e-]+ \| [0-9.]+( \(= \S+\))? "
                         r"\| [0-9.]+x ", result.stdout, re.M), result.stdout
    # Every gate decided: the default already prunes every layer statically, so cutoff 0 changes nothing.
    assert rows[-1]["static_layers"] == layers and rows[-1]["static_min_decided"]["0"]["timed_as"] == "0.5"
    default = f"{planning.STATIC_MIN_DECIDED:g}"
    assert re.search(rf"^\| 0.5 \| {default} \(default\) \| {layers} of {layers} \| ", result.stdout, re.M), result.stdout
