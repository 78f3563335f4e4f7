"""ResNets: the CIFAR family (20/32/44/56/110) and ImageNet ResNet-18/34."""

import keras

from ftwt_keras.models import _blocks
from ftwt_keras.normalization import FusedBatchNormalization

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _basic_block(x, filters, stride, name, shortcut):
    in_channels = x.shape[-1]
    out = _blocks.conv_bn(x, filters, 3, stride, name=f"{name}_conv1")
    # No activation here: the gate's target is read before the residual add.
    out = _blocks.conv_bn(out, filters, 3, 1, name=f"{name}_conv2", activation=None)
    identity = x
    if stride != 1 or in_channels != filters:
        if shortcut == "A":
            if stride != 1:
                identity = keras.layers.AveragePooling2D(stride, name=f"{name}_shortcut_pool")(x)
            identity = _blocks.ChannelZeroPad(filters - in_channels, name=f"{name}_shortcut_pad")(identity)
        else:
            identity = keras.layers.Conv2D(
                filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal",
                name=f"{name}_shortcut_conv",
            )(x)
            identity = FusedBatchNormalization(
                momentum=_blocks.BN_MOMENTUM, epsilon=_blocks.BN_EPSILON, name=f"{name}_shortcut_bn"
            )(identity)
    out = keras.layers.Add(name=f"{name}_add")([out, identity])
    return keras.layers.Activation("relu", name=f"{name}_out")(out)


def resnet_cifar(depth=56, input_shape=(32, 32, 3), num_classes=10, name=None):
    """CIFAR ResNet (He et al. 2016): 3 stages of 16/32/64 channels.

    `(depth - 2) / 6` basic blocks per stage, 3x3 convs without bias, BN, ReLU,
    "option A" shortcuts (2x2 average pool, then zero channels), global average
    pool, dense. Inputs are raw RGB pixels in [0, 255].

    Args:
        depth: one of 20, 32, 44, 56, 110.
        input_shape, num_classes, name: as usual.

    Example:

    >>> resnet_cifar(depth=20).count_params()
    271098
    """
    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"`depth` must be one of {CIFAR_DEPTHS}; got {depth}.")
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="images")
    x = _blocks.pixel_normalization(_blocks.CIFAR_MEAN, _blocks.CIFAR_STD)(inputs)
    x = _blocks.conv_bn(x, 16, 3, 1, name="conv1")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"stage{stage}_block{block + 1}", shortcut="A")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def _resnet_imagenet(depth, input_shape, num_classes, name):
    inputs = keras.Input(input_shape, name="images")
    x = _blocks.pixel_normalization(_blocks.IMAGENET_MEAN, _blocks.IMAGENET_STD)(inputs)
    x = _blocks.conv_bn(x, 64, 7, 2, name="conv1")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), IMAGENET_STAGES[depth]), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"stage{stage}_block{block + 1}", shortcut="B")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet18(input_shape=(224, 224, 3), num_classes=1000, name=None):
    """ImageNet ResNet-18 (torchvision layout, projection shortcuts).

    Example:

    >>> resnet18().count_params()
    11699112
    """
    return _resnet_imagenet(18, input_shape, num_classes, name)


def resnet34(input_shape=(224, 224, 3), num_classes=1000, name=None):
    """ImageNet ResNet-34 (torchvision layout, projection shortcuts)."""
    return _resnet_imagenet(34, input_shape, num_classes, name)
