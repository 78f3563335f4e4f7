"""Exact multiply-accumulate (MAC) accounting for dense and gated models.

Convention (one MAC = one multiply-add; FLOPs ~ 2 x MACs):

* Conv2D: `H_out * W_out * k_h * k_w * C_in * C_out / groups`; Dense:
  `C_in * C_out` per position. Batch norm, activations, pooling, additions and
  the masking multiply are not counted (they are not MACs).
* Gated execution counts what really has to be computed for one image:
  a conv costs `H_out * W_out * k_h * k_w * (active inputs) * (active
  outputs)`; a depthwise conv costs `H_out * W_out * k_h * k_w` per channel
  whose input *and* output are both active. An output filter that is on but
  whose inputs are all off is a per-channel constant (the batch-norm shift):
  it costs no MACs.
* A channel is "inactive" at a layer's input when the gated layer that produced
  it switched it off and every layer in between maps zero to zero (padding,
  pooling, dropout, flatten, zero-preserving activations). Anything else — a
  residual `Add`, a standalone batch norm, concatenation — makes the input
  dense again.
* Each gated layer's `MaskPredictor` is charged its dense map, `C_in * C_out`
  MACs, or `rank * (C_in + C_out)` for a low-rank one (global pooling and
  softmax are not MACs), in every image.

This differs on purpose from the official FTWT code, which charges a depthwise
layer zero once any of its inputs is masked, lets a residual block's next conv
inherit the previous conv's sparsity, and ignores predictors.
"""

import dataclasses
import itertools
import math
from typing import Optional

import keras
import numpy as np
from keras import ops

from ftwt_keras import _graph
from ftwt_keras.layers import GatedConv, record_gates


@dataclasses.dataclass(frozen=True)
class MacTerm:
    """The MACs of one layer, as a function of the gates around it.

    `kind` is `"conv"` (cost = `macs_per_pair * active_in * in_repeat *
    active_out`), `"depthwise"` (cost = `macs_per_pair * |active_in & active_out|`)
    or `"predictor"` (constant `macs_per_pair`). `in_gate` / `out_gate` name the
    gated layers whose masks describe the input / output channels (None: dense).
    """

    layer_name: str
    kind: str
    macs_per_pair: int
    in_channels: int
    out_channels: int
    in_gate: Optional[str] = None
    out_gate: Optional[str] = None
    in_repeat: int = 1

    @property
    def dense_macs(self):
        if self.kind == "predictor":
            return self.macs_per_pair
        if self.kind == "depthwise":
            return self.macs_per_pair * self.out_channels
        return self.macs_per_pair * self.in_channels * self.in_repeat * self.out_channels


def _network(model):
    return getattr(model, "network", model)


def _zero_preserving_activation(activation):
    try:
        value = activation(ops.zeros((1,)))
        return float(ops.convert_to_numpy(value)[0]) == 0.0
    except Exception:  # an activation we cannot probe: assume it is not
        return False


# Activation layers applied value by value with no per-channel parameter: on a
# channel subset they compute the same; they preserve zero channels where
# their function maps 0 to 0 (`_zero_preserving_activation`).
ELEMENTWISE_ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)

# Layers that keep channels and map an all-zero channel to an all-zero channel.
ZERO_PRESERVING_LAYERS = (
    keras.layers.ZeroPadding2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.Identity,
)


def _spatial(shape):
    return math.prod(int(d) for d in shape[1:-1])


