"""The model zoo's builders that wrap `keras.applications` (the paper's own architectures: test_flops.py)."""

import keras
import numpy as np

import ftwt_keras as fk


def _first_conv_and_logits(network, inputs):
    return keras.Model(network.inputs, [network.get_layer("Conv1").output, network.output]).predict(inputs, verbose=0)


def test_mobilenet_v2_takes_raw_pixels_and_is_the_application_on_scaled_ones():
    """Same weights: the zoo model on [0, 255] pixels computes what keras.applications does on preprocess_input's."""
    keras.utils.set_random_seed(0)
    model = fk.models.mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, alpha=0.35)
    application = keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    application.set_weights(model.get_weights())
    assert model.output_shape == (None, 10) and model.name == "mobilenet_v2_0.35"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    scaled = keras.applications.mobilenet_v2.preprocess_input(pixels.copy())
    # The first conv's output too: a random init's logits hardly depend on the input, it does.
    features, logits = _first_conv_and_logits(model, pixels)
    expected_features, expected_logits = _first_conv_and_logits(application, scaled)
    np.testing.assert_allclose(features, expected_features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)
    assert len(fk.gate(model).gated_layers) == 52  # its feature convs: a plain functional model to gate
