"""Reading the layer graph of a functional Keras model (internal).

Keras 3 does not expose a public "who feeds whom" API; this module is the one
place that reads a functional model's nodes, so the rest of the package does
not depend on Keras internals.
"""

import keras


def as_functional(model):
    """Returns a functional model equivalent to `model` (same layer objects)."""
    if isinstance(model, keras.Sequential):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                f"Sequential model '{model.name}' has no defined input; start it "
                "with keras.Input(shape=...) or call it once on data."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not _is_functional(model):
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model, "
            "whose layer graph Keras cannot read. Build it with the functional "
            "API or keras.Sequential (the ftwt_keras.models zoo does)."
        )
    return model


def _is_functional(model):
    return hasattr(model, "_nodes_by_depth") and hasattr(model, "operations")


def model_nodes(model):
    """The model's nodes, in topological order (inputs first)."""
    depths = sorted(model._nodes_by_depth, reverse=True)
    return [node for depth in depths for node in model._nodes_by_depth[depth]]


def layer_nodes(model):
    """Maps each non-input layer of `model` to its single node in the model.

    Raises `ValueError` for a layer called more than once (shared layer).
    """
    nodes = {}
    for node in model_nodes(model):
        if node.is_input or node.operation is None:
            continue
        layer = node.operation
        if id(layer) in nodes:
            raise ValueError(
                f"Layer '{layer.name}' is called more than once in model "
                f"'{model.name}' (a shared layer); FTWT needs one gate per call."
            )
        nodes[id(layer)] = node
    return nodes


def call_operation(node, values):
    """Runs the keras.ops operation of `node` (`x + 3.0` on a symbolic tensor) on `values`, one per input tensor.

    Its other arguments (constants, keywords) live in the node, not in a layer's config.
    """
    args, kwargs = node.arguments.fill_in({id(tensor): value for tensor, value in zip(node.input_tensors, values)})
    return node.operation(*args, **kwargs)


def producers(node):
    """The layers whose outputs feed `node`, in argument order."""
    return [tensor._keras_history[0] for tensor in node.input_tensors]


def consumers(model, nodes):
    """Maps `id(layer)` to the list of layers of `model` reading its output."""
    readers = {key: [] for key in nodes}
    for node in nodes.values():
        for producer in producers(node):
            if id(producer) in readers:
                readers[id(producer)].append(node.operation)
    for tensor in model.outputs:
        producer = tensor._keras_history[0]
        if id(producer) in readers:
            readers[id(producer)].append(None)  # read by the model's output
    return readers


def in_float32(model):
    """`model`, or a float32 copy of it where any layer computes in another dtype.

    A model built under a mixed-precision policy (`mixed_float16`,
    `mixed_bfloat16`) keeps float32 weights but computes in 16 bits; the copy
    has the same layers, names and weights with every dtype policy, nested
    layers' included, set to float32.
    """
    config = model.get_config()
    float32_config = _with_float32_policies(config)
    if float32_config == config:
        return model
    copy = model.__class__.from_config(float32_config)
    copy.set_weights(model.get_weights())
    return copy


def _with_float32_policies(config):
    """`config` with each serialized `DTypePolicy` under a "dtype" key replaced by "float32"."""
    if isinstance(config, dict):
        return {
            key: "float32" if key == "dtype" and _is_dtype_policy(value) else _with_float32_policies(value)
            for key, value in config.items()
        }
    if isinstance(config, (list, tuple)):
        return type(config)(_with_float32_policies(value) for value in config)
    return config


def _is_dtype_policy(value):
    """A serialized floating-point policy other than float32 (quantized ones stay as they are)."""
    return (isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy")
            and value.get("config", {}).get("name") != "float32")
