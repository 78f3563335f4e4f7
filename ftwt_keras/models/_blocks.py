"""Building blocks shared by the model zoo (Keras layers, batch norm trained fused)."""

import keras
from keras import ops

from ftwt_keras.normalization import FusedBatchNormalization

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # official FTWT / pytorch-classification
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PyTorch's BatchNorm2d defaults, as in the official code.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def pixel_normalization(mean, std, name="normalize"):
    """Maps raw RGB pixels in [0, 255] to `(x / 255 - mean) / std`, in-model."""
    return keras.layers.Normalization(
        mean=[255.0 * m for m in mean],
        variance=[(255.0 * s) ** 2 for s in std],
        name=name,
    )


def default_normalization(input_shape):
    small = input_shape[0] is not None and input_shape[0] <= 64
    return (CIFAR_MEAN, CIFAR_STD) if small else (IMAGENET_MEAN, IMAGENET_STD)


def conv_bn(x, filters, kernel_size, stride, name, depthwise=False, use_bias=False, activation="relu"):
    """Conv (PyTorch-style symmetric padding) -> BatchNorm -> activation.

    Stride-1 convs use "same" padding; strided convs pad `kernel_size // 2` on
    every side and use "valid", which is exactly PyTorch's `padding=k//2`.
    """
    padding = "same"
    if stride != 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(
            kernel_size, strides=stride, padding=padding, use_bias=use_bias,
            depthwise_initializer="he_normal", name=name,
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters, kernel_size, strides=stride, padding=padding, use_bias=use_bias,
            kernel_initializer="he_normal", name=name,
        )(x)
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


@keras.saving.register_keras_serializable(package="ftwt_keras")
class ChannelZeroPad(keras.layers.Layer):
    """Appends `pad` all-zero channels (ResNet "option A" shortcut).

    Args:
        pad: number of zero channels added after the existing ones.
    """

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, inputs):
        return ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, self.pad]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
