"""Capped gates: at most a fixed number of filters on per image, for a static worst case.

FTWT's gates keep a number of filters that varies by image. An edge export
that computes only the active filters needs static shapes, so it must
provision each layer for the most filters any image keeps (plus a margin) and
recompute images beyond that dense. A capped `GatedConv` (`capacity`) keeps at
most `capacity` filters on, those with the largest logits, in Keras as in the
export: the compact layer then computes exactly that many filters for every
image, with no margin and no fallback. Capping below what some images keep
changes those images' outputs; measure the accuracy it costs (and fine-tune
with the caps set, they apply in training too).
"""

import math

from ftwt_keras import flops
from ftwt_keras.layers import check_capacity
from ftwt_keras.training import FTWTModel


def _check_ftwt_model(model):
    if not isinstance(model, FTWTModel):
        raise ValueError(f"Expected an ftwt_keras.FTWTModel; got {type(model).__name__}.")


def set_gate_capacities(model, capacities):
    """Sets the `capacity` of the named gated layers of `model` (None removes a cap).

    Args:
        model: an `FTWTModel`.
        capacities: `{gated layer name: int or None}`; layers not named keep theirs.

    Returns:
        `{gated layer name: capacity}` of every gated layer after the change.

    Raises:
        ValueError: `model` is not an FTWTModel, a name is not one of its
            gated layers, or a capacity is not a positive int up to the
            layer's filter count.
    """
    _check_ftwt_model(model)
    layers = {layer.name: layer for layer in model.gated_layers}
    unknown = sorted(set(capacities) - set(layers))
    if unknown:
        raise ValueError(f"{unknown} are not gated layers of '{model.name}'; its gated layers are {sorted(layers)}.")
    checked = {name: check_capacity(capacity, layers[name].filters, name) for name, capacity in capacities.items()}
    for name, capacity in checked.items():  # only once every one is valid
        layers[name].capacity = capacity
    # The compiled train / test / predict functions were traced with the old caps.
    model.train_function = model.test_function = model.predict_function = None
    return {name: layer.capacity for name, layer in layers.items()}


def cap_gates(model, images, ratio=1.0, layer_names=None, batch_size=128):
    """Caps gated layers at `ratio` times their mean number of active filters on `images`.

    The counts are taken with the caps of these layers removed, so calling it
    again with another ratio starts from the model's own gates.

    Args:
        model: an `FTWTModel`.
        images: raw images `(N, H, W, C)` like those the model will see
            (training images: a few hundred give stable means), or an
            iterable of batches.
        ratio: capacity / mean count, > 0 (each capacity is rounded up, at
            least 1 and at most the layer's filters). 1.0 caps a layer at
            what it keeps on average.
        layer_names: the gated layers to cap (default: every gated regular
            conv; a depthwise conv computes its input's channels, which the
            layer before it caps, so its own cap would change the model and
            save nothing).
        batch_size: images per forward pass when `images` is an array.

    Returns:
        `{gated layer name: capacity}` of every gated layer.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    >>> images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> capacities = fk.cap_gates(model, images, ratio=1.0)
    >>> counts = np.asarray(fk.flops.gate_masks_of(model, images)["block13_pw"]).sum(axis=1)
    >>> bool((counts <= capacities["block13_pw"]).all()), capacities["block13_dw"]  # depthwise: uncapped
    (True, None)
    """
    _check_ftwt_model(model)
    if not ratio > 0:
        raise ValueError(f"`ratio` must be > 0 (capacity / mean active filters); got {ratio!r}.")
    if layer_names is None:
        layer_names = [layer.name for layer in model.gated_layers if not layer.is_depthwise]
    names = list(layer_names)
    set_gate_capacities(model, {name: None for name in names})
    keeps = flops.keep_ratios(model, images, batch_size)
    filters = {layer.name: layer.filters for layer in model.gated_layers}
    capacities = {
        name: min(filters[name], max(1, math.ceil(ratio * keeps[name] * filters[name] - 1e-6))) for name in names
    }
    return set_gate_capacities(model, capacities)
