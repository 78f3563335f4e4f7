import keras
import numpy as np
import pytest

import ftwt_keras as fk
from conftest import randomize_weights
from ftwt_keras import normalization
from ftwt_keras.layers import GatedConv
from ftwt_keras.normalization import FusedBatchNormalization


def _pair(**kwargs):
    """A Keras batch norm and a fused one with the same random weights and statistics."""
    layers = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    for layer in layers:
        layer.build((None, 5, 5, 6))
    randomize_weights(layers[0], np.random.default_rng(3))
    layers[1].set_weights(layers[0].get_weights())
    return layers


def _step(layer, x, probe, training):
    """Outputs, gradients (input, trainable weights) and statistics after one traced call."""
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=training)
            loss = tf.reduce_sum(out * probe)
        return out, tape.gradient(loss, [x] + layer.trainable_weights)

    out, gradients = step(x)
    return [np.asarray(out)] + [np.asarray(g) for g in gradients] + [np.asarray(v) for v in layer.non_trainable_weights]


@pytest.mark.parametrize("kwargs", [{}, {"scale": False}, {"center": False, "momentum": 0.9, "epsilon": 1e-5}])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_equals_keras_batch_norm(kwargs, training):
    import tensorflow as tf

    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(3.0, 2.0, (8, 5, 5, 6)).astype("float32"))
    probe = rng.normal(size=(8, 5, 5, 6)).astype("float32")
    reference, fused = _pair(**kwargs)
    for ours, theirs in zip(_step(fused, x, probe, training), _step(reference, x, probe, training)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def _op_types(function, *args):
    import tensorflow as tf

    graph = tf.function(function).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def test_training_runs_the_fused_kernel_only_where_it_applies():
    import tensorflow as tf

    x = tf.TensorSpec((8, 5, 5, 6), "float32")
    layer = FusedBatchNormalization()
    layer.build(x.shape)
    assert "FusedBatchNormV3" in _op_types(lambda x: layer(x, training=True), x)
    assert "FusedBatchNormV3" not in _op_types(lambda x: layer(x, training=False), x)
    with normalization.fused_kernel(False):
        assert "FusedBatchNormV3" not in _op_types(lambda x: layer(x, training=True), x)
    flat = FusedBatchNormalization()
    flat.build((None, 6))  # not an image: Keras's own ops
    assert "FusedBatchNormV3" not in _op_types(lambda x: flat(x, training=True), tf.TensorSpec((8, 6), "float32"))
    renorm = FusedBatchNormalization(renorm=True)
    renorm.build(x.shape)
    assert "FusedBatchNormV3" not in _op_types(lambda x: renorm(x, training=True), x)


def test_gated_conv_trains_any_keras_batch_norm_through_the_fused_kernel():
    import tensorflow as tf

    layer = GatedConv(keras.layers.Conv2D(6, 3, padding="same", use_bias=False), keras.layers.BatchNormalization(),
                      activation="relu")
    layer.build((None, 8, 8, 3))
    assert "FusedBatchNormV3" in _op_types(lambda x: layer(x, training=True), tf.TensorSpec((4, 8, 8, 3), "float32"))


def test_zoo_models_use_it_and_gate_and_save_with_it(tmp_path, images):
    model = fk.models.mobilenet_v1(alpha=0.25)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    gated = fk.gate(model, threshold=0.9)
    assert len(gated.gated_layers) == 27  # gate() takes it for the Keras batch norm it is
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("conv1_bn"), FusedBatchNormalization)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
