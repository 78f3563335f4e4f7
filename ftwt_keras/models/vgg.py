"""VGG16 with batch norm, CIFAR layout of the official FTWT code."""

import keras

from ftwt_keras.models import _blocks

CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(input_shape=(32, 32, 3), num_classes=10, name=None):
    """VGG16-bn: 13 biased 3x3 convs with BN + ReLU, 5 max pools, one dense.

    No dropout; the 1x1x512 output (at 32x32 input) is flattened into a single
    `Dense(num_classes)`. Inputs are raw RGB pixels in [0, 255].

    Example:

    >>> vgg16_bn().count_params()
    14736714
    """
    inputs = keras.Input(input_shape, name="images")
    x = _blocks.pixel_normalization(*_blocks.default_normalization(input_shape))(inputs)
    conv_index = pool_index = 0
    for item in CONFIG:
        if item == "M":
            pool_index += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
        else:
            conv_index += 1
            x = _blocks.conv_bn(x, item, 3, 1, name=f"conv{conv_index}", use_bias=True)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "vgg16_bn")
