"""`gate()`: turn a trained plain CNN into an FTWT model with the same weights."""

import fnmatch

import keras

from ftwt_keras import _graph, masks
from ftwt_keras.flops import ELEMENTWISE_ACTIVATION_LAYERS
from ftwt_keras.layers import (
    MODES,
    POOLINGS,
    SUPPORTED_CONVS,
    TARGETS,
    GatedConv,
    _is_linear,
    check_gateable_conv,
    check_joint_gradient_scale,
    check_predictor_rank,
)
from ftwt_keras.training import FTWTModel

_UNSUPPORTED_CONVS = (
    keras.layers.SeparableConv2D,
    keras.layers.Conv1D,
    keras.layers.Conv3D,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
)


def _copy_layer(layer):
    """A new layer with the same config and weights as `layer` (an operation that is no layer, as is)."""
    if not isinstance(layer, keras.layers.Layer):
        # `x + 3.0` on a symbolic tensor, as keras.applications.MobileNetV3 writes hard sigmoid:
        # a stateless keras.ops operation, shared safely.
        return layer
    copy = layer.__class__.from_config(layer.get_config())
    if layer.built:
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights())
    return copy


def _activation_of(layer):
    """The serializable activation computed by an activation layer, else None."""
    if isinstance(layer, keras.layers.Activation):
        return layer.activation
    if isinstance(layer, keras.layers.ReLU) and not layer.negative_slope and not layer.threshold:
        if layer.max_value is None:
            return "relu"
        if float(layer.max_value) == 6.0:
            return "relu6"
    return None


def _input_padding(node):
    """The zero border around a conv's input, if a `ZeroPadding2D` made that input."""
    producer = _graph.producers(node)[0]
    if isinstance(producer, keras.layers.ZeroPadding2D) and producer.data_format == "channels_last":
        return producer.padding
    return None


# Layers through which globally pooled features stay pooled (a (1, 1, C) map or a (C,) vector).
_KEEP_POOLED = (
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.Identity,
    keras.layers.BatchNormalization,
    keras.layers.Conv2D,
) + ELEMENTWISE_ACTIVATION_LAYERS


def _convs_on_pooled_features(nodes):
    """`id`s of the convs that read globally pooled features, through shape-only layers.

    Such a conv is a classifier head (keras.applications.MobileNet's
    `conv_preds`) or a squeeze-and-excitation unit, not a feature map: a gate
    there would drop classes or excitation weights. `gate` leaves them dense.
    """
    pooled, convs = set(), set()
    for node in nodes.values():  # topological order
        layer = node.operation
        if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
            pooled.add(id(layer))
        elif isinstance(layer, _KEEP_POOLED) and all(id(p) in pooled for p in _graph.producers(node)):
            pooled.add(id(layer))
            if isinstance(layer, keras.layers.Conv2D):
                convs.add(id(layer))
    return convs


def _find_units(model, layers_to_gate):
    """Maps `id(conv)` to `(conv, batch_norm or None, activation layer or None,
    zero padding of its input or None)`."""
    nodes = _graph.layer_nodes(model)
    readers = _graph.consumers(model, nodes)
    heads = _convs_on_pooled_features(nodes)

    def sole_reader(layer):
        found = readers.get(id(layer), [])
        return found[0] if len(found) == 1 else None

    units = {}
    for node in nodes.values():
        layer = node.operation
        if isinstance(layer, GatedConv):
            raise ValueError(
                f"Layer '{layer.name}' is already a GatedConv: this model is "
                "already gated."
            )
        if isinstance(layer, keras.Model) and any(
            isinstance(sub, SUPPORTED_CONVS + _UNSUPPORTED_CONVS) for sub in layer._flatten_layers()
        ):
            raise ValueError(
                f"Layer '{layer.name}' is a nested model containing convs; gate() "
                "needs a flat model. Rebuild it without nesting, or gate the "
                "inner model first."
            )
        is_conv = isinstance(layer, SUPPORTED_CONVS + _UNSUPPORTED_CONVS)
        if not is_conv or id(layer) in heads or (layers_to_gate is not None and not layers_to_gate(layer)):
            continue
        if type(layer) not in SUPPORTED_CONVS:
            raise ValueError(
                f"Cannot gate layer '{layer.name}' ({type(layer).__name__}): FTWT "
                "gates Conv2D and DepthwiseConv2D only. Pass "
                "`layers_to_gate=lambda layer: ...` to leave it dense."
            )
        try:
            check_gateable_conv(layer)
        except ValueError as error:
            raise ValueError(f"Cannot gate layer '{layer.name}': {error}") from None
        batch_norm = activation = None
        # A conv with an activation of its own (keras.applications.VGG16's) is a unit alone: GatedConv
        # takes its activation over; a batch norm or activation after it stays a plain layer.
        follower = sole_reader(layer) if _is_linear(layer.activation) else None
        if isinstance(follower, keras.layers.BatchNormalization) and follower.axis in (-1, 3, [-1], [3]):
            batch_norm = follower
            follower = sole_reader(batch_norm)
        if follower is not None and _activation_of(follower) is not None:
            activation = follower
        units[id(layer)] = (layer, batch_norm, activation, _input_padding(node))
    return units


