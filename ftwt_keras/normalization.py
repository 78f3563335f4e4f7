"""Batch normalization whose training step is one fused kernel on TensorFlow.

Keras 3's `BatchNormalization` computes the batch statistics and the
normalization with separate element-wise ops (keras-team/keras-core#225), and
so does their gradient. On the TensorFlow backend, on a CPU, those ops took
more than half of a MobileNetV1 x0.25 CIFAR train step here (`python
benchmarks/train_overhead.py --alpha=0.25 --batch_norm=both --profile_steps=3`).
TensorFlow has a fused kernel for the same computation (`FusedBatchNormV3`:
oneDNN on CPUs, cuDNN on GPUs), which `tf.keras` used by default. `batch_norm`
runs a Keras `BatchNormalization` layer's training step through it where it
applies, with the layer's own formula, weights and moving statistics. Other
training steps (other backends, inputs that are not 4-D float32 with channels
last) compute the same in `keras.ops` as `(x - mean) * (gamma / sqrt(var +
eps)) + beta`: Keras's `x * inv + (beta - mean * inv)` cancels in float32,
which in a gated network took one step's gradients up to 8.7% off float64's.
Inference, renorm, masks and synchronized statistics are the layer's own ops.
`FusedBatchNormalization` is the layer that does so; the zoo models use it,
and `GatedConv` normalizes through `batch_norm` whatever its batch norm's
class.

This is the one place outside data loading and export that calls TensorFlow:
a backend kernel, as `keras/src/backend/tensorflow/nn.py` holds Keras's own.
"""

import contextlib

import keras
from keras import ops

_fused_kernel_enabled = True


@contextlib.contextmanager
def fused_kernel(enabled=True):
    """Within this context, `batch_norm` uses the fused kernel only if `enabled`.

    For comparisons (`benchmarks/train_overhead.py --batch_norm=both`) and for
    ruling the kernel out when results differ. It acts when a step is traced:
    build and compile the model, and run its first step, inside the context.
    """
    global _fused_kernel_enabled
    previous, _fused_kernel_enabled = _fused_kernel_enabled, bool(enabled)
    try:
        yield
    finally:
        _fused_kernel_enabled = previous


def _fusable(layer, inputs):
    """Whether a training step of `layer` (trainable, no renorm, no synchronized statistics) can run fused."""
    return (
        _fused_kernel_enabled
        and keras.backend.backend() == "tensorflow"
        and len(inputs.shape) == 4
        and layer.axis in (-1, 3, [-1], [3])
        and keras.backend.result_type(inputs.dtype, "float32") == "float32"
    )


def batch_norm(layer, inputs, training=None):
    """`layer(inputs, training=training)` for a `keras.layers.BatchNormalization`.

    Same outputs (to float32 rounding), gradients and moving-statistics updates
    as the layer's own `call`; in training on the TensorFlow backend, computed
    by TensorFlow's fused batch-norm kernel, and elsewhere in training (other
    backends, the kernel switched off) by `keras.ops` in an order that keeps
    float32 gradients close to float64's where Keras's own does not
    (`_centered_training_step`). Inference, renorm and synchronized
    statistics are the layer's own `call`.

    Args:
        layer: a built `keras.layers.BatchNormalization`.
        inputs: its input tensor.
        training: whether to normalize with the batch's statistics (and update
            the moving ones) rather than with the moving ones.

    Example:

    >>> import numpy as np
    >>> bn = keras.layers.BatchNormalization()
    >>> bn.build((None, 4, 4, 3))
    >>> out = batch_norm(bn, np.ones((2, 4, 4, 3), "float32"), training=True)
    >>> tuple(out.shape)
    (2, 4, 4, 3)
    """
    if not training or not layer.trainable or layer.renorm or layer.synchronized:
        return keras.layers.BatchNormalization.call(layer, inputs, training=training)
    if not _fusable(layer, inputs):
        return _centered_training_step(layer, inputs)
    import tensorflow as tf

    inputs = tf.cast(inputs, "float32")
    channels = inputs.shape[-1]
    gamma = layer.gamma.value if layer.scale else tf.ones((channels,), "float32")
    beta = layer.beta.value if layer.center else tf.zeros((channels,), "float32")
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=layer.epsilon, data_format="NHWC", is_training=True
    )
    # The kernel returns the batch variance with Bessel's correction (for its
    # own running average); Keras tracks and normalizes with the biased one.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
    variance = variance * ((count - 1.0) / count)
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return ops.cast(outputs, layer.compute_dtype)


def _centered_training_step(layer, inputs):
    """The layer's training step in `keras.ops` as `(x - mean) * (gamma / sqrt(var + eps)) + beta`.

    Keras computes the same value as `x * inv + (beta - mean * inv)` (and, on
    PyTorch, the variance as E[x^2] - E[x]^2), whose large terms cancel in
    float32: in a gated MobileNetV1 the gradients of one step differed from
    float64's by up to 8.7% of a weight's largest update, and by 4e-5 this
    way (the gradients of tiny batch-norm scales aside; `tests/
    test_normalization.py`). The batch mean and biased variance and the
    moving-statistics update are Keras's.
    """
    x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
    channel_axis = (layer.axis if isinstance(layer.axis, int) else layer.axis[0]) % len(x.shape)
    axes = [axis for axis in range(len(x.shape)) if axis != channel_axis]
    mean = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    variance = ops.mean(ops.square(centered), axis=axes, keepdims=True)
    factor = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        factor = factor * ops.reshape(ops.cast(layer.gamma, x.dtype), ops.shape(mean))
    outputs = centered * factor
    if layer.center:
        outputs = outputs + ops.reshape(ops.cast(layer.beta, x.dtype), ops.shape(mean))
    momentum = layer.momentum
    for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
        batch = ops.cast(ops.reshape(batch, (-1,)), moving.dtype)
        moving.assign(moving * momentum + batch * (1.0 - momentum))
    return ops.cast(outputs, layer.compute_dtype)


@keras.saving.register_keras_serializable(package="ftwt_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` trained through TensorFlow's fused kernel.

    Same arguments, weights, formula and moving statistics as its base class,
    of which it is a subclass (anything that accepts a Keras batch norm accepts
    it); only the training step differs: on the TensorFlow backend one fused
    kernel instead of separate element-wise ops, elsewhere those ops in an
    order that keeps float32 gradients accurate (see `batch_norm`). Inference
    is the base class's.

    Example:

    >>> import numpy as np
    >>> bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> tuple(bn(np.ones((2, 4, 4, 3), "float32"), training=True).shape)
    (2, 4, 4, 3)
    """

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            return super().call(inputs, training=training, mask=mask)
        return batch_norm(self, inputs, training=training)
