"""Export FTWT models to TFLite (LiteRT) with gather-based dynamic pruning.

`convert(model)` writes a batch-1 `.tflite` graph that, for every image,

1. runs each gated layer's mask predictor on the layer's input exactly as in
   Keras (global pool -> optional softmax -> matmul + bias -> logit > 0),
2. lists the active filters with `WHERE`, and
3. computes only those filters: the weights of the active filters are
   `GATHER`ed from constant tensors and the conv runs as a `BATCH_MATMUL`
   (a k x k conv as im2col + matmul, a depthwise conv as k*k shifted
   multiply-adds), so XNNPACK still runs the heavy matmuls.

Activations travel between layers in *compact* form: only the channels of
the producing gate's active filters are stored (`Compact.values`), with their
channel numbers (`Compact.channels`); every other channel is exactly zero.
Layers that map zero to zero (padding, pooling, ReLU, the zero-channel shortcut
pad of ResNet-CIFAR) run directly on the compact tensor; anything else
(residual `Add`, the classifier) first scatters it back to all channels.

Policy `"chain"` goes further along MobileNet blocks: a depthwise conv runs on
its input's compact channels (its off filters zeroed), so no activation is
gathered, and the batch-norm shift of a filter that is on over an off input
channel travels as a per-channel constant into the next 1x1 conv's bias. With
calibration images, compact layers have static capacities (`TOPK_V2` instead
of `WHERE`), so every shape is static and XNNPACK runs the whole graph; an image
with more active filters than some capacity is recomputed exactly by the
masked-dense network behind one builtin `IF`.

Where gathering costs more than it saves (a high keep ratio), a layer can run
dense instead: the layer's `policy` is `"auto"` (the default, chosen per
layer from timings on x86 XNNPACK), `"gather"`, `"chain"`, `"gather_inputs"`, `"dense"`,
or a float `cutoff`: at run time a builtin `IF` takes the dense branch when
the fraction of active filters exceeds `cutoff`. Batch norm is folded into the conv
weights (per-channel scale and shift), which is exact up to float32 rounding.

`convert(model, dynamic=False)` exports the ordinary dense network (same
weights, no predictors): what one would ship without FTWT.

Only TFLite builtin ops are emitted; conversion fails with `ExportError`
rather than falling back to Flex (Select TF) ops.
"""

import dataclasses
import functools
import inspect
import math
import os
from typing import Optional

import keras
import numpy as np

from ftwt_keras import _graph
from ftwt_keras.flops import ZERO_PRESERVING_LAYERS
from ftwt_keras.layers import GatedConv
from ftwt_keras.models import ChannelZeroPad
from ftwt_keras.static_gates import static_gates_of
from ftwt_keras.training import FTWTModel

# Layer types the exporter knows how to compute (besides GatedConv).
# Zero-preserving ones run directly on compact activations.
_DENSE_ONLY = (
    keras.layers.InputLayer,
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.Flatten,
    keras.layers.Dense,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.BatchNormalization,
    keras.layers.Add,
    keras.layers.Activation,
    keras.layers.ReLU,
    ChannelZeroPad,
)
SUPPORTED_LAYERS = (GatedConv,) + ZERO_PRESERVING_LAYERS + _DENSE_ONLY

POLICIES = ("gather", "gather_inputs", "chain", "dense", "auto")
# A compact layer's static capacity: the most filters any calibration image
# kept on, plus this many standard deviations of that count over the
# calibration images. The margin follows how much the layer's count varies
# (a fixed 5% of the filters before 2026-12-04). On the `make demo` model, 2
# stds left none of the 10,000 CIFAR-10 test images beyond a capacity (5% of
# the filters: 0.10%; 0 stds: 10.9%), at capacities 1.26x the mean count
# (`benchmarks/capacity_overflow.py`). An image beyond a capacity is still
# exact: the masked-dense network recomputes it.
CAPACITY_STDS = 2.0
# "auto" with calibration images: a regular conv computes only its active
# filters (compact output, static capacity) when its capacity is at most this
# fraction of its filters. `python benchmarks/edge_stages.py` (five MobileNetV1
# blocks at one resolution, x86 XNNPACK, 1 thread, 2026-12-03; dense / masked
# dense / chain): keep 0.5 (capacity 0.55): 56x56 8.4 / 9.5 / 7.9 ms, 28x28
# 9.1 / 9.9 / 6.4, 14x14 7.2 / 7.7 / 4.8, 7x7 8.5 / 9.0 / 8.8; keep 0.7
# (capacity 0.75): chain ties at 28x28 and 14x14 and loses at 56x56 (12.6 vs
# 10.1) and 7x7 (14.1 vs 9.1).
AUTO_CHAIN_CUTOFF = 0.6
# ... and up to this fraction where the conv's output has AUTO_CHAIN_MID_PIXELS
# (14x14 to 28x28 in MobileNetV1-224): on larger maps the chain's builtin
# depthwise kernel, on smaller ones its weight gathers cost more. The whole
# network at keep 0.5 with capacities 1.26x the count (0.63 of the filters),
# side by side, 2026-12-04 10:38-10:50: rank-64 predictors dense 14.18 ms,
# `auto` with 0.6 everywhere 13.97, with blocks 4-11's pointwise convs compact
# 13.50 (14x14 ones alone 13.94); full predictors 14.42 / 15.22 / 14.75.
AUTO_CHAIN_CUTOFF_MID = 0.7
AUTO_CHAIN_MID_PIXELS = (14 * 14, 28 * 28)
# "auto": a regular conv reads only its input's active channels when at most
# this fraction of them is on (else it runs dense).
AUTO_INPUT_CUTOFF = 0.5
# ... and has at least this many filters (gathering activations costs about as
# much as ~150 multiply-adds per element on x86 XNNPACK, so it pays only when
# each gathered input channel feeds many filters) ...
AUTO_MIN_FILTERS = 256
# ... and at least this many dense multiply-adds: gathering costs a fixed
# ~0.1-0.2 ms per layer (IF, WHERE, re-preparing dynamic shapes), more than a
# small layer can save. MobileNetV1 x1.0 at 32x32 (its >= 256-filter layers
# have <= 4.2M MACs), keep 0.3, 1 thread: 4.43 ms with the branches, 3.78 ms
# without; at 224x224 those layers have >= 25M MACs and the branches pay.
AUTO_MIN_MACS = 16_000_000
# ... and at least this many output pixels: on a smaller map a conv is bound by
# reading its weights (few multiply-adds per weight), which a gather reads and
# writes again. VGG16-bn at 32x32 (x86 XNNPACK, 1 thread, 2026-12-05, drawn
# masks, capacities 1.26x the count): its 3x3 convs on 4x4 maps took 0.89-2.32
# ms reading only their inputs' active channels at keep 0.5 against 0.56-0.98
# dense (the whole network 0.71x of dense), while those on 8x8 and 16x16 maps
# gained; MobileNetV1-224's smallest compacted maps (7x7) gain at keep 0.3.
AUTO_MIN_PIXELS = 7 * 7
# A k x k conv (k > 1, stride 1) that computes its active filters from a dense
# input does so as im2col + matmul on those filters (`_Builder.gathered`)
# where its output has this many pixels, and elsewhere computes every filter
# (XNNPACK, static weights), then gathers the active ones. ResNet-18 shapes,
# capacity 0.38 of the filters (x86 XNNPACK, 2026-12-05, dense-then-gathered
# vs im2col): 1 thread 56x56x64 2.52 vs 2.62 ms, 28x28x128 2.32 vs 1.79,
# 14x14x256 2.29 vs 1.62, 7x7x512 2.31 vs 1.97; 2 threads 1.35 vs 1.66, 1.23
# vs 0.98, 2.21 vs 0.90, 1.24 vs 1.39. Strided, the windows' builtin slices
# make im2col 1.7-4x slower than the dense conv.
AUTO_IM2COL_PIXELS = (14 * 14, 28 * 28)

# With more than one interpreter thread, XNNPACK splits the dense convs across
# the threads while the builtin GATHER, TOPK_V2 and depthwise kernels of the
# compact path run on one: compacting pays at lower keep ratios only, and
# `convert(..., num_threads=2)` (and `paying_gates`) use these cutoffs instead
# of AUTO_CHAIN_CUTOFF(_MID) and AUTO_INPUT_CUTOFF. Drawn masks, capacities
# 1.26x the count, rank-16 predictors, the network gated only where gates pay
# by the 1-thread / these cutoffs, timed with 2 threads side by side
# (2026-12-05 03:32-03:33, 2 loops): keep 0.3 MobileNetV1-224 1.10-1.12x /
# 1.14-1.15x, VGG16-bn at 32x32 1.07x / 1.07x of dense; keep 0.4 0.85x (a
# noisy loop: 0.54x) / 1.00-1.02x (no gate pays) and 0.93-0.94x / 0.99x;
# with 0.5 and 0.4 here (03:29-03:31), keep 0.4 still lost 2-5% (capacities
# 0.50 of the filters compacted) and keep 0.5 tied (no gate paid).
AUTO_MULTITHREAD_CHAIN_CUTOFF = 0.4
AUTO_MULTITHREAD_INPUT_CUTOFF = 0.35

# A layer whose weights decide at least this fraction of its gates for every
# input (`ftwt_keras.static_gates`) computes its on and undecided filters
# only, without per-image compaction (`_Builder.static_unit`); below it, the
# per-image paths above choose.
STATIC_MIN_DECIDED = 0.5


class ExportError(ValueError):
    """A model, file or option that the TFLite exporter cannot handle."""


