"""The TensorFlow graph of a batch-1 export: `_Builder`.

`_Builder` traces the network layer by layer into TensorFlow ops that the
TFLite converter maps to builtins: each gated layer's predictor, its mask
(`compact._GateMask`), and the computation its policy picks
(`ftwt_keras.export.planning`) on its folded conv (`folding`), carrying
activations between layers as `compact.Compact` tensors (see
`ftwt_keras.export.tflite`).
"""

import inspect
import math

import keras
import numpy as np

from ftwt_keras import _graph
from ftwt_keras.export.checks import ExportError, _tf
from ftwt_keras.export.compact import (
    Compact,
    _active_channels,
    _dense,
    _GateMask,
    _size,
    _static_channels,
    _static_constants,
    _with_zero_channel,
)
from ftwt_keras.export.folding import FoldedUnit, _activation_fn, _numpy, fold_batch_norm
from ftwt_keras.export.planning import (
    _auto_chained,
    _compact_capacities,
    _im2col_pays,
    _input_cutoff,
    _is_plain_pointwise,
    _keeps_zero,
    _may_gather_inputs,
    _statically_pruned,
)
from ftwt_keras.flops import ELEMENTWISE_ACTIVATION_LAYERS, ZERO_PRESERVING_LAYERS
from ftwt_keras.layers import GatedConv
from ftwt_keras.models import ChannelZeroPad


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
                 static_gates=True, num_threads=1, integer_matmuls=False):
        self.network = network
        self.integer_matmuls = integer_matmuls  # full-int8 export: see `run_time_matmul`
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
        self.pointwise = {}  # {name: (kernel, bias)} of plain 1x1 convs: see `plain_pointwise_on_compact`
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
                if _is_plain_pointwise(layer):  # kernel (C_in, C_out) and bias, trainable or frozen
                    self.pointwise[layer.name] = (_numpy(layer.kernel)[0, 0], _numpy(layer.bias) if layer.use_bias else None)
        # {gated layer name: StaticGates} for layers whose weights decide at least
        # STATIC_MIN_DECIDED of their gates (`ftwt_keras.static_gates`): see `static_unit`.
        self.static = _statically_pruned(network) if dynamic and static_gates else {}
        # The regular convs `auto` computes on their active filters only (and those with policy "chain").
        self.chained = (_auto_chained(network, conv_macs, self.capacities, num_threads, self.static, policies)
                        if dynamic else set())
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
            if isinstance(node.operation, keras.layers.Layer):
                out = self.layer(node.operation, inputs)
            else:  # a keras.ops operation on symbolic tensors
                out = _dense(_graph.call_operation(node, [x.without_constants().dense() for x in inputs]))
            tensors[id(node.outputs[0])] = out
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
        if len(inputs) == 1 and not inputs[0].is_dense and _is_plain_pointwise(layer):
            return _dense(self.plain_pointwise_on_compact(layer, inputs[0]))
        # Only (gated and 1x1) convs read the uniform channels of a Compact in place.
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
        if isinstance(layer, ELEMENTWISE_ACTIVATION_LAYERS) and _keeps_zero(layer):
            x = inputs[0]
            return Compact(layer(x.values), x.channels, x.width, x._positions, x.support, x.expected_keep)
        if isinstance(layer, keras.layers.Add):
            return _dense(tf.add_n([x.dense() for x in inputs]) if len(inputs) > 1 else inputs[0].dense())
        if isinstance(layer, (keras.layers.Multiply, keras.layers.Concatenate)):  # squeeze-and-excitation, DenseNet
            return _dense(layer([x.dense() for x in inputs]))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and layer.data_format != "channels_last":
            raise ExportError(f"Layer '{layer.name}' must be channels_last.")
        return _dense(self.plain_call(layer, inputs[0].dense()))

    def plain_pointwise_on_compact(self, layer, x):
        """A plain 1x1 Conv2D on a compact activation: its kernel rows of the present channels, nothing put back.

        An ungated conv of a partly gated model (`gate(layers_to_gate=...)`,
        `ftwt_keras.ungate`) reads a gated layer's compact output like this
        rather than scattering every channel back first; the uniform values
        of absent channels (`Compact.constants`) go into its bias.
        """
        tf = _tf()
        kernel, bias = self.pointwise[layer.name]  # (C_in, C_out), (C_out,) or None
        height, width = int(x.values.shape[1]), int(x.values.shape[2])
        rows = tf.gather(tf.constant(kernel), x.channels)  # (k, C_out)
        y = self.run_time_matmul(tf.reshape(x.values, [1, height * width, _size(x.values, -1)]), rows[None])
        if x.constants is not None:  # each absent channel's uniform value times its weights
            offset = tf.linalg.matvec(tf.constant(kernel.T.copy()), x.constants)
            bias = offset if bias is None else bias + offset
        if bias is not None:
            y = y + bias
        return layer.activation(tf.reshape(y, [1, height, width, kernel.shape[1]]))

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
        compact output, static shapes, so XNNPACK runs its matmul), unless
        every reader puts that output back and it saves too little
        (`_auto_chained`), and a
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
        if name in self.chained:
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
        if x.is_dense and x.support is None:  # no channel known to be zero (the images, a sum): nothing to gather
            return self.masked_dense(unit, activation, x, mask)
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
        y = activation(self.run_time_matmul(columns, weights) + bias)
        y = tf.reshape(y, [1, out_h, out_w, unit.filters]) * mask.values
        support = _active_channels(mask.on[0])
        return Compact(y, None, unit.filters, support=support)

    def run_time_matmul(self, columns, weights, adjoint=False):
        """`(1, P, K) @ (1, K, N)` (or `(1, N, K)` transposed, `adjoint`) with weights computed at run time.

        In float32 a rank-3 matmul, LiteRT's `BATCH_MATMUL`, which XNNPACK
        runs with run-time weights (a rank-2 one becomes a `FULLY_CONNECTED`
        that runs on LiteRT's own kernel: 3x slower). In full int8 neither
        reaches XNNPACK, and LiteRT's int8 `FULLY_CONNECTED` is the fast one
        (its int8 `BATCH_MATMUL` took 7x its time: docs/experiments.md).
        """
        tf = _tf()
        if not self.integer_matmuls:
            return tf.linalg.matmul(columns, weights, adjoint_b=adjoint)
        if not adjoint:  # FULLY_CONNECTED takes its weights as (N, K) rows
            # Transposed while 3-D: the converter folds a 2-D TRANSPOSE into a
            # transpose_b matmul and writes BATCH_MATMUL again.
            weights = tf.transpose(weights, [0, 2, 1])
        weights = tf.reshape(weights, [_size(weights, 1), _size(weights, 2)])
        return tf.linalg.matmul(tf.squeeze(columns, 0), weights, adjoint_b=True)[None]

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
        y = activation(self.run_time_matmul(columns, weights, adjoint) + bias)
        if not fold_on:
            y = y * on
        return Compact(tf.reshape(y, [1, out_h, out_w, k_out]), active, unit.filters)


def _output_hw(layer, values):
    shape = layer.conv.compute_output_shape((1, int(values.shape[1]), int(values.shape[2]), 1))
    return int(shape[1]), int(shape[2])
