import keras
import numpy as np
import pytest

import ftwt_keras as fk
from conftest import global_dtype_policy, randomize_weights
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


@pytest.mark.parametrize("kwargs", [{}, {"scale": False}, {"center": False, "momentum": 0.9, "epsilon": 1e-5}])
def test_the_training_step_of_other_backends_equals_keras_batch_norm(kwargs):
    """Without the fused kernel (other backends; here switched off) the step is `batch_norm`'s keras.ops."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(3.0, 2.0, (8, 5, 5, 6)).astype("float32"))
    probe = rng.normal(size=(8, 5, 5, 6)).astype("float32")
    reference, ours = _pair(**kwargs)
    with normalization.fused_kernel(False):
        assert "FusedBatchNormV3" not in _op_types(lambda x: ours(x, training=True), tf.TensorSpec(x.shape, "float32"))
        got = _step(ours, x, probe, True)
    for ours, theirs in zip(got, _step(reference, x, probe, True)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_a_gated_network_s_gradients_match_float64(fused):
    """With masks (gated MobileNetV1, gates that differ by image), one step's gradients in float32 match
    float64's, through the fused kernel and through `batch_norm`'s keras.ops alike. Keras's own formula,
    `x * inv + (beta - mean * inv)`, was up to 8.7% of a weight's largest gradient off here."""
    import tensorflow as tf

    def build():
        return fk.gate(fk.models.mobilenet_v1(input_shape=(32, 32, 3), alpha=0.25), threshold=0.7, predictor_rank=4)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, 8).astype("int32")
    model = build()
    with global_dtype_policy("float64"):
        model64 = build()
    model64.set_weights([w.astype("float64") for w in model.get_weights()])

    def gradients(model, x):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                value = loss(labels, model(x, training=True))
            return tape.gradient(value, model.backbone_variables)

        with normalization.fused_kernel(fused):
            return [np.asarray(g, "float64") for g in step(x)]

    truth = gradients(model64, images.astype("float64"))
    largest = max(np.max(np.abs(t)) for t in truth)
    for got, want, variable in zip(gradients(model, images), truth, model.backbone_variables):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.max(np.abs(want)) + 1e-6 * largest,
                                   err_msg=variable.path)


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
