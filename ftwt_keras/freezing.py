"""Frozen gates: gates fixed on or off for every image, so that an export prunes them statically.

Many FTWT gates take the same decision on nearly every image: filters the
predictor always keeps, filters it (almost) never keeps. Each still costs a
predictor column at run time, and a filter that is always off is still
computed wherever the export computes its layer dense and masks it. Freezing
such a gate writes its decision into the predictor's weights: a zero column
and a bias of the decision's sign, so the logit is the bias for every image.
`ftwt_keras.static_gates` then proves the gate decided, and the edge export
(`ftwt_keras.export.convert`) drops its filter (off) or its mask (on), and the
layer's predictor altogether once every gate of the layer is frozen, while
computing the frozen model exactly.

Freezing changes the model on the images where a frozen gate would have
decided otherwise: measure its accuracy (and fine-tune the backbone with the
predictors frozen if it costs). Training the predictors again unfreezes the
gates (their columns get gradients).
"""

import keras
import numpy as np

from ftwt_keras import flops
from ftwt_keras.layers import check_built_gated_conv
from ftwt_keras.static_gates import StaticGates
from ftwt_keras.training import FTWTModel


def fix_gates(layer, always_on=None, always_off=None, logits=None):
    """Fixes gates of a built `GatedConv` on or off for every input, in place.

    Each fixed gate's predictor column is zeroed and its bias set, so its
    logit is that bias whatever the input: `logits[j]` where given (its sign
    must match the decision: > 0 on, <= 0 off), else +1 / -1. A capped layer
    still ranks its logits: give the typical logit of each gate to keep the
    ranking of a frozen gate among the others.

    Args:
        layer: a built `ftwt_keras.GatedConv`.
        always_on: bool array `(filters,)`, or indices: gates to fix on.
        always_off: likewise, gates to fix off (disjoint from `always_on`).
        logits: optional float array `(filters,)`: the fixed logit of each
            fixed gate (others ignored).

    Returns:
        `StaticGates(always_on, always_off)` of the gates fixed by this call.

    Raises:
        TypeError / ValueError: not a built GatedConv, overlapping gates, or a
            logit of the wrong sign.

    Example:

    >>> import keras, numpy as np
    >>> from ftwt_keras import GatedConv, static_gates
    >>> layer = GatedConv(keras.layers.Conv2D(4, 3, padding="same"), use_softmax=False)
    >>> _ = layer(np.zeros((1, 8, 8, 3), "float32"))
    >>> _ = fix_gates(layer, always_on=[0], always_off=[3])
    >>> gates = static_gates.static_gates(layer)
    >>> gates.always_on.tolist(), gates.always_off.tolist()
    ([True, False, False, False], [False, False, False, True])
    """
    check_built_gated_conv(layer, "fix_gates")
    on, off = (_gate_set(gates, layer, argument) for gates, argument in ((always_on, "always_on"),
                                                                        (always_off, "always_off")))
    if np.any(on & off):
        raise ValueError(f"Gates {np.flatnonzero(on & off).tolist()} of '{layer.name}' are both in `always_on` "
                         "and `always_off`; fix each gate one way.")
    values = np.where(on, 1.0, -1.0)
    if logits is not None:
        logits = np.asarray(logits, np.float64).reshape(-1)
        if logits.shape != (layer.filters,):
            raise ValueError(f"`logits` must have one value per filter of '{layer.name}' ({layer.filters}); "
                             f"got shape {logits.shape}.")
        wrong = (on & ~(logits > 0)) | (off & ~(logits <= 0))
        if np.any(wrong):
            raise ValueError(f"Gates {np.flatnonzero(wrong).tolist()} of '{layer.name}': a gate fixed on needs a "
                             "logit > 0 and one fixed off a logit <= 0.")
        values = logits
    fixed = on | off
    predictor = layer.predictor
    kernel = np.array(keras.ops.convert_to_numpy(predictor.kernel))
    bias = np.array(keras.ops.convert_to_numpy(predictor.bias))
    kernel[:, fixed] = 0.0  # low rank: `projection @ kernel` then has a zero column too
    bias[fixed] = values[fixed]
    predictor.kernel.assign(kernel)
    predictor.bias.assign(bias)
    return StaticGates(on, off)