def _tf():
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------
# Loading and checking inputs
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Folded constants of one gated layer
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Compact activations
# --------------------------------------------------------------------------


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
    computed as ceil(clip(logit, 0, 1)) rather than CAST(GREATER): MINIMUM,
    RELU and CEIL are XNNPACK ops, so the masking stays inside the delegate's
    partitions (MobileNetV1 x0.25 at 32x32 with every layer masked dense:
    0.66 -> 0.54 ms). It broadcasts against NHWC activations as is; `row` is
    the same as (filters,). All are built here, outside any `tf.cond` branch
    that may read them. With a
    `capacity` (a capped GatedConv), only the filters among the `capacity`
    largest logits stay on, as in Keras.
    """

    def __init__(self, logits, capacity=None):
        tf = _tf()
        self.on = logits > 0
        self.values = tf.math.ceil(tf.clip_by_value(logits, 0.0, 1.0))
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


# --------------------------------------------------------------------------
# The graph builder
# --------------------------------------------------------------------------


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


def _same_padding(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _padded(values, layer):
    """Applies the conv's 'same' padding explicitly (no-op for 'valid')."""
    tf = _tf()
    conv = layer.conv
    if conv.padding == "valid":
        return values
    (kh, kw), (sh, sw) = conv.kernel_size, conv.strides
    top, bottom = _same_padding(int(values.shape[1]), kh, sh)
    left, right = _same_padding(int(values.shape[2]), kw, sw)
    if top == bottom == left == right == 0:
        return values
    return tf.pad(values, [[0, 0], [top, bottom], [left, right], [0, 0]])


def _shifted_windows(padded, layer, out_h, out_w):
    """The kh*kw strided views of `padded` that a conv's taps read, in (dy, dx) order."""
    (kh, kw), (sh, sw) = layer.conv.kernel_size, layer.conv.strides
    views = []
    for dy in range(kh):
        for dx in range(kw):
            views.append(padded[:, dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw, :])
    return views


def _dead_filters(network, static):
    """`{gated regular conv name: bool (filters,)}`: filters whose outputs nothing reads.

    A depthwise conv whose gates the weights decide entirely (`static`, no
    predictor reading its input) outputs zero on its always-off channels
    whatever its input, so when it is the only reader of a regular conv with
    static gates (directly or through zero padding), that conv's filters
    feeding those channels need not be computed. Capped producers are left
    alone (their cap ranks every undecided logit).
    """
    nodes = _graph.layer_nodes(network)
    readers = _graph.consumers(network, nodes)
    dead = {}
    for node in nodes.values():
        layer = node.operation
        gates = static.get(layer.name)
        if not (isinstance(layer, GatedConv) and layer.is_depthwise and gates is not None and gates.all_decided):
            continue
        reader, producer = layer, _graph.producers(node)[0]
        while isinstance(producer, keras.layers.ZeroPadding2D) and readers.get(id(producer)) == [reader]:
            reader, producer = producer, _graph.producers(nodes[id(producer)])[0]
        if (isinstance(producer, GatedConv) and not producer.is_depthwise and producer.name in static
                and producer.capacity is None and readers.get(id(producer)) == [reader]):
            dead[producer.name] = np.asarray(gates.always_off, bool)
    return dead


