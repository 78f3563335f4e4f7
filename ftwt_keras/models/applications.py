"""keras.applications models taking raw pixels, as every model of the zoo: MobileNetV2 and the rest."""

import keras


def application_on_raw_pixels(application, input_shape, name=None, **kwargs):
    """A `keras.applications` model that expects [-1, 1] pixels, fed raw ones.

    MobileNet, MobileNetV2, InceptionV3, Xception, ResNet50V2 and others take
    pixels scaled by their `preprocess_input` to [-1, 1]; this builds one
    behind a `Rescaling` that does it, so that it takes raw RGB pixels in
    [0, 255] like `ftwt_keras.models` (and a `.tflite` exported from it takes
    what a camera gives).

    Args:
        application: the builder, e.g. `keras.applications.InceptionV3`.
        input_shape: `(height, width, 3)`.
        name: model name (default: the application's).
        **kwargs: passed on (`weights`, `classes`, `alpha`, ...).

    Example:

    >>> model = application_on_raw_pixels(keras.applications.MobileNet, (32, 32, 3), weights=None, classes=10)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape, name="images")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")(inputs)
    built = application(input_tensor=scaled, **kwargs)
    return keras.Model(inputs, built.output, name=name or built.name)


def mobilenet_v2(input_shape=(224, 224, 3), num_classes=1000, alpha=1.0, weights=None, name=None):
    """`keras.applications.MobileNetV2` with its `preprocess_input` inside.

    Takes raw RGB pixels in [0, 255] like the rest of `ftwt_keras.models`
    (`application_on_raw_pixels`). Not in the FTWT paper: the phone model
    users most often bring.

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
    return application_on_raw_pixels(
        keras.applications.MobileNetV2, input_shape, name=name or f"mobilenet_v2_{alpha:g}",
        weights=weights, alpha=alpha, classes=num_classes, classifier_activation=None,
    )
