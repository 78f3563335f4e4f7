import keras
import numpy as np
import pytest

from conftest import force_gates_of, randomize_weights
from ftwt_keras import normalization
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


def test_low_rank_mask_predictor():
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 12)).astype("float32")
    predictor = MaskPredictor(10, use_softmax=False, rank=3)
    logits = np.asarray(predictor(x))
    assert predictor.projection.shape == (12, 3) and predictor.kernel.shape == (3, 10)
    expected = x.mean(axis=(1, 2)) @ np.asarray(predictor.projection) @ np.asarray(predictor.kernel)
    np.testing.assert_allclose(logits, expected + np.asarray(predictor.bias), rtol=1e-5, atol=1e-5)
    assert predictor.multiply_adds(12) == 3 * (12 + 10)
    clone = MaskPredictor.from_config(predictor.get_config())
    clone.build(x.shape)
    clone.set_weights(predictor.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), logits)
    # A rank that would not save anything builds the paper's full map.
    full = MaskPredictor(10, rank=12)
    full.build(x.shape)
    assert full.projection is None and full.kernel.shape == (12, 10) and full.multiply_adds(12) == 120
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="rank"):
            MaskPredictor(3, rank=bad)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("padding", [1, ((0, 1), (0, 1)), ((2, 1), (0, 3))])
def test_mask_predictor_pools_without_the_input_padding(pooling, padding):
    """A predictor behind a ZeroPadding2D pools what the conv's unpadded input holds."""
    # Negative values: a max over the zero border would differ from the max inside.
    x = np.random.default_rng(2).normal(-3.0, 1.0, size=(3, 5, 6, 4)).astype("float32")
    padded = np.asarray(keras.layers.ZeroPadding2D(padding)(x))
    predictor = MaskPredictor(7, pooling=pooling, input_padding=padding)
    plain = MaskPredictor(7, pooling=pooling)
    predictor.build(padded.shape)
    plain.build(x.shape)
    plain.set_weights(predictor.get_weights())
    np.testing.assert_allclose(np.asarray(predictor(padded)), np.asarray(plain(x)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(plain(padded)), np.asarray(plain(x)), atol=1e-3)
    clone = MaskPredictor.from_config(predictor.get_config())
    assert clone.input_padding == keras.layers.ZeroPadding2D(padding).padding


def test_mask_predictor_input_padding_is_checked():
    assert MaskPredictor(3, input_padding=0).input_padding is None
    assert MaskPredictor(3, input_padding=[[1, 0], [0, 2]]).input_padding == ((1, 0), (0, 2))
    for bad in (-1, (1, 2, 3), ((1,), (1, 1)), 1.5, ((1, -1), (0, 0)), "1"):
        with pytest.raises(ValueError, match="input_padding"):
            MaskPredictor(3, input_padding=bad)
    with pytest.raises(ValueError, match="leaves nothing"):
        MaskPredictor(3, input_padding=2).build((1, 4, 8, 3))


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


@pytest.mark.parametrize("depthwise", [False, True])
def test_gated_conv_filters_counts_the_gates(depthwise, images):
    layer = _gated(depthwise)
    if depthwise:  # one filter per input channel: unknown until built
        with pytest.raises(ValueError, match="build the layer"):
            layer.filters
    out = layer(images)
    assert layer.filters == out.shape[-1] == (images.shape[-1] if depthwise else 6)


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


def _relu_reference(x):
    # Not named "relu": GatedConv gates it by multiplying by the mask.
    return keras.ops.relu(x)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_relu_gates_through_the_shift_exactly_like_the_mask_multiply(depthwise, batch_norm, training, images):
    import tensorflow as tf

    def make(activation):
        if depthwise:
            conv = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=not batch_norm)
        else:
            conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=not batch_norm)
        norm = keras.layers.BatchNormalization() if batch_norm else None
        layer = GatedConv(conv, norm, activation=activation, threshold=0.9)
        layer.build(images.shape)
        return layer

    fast, reference = make("relu"), make(_relu_reference)
    assert fast._masks_through_shift and not reference._masks_through_shift
    randomize_weights(fast, np.random.default_rng(1))
    reference.set_weights(fast.get_weights())
    probe = np.random.default_rng(2).normal(size=(8, 32, 32, fast.filters)).astype("float32")
    results = []
    for layer in (fast, reference):
        x = tf.constant(images)
        # The reference is Keras's own batch norm (element-wise ops), then the multiply.
        with tf.GradientTape() as tape, record_gates(targets=True) as recorder, \
                normalization.fused_kernel(layer is fast):
            tape.watch(x)
            out = layer(x, training=training)
            loss = tf.reduce_sum(out * probe)
        backbone = layer.conv.trainable_weights + (layer.batch_norm.trainable_weights if batch_norm else [])
        gradients = tape.gradient(loss, [x] + backbone)
        (record,) = recorder.records
        results.append((out, record.mask, record.target, gradients, layer.non_trainable_weights))
    (out, mask, target, gradients, stats), (ref_out, ref_mask, ref_target, ref_gradients, ref_stats) = results
    mask = np.asarray(mask)
    assert 0 < mask.mean() < 1  # both on and off gates
    np.testing.assert_array_equal(mask, np.asarray(ref_mask))
    np.testing.assert_array_equal(np.asarray(target), np.asarray(ref_target))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(out)[np.broadcast_to(mask[:, None, None, :] == 0, out.shape)] == 0)
    # The fused kernel sums in another order: on these raw-pixel inputs (mean >> spread)
    # a depthwise kernel's gradient moves by up to 2.4e-4 of its size.
    for gradient, ref_gradient in zip(gradients, ref_gradients):
        np.testing.assert_allclose(np.asarray(gradient), np.asarray(ref_gradient), rtol=1e-3, atol=1e-3)
    for stat, ref_stat in zip(stats, ref_stats):  # moving statistics (updated in training)
        np.testing.assert_allclose(np.asarray(stat), np.asarray(ref_stat), rtol=1e-5)