class _Builder:
    """Emits the TF ops of one network, layer by layer (inside a tf.function)."""

    def __init__(self, network, dynamic, policies, conv_macs, with_predictors=False, calibration=None,
                 static_gates=True, num_threads=1):
        self.network = network
        self.num_threads = num_threads  # the interpreter threads `auto` chooses for
        self.dynamic = dynamic
        self.policies = policies
        self.conv_macs = conv_macs  # {gated layer name: dense multiply-adds of its conv}
        # {gated layer name: mean fraction of active filters / static capacity} on calibration images.
        self.keep_ratios = calibration.keep_ratios if calibration else {}
        self.capacities = _compact_capacities(network, calibration)
        self.with_predictors = with_predictors
        self.overflows = []  # bool scalars: an image has more active filters than a layer's capacity
        self.gate_logits = []  # predictor logits of a dense export `with_predictors`
        # Read every weight eagerly, before tracing (variables have no numpy() in a graph).
        self.folded = {}
        self.predictors = {}
        # {name: (trainable, non-trainable) numpy values} of the other layers with weights: see `plain_call`.
        self.plain_weights = {}
        for layer in network.layers:
            if isinstance(layer, GatedConv):
                self.folded[layer.name] = fold_batch_norm(layer)
                predictor = layer.predictor
                projection = None if predictor.projection is None else _numpy(predictor.projection)
                self.predictors[layer.name] = (projection, _numpy(predictor.kernel), _numpy(predictor.bias))
            elif layer.weights:
                self.plain_weights[layer.name] = tuple(
                    [keras.ops.convert_to_numpy(v) for v in variables]
                    for variables in (layer.trainable_variables, layer.non_trainable_variables)
                )
        # {gated layer name: StaticGates} for layers whose weights decide at least
        # STATIC_MIN_DECIDED of their gates (`ftwt_keras.static_gates`): see `static_unit`.
        self.static = _statically_pruned(network) if dynamic and static_gates else {}
        self.dead = _dead_filters(network, self.static)

    def exact_builder(self):
        """A builder of the same network, every layer masked dense: exact for any image."""
        exact = _Builder.__new__(_Builder)
        exact.__dict__.update(self.__dict__)  # the same folded weights, read before tracing
        exact.policies = {name: "dense" for name in self.policies}
        exact.keep_ratios, exact.capacities, exact.overflows, exact.gate_logits = {}, {}, [], []
        return exact

    def unit(self, layer):
        return self.folded[layer.name]

    def __call__(self, images, stop_at=None):
        tf = _tf()
        tensors = {id(self.network.inputs[0]): _dense(images)}
        for node in _graph.model_nodes(self.network):
            if node.is_input or node.operation is None:
                continue
            inputs = [tensors[id(t)] for t in node.input_tensors]
            out = tensors[id(node.outputs[0])] = self.layer(node.operation, inputs)
            if node.operation.name == stop_at:
                # A profiling aid: the network up to this layer, reduced to one number
                # (its compact or dense values, and uniform channels, all still computed).
                total = tf.reduce_sum(out.values)
                if out.constants is not None:
                    total += tf.reduce_sum(out.constants)
                return tf.reshape(total, [1])  # (batch,), as `run` reads outputs
        result = tensors[id(self.network.outputs[0])].dense()
        if self.overflows:
            # An image with more active filters than some compact layer holds
            # (beyond what calibration saw): the exact masked-dense network instead.
            exact = self.exact_builder()
            overflow = tf.reduce_any(tf.stack(self.overflows))
            result = tf.cond(overflow, lambda: exact(images), lambda: result)
        result = tf.identity(result, name="logits")
        if self.gate_logits:
            return result, tf.concat(self.gate_logits, axis=-1, name="gate_logits")
        return result

    # -- one layer ----------------------------------------------------------

    def layer(self, layer, inputs):
        tf = _tf()
        if isinstance(layer, GatedConv):
            return self.gated(layer, inputs[0])
        # Only gated convs read the uniform channels of a Compact in place.
        inputs = [x.without_constants() for x in inputs]
        if isinstance(layer, ZERO_PRESERVING_LAYERS):
            x = inputs[0]
            out = Compact(layer(x.values, training=False), x.channels, x.width, x._positions, x.support,
                          x.expected_keep)
            if isinstance(layer, keras.layers.ZeroPadding2D):
                out.unpadded = (x.values, tuple(tuple(side) for side in layer.padding))
            return out
        if isinstance(layer, ChannelZeroPad):
            x = inputs[0]
            keep = None if x.expected_keep is None else x.expected_keep * x.width / (x.width + layer.pad)
            if x.is_dense:
                channels = tf.range(x.width, dtype=tf.int32)
                return Compact(x.values, channels, x.width + layer.pad, expected_keep=keep)
            return Compact(x.values, x.channels, x.width + layer.pad, expected_keep=keep)
        if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU)) and _keeps_zero(layer):
            x = inputs[0]
            return Compact(layer(x.values), x.channels, x.width, x._positions, x.support, x.expected_keep)
        if isinstance(layer, keras.layers.Add):
            return _dense(tf.add_n([x.dense() for x in inputs]) if len(inputs) > 1 else inputs[0].dense())
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and layer.data_format != "channels_last":
            raise ExportError(f"Layer '{layer.name}' must be channels_last.")
        return _dense(self.plain_call(layer, inputs[0].dense()))

    def plain_call(self, layer, values):
        """`layer(values)` in inference mode, its weights constants of the graph being traced.

        Read as variables, the weights of a layer used in an `IF` branch (the
        overflow fallback) enter the branch as run-time inputs: the `.tflite`
        then stores them twice (the trained VGG16-bn gated at conv2-conv7:
        113 MB against 59 dense), and XNNPACK does not take that branch's
        convs. As constants, the converter stores identical ones once.
        """
        weights = self.plain_weights.get(layer.name)
        if weights is None:
            return layer(values, training=False)
        tf = _tf()
        trainable, non_trainable = ([tf.constant(array) for array in arrays] for arrays in weights)
        # Unlike `__call__`, `stateless_call` passes `training` on only to a `call` that takes it.
        kwargs = {"training": False} if "training" in inspect.signature(layer.call).parameters else {}
        outputs, _ = layer.stateless_call(trainable, non_trainable, values, **kwargs)
        return outputs

    def gated(self, layer, x):
        out = self._gated(layer, x)
        out.expected_keep = self.keep_ratios.get(layer.name)
        return out

    def _gated(self, layer, x):
        unit = self.unit(layer)
        activation = _activation_fn(layer)
        if not self.dynamic:
            if self.with_predictors:
                self.gate_logits.append(self.predictor_logits(layer, x))
            return _dense(self.dense_unit(unit, activation, x.dense()))
        if layer.name in self.static:
            return self.static_unit(unit, activation, x, self.static[layer.name])
        tf = _tf()
        logits = self.predictor_logits(layer, x)  # (1, filters)
        mask = _GateMask(logits, layer.capacity)
        if not unit.is_depthwise:
            unit, x = self.narrowed(unit, x)
        policy = self.policies.get(layer.name, "auto")
        if policy == "auto":
            policy = self.auto_policy(unit, x)
        if policy == "chain":
            capacity = self.capacities.get(layer.name)
            if unit.is_depthwise:
                return self.chained_depthwise(unit, activation, x, mask)
            if (x.is_dense and unit.layer.conv.kernel_size != (1, 1) and capacity is not None
                    and not _im2col_pays(unit.layer, self.conv_macs)):
                return self.dense_then_selected(unit, activation, x, mask, capacity)
            return self.gathered(unit, activation, x, mask, capacity)
        if policy == "gather_inputs" and not unit.is_depthwise:
            return self.gathered_inputs(unit, activation, x, mask)
        x = x.without_constants()
        if policy in ("dense", "gather_inputs"):
            return self.masked_dense(unit, activation, x, mask)
        if policy == "gather":
            return self.gathered(unit, activation, x, mask)
        if isinstance(policy, str) and policy.startswith("inputs<"):
            if unit.is_depthwise:  # its inputs are its filters: nothing to compact on the input side
                return self.masked_dense(unit, activation, x, mask)
            return self.inputs_or_dense(unit, activation, x, mask, float(policy[len("inputs<"):]))
        # A float cutoff: choose at run time (builtin IF).
        if not x.is_dense:
            x.positions()  # computed outside the branches, which both read it
        active = tf.reduce_sum(tf.cast(mask.on, tf.int32))
        limit = int(math.floor(float(policy) * unit.filters))

        def dense_branch():
            out = self.masked_dense(unit, activation, x, mask)
            return out.values, tf.range(unit.filters, dtype=tf.int32)

        def gather_branch():
            out = self.gathered(unit, activation, x, mask)
            return out.values, out.channels

        values, channels = tf.cond(active > limit, dense_branch, gather_branch)
        return Compact(values, channels, unit.filters)

    def auto_policy(self, unit, x):
        """The default per-layer choice (from timings of MobileNetV1 on x86 XNNPACK).

        With calibration images, a regular conv with at least `AUTO_MIN_MACS`
        multiply-adds and `AUTO_MIN_PIXELS` output pixels whose capacity is
        at most `AUTO_CHAIN_CUTOFF` of its filters (`AUTO_CHAIN_CUTOFF_MID` on
        14x14 to 28x28 outputs) computes only its active filters (`"chain"`:
        compact output, static shapes, so XNNPACK runs its matmul), and a
        depthwise conv on such a compact input stays compact (`"chain"`:
        putting the channels back costs more than its builtin kernel). A
        regular conv on a compact input that does not pay to compact reads
        only the present channels (`"gather_inputs"`). Otherwise, as before
        calibration existed: a large regular conv (`AUTO_MIN_FILTERS`,
        `AUTO_MIN_MACS`, `AUTO_MIN_PIXELS`) reads only its input's non-zero
        channels when at most `AUTO_INPUT_CUTOFF` of them are on (from the
        calibration keep ratio, or per image with a builtin IF, ~0.2 ms per
        layer at 224x224, without calibration), and every other layer runs
        dense, then masked. For more than one interpreter thread the
        `AUTO_MULTITHREAD_*` cutoffs replace the chain and input cutoffs.
        """
        name = unit.layer.name
        if unit.is_depthwise:
            return "chain" if not x.is_dense else "dense"
        capacity = self.capacities.get(name)
        if capacity is not None and _chains(unit.layer, self.conv_macs, capacity, self.num_threads):
            return "chain"
        if not x.is_dense:
            return "gather_inputs"
        if x.support is None or not _may_gather_inputs(unit.layer, self.conv_macs):
            return "dense"
        cutoff = _input_cutoff(self.num_threads)
        if x.expected_keep is not None:
            return "gather_inputs" if x.expected_keep <= cutoff else "dense"
        return f"inputs<{cutoff}"

    def inputs_or_dense(self, unit, activation, x, mask, cutoff):
        """Run-time choice (builtin IF): gathered inputs when few input channels are on, else dense."""
        tf = _tf()
        if not x.is_dense:
            x.positions()
        # Count the input's non-zero channels without gathering them: the
        # gather belongs to the branch that uses it (at a high keep ratio the
        # dense branch runs, and an activation gather there is pure waste).
        channels = x.channels if not x.is_dense else x.support
        limit = int(math.floor(cutoff * x.width))
        count = tf.shape(channels)[0]

        def gathered_branch():
            values, kept = x.compact()
            return self.gathered_inputs(unit, activation, Compact(values, kept, x.width, x._positions), mask).values

        y = tf.cond(
            count <= limit,
            gathered_branch,
            lambda: self.masked_dense(unit, activation, x, mask).values,
        )
        y = tf.ensure_shape(y, [1, *y.shape[1:3], unit.filters]) if y.shape.rank == 4 else y
        support = _active_channels(mask.on[0])
        return Compact(y, None, unit.filters, support=support)

    def predictor_logits(self, layer, x, columns=None):
        """(1, filters) logits of `layer`'s predictor on `x`; with `columns` (ints), only those filters'."""
        tf = _tf()
        predictor = layer.predictor
        values = x.values
        scaled = x.scaled if predictor.input_padding is None else None
        if scaled is not None:  # pool before the deferred masks: per channel, they commute with it
            values = scaled[0]
        if predictor.input_padding is not None:  # pool the unpadded input, as Keras
            if x.unpadded is not None and x.unpadded[1] == predictor.input_padding:
                values = x.unpadded[0]
            else:
                (top, bottom), (left, right) = predictor.input_padding
                values = values[:, top : -bottom or None, left : -right or None, :]
        if predictor.pooling == "max":
            pooled = tf.reduce_max(values, axis=[1, 2])
        else:
            pooled = tf.reduce_mean(values, axis=[1, 2])
        if scaled is not None:
            pooled = pooled * scaled[1] if scaled[2] is None else pooled * scaled[1] + scaled[2]
        projection, kernel, bias = self.predictors[layer.name]
        present = _static_channels(x)
        if present is not None:
            # Channels known at export: the absent ones' pooled values are
            # constants, appended after the present ones, and the weights' rows
            # put in that order (a CONCATENATION, which XNNPACK runs, instead
            # of a GATHER, which it does not; the softmax does not mind the order).
            absent = np.setdiff1d(np.arange(x.width), present)
            order = np.concatenate([present, absent])
            if absent.size:
                pooled = tf.concat([pooled, tf.constant(_static_constants(x)[absent][None])], axis=-1)
            if projection is not None:
                projection = projection[order]
            else:
                kernel = kernel[order]
        elif not x.is_dense:  # absent channels pool to exactly zero, or to their uniform value
            pooled = tf.gather(_with_zero_channel(pooled), x.positions(), axis=-1)
            if x.constants is not None:
                pooled = pooled + x.constants
        if predictor.use_softmax:
            pooled = tf.nn.softmax(pooled, axis=-1)
        if projection is not None:  # a low-rank predictor
            pooled = tf.matmul(pooled, tf.constant(projection))
        if columns is not None:
            kernel, bias = kernel[:, columns], bias[columns]
        return tf.matmul(pooled, tf.constant(np.ascontiguousarray(kernel))) + tf.constant(bias)

    def narrowed(self, unit, x):
        """A regular conv's unit and input, its kernel cut to the input's channels when they are static.

        Absent channels are zero or uniform: a 1x1 conv adds their uniform
        values times the weights to its bias; a larger one, where padding
        makes that vary, takes them dense (unchanged).
        """
        present = _static_channels(x)
        if present is None:
            return unit, x
        constants = _static_constants(x)
        (kh, kw) = unit.layer.conv.kernel_size
        bias = unit.bias
        if np.any(constants != 0):
            if (kh, kw) != (1, 1):
                return unit, x
            bias = (bias + constants.astype(np.float64) @ unit.kernel[0, 0].astype(np.float64)).astype(np.float32)
        kernel = np.ascontiguousarray(unit.kernel[:, :, present, :])
        return FoldedUnit(unit.layer, kernel, bias), _dense(x.values)

    def static_unit(self, unit, activation, x, gates):
        """A layer most of whose gates its weights decide (`ftwt_keras.static_gates`).

        Its always-off filters are never computed, its always-on ones never
        masked, and its predictor, if any gate is left, computes only the
        logits of those (the others' columns dropped at export); with none
        left, it runs no predictor at all. A regular conv computes the on
        and the undecided filters, in that order, with a kernel cut at export
        (also to the input's static channels), and outputs them as an
        activation with static channels; a depthwise conv zeroes its off
        filters in the kernel (see `static_depthwise`). A regular conv also
        skips the filters that only a fully decided depthwise conv's
        always-off channels read (`_dead_filters`).
        """
        tf = _tf()
        layer = unit.layer
        live = ~self.dead.get(layer.name, np.zeros(len(gates.always_on), bool))  # see `_dead_filters`
        on = np.flatnonzero(gates.always_on & live)
        undecided = np.flatnonzero(~(gates.always_on | gates.always_off) & live)
        gate_d = None  # (1, |undecided|) float 0/1: the undecided gates' decisions for this image
        if undecided.size:
            logits = self.predictor_logits(layer, x, columns=undecided)
            capacity = layer.capacity
            # A capped layer with undecided gates has none decided on (see
            # `static_gates`): its cap ranks exactly the undecided logits.
            gate_d = _GateMask(logits, capacity if capacity is not None and capacity < undecided.size else None).values
        if unit.is_depthwise:
            return self.static_depthwise(unit, activation, x, gates.always_on, undecided, gate_d)
        filters = unit.filters
        unit, x = self.narrowed(unit, x)
        values = x.dense()
        order = np.concatenate([on, undecided])
        if gate_d is None and np.array_equal(order, np.arange(filters)):
            return _dense(self.dense_unit(unit, activation, values))
        if not order.size:  # every gate off: channel 0 carries zeros (XNNPACK runs no zero-size tensor)
            y = tf.zeros([1, *_output_hw(layer, values), 1], tf.float32)
            return Compact(y, tf.constant([0], tf.int32), filters)
        kept = FoldedUnit(layer, np.ascontiguousarray(unit.kernel[..., order]), unit.bias[order])
        y = self.dense_unit(kept, activation, values)
        if gate_d is not None:
            y = y * tf.concat([tf.ones([1, on.size], tf.float32), gate_d], axis=-1)
        return Compact(y, tf.constant(order.astype(np.int32)), filters)

    def static_depthwise(self, unit, activation, x, always_on, undecided, gate_d):
        """A depthwise conv with static gates: off filters zeroed in the kernel (activation(0) = 0).

        On an input with static channels it runs on those channels only, as
        they lie (no gather); an on filter over an absent channel outputs the
        uniform activation(bias), carried as `Compact.constants`. Undecided
        filters (`gate_d`, in the order of `undecided`) multiply their
        channels at run time; their 0/1 values reach each channel through a
        constant 0/1 matrix (FULLY_CONNECTED, which XNNPACK runs, where a
        GATHER would split its partition).
        """
        tf = _tf()
        layer = unit.layer
        filters = unit.filters
        known = always_on.astype(np.float32)  # 1 on, 0 off or undecided
        may = known.copy()
        may[undecided] = 1.0  # filters that may be on

        def gate_row(channels):
            """(1, len(channels)) float: each channel's gate for this image (constant where decided)."""
            row = tf.constant(known[channels][None])
            if gate_d is None:
                return row, False
            spread = (undecided[:, None] == channels[None, :]).astype(np.float32)  # (|undecided|, channels)
            if not spread.any():
                return row, False
            return row + tf.matmul(gate_d, tf.constant(spread)), True

        if not _keeps_zero(layer.activation):
            row, _ = gate_row(np.arange(filters))
            return self.masked_dense(unit, activation, x.without_constants(), _GateMask(row * 2.0 - 1.0))
        present = _static_channels(x)
        strides, padding = [1, *layer.conv.strides, 1], layer.conv.padding.upper()
        if present is not None and not np.any(_static_constants(x) != 0):
            kernel = unit.kernel[:, :, present, :] * may[present][None, None, :, None]
            bias = unit.bias[present] * may[present]
            y = tf.nn.depthwise_conv2d(x.values, tf.constant(kernel), strides, padding)
            y = activation(tf.nn.bias_add(y, tf.constant(bias)))
            row, dynamic = gate_row(present)
            if dynamic:
                y = y * row
            absent = np.ones(filters, bool)
            absent[present] = False
            constants = None
            uniform = unit.zero_input_output * absent  # what an on filter over an absent channel outputs
            if np.any(uniform * may != 0):
                every, dynamic = gate_row(np.arange(filters))
                # Constant when decided, so that consumers still see static channels.
                constants = tf.reshape(every * tf.constant(uniform), [filters]) if dynamic else tf.constant(known * uniform)
            return Compact(y, x.channels, filters, x._positions, constants=constants)
        kernel = unit.kernel * may[None, None, :, None]
        y = tf.nn.depthwise_conv2d(x.dense(), tf.constant(kernel), strides, padding)
        y = activation(tf.nn.bias_add(y, tf.constant(unit.bias * may)))
        row, dynamic = gate_row(np.arange(filters))
        if dynamic:
            y = y * row
        support = np.flatnonzero(may)
        support = support if support.size else np.zeros(1, np.int64)
        return Compact(y, None, filters, support=tf.constant(support.astype(np.int32)))

    def dense_unit(self, unit, activation, values):
        """activation(conv(values) + bias) with all filters, constant weights."""
        tf = _tf()
        conv = unit.layer.conv
        strides = [1, *conv.strides, 1]
        padding = conv.padding.upper()
        if unit.is_depthwise:
            y = tf.nn.depthwise_conv2d(values, tf.constant(unit.kernel), strides, padding)
        else:
            y = tf.nn.conv2d(values, tf.constant(unit.kernel), strides, padding)
        return activation(tf.nn.bias_add(y, tf.constant(unit.bias)))

    def masked_dense(self, unit, activation, x, mask):
        """All filters computed on the dense input, then masked (the multiply deferred: `Compact.scaled`).

        A depthwise conv takes its input's deferred masks along: on a channel
        scaled by 0 it outputs `activation(bias)` everywhere, the offset.
        """
        tf = _tf()
        support = _active_channels(mask.on[0])
        gate = mask.row
        if unit.is_depthwise and x.is_dense and x.scaled is not None and x.scaled[2] is None:
            raw, scale, _ = x.scaled
            y = self.dense_unit(unit, activation, raw)
            offset = None
            if np.any(unit.zero_input_output != 0):
                offset = tf.constant(unit.zero_input_output) * (1.0 - scale) * gate
            scale = scale * gate
        else:
            y = self.dense_unit(unit, activation, x.dense())
            scale, offset = gate, None
        values = y * scale if offset is None else y * scale + offset
        return Compact(values, None, unit.filters, support=support, scaled=(y, scale, offset))

    def gathered_inputs(self, unit, activation, x, mask):
        """A regular conv reading only the input's non-zero channels; all filters, masked.

        Output keeps the dense layout (static shape), so no scatter is needed
        downstream; only the input side is compacted.
        """
        tf = _tf()
        layer = unit.layer
        (kh, kw) = layer.conv.kernel_size
        bias = tf.constant(unit.bias)
        if x.constants is not None:
            if (kh, kw) == (1, 1):  # each uniform input channel adds weight * value
                bias = bias + tf.linalg.matvec(tf.constant(unit.kernel[0, 0].T.copy()), x.constants)
            else:  # padding makes a uniform channel's contribution vary
                x = x.without_constants()
        values, channels = x.compact()
        out_h, out_w = _output_hw(layer, x.values)
        weights = tf.constant(unit.kernel.reshape(kh * kw, -1, unit.filters))  # (kh*kw, C_in, C_out)
        if channels is not None:
            weights = tf.gather(weights, channels, axis=1)
        k_in = _size(values, -1)
        weights = tf.reshape(weights, [1, kh * kw * k_in, unit.filters])
        if (kh, kw) == (1, 1) and tuple(layer.conv.strides) == (1, 1):
            columns = values
        else:
            columns = tf.concat(_shifted_windows(_padded(values, layer), layer, out_h, out_w), axis=-1)
        columns = tf.reshape(columns, [1, out_h * out_w, kh * kw * k_in])
        y = activation(tf.linalg.matmul(columns, weights) + bias)
        y = tf.reshape(y, [1, out_h, out_w, unit.filters]) * mask.values
        support = _active_channels(mask.on[0])
        return Compact(y, None, unit.filters, support=support)

    def top_channels(self, unit, mask, capacity):
        """int32 (capacity,): the active filters first, then off ones (static shape, no WHERE).

        Exact while at most `capacity` filters are on; the image's overflow
        flag sends it to the exact path otherwise. A layer capped at no more
        than `capacity` cannot overflow: no flag.
        """
        tf = _tf()
        if mask.top is not None and capacity == unit.layer.capacity:
            return mask.top  # the cap's own TOPK_V2 already holds every on filter
        if unit.layer.capacity is None or unit.layer.capacity > capacity:
            self.overflows.append(tf.reduce_sum(mask.values) > capacity)
        return tf.math.top_k(mask.row, k=capacity).indices

    def dense_then_selected(self, unit, activation, x, mask, capacity):
        """A k x k conv on a dense input computed dense (XNNPACK), then its active channels gathered.

        Cheaper than im2col for a strided conv (a stem's: its shifted views run
        on slow builtin kernels) and on maps outside `AUTO_IM2COL_PIXELS`.
        """
        tf = _tf()
        active = self.top_channels(unit, mask, capacity)
        y = self.dense_unit(unit, activation, x.values) * mask.values
        return Compact(tf.gather(y, active, axis=-1), active, unit.filters)

    def chained_depthwise(self, unit, activation, x, mask):
        """A depthwise conv on its input's compact channels, without gathering activations.

        The filters of the input's present channels are gathered and those of
        the gate's off filters zeroed, so the output keeps the input's channel
        list. A filter that is on over an absent input channel outputs
        activation(bias) everywhere (batch norm's shift): that uniform value is
        carried in `Compact.constants`, which the next 1x1 conv folds into its
        bias. Falls back to `masked_dense` on a dense input.
        """
        tf = _tf()
        layer = unit.layer
        if x.is_dense or x.constants is not None or not _keeps_zero(layer.activation):
            return self.masked_dense(unit, activation, x.without_constants(), mask)
        (kh, kw) = layer.conv.kernel_size
        on = tf.gather(mask.row, x.channels)  # the gate's decisions on the present channels
        taps = tf.gather(tf.constant(unit.kernel.reshape(kh * kw, unit.filters)), x.channels, axis=1) * on
        bias = tf.gather(tf.constant(unit.bias), x.channels) * on
        if x.values.shape[-1] is not None:
            kernel = tf.reshape(taps, [kh, kw, -1, 1])
            y = tf.nn.depthwise_conv2d(x.values, kernel, [1, *layer.conv.strides, 1], layer.conv.padding.upper())
        else:
            # Shifted multiply-adds: DEPTHWISE_CONV_2D cannot take a filter with a run-time channel count.
            out_h, out_w = _output_hw(layer, x.values)
            windows = _shifted_windows(_padded(x.values, layer), layer, out_h, out_w)
            y = tf.add_n([window * taps[i] for i, window in enumerate(windows)])
        constants = None
        if np.any(unit.zero_input_output != 0):  # else every such channel is zero: nothing to carry
            absent = tf.cast(tf.equal(x.positions(), 0), tf.float32)
            constants = tf.constant(unit.zero_input_output) * mask.row * absent
        return Compact(activation(y + bias), x.channels, unit.filters, x._positions, constants=constants)

    def gathered(self, unit, activation, x, mask, capacity=None):
        """Computes only the active filters; returns a Compact on them."""
        tf = _tf()
        active = _active_channels(mask.on[0]) if capacity is None else self.top_channels(unit, mask, capacity)
        layer = unit.layer
        (kh, kw) = layer.conv.kernel_size
        if x.constants is not None and (unit.is_depthwise or (kh, kw) != (1, 1)):
            x = x.without_constants()  # padding makes a uniform channel's contribution vary
        bias = tf.gather(tf.constant(unit.bias), active)
        on = tf.gather(mask.row, active)  # 1s, or [0] when all are off
        if unit.is_depthwise:
            values = _padded(x.select(active), layer)
            out_h, out_w = _output_hw(layer, x.values)
            taps = tf.constant(unit.kernel.reshape(kh * kw, unit.filters))
            taps = tf.gather(taps, active, axis=1)  # (kh*kw, k_out)
            windows = _shifted_windows(values, layer, out_h, out_w)
            y = tf.add_n([w * taps[i] for i, w in enumerate(windows)])
            return Compact(activation(y + bias) * on, active, unit.filters)
        # Regular conv: (C_out, kh*kw, C_in) so that active filters are contiguous rows.
        weights = tf.constant(np.ascontiguousarray(unit.kernel.reshape(kh * kw, -1, unit.filters).transpose(2, 0, 1)))
        weights = tf.gather(weights, active)  # (k_out, kh*kw, C_in)
        k_in = _size(x.values, -1)
        k_out = _size(active, 0)
        taps = kh * kw
        values = x.values
        if x.is_dense:
            if x.scaled is not None and (x.scaled[2] is None or taps == 1):
                # The input's deferred masks scale the weights' input side (a 1x1
                # conv's offsets go into its bias): the activation is never multiplied.
                values, scale, offset = x.scaled
                if offset is not None:
                    bias = bias + tf.linalg.matvec(tf.reshape(weights, [k_out, -1]), offset)
                weights = weights * scale
            # Rank 3 from the start: slicing a batch axis on or off would copy the activation.
            weights = tf.reshape(weights, [1, k_out, taps * k_in])
            adjoint = True
        else:
            # Input channels as rows too: a GATHER along the last axis copies element by
            # element (~4 ns each: 0.4 ms for 308 x 308 weights), one along the first copies
            # whole rows; the TRANSPOSE in between is one pass over the gathered rows.
            if x.constants is not None:  # a 1x1 conv: each uniform channel adds weight * value
                # On the (k_out, C_in) rows, before the transpose: FULLY_CONNECTED reads
                # them as they lie (after it, the 7x7x1024 stage of benchmarks/edge_stages.py
                # took 7.1 ms instead of 6.3).
                bias = bias + tf.linalg.matvec(tf.reshape(weights, [k_out, -1]), x.constants)
            weights = tf.transpose(weights, [2, 1, 0])  # (C_in, kh*kw, k_out)
            weights = tf.gather(weights, x.channels)  # (k_in, kh*kw, k_out)
            if taps > 1:  # columns hold tap-major windows
                weights = tf.transpose(weights, [1, 0, 2])
            weights = tf.reshape(weights, [1, taps * k_in, k_out])
            adjoint = False
        out_h, out_w = _output_hw(layer, x.values)
        # Zero the off slots (capacity beyond the image's active filters) in
        # the weights rather than in the output when the weights are the
        # smaller tensor (input side narrower than the output's pixels: every
        # layer above 7x7 in MobileNetV1-224); activation(0) must be 0.
        fold_on = isinstance(k_in, int) and taps * k_in < out_h * out_w and _keeps_zero(layer.activation)
        if fold_on:
            weights = weights * (on[None, :, None] if adjoint else on[None, None, :])
            bias = bias * on
        if (kh, kw) == (1, 1) and tuple(layer.conv.strides) == (1, 1):
            columns = values
        else:
            columns = tf.concat(_shifted_windows(_padded(values, layer), layer, out_h, out_w), axis=-1)
        columns = tf.reshape(columns, [1, out_h * out_w, taps * k_in])
        # Rank-3 matmul -> BATCH_MATMUL, which XNNPACK runs with run-time weights.
        y = activation(tf.linalg.matmul(columns, weights, adjoint_b=adjoint) + bias)
        if not fold_on:
            y = y * on
        return Compact(tf.reshape(y, [1, out_h, out_w, k_out]), active, unit.filters)


