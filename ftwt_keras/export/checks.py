"""What the TFLite exporter accepts: FTWT models, their layers and options, and its error type."""

import os

import keras

from ftwt_keras import _graph
from ftwt_keras.flops import ELEMENTWISE_ACTIVATION_LAYERS, ZERO_PRESERVING_LAYERS
from ftwt_keras.layers import GatedConv
from ftwt_keras.models import ChannelZeroPad
from ftwt_keras.training import FTWTModel


# Layer types the exporter knows how to compute (besides GatedConv).
# Zero-preserving ones run directly on compact activations. Operations that are
# not layers (`x + 3.0` on a symbolic tensor) run on dense tensors too; the
# converter refuses any without a builtin kernel.
_DENSE_ONLY = (
    keras.layers.InputLayer,
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dense,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,  # left dense: gate() cannot gate it
    keras.layers.BatchNormalization,
    keras.layers.Add,
    keras.layers.Multiply,
    keras.layers.Concatenate,
    keras.layers.PReLU,  # per-channel slopes: on dense inputs
    keras.layers.Softmax,
    ChannelZeroPad,
)
SUPPORTED_LAYERS = (GatedConv,) + ZERO_PRESERVING_LAYERS + ELEMENTWISE_ACTIVATION_LAYERS + _DENSE_ONLY


class ExportError(ValueError):
    """A model, file or option that the TFLite exporter cannot handle."""


def _tf():
    import tensorflow as tf

    return tf


def keras_runs_on_tensorflow():
    """Whether Keras runs on TensorFlow in this process, as the export (its graph is TensorFlow's) needs."""
    return keras.backend.backend() == "tensorflow"


def _check_backend():
    """Raises ExportError unless Keras runs on TensorFlow, which the export's graph is built with."""
    if not keras_runs_on_tensorflow():
        raise ExportError(
            f"The .tflite export traces a TensorFlow graph through the model's Keras layers, so it needs Keras's "
            f"TensorFlow backend; this process runs '{keras.backend.backend()}'. Export in a process started with "
            "KERAS_BACKEND=tensorflow (a model saved as .keras on any backend loads there); edge/convert.py "
            "runs on TensorFlow whatever KERAS_BACKEND says."
        )


def load_ftwt_model(path):
    """Loads a saved `FTWTModel` (`.keras` file), with errors that say what to do.

    Raises:
        ExportError: the file is missing, unreadable, or not an FTWT model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"Model file {path!r} does not exist. Pass the path of a saved .keras FTWT model.")
    if os.path.isdir(path) or not path.endswith(".keras"):
        raise ExportError(
            f"{path!r} is not a .keras file. Save the model with `model.save('name.keras')` and pass that file."
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # corrupt zip, unknown layer, ...
        raise ExportError(f"Could not load {path!r} as a Keras model: {error}") from None
    return check_ftwt_model(model)


def check_ftwt_model(model):
    """Returns `model` if it is an FTWTModel with a batch-1-exportable network."""
    if not isinstance(model, FTWTModel):
        raise ExportError(
            f"Expected an ftwt_keras.FTWTModel (made by ftwt_keras.gate); got "
            f"{type(model).__name__} '{getattr(model, 'name', '?')}'. Gate the model "
            "first: `model = ftwt_keras.gate(base_model)`."
        )
    network = _graph.as_functional(model.network)
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise ExportError(f"Model '{model.name}' must have exactly one input and one output.")
    shape = tuple(network.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise ExportError(
            f"Model '{model.name}' has input shape {shape}; the exporter needs a fixed "
            "(height, width, channels) input. Rebuild it with a fixed input_shape."
        )
    for layer in network.layers:
        if not isinstance(layer, SUPPORTED_LAYERS):
            raise ExportError(
                f"Layer '{layer.name}' ({type(layer).__name__}) is not supported by the "
                "FTWT TFLite exporter. Supported: GatedConv and "
                + ", ".join(sorted({cls.__name__ for cls in SUPPORTED_LAYERS if cls is not GatedConv}))
                + "."
            )
        if isinstance(layer, GatedConv):
            _check_gated(layer)
    return model


def _check_gated(layer):
    conv = layer.conv
    if tuple(conv.dilation_rate) != (1, 1):
        raise ExportError(f"GatedConv '{layer.name}' has dilation {conv.dilation_rate}; only 1 is supported.")
    if conv.padding not in ("same", "valid"):
        raise ExportError(f"GatedConv '{layer.name}' has padding {conv.padding!r}; use 'same' or 'valid'.")


WEIGHT_DTYPES = ("float32", "float16", "int8")


def _check_weight_dtype(weight_dtype):
    if weight_dtype not in WEIGHT_DTYPES:
        raise ExportError(
            f"`weight_dtype` must be one of {WEIGHT_DTYPES} (how the .tflite stores its weights); got {weight_dtype!r}."
        )


def _check_threads(num_threads):
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ExportError(f"`num_threads` must be a positive int (the interpreter's threads); got {num_threads!r}.")