def test_batch_renorm_and_other_activations_gate_by_multiplying():
    renorm = GatedConv(keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(renorm=True), activation="relu")
    assert not renorm._masks_through_shift
    assert not GatedConv(keras.layers.Conv2D(4, 3), activation="swish")._masks_through_shift
    assert GatedConv(keras.layers.Conv2D(4, 3), activation="relu6")._masks_through_shift


def test_a_convs_own_activation_becomes_the_units(images):
    """keras.applications.VGG16 writes Conv2D(..., activation="relu"): the unit takes the ReLU, the conv is linear."""
    conv = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="own")
    conv.build(images.shape)
    expected = np.asarray(conv(images))
    layer = GatedConv(conv, threshold=0.9)
    assert layer.activation.__name__ == "relu" and layer.conv.activation.__name__ == "linear"
    assert layer._masks_through_shift  # the ReLU's cheaper gating applies
    with record_gates(apply_masks=False):
        np.testing.assert_allclose(np.asarray(layer(images)), expected, rtol=1e-6, atol=1e-6)
    restored = GatedConv.from_config(layer.get_config())
    assert restored.activation.__name__ == "relu" and restored.conv.activation.__name__ == "linear"
    # Its own activation and then a batch norm or another one: no unit computes that.
    with pytest.raises(ValueError, match="'own2' has its own activation \\('relu'\\) and a batch norm"):
        GatedConv(keras.layers.Conv2D(6, 3, activation="relu", name="own2"), keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match="unit activation"):
        GatedConv(keras.layers.Conv2D(6, 3, activation="relu"), activation="swish")


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


@pytest.mark.parametrize("on", [False, True])
def test_float16_units_switch_gates_off_without_nan(on, images):
    """The pre-activation shift that switches a filter off stays finite in float16 (mixed_float16)."""
    layer = GatedConv(keras.layers.Conv2D(6, 3, padding="same"), keras.layers.BatchNormalization(),
                      activation="relu", dtype="mixed_float16")
    layer.build(images.shape)
    assert layer._masks_through_shift and layer.compute_dtype == "float16"
    force_gates_of(layer, on)
    out = np.asarray(layer(images / 255.0, training=True)).astype("float32")
    assert np.all(np.isfinite(out))
    if on:
        dense = np.asarray(layer.dense_outputs(images / 255.0, training=True), "float32")
        np.testing.assert_allclose(out, dense, rtol=1e-2, atol=2e-3)  # float16 rounding
        assert out.max() > 0
    else:
        assert np.all(out == 0)