def gate(
    model,
    threshold=1.0,
    mode="decoupled",
    target="mass",
    pooling="avg",
    use_softmax=True,
    layers_to_gate=None,
    joint_gradient_scale=1.0,
    predictor_rank=None,
):
    """Returns an `FTWTModel` computing `model` with every conv unit gated.

    Each `Conv2D` / `DepthwiseConv2D` becomes a `GatedConv`, fused with the
    `BatchNormalization` and activation layer that directly follow it (as in
    FTWT: the target is read after BN and activation; a conv followed by BN and
    a residual `Add`, like ResNet's second conv, is gated before the add). A
    conv with an activation of its own (`Conv2D(..., activation="relu")`, as
    in `keras.applications.VGG16`) is a unit by itself: a batch norm or
    activation after it stays a plain layer. A
    conv whose input comes from a `ZeroPadding2D` (PyTorch's symmetric padding
    of a strided conv, written the Keras way) gets that border as its
    `input_padding`: its predictor pools the unpadded input, as in FTWT. Convs
    on globally pooled features (a classifier head such as
    `keras.applications.MobileNet`'s `conv_preds`, squeeze-and-excitation
    units) are feature-map-free and stay plain layers. The
    weights are copied, so `model` is left untouched, and with every gate on
    the result computes exactly what `model` computes.

    Args:
        model: a built functional or Sequential Keras model (e.g. from
            `ftwt_keras.models`), typically trained.
        threshold: float in (0, 1], the heatmap mass kept by the targets.
        mode: `"decoupled"` (gate loss trains only the predictors) or `"joint"`.
        target: `"mass"` (default) or `"uniform"`.
        pooling, use_softmax: mask predictor options.
        layers_to_gate: optional `callable(layer) -> bool`; convs for which it
            returns False stay plain (dense) layers.
        joint_gradient_scale: joint mode only: factor on the gate-loss gradient
            reaching the backbone (1.0: the paper; see `GatedConv`).
        predictor_rank: None (the paper's full predictors) or an int: each
            predictor's map is factored through that many channels, for
            cheaper inference at batch size 1 (see `MaskPredictor`).

    Returns:
        An uncompiled `ftwt_keras.FTWTModel`.

    Raises:
        ValueError: for a bad argument, a subclassed model, or a conv layer
            that cannot be gated (the message names the layer).

    Example:

    >>> import ftwt_keras as fk
    >>> base = fk.models.resnet_cifar(depth=20)
    >>> model = fk.gate(base, threshold=0.95)
    >>> len(model.gated_layers)
    19
    """
    masks.check_threshold(threshold)
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}; got {target!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}; got {pooling!r}.")
    check_joint_gradient_scale(joint_gradient_scale)
    check_predictor_rank(predictor_rank)
    if layers_to_gate is not None and not callable(layers_to_gate):
        raise ValueError(
            f"`layers_to_gate` must be a callable(layer) -> bool; got a {type(layers_to_gate).__name__}. "
            "To gate only named convs: `layers_to_gate=lambda layer: layer.name in names`; to leave named convs "
            "dense: `layers_to_gate=ftwt_keras.gating.layers_except(model, names)`."
        )
    if isinstance(model, FTWTModel):
        raise ValueError(f"Model '{model.name}' is already an FTWTModel.")
    if not isinstance(model, keras.Model):
        raise ValueError(f"gate() expects a keras.Model; got {type(model).__name__}.")
    functional = _graph.as_functional(model)
    units = _find_units(functional, layers_to_gate)
    if not units:
        raise ValueError(
            f"Model '{model.name}' has no Conv2D or DepthwiseConv2D layer to gate."
        )
    fused = {}  # id(batch norm or activation layer) of a unit -> True
    for _, batch_norm, activation, _ in units.values():
        for layer in (batch_norm, activation):
            if layer is not None:
                fused[id(layer)] = True

    _FUSED = object()  # stands for a layer folded into the preceding GatedConv

    def clone_function(layer):
        if id(layer) in units:
            conv, batch_norm, activation, input_padding = units[id(layer)]
            return GatedConv(
                _copy_layer(conv),
                None if batch_norm is None else _copy_layer(batch_norm),
                activation=None if activation is None else _activation_of(activation),
                threshold=threshold,
                target=target,
                mode=mode,
                pooling=pooling,
                use_softmax=use_softmax,
                joint_gradient_scale=joint_gradient_scale,
                predictor_rank=predictor_rank,
                input_padding=input_padding,
                name=conv.name,
            )
        if id(layer) in fused:
            return _FUSED
        return _copy_layer(layer)

    def call_function(layer, *args, **kwargs):
        if layer is _FUSED:
            return args[0]
        return layer(*args, **kwargs)

    network = keras.models.clone_model(
        functional, clone_function=clone_function, call_function=call_function
    )
    return FTWTModel(network, name=f"{model.name}_ftwt")


