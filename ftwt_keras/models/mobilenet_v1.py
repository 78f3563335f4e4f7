"""MobileNetV1 as in the official FTWT code (CIFAR and ImageNet variants)."""

import keras

from ftwt_keras.models import _blocks

# (filters, stride) after the first conv; the official `cfg` list.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + (
    (1024, 2),
    (1024, 1),
)


def mobilenet_v1(input_shape=(32, 32, 3), num_classes=10, alpha=1.0, first_stride=None, name=None):
    """MobileNetV1: a 3x3 conv, 13 depthwise-separable blocks, pool, dense.

    Every conv is followed by BatchNorm and ReLU, without bias. With
    `first_stride=None` the first conv has stride 1 for inputs up to 64 pixels
    (CIFAR, as in the official code) and 2 otherwise (ImageNet). Inputs are raw
    RGB pixels in [0, 255]; normalization is the model's first layer.

    Args:
        input_shape: `(height, width, 3)`.
        num_classes: logits returned (no softmax).
        alpha: width multiplier scaling every channel count.
        first_stride: stride of the first conv (None: by input size).
        name: model name.

    Example:

    >>> model = mobilenet_v1(alpha=0.25)
    >>> model.output_shape
    (None, 10)
    """
    if alpha <= 0:
        raise ValueError(f"`alpha` must be positive; got {alpha}.")
    if first_stride is None:
        first_stride = 1 if input_shape[0] is not None and input_shape[0] <= 64 else 2
    inputs = keras.Input(input_shape, name="images")
    x = _blocks.pixel_normalization(*_blocks.default_normalization(input_shape))(inputs)
    x = _blocks.conv_bn(x, int(32 * alpha), 3, first_stride, name="conv1")
    for index, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _blocks.conv_bn(x, None, 3, stride, name=f"block{index}_dw", depthwise=True)
        x = _blocks.conv_bn(x, int(filters * alpha), 1, 1, name=f"block{index}_pw")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"mobilenet_v1_{alpha:g}")
