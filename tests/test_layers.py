import keras
import numpy as np
import pytest

from ftwt_keras.layers import GatedConv, MaskPredictor, record_gates


def test_mask_predictor_pooling_and_softmax():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    avg = MaskPredictor(5, use_softmax=False, bias_initializer="zeros")
    logits = np.asarray(avg(x))
    expected = x.mean(axis=(1, 2)) @ np.asarray(avg.kernel)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    mx = MaskPredictor(5, pooling="max", bias_initializer="zeros")
    mx.build(x.shape)
    pooled = x.max(axis=(1, 2))
    soft = np.exp(pooled) / np.exp(pooled).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(mx(x)), soft @ np.asarray(mx.kernel), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        MaskPredictor(3, pooling="sum")


def _gated(depthwise=False):
    conv = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False) if depthwise else keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    return GatedConv(conv, keras.layers.BatchNormalization(), activation="relu", threshold=0.9, pooling="max")


@pytest.mark.parametrize("depthwise", [False, True])
def test_gated_conv_serialization_round_trip(depthwise, images):
    layer = _gated(depthwise)
    out = np.asarray(layer(images))
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone.build(images.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(images)), out)
    assert clone.get_config() == layer.get_config()
    assert clone.threshold == 0.9 and clone.predictor.pooling == "max"


def test_gated_conv_zeroes_filters_whose_logit_is_not_positive(images):
    layer = _gated()
    with record_gates(targets=True) as recorder:
        out = np.asarray(layer(images))
    (record,) = recorder.records
    mask = np.asarray(record.mask)
    assert mask.shape == (8, 6) and np.asarray(record.target).shape == (8, 6)
    np.testing.assert_array_equal(mask, (np.asarray(record.logits) > 0).astype("float32"))
    off = mask[:, None, None, :] == 0
    assert np.all(out[np.broadcast_to(off, out.shape)] == 0)
    dense = np.asarray(layer.dense_outputs(images))
    np.testing.assert_allclose(out, dense * mask[:, None, None, :])


def test_recorder_can_run_the_dense_network(images):
    layer = _gated()
    with record_gates(apply_masks=False):
        out = np.asarray(layer(images))
    np.testing.assert_allclose(out, np.asarray(layer.dense_outputs(images)))


def test_unsupported_convs_are_refused_with_their_name():
    with pytest.raises(ValueError, match="'sep'.*SeparableConv2D"):
        GatedConv(keras.layers.SeparableConv2D(4, 3, name="sep"))
    with pytest.raises(ValueError, match="grouped"):
        GatedConv(keras.layers.Conv2D(4, 3, groups=2, name="g"))
    with pytest.raises(ValueError, match="depth_multiplier"):
        GatedConv(keras.layers.DepthwiseConv2D(3, depth_multiplier=2))
    with pytest.raises(ValueError, match="threshold"):
        GatedConv(keras.layers.Conv2D(4, 3), threshold=1.5)
    with pytest.raises(ValueError, match="mode"):
        GatedConv(keras.layers.Conv2D(4, 3), mode="both")