def ungate(model, layer_names):
    """Turns the named `GatedConv` layers of `model` back into plain conv units.

    Each named gated layer becomes its conv, batch norm and activation as
    ordinary Keras layers (weights copied; its mask predictor is dropped), so
    it computes every filter for every image. The other gated layers, and
    everything else, are copied unchanged.

    The result is another model. On a model trained with its masks, removing
    gates that do switch filters off changes it a lot: the network learned to
    rely on those zeros (MobileNetV1 x0.25 on CIFAR-10 at r = 0.9: 72.2%
    top-1 gated, 17.4% with every gate removed; `benchmarks/ungated_accuracy.py`).
    It is harmless for gates that (almost) never switch a filter off, and
    useful to time or study a network gated at fewer layers; to ship fewer
    gates, train with fewer (`gate(..., layers_to_gate=...)`).

    Args:
        model: an `FTWTModel`.
        layer_names: names of gated layers to turn back into plain layers.

    Returns:
        An uncompiled `FTWTModel`, or the plain functional `keras.Model` when
        no gated layer is left.

    Raises:
        ValueError: `model` is not an FTWTModel, or a name is not one of its
            gated layers.

    Example:

    >>> import ftwt_keras as fk
    >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    >>> lean = fk.ungate(model, ["conv1", "block1_dw"])
    >>> len(lean.gated_layers)
    25
    """
    if not isinstance(model, FTWTModel):
        raise ValueError(f"ungate() expects an ftwt_keras.FTWTModel; got {type(model).__name__}.")
    gated = [layer.name for layer in model.gated_layers]
    names = {layer_names} if isinstance(layer_names, str) else set(layer_names)
    unknown = sorted(names - set(gated))
    if unknown:
        raise ValueError(f"{unknown} are not gated layers of '{model.name}'; its gated layers are {gated}.")

    class _PlainUnit:
        """Stands for an ungated GatedConv in `clone_model`: its conv, BN and activation layers."""

        def __init__(self, layer):
            self.layers = [_copy_layer(layer.conv)]
            if layer.batch_norm is not None:
                self.layers.append(_copy_layer(layer.batch_norm))
            activation = keras.activations.serialize(layer.activation)
            if getattr(layer.activation, "__name__", None) != "linear":
                name = getattr(layer.activation, "__name__", "activation")
                self.layers.append(keras.layers.Activation(activation, name=f"{layer.name}_{name}"))

    def clone_function(layer):
        if layer.name in names and isinstance(layer, GatedConv):
            return _PlainUnit(layer)
        return _copy_layer(layer)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, _PlainUnit):
            x = args[0]
            for sublayer in layer.layers:
                x = sublayer(x)
            return x
        return layer(*args, **kwargs)

    network = keras.models.clone_model(
        _graph.as_functional(model.network), clone_function=clone_function, call_function=call_function
    )
    if len(names) == len(gated):
        return network
    return FTWTModel(network, name=model.name)


def layers_except(model, patterns):
    """A `layers_to_gate` predicate that leaves the named convs of `model` dense.

    The paper gates every conv; leaving some plain is an option of this
    library, not in the paper. It does not buy accuracy by itself: on
    CIFAR-10, MobileNetV1 x0.25 with conv1 and block 1 dense lost 2.2 points
    more than with every conv gated at ~53% fewer MACs (docs/experiments.md,
    "Leaving the first convs dense"), since later layers must then prune
    harder; blocks 12-13 dense instead landed on the all-gated curve.

    Args:
        model: the plain model about to be gated; its conv layers' names
            check `patterns`.
        patterns: layer names or shell-style patterns (`fnmatch`, e.g.
            `"block1_*"`), a string or a list of them.

    Returns:
        `callable(layer) -> bool` for `gate(..., layers_to_gate=...)` and
        `estimate_flops_reduction(..., layers_to_gate=...)`.

    Raises:
        ValueError: a pattern matches none of `model`'s conv layers.

    Example:

    >>> import ftwt_keras as fk
    >>> base = fk.models.mobilenet_v1(alpha=0.25)
    >>> keep_dense = fk.gating.layers_except(base, ["conv1", "block1_*"])
    >>> len(fk.gate(base, layers_to_gate=keep_dense).gated_layers)
    24
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    convs = [layer.name for layer in model.layers if isinstance(layer, SUPPORTED_CONVS)]
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(convs, pattern)]
    if unmatched:
        raise ValueError(
            f"{unmatched} match no conv layer of '{model.name}'; its conv layers are {convs}. "
            "Give their names or patterns such as 'block1_*'."
        )
    return lambda layer: not any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in patterns)


__all__ = ["gate", "layers_except", "ungate"]