def _compact_capacities(network, calibration):
    """`{gated layer name: capacity}`: what a compact layer computes per image.

    The calibrated capacity, or the layer's own cap (`GatedConv.capacity`)
    when that is smaller or there is no calibration: a capped layer never
    keeps more, so it needs no margin and no calibration images.
    """
    calibrated = calibration.capacities if calibration is not None else {}
    capacities = {}
    for layer in network.layers:
        if not isinstance(layer, GatedConv):
            continue
        candidates = [c for c in (calibrated.get(layer.name), layer.capacity) if c is not None]
        if candidates:
            capacities[layer.name] = min(candidates)
    return capacities


def _conv_macs(model):
    """`{gated layer name: dense multiply-adds of its conv}` (predictors excluded)."""
    return {term.layer_name: term.dense_macs for term in model.mac_terms if term.kind != "predictor"}


def _chains(layer, conv_macs, capacity, num_threads=1):
    """Whether `auto` computes regular GatedConv `layer` on its active filters only ("chain"), for `num_threads`."""
    macs = conv_macs[layer.name]
    pixels = _output_pixels(layer, conv_macs)
    if macs < AUTO_MIN_MACS or pixels < AUTO_MIN_PIXELS:
        return False
    filters = layer.conv.filters
    low, high = AUTO_CHAIN_MID_PIXELS
    if num_threads > 1:
        cutoff = AUTO_MULTITHREAD_CHAIN_CUTOFF
    else:
        cutoff = AUTO_CHAIN_CUTOFF_MID if low <= pixels <= high else AUTO_CHAIN_CUTOFF
    return capacity <= cutoff * filters


