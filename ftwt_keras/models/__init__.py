"""Plain Keras builders of the architectures used in the FTWT paper.

Every model takes raw RGB pixels in [0, 255] (normalization is inside) and
returns logits. Gate them with `ftwt_keras.gate`.
"""

from ftwt_keras.models._blocks import ChannelZeroPad
from ftwt_keras.models.mobilenet_v1 import mobilenet_v1
from ftwt_keras.models.applications import application_on_raw_pixels, mobilenet_v2
from ftwt_keras.models.resnet import resnet18, resnet34, resnet_cifar
from ftwt_keras.models.vgg import vgg16_bn

__all__ = ["ChannelZeroPad", "application_on_raw_pixels", "mobilenet_v1", "mobilenet_v2", "resnet18", "resnet34", "resnet_cifar", "vgg16_bn"]
