"""Activations as the export carries them between layers, and one image's gate mask.

A `Compact` activation holds only some channels (the rest are zeros, or a
known constant per channel); `_GateMask` turns a predictor's logits into the
mask that decides them. Both are TensorFlow values built inside `convert`'s
trace (`ftwt_keras.export.builder`).
"""

import dataclasses
from typing import Optional

import numpy as np

from ftwt_keras.export.checks import _tf


@dataclasses.dataclass
class Compact:
    """An activation whose channels not listed in `channels` are exactly zero.

    `values`: (1, ..., k) tensor; `channels`: int32 (k,) channel numbers, or
    None when all `width` channels are present in order (a dense tensor).
    """

    values: object
    channels: Optional[object]
    width: int
    _positions: Optional[object] = None
    # For a dense tensor made by a gated layer: int32 channel numbers outside
    # which it is known to be zero (the gate's active filters), else None.
    support: Optional[object] = None
    # Fraction of the `width` channels expected to be non-zero (a Python float
    # from calibration images), or None when unknown.
    expected_keep: Optional[float] = None
    # For the output of a ZeroPadding2D: `(values before it, its padding)`, so
    # that a predictor that ignores the border pools the unpadded tensor (then
    # XNNPACK still fuses the PAD into the next conv).
    unpadded: Optional[tuple] = None
    # float32 (width,): the value of each channel absent from `channels`,
    # uniform over space (a depthwise filter that is on over an input channel
    # that is off outputs activation(bias) everywhere), or None for zeros.
    constants: Optional[object] = None
    # For a dense tensor: `(raw, scale, offset)` with `values == raw * scale +
    # offset` per channel (scale float32 0/1 (width,), offset (width,) or
    # None): the gate masks not yet applied. A consumer that can fold them
    # (a predictor's pool, a gathered conv's weight rows) reads `raw`; when
    # every consumer does, the converter drops the unused multiply on the
    # activation.
    scaled: Optional[tuple] = None

    @property
    def is_dense(self):
        return self.channels is None

    def positions(self):
        """(width,) int32: 1 + the position of each channel in `values`, 0 if absent."""
        tf = _tf()
        if self._positions is None:
            count = _size(self.channels, 0)
            self._positions = tf.scatter_nd(
                self.channels[:, None], tf.range(1, count + 1, dtype=tf.int32), [self.width]
            )
        return self._positions

    def select(self, channels):
        """Values of the given channels (int32 (m,)), zeros for absent ones."""
        tf = _tf()
        if self.is_dense:
            return tf.gather(self.values, channels, axis=-1)
        return tf.gather(_with_zero_channel(self.values), tf.gather(self.positions(), channels), axis=-1)

    def compact(self):
        """`(values, channels)` on the known non-zero channels (gathering if needed)."""
        tf = _tf()
        if not self.is_dense:
            return self.values, self.channels
        if self.support is not None:
            return tf.gather(self.values, self.support, axis=-1), self.support
        return self.values, None

    def dense(self):
        """The activation with all `width` channels (scattered back)."""
        if self.is_dense:
            return self.values
        tf = _tf()
        values = tf.gather(_with_zero_channel(self.values), self.positions(), axis=-1)
        return values if self.constants is None else values + self.constants

    def without_constants(self):
        """This activation, dense if it has non-zero absent channels (else itself)."""
        return self if self.constants is None else _dense(self.dense())


def _size(tensor, axis):
    """`tensor`'s size along `axis`: a Python int when static, else a run-time scalar.

    Static sizes keep RESHAPE's output static: a shape computed at run time
    makes every tensor after it dynamic, which XNNPACK does not take.
    """
    size = tensor.shape[axis]
    return int(size) if size is not None else _tf().shape(tensor)[axis]


def _with_zero_channel(values):
    """Prepends one all-zero channel, so that gathering index 0 yields zeros."""
    tf = _tf()
    # PAD, not concat with zeros_like(values[..., :1]): that is empty when
    # `values` has no channels (a layer with every gate off).
    paddings = [[0, 0]] * (values.shape.rank - 1) + [[1, 0]]
    return tf.pad(values, paddings)


def _active_channels(mask_row):
    """int32 indices of the True entries of a (C,) bool mask, never empty.

    XNNPACK cannot run zero-size tensors, so when every gate is off the list is
    [0]; callers make sure channel 0 then carries zeros (its values are masked).
    """
    tf = _tf()
    active = tf.cast(tf.where(mask_row)[:, 0], tf.int32)
    count = tf.maximum(tf.shape(active)[0], 1)
    return tf.slice(tf.concat([active, tf.zeros([1], tf.int32)], axis=0), [0], [count])


def _dense(values):
    return Compact(values, None, int(values.shape[-1]))


def _static_channels(x):
    """A compact `x`'s channel list as numpy when known at export (with its uniform values), else None.

    Layers whose gates the weights decide (`ftwt_keras.static_gates`) emit
    such activations: their consumers slice weights once, at export.
    """
    if x.is_dense:
        return None
    tf = _tf()
    channels = tf.get_static_value(x.channels)
    if channels is None or (x.constants is not None and tf.get_static_value(x.constants) is None):
        return None
    return np.asarray(channels, np.int64)


def _static_constants(x):
    """(width,) float32: each absent channel's uniform value in `x` (zeros without constants); static only."""
    if x.constants is None:
        return np.zeros(x.width, np.float32)
    return np.asarray(_tf().get_static_value(x.constants), np.float32)


class _GateMask:
    """One image's gate decisions, from its predictor logits (1, filters).

    `on`: bool, logit > 0 as in Keras. `values`: float32 0/1 equal to `on`,
    computed as ceil(min(relu(logit), 1)) rather than CAST(GREATER): RELU,
    MINIMUM and CEIL are XNNPACK ops, so the masking stays inside the
    delegate's partitions (MobileNetV1 x0.25 at 32x32 with every layer masked
    dense: 0.66 -> 0.54 ms), and the RELU first fuses into the predictor's
    FULLY_CONNECTED (MobileNetV1 x1.0 at 32x32, rank 16, every gate: 344 ->
    317 ops, 1.522 -> 1.481 ms over 5 rotated loops, dense 1.284; 2026-12-05;
    `clip_by_value` applies its MINIMUM first). It broadcasts against NHWC activations as is; `row` is
    the same as (filters,). All are built here, outside any `tf.cond` branch
    that may read them. With a
    `capacity` (a capped GatedConv), only the filters among the `capacity`
    largest logits stay on, as in Keras.
    """

    def __init__(self, logits, capacity=None):
        tf = _tf()
        self.on = logits > 0
        self.values = tf.math.ceil(tf.minimum(tf.nn.relu(logits), 1.0))
        self.top = None  # int32 (capacity,): a capped layer's top filters, where its on ones are
        if capacity is not None and capacity < int(logits.shape[-1]):
            top = tf.math.top_k(logits, k=capacity)
            self.top = top.indices[0]
            in_top = logits >= top.values[:, -1:]
            self.on = tf.logical_and(self.on, in_top)
            self.values = self.values * tf.cast(in_top, tf.float32)
        # A RESHAPE to a literal shape, which XNNPACK runs: it refuses `values[0]` (a STRIDED_SLICE
        # with a shrink axis; 0.13-0.18 ms at 224x224 over MobileNetV1's 27 masks) and a RESHAPE
        # to [-1] alike, and each op it refuses splits its partition.
        self.row = tf.reshape(self.values, [int(logits.shape[-1])])