def _input_cutoff(num_threads):
    """The largest input keep ratio at which `auto` reads only a large conv's present input channels."""
    return AUTO_MULTITHREAD_INPUT_CUTOFF if num_threads > 1 else AUTO_INPUT_CUTOFF


def _check_threads(num_threads):
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ExportError(f"`num_threads` must be a positive int (the interpreter's threads); got {num_threads!r}.")


def _may_gather_inputs(layer, conv_macs):
    """Whether `auto` may compute GatedConv `layer` from its input's non-zero channels only.

    Not for depthwise convs (no fast kernel over a run-time channel set) nor
    for layers with fewer than `AUTO_MIN_FILTERS` filters, `AUTO_MIN_MACS`
    multiply-adds or `AUTO_MIN_PIXELS` output pixels (gathering costs more
    than they can save).
    """
    if layer.is_depthwise:
        return False
    return (layer.conv.filters >= AUTO_MIN_FILTERS and conv_macs[layer.name] >= AUTO_MIN_MACS
            and _output_pixels(layer, conv_macs) >= AUTO_MIN_PIXELS)


def _im2col_pays(layer, conv_macs):
    """Whether regular k x k GatedConv `layer` computes its active filters on a dense input by im2col.

    Else it computes every filter, then gathers the active ones
    (`AUTO_IM2COL_PIXELS`).
    """
    low, high = AUTO_IM2COL_PIXELS
    return tuple(layer.conv.strides) == (1, 1) and low <= _output_pixels(layer, conv_macs) <= high


def _output_pixels(layer, conv_macs):
    """Output pixels of regular GatedConv `layer` (from its dense multiply-adds)."""
    kernel_h, kernel_w, inputs, filters = layer.conv.kernel.shape
    return conv_macs[layer.name] // (kernel_h * kernel_w * inputs * filters)


def paying_gates(model, calibration_images=None, calibration=None, num_threads=1):
    """The gated layers whose masks the calibrated `auto` export turns into skipped work.

    The `auto` export (with these calibration images, see
    `_Builder.auto_policy`) computes only the active filters of a large
    regular conv whose capacity is at most `AUTO_CHAIN_CUTOFF` of its
    filters (`AUTO_CHAIN_CUTOFF_MID` on mid-size outputs), and the
    depthwise convs that read its compact output; those gates pay. It also
    reads only the non-zero input channels of a large
    regular conv when its input comes, through zero-preserving layers, from
    a gate that keeps at most `AUTO_INPUT_CUTOFF` of its filters on these
    images; that producing gate pays, and the conv stays gated, since that
    is how the export computes it. Every other gate
    only adds its predictor and a mask multiply to the `.tflite` (on x86
    XNNPACK: ~1-2 ms over MobileNetV1-224, most of the time at 32x32). A
    model gated at these layers only (`gate(base, layers_to_gate=...)`, then
    trained) exports without that overhead; removing gates from a model
    trained with them (`ftwt_keras.ungate`) gives another model, which can
    lose most of its accuracy (see there). To choose before training, pass
    the calibration of the dense baseline's targets (the recipes'
    `--gate_only_paying`):

    >>> import ftwt_keras as fk, numpy as np
    >>> base = fk.models.vgg16_bn()   # trained, in practice
    >>> images = np.random.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> gated = fk.gate(base, threshold=0.3, target="uniform")
    >>> paying = paying_gates(gated, calibration=calibrate(gated, images, targets=True))
    >>> paying
    ['conv2', 'conv3', 'conv4', 'conv5', 'conv6', 'conv7']
    >>> model = fk.gate(base, threshold=0.3, target="uniform", layers_to_gate=lambda layer: layer.name in paying)

    Args:
        model: an `ftwt_keras.FTWTModel`.
        calibration_images: `(N, H, W, C)` raw images like those the model
            will see (as for `convert`).
        calibration: instead of `calibration_images`, the `Calibration` the
            export will use (e.g. `calibrate(...).with_capacity_ratio(...)`):
            which layers compact depends on its capacities.
        num_threads: the interpreter threads the export is for (as
            `convert`): with more than one, compacting pays at lower keep
            ratios only (`AUTO_MULTITHREAD_CHAIN_CUTOFF`, `..._INPUT_CUTOFF`).

    Returns:
        The names of the paying gated layers, in the network's order (empty
        when no gate pays: then no gated export of this network is faster
        than its dense one on such a CPU).
    """
    from ftwt_keras import flops

    check_ftwt_model(model)
    _check_threads(num_threads)
    network = _graph.as_functional(model.network)
    calibration = _calibration_of(model, calibration_images, calibration)
    if calibration is None:
        raise ExportError("`paying_gates` needs `calibration_images` or a `calibration`: which gates pay depends on them.")
    keeps = calibration.keep_ratios
    capacities = _compact_capacities(network, calibration)
    conv_macs = _conv_macs(model)
    # id(tensor) -> (gated layer, expected fraction of non-zero channels, compact)
    # for a tensor that is zero outside the active filters of that gate;
    # compact: `auto` carries it with only those channels (a "chain").
    sources = {}
    paying = set()
    for node in _graph.model_nodes(network):
        if node.is_input or node.operation is None:
            continue
        layer = node.operation
        source = sources.get(id(node.input_tensors[0])) if len(node.input_tensors) == 1 else None
        compact_input = source is not None and source[2]
        out = None
        if isinstance(layer, GatedConv):
            chains = not layer.is_depthwise and _chains(layer, conv_macs, capacities[layer.name], num_threads)
            if chains or (layer.is_depthwise and compact_input):
                paying.add(layer.name)  # computes only its active filters / its input's channels
                out = (layer.name, keeps[layer.name], True)
            else:
                if (not compact_input and source is not None and source[1] <= _input_cutoff(num_threads)
                        and _may_gather_inputs(layer, conv_macs)):
                    paying.update((source[0], layer.name))
                out = (layer.name, keeps[layer.name], False)
        elif source is not None and (
            isinstance(layer, ZERO_PRESERVING_LAYERS)
            or (isinstance(layer, (keras.layers.Activation, keras.layers.ReLU)) and _keeps_zero(layer))
        ):
            out = source
        elif source is not None and isinstance(layer, ChannelZeroPad):
            width = int(node.input_tensors[0].shape[-1])
            out = (source[0], source[1] * width / (width + layer.pad), source[2])
        sources[id(node.outputs[0])] = out
    return [layer.name for layer in model.gated_layers if layer.name in paying]


