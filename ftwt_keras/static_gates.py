"""Gates whose decision is the same for every input, proven from the predictor's weights.

The official FTWT predictor applies a softmax to the pooled input before its
affine map, so its logits are `s @ M + b` with `s` on the probability simplex
(`M` = `kernel`, or `projection @ kernel` for a low-rank predictor). Each
logit therefore lies between the smallest and the largest entry of its
column of `M` (plus its bias), whatever the image. A gate whose whole range
is above 0 is on for every image, one whose range is at most 0 is off for
every image; an export can compute the first kind without a mask, drop the
second kind's filters, and run no predictor at all for a layer whose every
gate is decided. Without the softmax the pooled input is unbounded, and only
a predictor column of exact zeros (logit = bias) is decided.

The bounds are exact math; a margin covers float32 rounding, so a gate within
it of 0 is left to the predictor.
"""

from typing import NamedTuple

import keras
import numpy as np

from ftwt_keras.layers import GatedConv, check_built_gated_conv

# Decided only when the logit's range clears 0 by this fraction of the
# largest |weight| in its column (float32 sums of up to a few thousand terms
# are off by far less than 1e-3 of their terms' magnitude).
ROUNDING_MARGIN = 1e-3


class StaticGates(NamedTuple):
    """One gated layer's gates decided for every input.

    `always_on` and `always_off` are bool arrays of shape (filters,), never
    both true for a filter; a filter in neither is decided per image.
    """

    always_on: np.ndarray
    always_off: np.ndarray

    @property
    def all_decided(self):
        """Whether no gate of the layer needs its predictor."""
        return bool(np.all(self.always_on | self.always_off))

    @property
    def decided(self):
        """Number of gates decided for every input."""
        return int(np.sum(self.always_on | self.always_off))


def _predictor_map(predictor):
    """`(M, scale, b)` in float64: the predictor's logits are `pooled' @ M + b`.

    `scale` (filters,) bounds the magnitude of the float32 terms summed for
    each logit: max |M| per column, or for a low-rank predictor, computed as
    `(pooled' @ projection) @ kernel`, max of `|projection| @ |kernel|`
    (cancellation in the product does not cancel the rounding).
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(predictor.kernel), np.float64)
    bias = np.asarray(keras.ops.convert_to_numpy(predictor.bias), np.float64)
    if predictor.projection is None:
        return kernel, np.max(np.abs(kernel), axis=0), bias
    projection = np.asarray(keras.ops.convert_to_numpy(predictor.projection), np.float64)
    return projection @ kernel, np.max(np.abs(projection) @ np.abs(kernel), axis=0), bias


def static_gates(layer):
    """The gates of a built `GatedConv` that are on, or off, for every input.

    Args:
        layer: a built `ftwt_keras.GatedConv`.

    Returns:
        A `StaticGates`.

    Example:

    >>> import keras, numpy as np
    >>> from ftwt_keras import GatedConv
    >>> layer = GatedConv(keras.layers.Conv2D(4, 3, padding="same"))
    >>> _ = layer(np.zeros((1, 8, 8, 3), "float32"))
    >>> _ = layer.predictor.kernel.assign(np.zeros((3, 4), "float32"))
    >>> _ = layer.predictor.bias.assign(np.array([1.0, -1.0, 2.0, 0.0], "float32"))
    >>> gates = static_gates(layer)
    >>> gates.always_on.tolist(), gates.always_off.tolist()
    ([True, False, True, False], [False, True, False, True])
    """
    check_built_gated_conv(layer, "static_gates")
    predictor = layer.predictor
    weights, scale, bias = _predictor_map(predictor)
    margin = ROUNDING_MARGIN * scale + 1e-6 * np.abs(bias)
    if predictor.use_softmax:
        # The softmax output is a point of the simplex: a convex combination of the rows.
        low = np.min(weights, axis=0) + bias
        high = np.max(weights, axis=0) + bias
        always_on = low > margin
        always_off = high <= -margin
    else:
        constant = scale == 0.0  # an all-zero column: the logit is the bias exactly
        always_on = constant & (bias > 0)
        always_off = constant & (bias <= 0)
    capacity = layer.capacity
    if capacity is not None and capacity < layer.filters:
        # A gate that is never positive stays off under the cap. One that is
        # always positive stays on only if the cap can never drop it: when at
        # most `capacity` gates can ever be positive.
        if int(np.sum(~always_off)) > capacity:
            always_on = np.zeros_like(always_on)
    return StaticGates(always_on, always_off)


def decided_fraction(model):
    """The share of all of `model`'s gates (an `FTWTModel` or a network) that the weights decide for every input.

    Near 1 for input-blind predictors. 0.0 for a model without gates.
    """
    gates = static_gates_of(model).values()
    return sum(g.decided for g in gates) / max(1, sum(len(g.always_on) for g in gates))


def static_gates_of(model):
    """`{gated layer name: StaticGates}` for every `GatedConv` of `model` (an `FTWTModel` or a network)."""
    layers = getattr(model, "gated_layers", None)
    if layers is None:
        layers = [layer for layer in model.layers if isinstance(layer, GatedConv)]
    return {layer.name: static_gates(layer) for layer in layers}
