"""MobileNetV2 (`keras.applications`) taking raw pixels, as every model of the zoo."""

import keras


def mobilenet_v2(input_shape=(224, 224, 3), num_classes=1000, alpha=1.0, weights=None, name=None):
    """`keras.applications.MobileNetV2` with its `preprocess_input` inside.

    The application expects pixels scaled to [-1, 1]; this one takes raw RGB
    pixels in [0, 255] like the rest of `ftwt_keras.models` (a `Rescaling`
    first), so a `.tflite` exported from it takes what a camera gives. Not in
    the FTWT paper: the phone model users most often bring.

    Args:
        input_shape: `(height, width, 3)`.
        num_classes: logits returned (no softmax).
        alpha: width multiplier, as `keras.applications.MobileNetV2` takes it.
        weights: `None` (random init, default) or what the application takes
            (`"imagenet"` downloads them and needs `num_classes=1000`).
        name: model name.

    Example:

    >>> model = mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, alpha=0.35)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape, name="images")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")(inputs)
    application = keras.applications.MobileNetV2(
        weights=weights, alpha=alpha, input_tensor=scaled, classes=num_classes, classifier_activation=None
    )
    return keras.Model(inputs, application.output, name=name or f"mobilenet_v2_{alpha:g}")