def _layer_terms(layer, in_shape, out_shape, source):
    """MacTerms of one layer and the channel source of its output."""
    in_gate, repeat = source
    if isinstance(layer, GatedConv):
        conv = layer.conv
        per = _spatial(out_shape) * math.prod(conv.kernel_size)
        cin, cout = int(in_shape[-1]), int(out_shape[-1])
        kind = "depthwise" if layer.is_depthwise else "conv"
        terms = [
            MacTerm(layer.name, kind, per, cin, cout, in_gate, layer.name, repeat),
            MacTerm(layer.name + "/predictor", "predictor", layer.predictor.multiply_adds(cin), cin, cout),
        ]
        return terms, (layer.name, 1)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        per = _spatial(out_shape) * math.prod(layer.kernel_size)
        cin = int(in_shape[-1])
        if layer.depth_multiplier == 1:
            term = MacTerm(layer.name, "depthwise", per, cin, cin, in_gate, None)
            keeps_zero = not layer.use_bias and _zero_preserving_activation(layer.activation)
            return [term], (in_gate, 1) if keeps_zero else (None, 1)
        cout = int(out_shape[-1])
        return [MacTerm(layer.name, "conv", per * cout // cin, cin, 1, in_gate, None)], (None, 1)
    if isinstance(layer, keras.layers.SeparableConv2D):
        per = _spatial(out_shape) * math.prod(layer.kernel_size)
        cin, cout = int(in_shape[-1]), int(out_shape[-1])
        mid = cin * layer.depth_multiplier
        return [
            MacTerm(layer.name + "/depthwise", "conv", per * layer.depth_multiplier, cin, 1, in_gate),
            MacTerm(layer.name + "/pointwise", "conv", _spatial(out_shape), mid, cout),
        ], (None, 1)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        groups = getattr(layer, "groups", 1)
        per = _spatial(out_shape) * math.prod(layer.kernel_size)
        cin, cout = int(in_shape[-1]), int(out_shape[-1])
        if groups != 1 or len(in_shape) != 4:
            return [MacTerm(layer.name, "conv", per, cin // groups, cout)], (None, 1)
        return [MacTerm(layer.name, "conv", per, cin, cout, in_gate, None, repeat)], (None, 1)
    if isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.Conv1DTranspose, keras.layers.Conv3DTranspose)):
        per = _spatial(in_shape) * math.prod(layer.kernel_size)
        return [MacTerm(layer.name, "conv", per, int(in_shape[-1]), int(out_shape[-1]))], (None, 1)
    if isinstance(layer, keras.layers.Dense):
        per = _spatial(in_shape) if len(in_shape) > 2 else 1
        # After a Flatten, each of the gate's channels became `repeat` features.
        cin, cout = int(in_shape[-1]) // repeat, int(out_shape[-1])
        return [MacTerm(layer.name, "conv", per, cin, cout, in_gate, None, repeat)], (None, 1)
    if isinstance(layer, keras.Model):
        return mac_terms(layer), (None, 1)
    if isinstance(layer, keras.layers.Flatten):
        return [], (in_gate, repeat * _spatial(in_shape))
    if isinstance(layer, ZERO_PRESERVING_LAYERS):
        return [], source
    if isinstance(layer, ELEMENTWISE_ACTIVATION_LAYERS):
        activation = layer.activation if isinstance(layer, keras.layers.Activation) else layer
        return [], source if _zero_preserving_activation(activation) else (None, 1)
    return [], (None, 1)


def mac_terms(model):
    """Lists the `MacTerm`s of every MAC-carrying layer of a functional model."""
    network = _graph.as_functional(_network(model))
    _graph.layer_nodes(network)  # refuses shared layers
    for tensor in network.inputs:
        if any(size is None for size in tensor.shape[1:]):
            raise ValueError(
                f"Model '{network.name}' takes inputs of shape {tuple(tensor.shape)}: counting its "
                "multiply-adds (FLOPs reductions, training metrics, estimates) needs every size but "
                "the batch's. Build it with a fixed input size, e.g. keras.Input((224, 224, 3)); for "
                "another resolution, build it again at that size and copy the weights (set_weights)."
            )
    sources = {}
    terms = []
    for node in _graph.model_nodes(network):
        if node.is_input or node.operation is None:
            continue
        layer = node.operation
        feeding = _graph.producers(node)
        source = sources.get(id(feeding[0]), (None, 1)) if len(feeding) == 1 else (None, 1)
        in_shape = node.input_tensors[0].shape
        out_shape = node.outputs[0].shape
        layer_terms, sources[id(layer)] = _layer_terms(layer, in_shape, out_shape, source)
        terms.extend(layer_terms)
    return terms


def count_macs(model, include_predictors=False):
    """Dense MACs per image of `model` (conv and dense layers), as an int.

    For a gated model this is the MACs of its backbone with every filter on;
    the predictors are added only with `include_predictors=True`.

    Example:

    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    >>> count_macs(keras.Model(inputs, x))  # 8*8 * 3*3 * 3*4
    6912
    """
    return int(
        sum(
            t.dense_macs
            for t in mac_terms(model)
            if include_predictors or t.kind != "predictor"
        )
    )


def executed_macs(terms, gate_masks, batch_size=None):
    """Per-sample MACs executed, given each gated layer's `(batch, C)` 0/1 mask.

    Args:
        terms: from `mac_terms(model)`.
        gate_masks: dict `{gated layer name: mask}`; a missing name counts as
            all filters on.
        batch_size: needed only when `gate_masks` is empty.

    Returns:
        Float tensor of shape `(batch,)` (keras.ops).
    """
    gates = [name for name, mask in gate_masks.items() if mask is not None]
    if not gates:
        constant = float(sum(t.dense_macs for t in terms))
        return ops.full((batch_size,), constant)
    # Vectorized over layers (a few ops in all, not a few per layer): each
    # term is coefficient * count[in] * count[out], where column `dense` of
    # the counts is 1 and an ungated side's channel count goes into the
    # coefficient. A depthwise conv between two gates counts the channels
    # active on both sides instead.
    column = {name: index for index, name in enumerate(gates)}
    dense = len(gates)
    widths = [int(gate_masks[name].shape[-1]) for name in gates]
    counts = ops.matmul(
        ops.concatenate([gate_masks[name] for name in gates], axis=-1), _segment_matrix(widths)
    )
    counts = ops.concatenate([counts, ops.ones_like(counts[:, :1])], axis=-1)
    constant = 0.0
    coefficients, in_columns, out_columns, both_sides = [], [], [], []
    for term in terms:
        in_column = column.get(term.in_gate, dense)
        out_column = column.get(term.out_gate, dense)
        if term.kind == "predictor" or in_column == out_column == dense:
            constant += term.dense_macs
        elif term.kind == "depthwise" and dense not in (in_column, out_column):
            both_sides.append(term)
        elif term.kind == "depthwise":
            coefficients.append(term.macs_per_pair)
            in_columns.append(min(in_column, out_column))
            out_columns.append(dense)
        else:
            coefficients.append(
                term.macs_per_pair
                * term.in_repeat
                * (term.in_channels if in_column == dense else 1)
                * (term.out_channels if out_column == dense else 1)
            )
            in_columns.append(in_column)
            out_columns.append(out_column)
    total = ops.full_like(counts[:, 0], constant)
    if coefficients:
        pairs = ops.take(counts, np.array(in_columns), axis=1) * ops.take(
            counts, np.array(out_columns), axis=1
        )
        total = total + ops.matmul(pairs, np.array(coefficients, "float32"))
    if both_sides:
        in_masks = [gate_masks[t.in_gate] for t in both_sides]
        out_masks = [gate_masks[t.out_gate] for t in both_sides]
        shared = ops.matmul(
            ops.concatenate(in_masks, axis=-1) * ops.concatenate(out_masks, axis=-1),
            _segment_matrix([int(m.shape[-1]) for m in in_masks]),
        )
        per_pair = np.array([t.macs_per_pair for t in both_sides], "float32")
        total = total + ops.matmul(shared, per_pair)
    return total


def _segment_matrix(widths):
    """`(sum(widths), len(widths))` 0/1 matrix: row c is 1 in the column of its segment."""
    matrix = np.zeros((sum(widths), len(widths)), "float32")
    matrix[np.arange(sum(widths)), np.repeat(np.arange(len(widths)), widths)] = 1.0
    return matrix


def gate_masks_of(model, images, training=False, targets=False):
    """Runs `model` on one batch and returns `{gated layer name: mask}` (tensors).

    With `targets=True`, the masks are the gates' training targets at their
    thresholds, taken with every filter computed (as `estimate_flops_reduction`
    takes them), instead of the predictors' masks.
    """
    with record_gates(targets=targets, apply_masks=not targets) as recorder:
        _network(model)(images, training=training)
    return {name: record.target if targets else record.mask for name, record in recorder.by_layer_name().items()}


def _in_network_order(model, names):
    """`names` (layer names) in the order of the model's layers: records come per batch in any order."""
    return [layer.name for layer in _network(model).layers if layer.name in names]


def _masks_of(records):
    return {name: record.mask for name, record in records.items()}


def firing_rates(model, images, batch_size=128):
    """Fraction of the images on which each filter of each gated layer fires.

    A rate of 0 marks a filter its gate never kept on these images (pruned as
    if statically), 1 one it always kept; only the filters in between make the
    network's cost depend on the image.

    Args:
        model: an `FTWTModel`.
        images: array `(N, H, W, C)` or an iterable of batches (as `dynamic_macs`).
        batch_size: used when `images` is an array.

    Returns:
        `{gated layer name: np.ndarray of shape (filters,)}` in `[0, 1]`, in
        the model's layer order.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> rates = fk.flops.firing_rates(model, np.zeros((2, 32, 32, 3), "float32"))
    >>> rates["stage1_block1_conv1"].shape
    (16,)
    """
    fired, images_seen = {}, 0
    for batch_masks in map_gate_records(model, images, _masks_of, batch_size=batch_size):
        for name, mask in batch_masks.items():
            fired[name] = fired.get(name, 0.0) + mask.sum(axis=0, dtype=np.float64)
        images_seen += len(next(iter(batch_masks.values())))
    if not images_seen:
        raise ValueError("`images` is empty: at least one image is needed to see which filters fire.")
    return {name: fired[name] / images_seen for name in _in_network_order(model, fired)}


def keep_ratios(model, images, batch_size=128):
    """Fraction of each gated layer's filters that its gate keeps, averaged over images.

    Args:
        model: an `FTWTModel`.
        images: array `(N, H, W, C)` or an iterable of batches (as `dynamic_macs`).
        batch_size: used when `images` is an array.

    Returns:
        `{gated layer name: float in [0, 1]}`, in the model's layer order: the
        mean of the layer's `firing_rates`.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> ratios = fk.flops.keep_ratios(model, np.zeros((2, 32, 32, 3), "float32"))
    >>> len(ratios), all(0.0 <= r <= 1.0 for r in ratios.values())
    (19, True)
    """
    return {name: float(rates.mean()) for name, rates in firing_rates(model, images, batch_size).items()}


def image_batches(images, batch_size, max_batches=None, verbose=0):
    """Yields image batches from an array or from an iterable of batches.

    Batches may be `(images, labels[, weights])` tuples or dicts with an
    "image" key; only the images are yielded.

    Args:
        images: array of images, or an iterable of batches.
        batch_size: used when `images` is an array.
        max_batches: stop after this many batches (None: all of them).
        verbose: 0 silent, 1 a Keras progress bar over the batches, 2 one
            line at the end (as `model.predict`'s `verbose`).
    """
    total = _batch_count(images, batch_size, max_batches)
    if _is_array(images):
        batches = (images[start : start + batch_size] for start in range(0, int(images.shape[0]), batch_size))
    else:
        batches = (_images_of(batch) for batch in images)
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="batch") if verbose else None
    count = 0
    for batch in batches:
        yield batch
        count += 1
        if progress is not None:
            progress.update(count)  # finalizes itself on reaching `total`
    if progress is not None and count != total:
        progress.target = count  # known now (as Keras's own bar learns a dataset's size)
        progress.update(count, finalize=True)


def _is_array(images):
    return isinstance(images, np.ndarray) or hasattr(images, "shape")


def _batch_count(images, batch_size, max_batches=None):
    """How many batches `image_batches` will yield, or None where the iterable does not say."""
    if _is_array(images):
        total = -(-int(images.shape[0]) // batch_size)
    else:
        try:
            total = len(images)  # a tf.data.Dataset of unknown or infinite size has none
        except TypeError:
            total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total


# Compiling a pass costs about what 4-8 eager batches do (MobileNetV1 at 32x32,
# batches of 128, 2026-12-06): below that the eager pass is faster.
COMPILE_FROM_BATCHES = 8


class _GatePass(keras.Model):
    """One forward pass of a gated network inside `record_gates`, returning `summarize(records)`.

    A Keras model only so that `predict_on_batch` compiles it the way `predict`
    compiles any model (`tf.function` or `jax.jit`, XLA where Keras chooses it).
    """

    def __init__(self, network, summarize, recording, with_outputs=False):
        # float32: images reach the network as they would alone (a model under a mixed
        # policy would otherwise cast them to its 16-bit compute dtype first).
        super().__init__(name=f"{network.name}_gate_pass", dtype="float32")
        self.network = network
        self._summarize = summarize
        self._recording = recording
        self._with_outputs = with_outputs

    def call(self, images):
        with record_gates(**self._recording) as recorder:
            outputs = self.network(images, training=False)
        summary = self._summarize(recorder.by_layer_name())
        return (summary, outputs) if self._with_outputs else summary


def map_gate_records(model, images, summarize, batch_size=128, targets=False, apply_masks=True, threshold=None,
                     target=None, max_batches=None, verbose=0, run_eagerly=None, with_outputs=False):
    """Runs a gated model over `images` and yields, per batch, what `summarize` makes of its gates.

    The loop under `dynamic_macs`, `firing_rates`, `estimate_flops_reduction`
    and the export's calibration, for any other per-image statistic of the
    gates. `summarize` runs inside the forward pass, so it is compiled with it.

    Args:
        model: an `FTWTModel`.
        images: array `(N, H, W, C)` or an iterable of batches (as
            `image_batches`).
        summarize: `summarize({gated layer name: GateRecord})` -> a tensor or
            a nested structure (dict, list) of tensors whose first axis is
            the batch's images, computed with `keras.ops`. Each `GateRecord`
            has the layer's `logits`, `mask` and, with `targets=True`,
            `target`, each `(batch, filters)`.
        batch_size: used when `images` is an array.
        targets, apply_masks, threshold, target: what to record (as
            `record_gates`): `targets=True, apply_masks=False` reads the
            training targets of the dense network.
        max_batches: stop after this many batches (None: all of them).
        verbose: 0 silent, 1 a progress bar, 2 one line at the end.
        run_eagerly: None (default) compiles the pass, as `model.predict`
            does, for `COMPILE_FROM_BATCHES` batches or more, and runs it
            eagerly below that, where the trace would cost more than it
            saves; an iterable of unknown length runs its first
            `COMPILE_FROM_BATCHES - 1` batches eagerly and compiles the pass
            for the rest. True / False forces either.
        with_outputs: also yield the network's outputs of the same pass
            (what `predict` gives, with `apply_masks=True`), saving a second
            pass where both are needed.

    Yields:
        The structure `summarize` returns, as numpy arrays, for each batch;
        with `with_outputs`, `(that structure, the batch's outputs)`.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> from keras import ops
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> images = np.zeros((3, 32, 32, 3), "float32")
    >>> on = lambda records: {name: ops.sum(r.mask, axis=1) for name, r in records.items()}
    >>> [counts["stage1_block1_conv1"].shape for counts in fk.flops.map_gate_records(model, images, on)]
    [(3,)]
    """
    network = _network(model)
    if not any(isinstance(layer, GatedConv) for layer in network.layers):
        raise ValueError(f"'{model.name}' has no gated layer whose gates could be read: gate it first "
                         "(ftwt_keras.gate(model)).")
    probe = _GatePass(network, summarize,
                      dict(targets=targets, apply_masks=apply_masks, threshold=threshold, target=target), with_outputs)
    if run_eagerly is None:
        total = _batch_count(images, batch_size, max_batches)
        if total is None:  # unknown length: eager until the batches show that compiling pays
            eager_batches = COMPILE_FROM_BATCHES - 1
        else:
            eager_batches = total if total < COMPILE_FROM_BATCHES else 0
    else:
        eager_batches = math.inf if run_eagerly else 0
    full_size = None
    for index, batch in enumerate(image_batches(images, batch_size, max_batches=max_batches, verbose=verbose)):
        if index < eager_batches:
            yield keras.tree.map_structure(ops.convert_to_numpy, probe(batch))
            continue
        # A compiled pass traces again for each new batch size; the last, partial batch is
        # padded with copies of its last image instead (each image's gates are its own).
        batch = np.asarray(batch)
        size = int(batch.shape[0])
        full_size = full_size or size
        if size < full_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], full_size - size, axis=0)])
        yield keras.tree.map_structure(lambda output: np.asarray(output)[:size], probe.predict_on_batch(batch))


