"""ftwt_keras.static_gates: gates decided for every input, proven from the predictor's weights."""

import keras
import numpy as np
import pytest

import ftwt_keras as fk
from ftwt_keras.static_gates import ROUNDING_MARGIN, decided_fraction, static_gates, static_gates_of


def _layer(use_softmax=True, rank=None, capacity=None, filters=6, channels=5):
    layer = fk.GatedConv(keras.layers.Conv2D(filters, 3, padding="same"), use_softmax=use_softmax,
                         predictor_rank=rank, capacity=capacity)
    layer(np.zeros((1, 8, 8, channels), "float32"))
    return layer


def _set(layer, kernel, bias):
    layer.predictor.kernel.assign(np.asarray(kernel, "float32"))
    layer.predictor.bias.assign(np.asarray(bias, "float32"))


def _masks(layer, inputs):
    """Keras's own per-image gate decisions (logit > 0, then the cap) for `inputs`."""
    logits = layer.predictor(inputs)
    return np.asarray(layer._mask(logits, "float32")) > 0


def test_softmax_bounds_each_logit_by_its_column():
    layer = _layer(filters=4, channels=3)
    kernel = np.array([
        [2.0, -3.0, 1.0, 0.0],
        [1.0, -1.0, -1.0, 0.0],
        [3.0, -2.0, 0.5, 0.0],
    ])
    # Column ranges + bias: [0.5, 2.5] on; [-3.5, -1.5] off; [-1.2, 0.8] straddles 0; exactly 0: off.
    _set(layer, kernel, [-0.5, -0.5, -0.2, 0.0])
    gates = static_gates(layer)
    assert gates.always_on.tolist() == [True, False, False, False]
    assert gates.always_off.tolist() == [False, True, False, True]
    assert gates.decided == 3 and not gates.all_decided


def test_a_range_within_the_rounding_margin_of_zero_is_left_to_the_predictor():
    layer = _layer(filters=2, channels=3)
    kernel = np.array([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])
    edge = 0.5 * ROUNDING_MARGIN
    _set(layer, kernel, [-1.0 + edge, 1.0 - edge])  # logits +edge and -edge for every input
    gates = static_gates(layer)
    assert not gates.always_on.any() and not gates.always_off.any()


def test_decided_gates_agree_with_keras_on_any_input():
    rng = np.random.default_rng(0)
    for rank in (None, 2):
        layer = _layer(rank=rank, filters=16, channels=6)
        for variable in layer.predictor.weights:
            variable.assign(rng.normal(0.0, 1.0, variable.shape).astype("float32"))
        gates = static_gates(layer)
        assert 0 < gates.decided < 16  # the draw decides some gates and leaves others
        # Ordinary inputs, huge ones (softmax at a vertex), and inputs where every channel is equal.
        inputs = np.concatenate([
            rng.normal(0.0, 1.0, (64, 8, 8, 6)),
            rng.normal(0.0, 1.0, (64, 8, 8, 6)) * 1e3,
            np.ones((4, 8, 8, 6)) * rng.normal(size=(4, 1, 1, 1)),
        ]).astype("float32")
        masks = _masks(layer, inputs)
        assert masks[:, gates.always_on].all()
        assert not masks[:, gates.always_off].any()
        undecided = ~(gates.always_on | gates.always_off)
        assert masks[:, undecided].any(axis=0).all() or rank is not None  # the bound is not loose for full maps


def test_without_softmax_only_a_zero_column_is_decided():
    layer = _layer(use_softmax=False, filters=3, channels=2)
    _set(layer, [[0.0, 1e-3, 0.0], [0.0, 0.0, 0.0]], [2.0, 5.0, -1.0])
    gates = static_gates(layer)
    assert gates.always_on.tolist() == [True, False, False]
    assert gates.always_off.tolist() == [False, False, True]


def test_low_rank_predictors_are_bounded_through_their_product():
    layer = _layer(rank=1, filters=3, channels=4)
    layer.predictor.projection.assign(np.array([[1.0], [2.0], [3.0], [4.0]], "float32"))
    _set(layer, [[1.0, -1.0, 0.25]], [0.0, 0.0, -0.5])  # columns of M: 1..4, -4..-1, 0.25..1 (minus 0.5)
    gates = static_gates(layer)
    assert gates.always_on.tolist() == [True, False, False]
    assert gates.always_off.tolist() == [False, True, False]


def test_a_cap_that_may_bind_leaves_always_positive_gates_to_the_predictor():
    kernel = np.zeros((3, 5))
    bias = [1.0, 1.0, 1.0, -1.0, -1.0]  # three always positive, two never
    capped = _layer(capacity=2, filters=5, channels=3)
    _set(capped, kernel, bias)
    gates = static_gates(capped)
    assert not gates.always_on.any()  # which two of the three stay on is the cap's (per image) choice
    assert gates.always_off.tolist() == [False, False, False, True, True]
    loose = _layer(capacity=3, filters=5, channels=3)
    _set(loose, kernel, bias)
    assert static_gates(loose).always_on.tolist() == [True, True, True, False, False]


def test_static_gates_of_a_model_and_errors():
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    gates = static_gates_of(model)
    assert list(gates) == [layer.name for layer in model.gated_layers]
    assert static_gates_of(model.network).keys() == gates.keys()
    first = model.gated_layers[0]
    _set(first, np.zeros(first.predictor.kernel.shape), np.ones(first.filters))  # its 8 gates always on
    total = sum(layer.filters for layer in model.gated_layers)
    assert decided_fraction(model) == sum(g.decided for g in static_gates_of(model).values()) / total
    assert decided_fraction(model) >= first.filters / total
    with pytest.raises(TypeError, match="GatedConv"):
        static_gates(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="not built"):
        static_gates(fk.GatedConv(keras.layers.Conv2D(4, 3)))