def _statically_pruned(network):
    """`{gated layer name: StaticGates}` of the layers whose weights decide at least `STATIC_MIN_DECIDED` of their gates."""
    return {name: gates for name, gates in static_gates_of(network).items()
            if gates.decided >= STATIC_MIN_DECIDED * len(gates.always_on)}


def statically_pruned_layers(model):
    """The gated layers that the export (`static_gates=True`) prunes by their predictors' weights.

    In each, the gates that the weights decide for every input
    (`ftwt_keras.static_gates`) cost nothing: off filters are dropped, on
    ones computed without a predictor column. Needs at least
    `STATIC_MIN_DECIDED` of a layer's gates decided. Does not depend on
    images, unlike `paying_gates`.

    >>> import ftwt_keras as fk
    >>> model = set_keep_ratio(fk.gate(fk.models.mobilenet_v1(alpha=0.25)), keep=0.5)
    >>> statically_pruned_layers(model) == [layer.name for layer in model.gated_layers]  # fixed masks
    True

    Args:
        model: an `ftwt_keras.FTWTModel`.

    Returns:
        Names of gated layers, in the network's order.
    """
    check_ftwt_model(model)
    pruned = _statically_pruned(_graph.as_functional(model.network))
    return [layer.name for layer in model.gated_layers if layer.name in pruned]


def compacted_layers(model, calibration=None, policy="auto", num_threads=1):
    """The gated regular convs that the export computes on a static capacity (their active filters only).

    These are the layers whose cap (`GatedConv.capacity`, `ftwt_keras.cap_gates`)
    is the capacity the export computes: capping any other layer changes the
    model and adds a top-k to the `.tflite` without skipping more work
    (`cap_compacted_gates` caps these only).

    Args:
        model: an `ftwt_keras.FTWTModel`.
        calibration: optional `Calibration` the export will use; without it
            only capped layers have a capacity.
        policy: the export's `policy` (as `convert`): `"auto"` compacts the
            layers `_chains` picks, `"chain"` every one with a capacity.
        num_threads: the interpreter threads the export is for (as `convert`).

    Returns:
        Names of gated layers, in the network's order.
    """
    check_ftwt_model(model)
    network = _graph.as_functional(model.network)
    policies = _policies(model, policy)
    capacities = _compact_capacities(network, calibration)
    conv_macs = _conv_macs(model)

    def compact(layer):
        chosen = policies.get(layer.name, "auto")
        if layer.is_depthwise or layer.name not in capacities or chosen not in ("auto", "chain"):
            return False
        return chosen == "chain" or _chains(layer, conv_macs, capacities[layer.name], num_threads)

    return [layer.name for layer in model.gated_layers if compact(layer)]


def cap_compacted_gates(model, images, ratio=1.1, policy="auto", num_threads=1):
    """Caps the gated regular convs that the export then computes compactly, and no others.

    `ftwt_keras.cap_gates` on every gated regular conv, then the caps of those
    the export would not compact with them (`compacted_layers`) removed again:
    there a cap only changes the model and adds a `TOPK_V2`. The capped
    layers compute exactly their caps, with no margin, no overflow check and
    no fallback, and need no calibration images. The result is another
    model: `benchmarks/capped_accuracy.py` measures what caps cost.

    Args:
        model: an `ftwt_keras.FTWTModel` (changed in place; save it to keep the caps).
        images: raw images like those the model will see (training images).
        ratio: each cap in multiples of the layer's mean count on `images`.
        policy, num_threads: those the export will use (as `convert`).

    Returns:
        `{gated layer name: capacity}` of the capped layers (empty where no
        layer compacts, e.g. MobileNetV1 at 32x32 under `auto`).
    """
    from ftwt_keras import capping

    check_ftwt_model(model)
    regular = [layer.name for layer in model.gated_layers if not layer.is_depthwise]
    capping.cap_gates(model, images, ratio=ratio, layer_names=regular)
    compacted = compacted_layers(model, policy=policy, num_threads=num_threads)
    capacities = capping.set_gate_capacities(model, {name: None for name in regular if name not in compacted})
    return {name: capacities[name] for name in compacted}


def _output_hw(layer, values):
    shape = layer.conv.compute_output_shape((1, int(values.shape[1]), int(values.shape[2]), 1))
    return int(shape[1]), int(shape[2])


def _keeps_zero(layer_or_activation):
    """Whether an activation (layer or function) maps 0 to 0."""
    from ftwt_keras import flops

    activation = layer_or_activation
    if isinstance(activation, keras.layers.Activation):
        activation = activation.activation
    # The probe reads a value: run it eagerly even while `convert` traces its
    # tf.function (in graph mode it cannot, and would answer False).
    with _tf().init_scope():
        return flops._zero_preserving_activation(activation)


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def parse_policy(text):
    """A `--policy` command-line value as `convert` takes it: a name in `POLICIES` or a float cutoff."""
    if text in POLICIES:
        return text
    try:
        return float(text)
    except ValueError:
        raise ExportError(
            f"Policy must be one of {list(POLICIES)} or a keep-ratio cutoff in [0, 1]; got {text!r}."
        ) from None


def _policies(model, policy):
    names = [layer.name for layer in model.gated_layers]
    if isinstance(policy, dict):
        unknown = sorted(set(policy) - set(names))
        if unknown:
            raise ExportError(f"`policy` names layers that are not gated layers of the model: {unknown}.")
        policies = dict(policy)
    else:
        policies = {name: policy for name in names}
    for name, value in policies.items():
        if value in POLICIES:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
            continue
        if isinstance(value, str) and value.startswith("inputs<"):
            try:
                if 0.0 <= float(value[len("inputs<"):]) <= 1.0:
                    continue
            except ValueError:
                pass
        raise ExportError(
            f"Policy {value!r} for layer '{name}' is not valid: use one of {list(POLICIES)}, or a "
            "keep-ratio cutoff in [0, 1] (dense branch above it, chosen at run time)."
        )
    return policies


@dataclasses.dataclass
class Calibration:
    """What calibration images say about each gated layer's masks.

    `keep_ratios`: `{layer name: mean fraction of active filters}`.
    `capacities`: `{layer name: static number of filters a compact layer
    computes}`: the most active filters any calibration image had, plus
    `CAPACITY_STDS` standard deviations of that count over the images (at
    most all the filters). An image with more active filters than that at any
    compacted layer is computed again by the exact masked-dense path (one
    builtin IF at the end), so fewer or less typical calibration images cost
    speed, never exactness.
    """

    keep_ratios: dict
    capacities: dict

    def overflows(self, counts, layer_names=None):
        """bool (N,): which images keep more filters on than some layer's capacity.

        Args:
            counts: `gate_counts` of N images.
            layer_names: the layers to check (default: every calibrated
                layer, an upper bound: an export checks only the layers it
                compacts).
        """
        names = self.capacities if layer_names is None else layer_names
        beyond = [np.asarray(counts[name]) > self.capacities[name] for name in names]
        if not beyond:
            return np.zeros(len(next(iter(counts.values()), [])), bool)
        return np.any(beyond, axis=0)

    def with_capacity_ratio(self, model, ratio):
        """A copy whose capacities are at least `ratio` x each layer's mean count (at most its filters).

        For masks that do not vary by image, such as those `set_keep_ratio`
        draws: calibrated on them, a capacity is exactly the count, a margin
        that real masks, varying by image, never leave. Benchmarks of drawn
        masks use this to pay for the margin real masks need
        (`benchmarks/capacity_overflow.py` measures it on a trained model).
        """
        if ratio < 1.0:
            raise ExportError(f"`ratio` must be >= 1 (capacities below the mean count); got {ratio}.")
        filters = _filter_counts(model)
        capacities = {name: min(filters[name], max(capacity, int(math.ceil(ratio * self.keep_ratios[name]
                                                                              * filters[name] - 1e-6))))
                      for name, capacity in self.capacities.items()}
        return Calibration(dict(self.keep_ratios), capacities)

    def with_binomial_spread(self, model, num_images=64, capacity_stds=None, seed=0):
        """A copy whose capacities allow the spread of independent gates (at least the present ones).

        The capacities `calibrate` would give on `num_images` images if each
        filter were on independently with its layer's keep ratio (binomial
        counts): for masks that do not vary by image, such as those
        `set_keep_ratio` draws, whose own calibration leaves no margin. An
        estimate, not a bound: the `make demo` model's counts spread 0.15-0.89x
        the binomial amount up to block 5's depthwise conv (filters nearly always
        on or off) and 0.89-2.50x from block 5's pointwise conv on
        (`benchmarks/capacity_overflow.py --per_layer`, all 10,000 test images).
        """
        rng = np.random.default_rng(seed)
        filters = _filter_counts(model)
        counts = {name: rng.binomial(filters[name], min(1.0, self.keep_ratios[name]), num_images)
                  for name in self.capacities}
        spread = _capacities_from_counts(counts, filters, capacity_stds)
        capacities = {name: max(capacity, spread[name]) for name, capacity in self.capacities.items()}
        return Calibration(dict(self.keep_ratios), capacities)


