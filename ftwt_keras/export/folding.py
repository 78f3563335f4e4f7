"""A gated conv's conv and batch norm folded into one kernel and bias, as the export computes them."""

import dataclasses
import functools

import keras
import numpy as np

from ftwt_keras.export.checks import _tf
from ftwt_keras.layers import GatedConv


@dataclasses.dataclass
class FoldedUnit:
    """A GatedConv's conv + batch norm folded to `activation(conv(x, kernel) + bias)`.

    `kernel` has the conv's layout ((kh, kw, C_in, C_out), or (kh, kw, C, 1)
    for depthwise) with the batch-norm scale folded in; `bias` is (C_out,).
    """

    layer: GatedConv
    kernel: np.ndarray
    bias: np.ndarray

    @functools.cached_property
    def zero_input_output(self):
        """(C_out,) `activation(bias)`: each filter's output on an all-zero input (read eagerly)."""
        with _tf().init_scope():  # eager even while `convert` traces its tf.function
            return _numpy(self.layer.activation(keras.ops.convert_to_tensor(self.bias)))

    @property
    def is_depthwise(self):
        return self.layer.is_depthwise

    @property
    def filters(self):
        return self.bias.shape[0]


def _numpy(variable, dtype=np.float32):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype)


def fold_batch_norm(layer):
    """Folds `layer`'s batch norm (inference statistics) into its conv (eagerly)."""
    conv = layer.conv
    kernel = _numpy(conv.kernel, np.float64)
    filters = kernel.shape[2] if layer.is_depthwise else kernel.shape[3]
    bias = _numpy(conv.bias, np.float64) if conv.use_bias else np.zeros(filters)
    bn = layer.batch_norm
    if bn is not None:
        gamma = _numpy(bn.gamma, np.float64) if bn.scale else np.ones(filters)
        beta = _numpy(bn.beta, np.float64) if bn.center else np.zeros(filters)
        mean = _numpy(bn.moving_mean, np.float64)
        variance = _numpy(bn.moving_variance, np.float64)
        scale = gamma / np.sqrt(variance + bn.epsilon)
        shift = beta - mean * scale
        if layer.is_depthwise:
            kernel = kernel * scale[None, None, :, None]
        else:
            kernel = kernel * scale[None, None, None, :]
        bias = bias * scale + shift
    return FoldedUnit(layer, kernel.astype(np.float32), bias.astype(np.float32))


def _activation_fn(layer):
    """The TF function of a GatedConv's activation (keras activations run on TF)."""
    tf = _tf()
    activation = layer.activation
    name = getattr(activation, "__name__", "")
    if name == "linear":
        return lambda x: x
    if name == "relu":
        return tf.nn.relu
    if name == "relu6":
        return tf.nn.relu6
    return activation