def _gate_set(gates, layer, argument):
    """bool (filters,) from a bool mask or a list of indices (None: none)."""
    mask = np.zeros(layer.filters, bool)
    if gates is None:
        return mask
    gates = np.asarray(gates)
    if gates.dtype == bool:
        if gates.shape != (layer.filters,):
            raise ValueError(f"`{argument}` as a mask must have shape ({layer.filters},) for '{layer.name}'; "
                             f"got {gates.shape}.")
        return gates.copy()
    if gates.size and (not np.issubdtype(gates.dtype, np.integer) or gates.min() < 0
                       or gates.max() >= layer.filters):
        raise ValueError(f"`{argument}` must hold filter indices in [0, {layer.filters}) of '{layer.name}'; "
                         f"got {gates.tolist()}.")
    mask[gates.astype(int)] = True
    return mask


def gate_statistics(model, images, batch_size=128):
    """How often each gate of `model` is on over `images`, and its median logit.

    Args:
        model: an `FTWTModel`.
        images: array `(N, H, W, C)` or an iterable of batches (as `flops.dynamic_macs`).
        batch_size: used when `images` is an array.

    Returns:
        `{gated layer name: (on_rate, median_logit)}`, two float arrays of
        shape `(filters,)`, in the model's layer order.
    """
    def masks_and_logits(records):
        return {name: (record.mask, record.logits) for name, record in records.items()}

    on_counts, logits, seen = {}, {}, 0
    for batch_gates in flops.map_gate_records(model, images, masks_and_logits, batch_size=batch_size):
        for name, (mask, batch_logits) in batch_gates.items():
            on_counts[name] = on_counts.get(name, 0.0) + mask.sum(axis=0, dtype=np.float64)
            logits.setdefault(name, []).append(np.asarray(batch_logits, np.float32))
        seen += len(next(iter(batch_gates.values()))[0])
    if not seen:
        raise ValueError("`images` is empty: at least one image is needed to see what the gates decide.")
    order = [layer.name for layer in model.gated_layers if layer.name in on_counts]
    return {name: (on_counts[name] / seen, np.median(np.concatenate(logits[name]), axis=0)) for name in order}


def freeze_gates(model, images, min_agreement=0.99, layer_names=None, batch_size=128):
    """Freezes the gates that take one decision on at least `min_agreement` of `images`.

    A gate on for at least that share of the images is fixed on; one off for
    at least that share is fixed off (see `fix_gates`), its logit fixed at its
    median over the images. In a capped layer whose cap can still bind, gates
    always on stay with the predictor (the cap ranks their logits). All gates are
    judged on the model as given (freezing one layer's gates changes what later
    layers see only on the images where a frozen gate flips).

    Args:
        model: an `FTWTModel`.
        images: raw images `(N, H, W, C)` like those the model will see
            (training images; with N images a gate is judged in steps of
            1/N, so N = 2,000 resolves 0.999), or an iterable of batches.
        min_agreement: in [0.5, 1.0]. 1.0 freezes only gates constant on
            every image; 0.5 freezes every gate to its majority decision
            (a statically pruned network, without predictors).
        layer_names: the gated layers to freeze in (default: all).
        batch_size: images per forward pass when `images` is an array.

    Returns:
        `{gated layer name: StaticGates}` of the gates frozen, for each layer
        in `layer_names`.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    >>> frozen = fk.freeze_gates(model, images, min_agreement=0.5)  # every gate: a static network
    >>> fk.static_gates.decided_fraction(model)
    1.0
    """
    if not isinstance(model, FTWTModel):
        raise ValueError(f"Expected an ftwt_keras.FTWTModel; got {type(model).__name__}.")
    if not 0.5 <= min_agreement <= 1.0:
        raise ValueError(f"`min_agreement` must be in [0.5, 1.0] (the share of images a gate agrees on); "
                         f"got {min_agreement!r}.")
    layers = {layer.name: layer for layer in model.gated_layers}
    names = list(layers) if layer_names is None else list(layer_names)
    unknown = sorted(set(names) - set(layers))
    if unknown:
        raise ValueError(f"{unknown} are not gated layers of '{model.name}'; its gated layers are {sorted(layers)}.")
    agreement = gate_statistics(model, images, batch_size)
    frozen = {}
    for name in names:
        on_rate, median_logit = agreement[name]
        on = on_rate >= min_agreement
        off = ~on & (1.0 - on_rate >= min_agreement)
        capacity = layers[name].capacity
        if capacity is not None and int(np.sum(~off)) > capacity:
            # The cap can still drop a gate that is always positive; as in `static_gates`, such
            # gates stay with the predictor (a fixed logit would change the cap's ranking).
            on = np.zeros_like(on)
        # The median logit has the majority's sign, but a capped gate can be off with a positive logit.
        logits = np.where(on, np.maximum(median_logit, 1e-3), np.minimum(median_logit, 0.0))
        frozen[name] = fix_gates(layers[name], on, off, logits)
    return frozen