def gate_counts(model, images, batch_size=32, targets=False):
    """`{gated layer name: int array (N,)}`: how many filters each gate keeps on for each of `images`.

    `targets=True` counts the filters of the gates' training targets instead
    (see `calibrate`).
    """
    from ftwt_keras import flops

    counts = {}
    for batch in flops.image_batches(images, batch_size):
        for name, mask in flops.gate_masks_of(model, batch, targets=targets).items():
            counts.setdefault(name, []).append(np.asarray(mask).reshape(len(mask), -1).sum(axis=1))
    return {name: np.concatenate(parts).astype(np.int64) for name, parts in counts.items()}


def calibrate(model, images, batch_size=32, capacity_stds=None, targets=False):
    """`Calibration` of `model`'s gates on raw `images` (N, H, W, C).

    With `targets=True` it calibrates on the masks the predictors are trained
    toward (each gate's heatmap target at its threshold, every filter
    computed) instead of the predictors' own masks. That works before any
    FTWT training: gated at threshold r, a dense baseline's targets say which
    gates will pay in the export (`paying_gates(model, calibration=...)`), so
    that only those are gated and trained (`gate(base, layers_to_gate=...)`,
    the recipes' `--gate_only_paying`). The predictors then learn masks close
    to these, but keep somewhat more filters on (the FLOPs estimate's error);
    `paying_gates` on the trained model checks.

    Args:
        model: an `ftwt_keras.FTWTModel`.
        images: raw images like those the model will see (an array, or an
            iterable of batches); a few dozen suffice.
        batch_size: images per Keras forward pass (for an array).
        capacity_stds: the capacity margin in standard deviations of each
            layer's count over `images` (default `CAPACITY_STDS`).
        targets: calibrate on the gates' training targets (see above).

    Example:

    >>> import ftwt_keras as fk, numpy as np
    >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    >>> calibration = calibrate(model, np.random.rand(8, 32, 32, 3).astype("float32") * 255)
    >>> sorted(calibration.capacities)[:2]
    ['block10_dw', 'block10_pw']
    """
    if isinstance(images, np.ndarray):
        images = _checked_images(images, _graph.as_functional(model.network))
    counts = gate_counts(model, images, batch_size, targets=targets)
    filters = _filter_counts(model)
    keep_ratios = {name: float(count.mean() / filters[name]) for name, count in counts.items()}
    return Calibration(keep_ratios, _capacities_from_counts(counts, filters, capacity_stds))


def _filter_counts(model):
    return {layer.name: layer.filters for layer in model.gated_layers}


def _capacities_from_counts(counts, filters, capacity_stds=None):
    """Each layer's capacity: the most filters any image kept on plus `capacity_stds` stds of the count."""
    stds = CAPACITY_STDS if capacity_stds is None else float(capacity_stds)
    if stds < 0:
        raise ExportError(f"`capacity_stds` must be >= 0; got {stds}.")
    capacities = {}
    for name, count in counts.items():
        spread = float(np.std(count, ddof=1)) if len(count) > 1 else 0.0
        margin = int(math.ceil(stds * spread))
        capacities[name] = min(filters[name], max(1, int(np.max(count)) + margin))
    return capacities


def convert(model, dynamic=True, policy="auto", with_predictors=False, calibration_images=None, stop_at=None,
            capacity_stds=None, calibration=None, static_gates=True, num_threads=1):
    """Converts an FTWT model to a batch-1 TFLite flatbuffer (builtin ops only).

    Args:
        model: an `ftwt_keras.FTWTModel`.
        dynamic: True: gated export computing only the active filters of
            each image. False: the ordinary dense network with the same
            weights (no predictors, no masks).
        policy: per gated layer, how the dynamic export computes it:
            `"auto"` (default: the fastest choice measured on x86 XNNPACK,
            see `_Builder.auto_policy`), `"gather"` (only active filters),
            `"chain"` (only active filters, and depthwise convs on their
            compact input without gathering activations; with calibration
            images, static capacities), `"gather_inputs"` (only the input's
            active channels, all filters), `"dense"` (all filters, then
            masked), or a float cutoff
            in [0, 1]: at run time, dense when more than that fraction of the
            layer's filters is active, else gather. One value for all layers,
            or `{layer name: value}` (missing layers: "auto").
        with_predictors: with `dynamic=False` only: the dense network plus
            every mask predictor, run on the dense activations and not
            applied (their logits, concatenated, are a second output). Every
            exact dynamic export runs these predictors; benchmarks time this
            export to show what they alone add to the dense model.
        calibration_images: optional `(N, H, W, C)` raw images like those the
            model will see (a few dozen suffice). With them, `"auto"` makes
            its per-layer choice once, from each layer's mean keep ratio on
            these images, instead of per image with a builtin IF (which costs
            ~0.2 ms per layer at 224x224), and compact layers get static
            capacities (`calibrate`): an image that exceeds one is computed
            again by the masked-dense network (one IF). The export stays
            exact for every image either way; only its speed depends on the
            choice.
        stop_at: a profiling aid (see `layer_times`): export the network only
            up to and including the layer of this name, its output summed to
            one number; no overflow fallback.
        capacity_stds: with calibration images, the capacities' margin in
            standard deviations of each layer's count (default
            `CAPACITY_STDS`; see `calibrate`). Larger: fewer images recomputed
            by the fallback, every image slower in the compact layers.
        calibration: instead of `calibration_images`, a `Calibration`
            computed beforehand (`calibrate`, or one derived from it such as
            `Calibration.with_capacity_ratio`).
        static_gates: True (default): a layer whose predictor's weights
            decide at least `STATIC_MIN_DECIDED` of its gates for every input
            (`ftwt_keras.static_gates`; the paper's softmax predictor often
            does) never computes its always-off filters, masks none of its
            always-on ones, and predicts only the rest (with none left, it
            runs no predictor at all), like a statically pruned layer; exact.
            False: every layer runs its predictor in full, as benchmarks of
            drawn masks need (those masks are the same for every image by
            construction, and stand in for masks that are not).
        num_threads: the interpreter threads the `.tflite` will run with
            (its `num_threads`): `"auto"` compacts layers for that many. With
            more than one, XNNPACK splits the dense convs across threads but
            not the compact path's builtin kernels, so fewer layers compact
            (`AUTO_MULTITHREAD_CHAIN_CUTOFF`, `..._INPUT_CUTOFF`). The
            export is exact at any thread count; only its speed is tuned.

    Returns:
        The `.tflite` model as bytes. Input: raw RGB pixels `(1, H, W, 3)`
        float32, as the Keras model takes them. Output: logits `(1, classes)`
        (the first output).

    Raises:
        ExportError: not an FTWT model, an unsupported layer, or the graph
            would need Flex (Select TF) ops.
    """
    check_ftwt_model(model)
    _check_threads(num_threads)
    if with_predictors and dynamic:
        raise ExportError("`with_predictors=True` needs `dynamic=False` (the dynamic export runs them anyway).")
    tf = _tf()
    network = _graph.as_functional(model.network)
    policies = _policies(model, policy)
    calibration = _calibration_of(model, calibration_images, calibration, capacity_stds, needed=dynamic)
    conv_macs = _conv_macs(model)
    builder = _Builder(network, dynamic, policies, conv_macs, with_predictors, calibration, static_gates, num_threads)
    shape = (1,) + tuple(int(d) for d in network.inputs[0].shape[1:])

    if stop_at is not None and stop_at not in {layer.name for layer in network.layers}:
        raise ExportError(f"`stop_at`: the network has no layer named {stop_at!r}.")

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="images")], autograph=False)
    def serve(images):
        return builder(images, stop_at)

    concrete = serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], serve)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as error:
        message = str(error)
        hint = ""
        if "flex" in message.lower() or "custom op" in message.lower() or "neither" in message:
            hint = (
                " The graph needs TensorFlow (Flex / Select TF) ops, which this exporter "
                "refuses: the model contains an operation without a TFLite builtin kernel."
            )
        raise ExportError(f"TFLite conversion of '{model.name}' failed.{hint} Converter said: {message[:2000]}") from None
    flex = [name for name in op_names(flatbuffer) if name.startswith("Flex") or name.startswith("CUSTOM")]
    if flex:
        raise ExportError(f"The converted model contains non-builtin ops {sorted(set(flex))}; refusing to emit it.")
    return flatbuffer


def _calibration_of(model, calibration_images, calibration, capacity_stds=None, needed=True):
    """The `Calibration` that `convert`'s `calibration_images` or `calibration` argument gives.

    None when neither is given or not `needed` (a dense export): the arguments are checked anyway.
    """
    if calibration is not None:
        if calibration_images is not None:
            raise ExportError("Pass `calibration_images` or a precomputed `calibration`, not both.")
        if not isinstance(calibration, Calibration):
            raise ExportError(f"`calibration` must be a `Calibration` (see `calibrate`); got {type(calibration).__name__}.")
        return calibration if needed else None
    if calibration_images is None or not needed:
        return None
    return calibrate(model, np.asarray(calibration_images, np.float32), capacity_stds=capacity_stds)


