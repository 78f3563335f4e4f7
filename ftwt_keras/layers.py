"""Keras layers of FTWT: the mask predictor and the gated conv unit.

`GatedConv` wraps one conv unit (a `Conv2D` or `DepthwiseConv2D`, optionally
followed by `BatchNormalization` and an activation) with a `MaskPredictor`
that reads the unit's input and decides, per sample, which output filters
fire. Training code needs the predictor logits and the self-supervised targets
of every gated layer; a layer reports them to the innermost active
`GateRecorder` (see `record_gates`) instead of changing its outputs, so gated
layers drop into any functional model.
"""

import numbers
import threading
from typing import NamedTuple, Optional

import keras
from keras import ops

from ftwt_keras import masks, normalization

PACKAGE = "ftwt_keras"
POOLINGS = ("avg", "max")
MODES = ("decoupled", "joint")
TARGETS = ("mass", "uniform")
SUPPORTED_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
# Activations that are exactly 0 far below zero, so that a gated-off filter
# can be switched off through its pre-activation shift (`OFF_SHIFT`).
RELU_LIKE = ("relu", "relu6")
OFF_SHIFT = 1e30


def off_shift(dtype):
    """`OFF_SHIFT` in `dtype`: float16's largest finite value (65504) where 1e30 would be infinite.

    An infinite shift would turn the on filters' `0 * shift` into NaN. 65504
    still switches a float16 filter off: no float16 pre-activation is larger.
    """
    return 65504.0 if keras.backend.standardize_dtype(dtype) == "float16" else OFF_SHIFT