def _images_of(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        return batch.get("image", next(iter(batch.values())))
    return batch


def dynamic_macs(model, images, batch_size=128, verbose=0):
    """MACs actually executed for each image by a gated model, as a numpy array.

    Args:
        model: an `FTWTModel` (or a plain model, whose MACs are constant).
        images: array of images `(N, H, W, C)`, or an iterable of batches
            (e.g. a `tf.data.Dataset` of `(images, labels)`).
        batch_size: used when `images` is an array.
        verbose: 0 silent, 1 a progress bar, 2 one line at the end.

    Returns:
        `np.ndarray` of shape `(N,)`, predictors included (see module doc).
        The pass is compiled from `COMPILE_FROM_BATCHES` batches on (see
        `map_gate_records`).
    """
    terms = mac_terms(model)
    if any(term.in_gate or term.out_gate for term in terms):
        results = map_gate_records(
            model, images, lambda records: executed_macs(terms, _masks_of(records)),
            batch_size=batch_size, verbose=verbose)
    else:  # no gate: every image costs the dense MACs, no need to run the model
        dense = float(sum(term.dense_macs for term in terms))
        results = (np.full(int(batch.shape[0]), dense) for batch in image_batches(images, batch_size, verbose=verbose))
    results = [np.asarray(macs, np.float64) for macs in results]
    if not results:
        raise ValueError("`images` is empty: dynamic_macs needs at least one image.")
    return np.concatenate(results)


def macs_and_keep_ratios(model, images, batch_size=128, verbose=0):
    """`dynamic_macs` and `keep_ratios` of a gated model from one pass over `images`.

    Args:
        model: an `FTWTModel`.
        images: array `(N, H, W, C)` or an iterable of batches (as `dynamic_macs`).
        batch_size: used when `images` is an array.
        verbose: 0 silent, 1 a progress bar, 2 one line at the end.

    Returns:
        `(macs, keep_ratios)`: the `(N,)` array of `dynamic_macs` and the
        `{gated layer name: float}` of `keep_ratios`, in the model's layer order.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> macs, ratios = fk.flops.macs_and_keep_ratios(model, np.zeros((2, 32, 32, 3), "float32"))
    >>> macs.shape, len(ratios)
    ((2,), 19)
    """
    terms = mac_terms(model)

    def summarize(records):
        masks = _masks_of(records)
        return executed_macs(terms, masks), {name: ops.mean(mask, axis=-1) for name, mask in masks.items()}

    macs, kept = [], {}
    for batch_macs, batch_kept in map_gate_records(model, images, summarize, batch_size=batch_size, verbose=verbose):
        macs.append(np.asarray(batch_macs, np.float64))
        for name, fractions in batch_kept.items():
            kept.setdefault(name, []).append(np.asarray(fractions, np.float64))
    if not macs:
        raise ValueError("`images` is empty: at least one image is needed to see what the gates keep.")
    return np.concatenate(macs), {name: float(np.concatenate(kept[name]).mean())
                                  for name in _in_network_order(model, kept)}


__all__ = [
    "MacTerm",
    "mac_terms",
    "count_macs",
    "executed_macs",
    "dynamic_macs",
    "gate_masks_of",
    "firing_rates",
    "image_batches",
    "keep_ratios",
    "macs_and_keep_ratios",
    "map_gate_records",
]