def layer_times(model, images, layer_names=None, policy="auto", calibration_images=None, num_threads=1,
                warmup=10, calibration=None, static_gates=True):
    """Time per layer of the dense and the dynamic export, where no op profiler is at hand.

    The Python LiteRT interpreter has no op profiler, so this exports the
    network truncated after each of `layer_names` (`convert(stop_at=...)`),
    dense and dynamic, times all of them side by side on `images`, and
    differences the cumulative medians: each row is the time from the
    previous listed layer (exclusive) to this one (inclusive). Noisy hosts
    make single rows move by ~0.1 ms; the sums are the robust part.

    Args:
        model: an `ftwt_keras.FTWTModel`.
        images: `(N, H, W, C)` raw images to time on.
        layer_names: layers to cut after, in network order (default: every
            gated layer).
        policy, calibration_images, calibration, static_gates: as in `convert`, for the
            dynamic export.
        num_threads, warmup: as in `time_side_by_side` (the dynamic export
            is made for `num_threads`, as `convert`'s).

    Returns:
        A list of `{"layer", "dense_ms", "dynamic_ms"}` segment times.
    """
    check_ftwt_model(model)
    names = layer_names or [layer.name for layer in model.gated_layers]
    # Once, not per truncated export.
    calibration = _calibration_of(model, calibration_images, calibration)
    flatbuffers = {}
    for name in names:
        flatbuffers[("dense", name)] = convert(model, dynamic=False, stop_at=name)
        flatbuffers[("dynamic", name)] = convert(model, policy=policy, calibration=calibration, stop_at=name,
                                                 static_gates=static_gates, num_threads=num_threads)
    times = time_side_by_side(flatbuffers, images, num_threads, warmup)
    rows, previous = [], {"dense": 0.0, "dynamic": 0.0}
    for name in names:
        row = {"layer": name}
        for kind in ("dense", "dynamic"):
            cumulative = 1e3 * float(np.median(times[(kind, name)]))
            row[f"{kind}_ms"] = cumulative - previous[kind]
            previous[kind] = cumulative
        rows.append(row)
    return rows


def load_calibration_images(spec):
    """Calibration images from a command-line value: a `.npy` file or `NAME:SPLIT`.

    `NAME:SPLIT` reads a CIFAR split through tfds (e.g. `cifar10:train[:64]`);
    a `.npy` file holds raw images `(N, H, W, C)`.
    """
    if spec.endswith(".npy"):
        if not os.path.exists(spec):
            raise ExportError(f"Calibration file {spec!r} does not exist.")
        return np.load(spec).astype(np.float32)
    name, _, split = spec.partition(":")
    if name not in ("cifar10", "cifar100") or not split:
        raise ExportError(
            f"Calibration images {spec!r}: pass a .npy file of raw images (N, H, W, C) or a CIFAR "
            "split as NAME:SPLIT, e.g. cifar10:train[:64]."
        )
    from ftwt_keras import data

    return data.cifar_arrays(name, split)[0]


def _checked_images(images, network):
    images = np.asarray(images, np.float32)
    expected = tuple(int(d) for d in network.inputs[0].shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise ExportError(
            f"Calibration images must be a non-empty array (N, {', '.join(map(str, expected))}) of raw "
            f"pixels like the model's input; got shape {images.shape}."
        )
    return images


def op_names(flatbuffer, subgraph=None):
    """Names of every op in every subgraph of a .tflite flatbuffer (with repeats).

    Builtin ops by their builtin name (e.g. "GATHER"), custom ops (Flex
    included) by their custom code (e.g. "FlexConv2D"). With `subgraph` (an
    int), only that subgraph's: 0 is the main graph, without the branches of
    its IF ops.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    names_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            codes.append(code.CustomCode().decode())
        else:
            codes.append(names_by_code.get(builtin, str(builtin)))
    names = []
    for index in range(model.SubgraphsLength()) if subgraph is None else [subgraph]:
        graph = model.Subgraphs(index)
        for o in range(graph.OperatorsLength()):
            names.append(codes[graph.Operators(o).OpcodeIndex()])
    return names


def save(flatbuffer, path):
    """Writes a flatbuffer to `path` (creating its folder)."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as file:
        file.write(flatbuffer)
    return path


def export_file(model, output_path, dynamic=True, policy="auto", calibration_images=None, capacity_stds=None,
                static_gates=True, num_threads=1, calibration=None):
    """Writes the `.tflite` export of an FTWT model to `output_path`; returns the path.

    Args:
        model: an `ftwt_keras.FTWTModel`, or the path of one saved as `.keras`
            (loaded with `load_ftwt_model`).
        output_path: where to write; must end with `.tflite`.
        dynamic, policy, calibration_images, capacity_stds, static_gates,
            num_threads, calibration: as in `convert`.
    """
    output_path = os.fspath(output_path)
    if not output_path.endswith(".tflite"):
        raise ExportError(f"Output path {output_path!r} must end with .tflite.")
    if isinstance(model, (str, os.PathLike)):
        model = load_ftwt_model(model)
    flatbuffer = convert(model, dynamic=dynamic, policy=policy, calibration_images=calibration_images,
                         capacity_stds=capacity_stds, calibration=calibration, static_gates=static_gates,
                         num_threads=num_threads)
    return save(flatbuffer, output_path)


def set_keep_ratio(model, keep, seed=0):
    """Makes every gate of `model` keep a fixed random `keep` fraction of its filters.

    For benchmarks of untrained models: each predictor's kernel is zeroed and
    its bias set to +50 for `round(keep * filters)` (at least 1) randomly
    drawn filters and -50 for the others, so every image gets the same masks.
    """
    if not 0.0 < keep <= 1.0:
        raise ExportError(f"`keep` must be in (0, 1]; got {keep}.")
    rng = np.random.default_rng(seed)
    for layer in model.gated_layers:
        units = layer.filters
        count = max(1, int(round(keep * units)))
        bias = np.full(units, -50.0, np.float32)
        bias[rng.choice(units, count, replace=False)] = 50.0
        layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, np.float32))
        layer.predictor.bias.assign(bias)
    return model


def randomize_batch_norm(model, seed=0):
    """Gives every BatchNormalization layer of a plain Keras `model` random statistics and affine terms.

    In place, before `gate` (which folds them into its GatedConv layers). For
    benchmarks of untrained models. Freshly built, batch norm's shifts are
    all 0, so a depthwise filter that is on over an input channel that is off
    would output exactly 0, and the export skips carrying such constants. A
    trained network has shifts of both signs; so does this one, so that the
    export pays for them as it would there. Statistics drawn without regard
    to the activations let the signal die with depth, so the logits hardly
    depend on the image: fine for timing with drawn masks, useless for
    checking exactness. Returns `model`.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.2, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
            layer.beta.assign(rng.normal(0.1, 0.3, channels).astype("float32"))
    return model


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


def interpreter(flatbuffer, num_threads=1):
    """A LiteRT interpreter (XNNPACK on, the default) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(flatbuffer, (str, os.PathLike)):
        runner = Interpreter(model_path=os.fspath(flatbuffer), num_threads=num_threads)
    else:
        runner = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    runner.allocate_tensors()
    return runner


def time_invokes(flatbuffer, images, num_threads=1, warmup=10):
    """Seconds taken by each `invoke()` alone, one image at a time (after `warmup` runs)."""
    import time

    runner = interpreter(flatbuffer, num_threads)
    input_index = runner.get_input_details()[0]["index"]
    images = np.asarray(images, np.float32)
    for i in range(warmup):
        runner.set_tensor(input_index, images[i % len(images)][None])
        runner.invoke()
    times = np.empty(len(images))
    for i, image in enumerate(images):
        runner.set_tensor(input_index, image[None])
        start = time.perf_counter()
        runner.invoke()
        times[i] = time.perf_counter() - start
    return times


def time_side_by_side(flatbuffers, images, num_threads=1, warmup=10):
    """Times several models on the same images, alternating models image by image.

    Args:
        flatbuffers: `{name: .tflite bytes or path}`.
        images: (N, H, W, C) float32; each invoke is timed alone.

    Returns:
        `{name: np.ndarray of N seconds}`.
    """
    import time

    runners = {name: interpreter(fb, num_threads) for name, fb in flatbuffers.items()}
    inputs = {name: r.get_input_details()[0]["index"] for name, r in runners.items()}
    images = np.asarray(images, np.float32)
    times = {name: np.empty(len(images)) for name in runners}
    for step in range(-warmup, len(images)):
        image = images[step % len(images)][None]
        for name, runner in runners.items():
            runner.set_tensor(inputs[name], image)
            start = time.perf_counter()
            runner.invoke()
            elapsed = time.perf_counter() - start
            if step >= 0:
                times[name][step] = elapsed
    return times


def loop_medians(flatbuffers, images, repeats, num_threads=1, warmup=10):
    """`time_side_by_side` run `repeats` times: `{name: [median ms per invoke of each loop]}`.

    Loops apart show how much the host's noise moves a median; each loop
    builds its interpreters afresh.
    """
    medians = {name: [] for name in flatbuffers}
    for _ in range(repeats):
        for name, values in time_side_by_side(flatbuffers, images, num_threads, warmup).items():
            medians[name].append(1e3 * float(np.median(values)))
    return medians


def run(flatbuffer_or_interpreter, images, num_threads=1):
    """Runs a batch-1 .tflite model on each image of `images` (N, H, W, C); returns (N, classes)."""
    runner = flatbuffer_or_interpreter
    if not hasattr(runner, "invoke"):
        runner = interpreter(runner, num_threads)
    input_index = runner.get_input_details()[0]["index"]
    output_index = runner.get_output_details()[0]["index"]
    outputs = []
    for image in np.asarray(images, np.float32):
        runner.set_tensor(input_index, image[None])
        runner.invoke()
        outputs.append(np.array(runner.get_tensor(output_index)[0]))
    return np.stack(outputs)


__all__ = [
    "Calibration",
    "Compact",
    "ExportError",
    "FoldedUnit",
    "POLICIES",
    "SUPPORTED_LAYERS",
    "calibrate",
    "cap_compacted_gates",
    "check_ftwt_model",
    "compacted_layers",
    "convert",
    "export_file",
    "fold_batch_norm",
    "interpreter",
    "layer_times",
    "load_calibration_images",
    "load_ftwt_model",
    "op_names",
    "parse_policy",
    "paying_gates",
    "randomize_batch_norm",
    "run",
    "save",
    "set_keep_ratio",
    "statically_pruned_layers",
    "time_invokes",
    "time_side_by_side",
]