def global_pool(inputs, pooling="avg"):
    """`(batch, height, width, channels)` -> `(batch, channels)`, by `"avg"` or `"max"`.

    With a static spatial size this runs the pooling kernels, which on CPU are
    faster than a reduction over axes 1 and 2 (the result is the same).
    """
    height, width, channels = inputs.shape[1:]
    if height is None or width is None or channels is None:
        return ops.max(inputs, axis=(1, 2)) if pooling == "max" else ops.mean(inputs, axis=(1, 2))
    pool = ops.max_pool if pooling == "max" else ops.average_pool
    pooled = pool(inputs, (height, width), strides=(height, width), padding="valid",
                  data_format="channels_last")
    return ops.reshape(pooled, (-1, channels))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskPredictor(keras.layers.Layer):
    """Predicts per-sample gate logits for a conv layer's output filters.

    As in the official FTWT code: global pooling of the conv's *input*, an
    optional softmax over channels, then a dense (1x1 conv) map to one logit
    per output filter. A filter fires when its logit is > 0 (sigmoid > 0.5).

    With `input_padding`, the pooling skips a zero border of the input: in
    Keras a strided conv with PyTorch's symmetric padding is written as a
    `ZeroPadding2D` in front of a "valid" conv, and the official predictor
    pools the conv's *unpadded* input (PyTorch convs pad internally).
    `ftwt_keras.gate` sets it for convs fed by a `ZeroPadding2D`.

    With `rank`, the dense map is factored through `rank` channels
    (`pooled @ projection @ kernel + bias`), which is not in the paper: at
    batch size 1 (on a phone) a predictor is a matrix-vector product bound by
    reading its weights, and full predictors hold more weights than the
    network they gate (MobileNetV1: 1.8x). A rank at or above
    `min(input channels, units)` saves nothing and builds the full map.

    Args:
        units: number of output filters to gate.
        pooling: `"avg"` (official code, default) or `"max"` (paper figure).
        use_softmax: apply a softmax over the pooled channels (default True).
        rank: None (default, the paper's full map) or a positive int.
        input_padding: None (default) or `((top, bottom), (left, right))`
            rows and columns of zero padding at the input's edges that the
            pooling leaves out (as `keras.layers.ZeroPadding2D(padding)`).
        kernel_initializer: defaults to PyTorch's conv default,
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bias_initializer: `None` (default) means the same PyTorch default.

    Example:

    >>> import numpy as np
    >>> predictor = MaskPredictor(8)
    >>> tuple(predictor(np.ones((2, 4, 4, 3), "float32")).shape)
    (2, 8)
    """

    def __init__(
        self,
        units,
        pooling="avg",
        use_softmax=True,
        kernel_initializer=None,
        bias_initializer=None,
        rank=None,
        input_padding=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"`units` must be a positive int; got {units!r}.")
        self.rank = check_predictor_rank(rank)
        self.projection = None  # (channels, rank) once built, if factored
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}; got {pooling!r}.")
        self.units = units
        self.pooling = pooling
        self.use_softmax = bool(use_softmax)
        self.input_padding = check_input_padding(input_padding)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            or keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        )
        self.bias_initializer = (
            None if bias_initializer is None else keras.initializers.get(bias_initializer)
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("MaskPredictor needs a known number of input channels.")
        if self.input_padding is not None and len(input_shape) == 4:
            for size, (before, after), axis in zip(input_shape[1:3], self.input_padding, ("height", "width")):
                if size is not None and size <= before + after:
                    raise ValueError(
                        f"MaskPredictor '{self.name}': input {axis} {size} leaves nothing "
                        f"inside the padding {self.input_padding} to pool; check `input_padding`."
                    )
        bias_initializer = self.bias_initializer or keras.initializers.RandomUniform(
            -(channels**-0.5), channels**-0.5
        )
        self.projection = None
        inner = channels
        if self._factored(channels):
            inner = self.rank
            self.projection = self.add_weight(
                name="projection", shape=(channels, inner), initializer=self.kernel_initializer
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(inner, self.units), initializer=self.kernel_initializer
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=bias_initializer)

    def _factored(self, channels):
        """Whether the map from `channels` inputs goes through `rank` channels (only if cheaper)."""
        return self.rank is not None and self.rank < min(channels, self.units)

    def multiply_adds(self, channels):
        """Multiply-adds of the map from `channels` pooled inputs to the logits (per image)."""
        if self._factored(channels):
            return self.rank * (channels + self.units)
        return channels * self.units

    def pool(self, inputs):
        """Global pooling of channels-last `inputs` to `(batch, channels)`.

        The `input_padding` border is left out; a 2-D input is taken as
        already pooled.
        """
        if len(inputs.shape) == 2:
            return inputs
        if self.input_padding is not None:
            (top, bottom), (left, right) = self.input_padding
            inputs = inputs[:, top : -bottom or None, left : -right or None, :]
        return global_pool(inputs, self.pooling)

    def call(self, inputs):
        pooled = self.pool(inputs)
        if self.use_softmax:
            pooled = ops.softmax(pooled, axis=-1)
        if self.projection is not None:
            pooled = ops.matmul(pooled, self.projection)
        return ops.matmul(pooled, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            pooling=self.pooling,
            use_softmax=self.use_softmax,
            rank=self.rank,
            input_padding=self.input_padding,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=(
                None
                if self.bias_initializer is None
                else keras.initializers.serialize(self.bias_initializer)
            ),
        )
        return config


class GateRecord(NamedTuple):
    """What one call of a `GatedConv` reports to the active recorder."""

    layer: "GatedConv"
    logits: object  # (batch, filters) predictor logits
    mask: object  # (batch, filters) binary mask that was applied (logits > 0)
    target: Optional[object]  # (batch, filters) self-supervised target, if asked


class GateRecorder:
    """Collects the `GateRecord`s of the gated layers called inside its scope.

    Use through `record_gates`. Scopes are per thread (each replica of a
    `tf.distribute` strategy runs in its own thread) and nest: only the
    innermost recorder receives records.

    Args:
        targets: compute each layer's self-supervised target (costs a
            reduction and a sort per layer; training and evaluation need it).
        apply_masks: multiply outputs by the predicted masks. `False` runs the
            dense network (every filter computed), e.g. to read the targets of
            the unpruned model.
        threshold, target: compute the targets with this threshold / rule
            instead of each layer's own (None: the layer's).
    """

    _local = threading.local()

    def __init__(self, targets=False, apply_masks=True, threshold=None, target=None):
        self.targets = targets
        self.apply_masks = apply_masks
        self.threshold = None if threshold is None else masks.check_threshold(threshold)
        if target is not None and target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
        self.target = target
        self.records = []

    @classmethod
    def current(cls):
        stack = getattr(cls._local, "stack", None)
        return stack[-1] if stack else None

    def __enter__(self):
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(self)
        return self

    def __exit__(self, *exc_info):
        self._local.stack.pop()
        return False

    def by_layer_name(self):
        """Returns `{layer name: GateRecord}`; each layer must be called once."""
        records = {}
        for record in self.records:
            name = record.layer.name
            if name in records:
                raise ValueError(
                    f"Gated layer '{name}' was called more than once in one "
                    "forward pass; FTWT needs one gate per layer call. Use a "
                    "separate GatedConv for each call."
                )
            records[name] = record
        return records


def record_gates(targets=False, apply_masks=True, threshold=None, target=None):
    """Context manager collecting gate logits, masks (and targets) of a forward pass.

    Example:

    >>> import numpy as np
    >>> layer = GatedConv(keras.layers.Conv2D(4, 3, padding="same"))
    >>> with record_gates(targets=True) as recorder:
    ...     _ = layer(np.ones((1, 8, 8, 3), "float32"))
    >>> [tuple(r.mask.shape) for r in recorder.records]
    [(1, 4)]
    """
    return GateRecorder(targets, apply_masks, threshold, target)


def _is_linear(activation):
    return _name_of(activation) == "linear"


def _name_of(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def _deserialize_layer(layer):
    if layer is None or isinstance(layer, keras.layers.Layer):
        return layer
    return keras.saving.deserialize_keras_object(layer)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedConv(keras.layers.Layer):
    """A conv unit (conv -> batch norm -> activation) gated per sample by FTWT.

    The `MaskPredictor` reads the unit's input and predicts one logit per output
    filter; filters whose logit is <= 0 are zeroed in the output (in training
    too: the binary mask is a constant for the task loss, as in the paper).
    The self-supervised target is taken from the unit's dense output after
    batch norm and activation. In `"decoupled"` mode the predictor's input is
    a stop-gradient, so the gate loss cannot reach the backbone; in `"joint"`
    mode it can, scaled by `joint_gradient_scale`.

    With a ReLU or ReLU6 activation (and batch norm without renorm), an off
    filter is zeroed by shifting its pre-activation by `-OFF_SHIFT` rather than
    by multiplying the output by the mask: the same outputs, gradients and
    batch-norm statistics as `keras.layers.BatchNormalization` followed by the
    multiply, with one full-size multiply fewer in each of the forward and
    backward passes. Other activations are multiplied by the mask.

    Args:
        conv: a `keras.layers.Conv2D` (groups=1) or `DepthwiseConv2D`
            (depth_multiplier=1) layer, channels-last.
        batch_norm: optional `keras.layers.BatchNormalization` after the conv.
        activation: optional activation after batch norm (name or callable).
            A conv with an activation of its own (`Conv2D(..., activation=
            "relu")`) and neither of these: the unit takes it over, and the
            conv becomes linear (same outputs).
        threshold: float in (0, 1]: the heatmap mass to keep (`target="mass"`)
            or the fraction of filters kept (`target="uniform"`).
        target: `"mass"` (default) or `"uniform"`, see `ftwt_keras.masks`.
        mode: `"decoupled"` (default) or `"joint"`.
        pooling, use_softmax: passed to the `MaskPredictor`.
        predictor_rank: the `MaskPredictor`'s `rank` (None: the paper's full map).
        input_padding: None, or the `((top, bottom), (left, right))` zero
            border that a `ZeroPadding2D` directly in front of this unit added
            to its input: the predictor pools the input without it, like the
            official predictor, which sees the conv's unpadded input.
            `ftwt_keras.gate` sets it.
        joint_gradient_scale: joint mode only: factor applied to the gate-loss
            gradient that reaches the backbone through the predictor's pooled
            input (1.0, the default, is the paper's joint mode; 0.0 makes it
            decoupled). The forward pass and the predictor's own gradient do
            not change. The gate loss is summed over filters, so at 1.0 its
            gradient can dominate the task loss's (see README).
        capacity: None (default), or the most filters an image may keep on:
            of the filters whose logit is > 0, only the `capacity` with the
            largest logits stay on (in training too). A capped layer has a
            static worst case, so an edge export computes exactly `capacity`
            filters per image with no fallback for images that keep more
            (`ftwt_keras.cap_gates` sets capacities from images; see
            README, "Capped gates").

    Example:

    >>> import numpy as np
    >>> layer = GatedConv(
    ...     keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
    ...     keras.layers.BatchNormalization(),
    ...     activation="relu",
    ...     threshold=0.95,
    ... )
    >>> tuple(layer(np.ones((2, 8, 8, 3), "float32")).shape)
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        conv,
        batch_norm=None,
        activation=None,
        threshold=1.0,
        target="mass",
        mode="decoupled",
        pooling="avg",
        use_softmax=True,
        joint_gradient_scale=1.0,
        predictor_rank=None,
        input_padding=None,
        capacity=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        conv = _deserialize_layer(conv)
        batch_norm = _deserialize_layer(batch_norm)
        check_gateable_conv(conv)
        if batch_norm is not None and not isinstance(
            batch_norm, keras.layers.BatchNormalization
        ):
            raise ValueError(
                "`batch_norm` must be a keras.layers.BatchNormalization or None; "
                f"got {type(batch_norm).__name__}."
            )
        if batch_norm is not None and batch_norm.axis not in (-1, 3, [-1], [3]):
            raise ValueError(
                f"BatchNormalization '{batch_norm.name}' must normalize the last "
                f"(channels) axis; got axis={batch_norm.axis}."
            )
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        activation = keras.activations.get(activation)
        if not _is_linear(conv.activation):
            if batch_norm is not None or not _is_linear(activation):
                raise ValueError(
                    f"Conv '{conv.name}' has its own activation ('{_name_of(conv.activation)}') and a "
                    f"{'batch norm' if batch_norm is not None else 'unit activation'} after it: GatedConv "
                    "computes activation(batch_norm(conv(x))). Give the conv activation=None and pass "
                    "its activation as `activation=`, or gate the conv alone (ftwt_keras.gate does)."
                )
            # The unit's activation is the conv's own (as keras.applications.VGG16 writes its convs):
            # the conv becomes linear, so the unit stays activation(conv(x) + bias), as its export folds it.
            conv.activation, activation = keras.activations.linear, conv.activation
        self.conv = conv
        self.joint_gradient_scale = check_joint_gradient_scale(joint_gradient_scale)
        self.batch_norm = batch_norm
        self.activation = activation
        self.threshold = masks.check_threshold(threshold)
        self.target = target
        self.mode = mode
        self.pooling = pooling
        self.use_softmax = bool(use_softmax)
        self.predictor_rank = check_predictor_rank(predictor_rank)
        self.input_padding = check_input_padding(input_padding)
        self.capacity = check_capacity(capacity)
        # A depthwise conv has as many filters as input channels: its
        # predictor is made in build(), once they are known.
        self.predictor = None
        if not self.is_depthwise:
            self.predictor = self._make_predictor(conv.filters)

    def _make_predictor(self, units):
        return MaskPredictor(
            units,
            pooling=self.pooling,
            use_softmax=self.use_softmax,
            rank=self.predictor_rank,
            input_padding=self.input_padding,
            name="predictor",
        )

    @property
    def is_depthwise(self):
        return isinstance(self.conv, keras.layers.DepthwiseConv2D)

    @property
    def filters(self):
        """The number of output filters: one gate each.

        A depthwise conv has one filter per input channel, known once built.
        """
        if self.predictor is None:
            raise ValueError(
                f"GatedConv '{self.name}' wraps a depthwise conv, whose filter count is its "
                "number of input channels: build the layer (call it once) before asking."
            )
        return self.predictor.units

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"GatedConv '{self.name}' needs a known number of input channels.")
        if not self.conv.built:
            self.conv.build(input_shape)
        conv_shape = self.conv.compute_output_shape(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(conv_shape)
        if self.predictor is None:
            self.predictor = self._make_predictor(conv_shape[-1])
        if not self.predictor.built:
            self.predictor.build(input_shape)
        check_capacity(self.capacity, self.filters, self.name)

    def dense_outputs(self, inputs, training=None):
        """The unit's output with every filter computed (before gating)."""
        return self.activation(self._pre_activation(inputs, training))

    def _pre_activation(self, inputs, training):
        """Conv, then batch norm (TensorFlow's fused kernel in training, see
        `ftwt_keras.normalization`), with the moving statistics updated in training."""
        outputs = self.conv(inputs)
        if self.batch_norm is None:
            return outputs
        return normalization.batch_norm(self.batch_norm, outputs, training=training)

    def _mask(self, logits, dtype):
        """1.0 where a filter is on: logit > 0 and, with a `capacity`, among the top `capacity` logits."""
        on = logits > 0
        if self.capacity is not None and self.capacity < logits.shape[-1]:
            # The top-k's own indices, not `logits >= k-th largest`: with ties at
            # the k-th logit (likely in 16-bit logits) that kept more than k.
            # Among equal logits the lower index comes first (TensorFlow, JAX).
            top = ops.top_k(logits, self.capacity, sorted=False)[1]
            in_top = masks.scatter_rows(top, ops.ones_like(top), ops.shape(logits))
            on = ops.logical_and(on, in_top > 0)
        return ops.cast(on, dtype)

    def gate_logits(self, inputs):
        """Predictor logits; the input is a stop-gradient unless mode is joint."""
        if self.mode == "decoupled":
            return self.predictor(ops.stop_gradient(inputs))
        if self.joint_gradient_scale == 1.0:
            return self.predictor(inputs)
        # Scale after pooling: the (batch, channels) tensor is cheap to touch.
        pooled = self.predictor.pool(inputs)
        return self.predictor(scale_gradient(pooled, self.joint_gradient_scale))

    def _filter_scores(self, outputs):
        # Same as masks.filter_scores; after a ReLU the abs() pass over the
        # activations is skipped (it costs as much as the max itself).
        if self._relu_like:
            return global_pool(outputs, "max")
        return masks.filter_scores(outputs)

    @property
    def _relu_like(self):
        return getattr(self.activation, "__name__", None) in RELU_LIKE

    @property
    def _masks_through_shift(self):
        """Whether `call` can gate through the pre-activation shift (see there)."""
        return self._relu_like and (self.batch_norm is None or not self.batch_norm.renorm)

    def call(self, inputs, training=None):
        logits = self.gate_logits(inputs)
        recorder = GateRecorder.current()
        apply_masks = recorder is None or recorder.apply_masks
        if self._masks_through_shift:
            # ReLU-like activation: a filter is switched off by shifting its
            # pre-activation far below zero instead of multiplying the output
            # by the mask. Same outputs and gradients, one full-size multiply
            # fewer in the forward pass and one in the backward pass.
            pre_activation = self._pre_activation(inputs, training)
            mask = self._mask(logits, pre_activation.dtype)

            def dense_scores():
                # max over h, w of act(x) = act(max(x)): the dense output's
                # scores without computing the dense output.
                return self.activation(global_pool(ops.stop_gradient(pre_activation), "max"))

        else:
            outputs = self.dense_outputs(inputs, training=training)
            mask = self._mask(logits, outputs.dtype)

            def dense_scores():
                return self._filter_scores(ops.stop_gradient(outputs))

        if recorder is not None:
            target = None
            if recorder.targets:
                target = masks.target_mask(
                    dense_scores(),
                    recorder.threshold or self.threshold,
                    recorder.target or self.target,
                )
            recorder.records.append(GateRecord(self, logits, mask, target))
        if not self._masks_through_shift:
            return outputs * mask[:, None, None, :] if apply_masks else outputs
        if apply_masks:
            shift = off_shift(pre_activation.dtype)
            pre_activation = pre_activation + ((mask - 1.0) * shift)[:, None, None, :]
        return ops.cast(self.activation(pre_activation), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            conv=keras.saving.serialize_keras_object(self.conv),
            batch_norm=(
                None
                if self.batch_norm is None
                else keras.saving.serialize_keras_object(self.batch_norm)
            ),
            activation=keras.activations.serialize(self.activation),
            threshold=self.threshold,
            target=self.target,
            mode=self.mode,
            pooling=self.pooling,
            use_softmax=self.use_softmax,
            joint_gradient_scale=self.joint_gradient_scale,
            predictor_rank=self.predictor_rank,
            input_padding=self.input_padding,
            capacity=self.capacity,
        )
        return config


def scale_gradient(x, scale):
    """Identity in the forward pass; multiplies the gradient flowing back by `scale`.

    `stop_gradient(x) + scale * (x - stop_gradient(x))` equals `x` exactly (the
    difference is 0) and has gradient `scale`, on any Keras backend.
    """
    frozen = ops.stop_gradient(x)
    return frozen + scale * (x - frozen)


def check_joint_gradient_scale(scale):
    """Raises a `ValueError` unless `scale` is a number >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
        raise ValueError(
            "`joint_gradient_scale` must be a number >= 0 (1.0: the paper's joint "
            f"mode, 0.0: no gate-loss gradient into the backbone); got {scale!r}."
        )
    return float(scale)


def check_predictor_rank(rank):
    """Returns `rank` if it is None or a positive int, else raises a `ValueError`."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(
            f"The predictor rank must be None (full predictor) or a positive int; got {rank!r}."
        )
    return rank


def check_built_gated_conv(layer, function_name):
    """Raises unless `layer` is a built `GatedConv`; `function_name` is the caller, for the message."""
    if not isinstance(layer, GatedConv):
        raise TypeError(f"`{function_name}` takes a GatedConv; got {type(layer).__name__} '{getattr(layer, 'name', '')}'.")
    if not layer.built:
        raise ValueError(f"GatedConv '{layer.name}' is not built: call the model once first.")


def check_capacity(capacity, filters=None, layer_name=None):
    """None, or a positive int (at most `filters`, when given): the most filters a GatedConv keeps on per image."""
    if capacity is None:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
        raise ValueError(
            f"`capacity` must be None or a positive int (the most filters kept on per image); got {capacity!r}."
        )
    if filters is not None and capacity > filters:
        raise ValueError(
            f"GatedConv '{layer_name}' has {filters} filters; capacity {capacity} is more. "
            "Pass at most the filter count (or None for no cap)."
        )
    return int(capacity)


def check_input_padding(padding):
    """`padding` as `((top, bottom), (left, right))` ints >= 0, or None; else a `ValueError`.

    Accepts what `keras.layers.ZeroPadding2D` does: an int, a pair
    `(vertical, horizontal)`, or a pair of pairs (lists, as a saved config has them).
    """
    if padding is None:
        return None
    error = ValueError(
        "`input_padding` must be None, an int, (vertical, horizontal) or "
        f"((top, bottom), (left, right)) of ints >= 0; got {padding!r}."
    )

    def number(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise error
        return value

    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding, padding)
    if not isinstance(padding, (tuple, list)) or len(padding) != 2:
        raise error
    pairs = []
    for side in padding:
        if isinstance(side, (tuple, list)):
            if len(side) != 2:
                raise error
            pairs.append((number(side[0]), number(side[1])))
        else:
            pairs.append((number(side), number(side)))
    return tuple(pairs) if any(any(pair) for pair in pairs) else None


def check_gateable_conv(conv):
    """Raises a `ValueError` naming `conv` unless `GatedConv` can wrap it."""
    if type(conv) not in SUPPORTED_CONVS:
        raise ValueError(
            f"GatedConv can gate keras.layers.Conv2D or DepthwiseConv2D; layer "
            f"'{getattr(conv, 'name', conv)}' is a {type(conv).__name__}."
        )
    if conv.data_format != "channels_last":
        raise ValueError(
            f"Layer '{conv.name}' uses data_format='{conv.data_format}'; FTWT "
            "gates channels-last convs only. Rebuild the model channels-last."
        )
    if isinstance(conv, keras.layers.DepthwiseConv2D) and conv.depth_multiplier != 1:
        raise ValueError(
            f"DepthwiseConv2D '{conv.name}' has depth_multiplier="
            f"{conv.depth_multiplier}; only 1 can be gated."
        )
    if isinstance(conv, keras.layers.Conv2D) and conv.groups != 1:
        raise ValueError(
            f"Conv2D '{conv.name}' is grouped (groups={conv.groups}); grouped "
            "convs cannot be gated yet. Exclude it with `layers_to_gate`."
        )


__all__ = ["MaskPredictor", "GatedConv", "GateRecord", "GateRecorder", "record_gates"]
