"""Which gated layers the export computes on their active filters only, and which gates pay.

The rules of policy `"auto"` (cutoffs measured on x86 XNNPACK, each with its
measurement beside it), the per-layer policies `convert` takes, and what they
imply before any conversion: `paying_gates`, `compacted_layers`,
`statically_pruned_layers`, and `cap_compacted_gates`. Every cutoff was timed
on one 2-core AMD EPYC (1 MB of L2 per core); another CPU moves them
(`ftwt_keras.export.measured` checks a plan by timing where it runs).
"""

from typing import NamedTuple

import keras
import numpy as np

from ftwt_keras import _graph
from ftwt_keras.export.calibration import _calibration_of
from ftwt_keras.export.checks import ExportError, _check_threads, _tf, check_ftwt_model
from ftwt_keras.flops import ELEMENTWISE_ACTIVATION_LAYERS, ZERO_PRESERVING_LAYERS
from ftwt_keras.layers import GatedConv
from ftwt_keras.models import ChannelZeroPad
from ftwt_keras.static_gates import static_gates_of


POLICIES = ("gather", "gather_inputs", "chain", "dense", "auto")
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
# ... except for a conv whose output a concatenation reads, which puts it back
# to full width at once: InceptionV3-224's 3x3 / 5x5 branch convs on 25x25 maps
# lost there at capacity 0.64 (each alone, the rest ungated, 56.2-57.1 ms against
# dense's 55.8, all ten 57.8; keep 0.5, 60 test images x 3 loops, 1 thread,
# 2026-12-05 15:47-15:53). A threshold on multiply-adds instead (48M, then 56M)
# cost VGG16-bn-32, whose 19-38M-MAC chains on 16x16 maps pay: every gate 7.46
# vs 7.30 ms, gated where gates pay 7.34 vs 7.23 (dense 7.53; 200 images x 5 loops).
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
# `paying_gates`: a compact chain through a depthwise conv on a map (the chain's
# conv output) of more pixels than this does not pay against the same layers
# ungated. On such maps (112x112 in MobileNets at 224x224) the builtin
# depthwise kernel on the compact channels costs about what the pair's convs
# save, and the gates add their predictors. `auto` still compacts them: it
# beats masking such an activation. Drawn masks at 224x224, capacities 1.26x the count, rank-16
# predictors, each network gated where gates pay with / without these chains,
# 5 side-by-side loops (x86 XNNPACK, 1 thread, 2026-12-05 12:29-12:35):
# MobileNetV2 keep 0.3 7.15 / 6.87 ms (dense 6.91), MobileNetV1 keep 0.3 6.84
# / 6.76, keep 0.4 9.36 / 9.04 (dense 11.69). A ResNet-18 stem (112x112, then
# max pooling into regular convs) chains without a depthwise conv and keeps
# paying: the same rule on every chain made it 25.84 -> 26.51 ms.
PAYING_MAX_DEPTHWISE_CHAIN_PIXELS = 56 * 56
# `auto` (`_auto_chained`) and `paying_gates`: a compact chain whose every
# reader puts its output back to full width (a residual `Add`, a `Concatenate`,
# a separable, strided or k x k conv left ungated) pays only where its own conv
# saves at least this many multiply-adds per element put back (one costs
# ~150, `AUTO_MIN_FILTERS`, and the compact conv gathers its weights).
# Xception-224's 1x1 stride-2 shortcut convs, keep 0.3, capacities 1.26x the
# count, each gated alone (60 test images x 3 loops, 1 thread, 2026-12-05
# 17:34-17:38; dense 89.69 ms): 40 and 79 saved per element put back 92.11 and
# 90.26 ms, 159 89.72, 452 89.26; its 3x3 conv on 109x109 maps, which computes
# every filter and then selects (no saving of its own), 93.20. The networks
# gated where gates pay with this cutoff at 150 / 200 (17:52-18:03): Xception
# keep 0.3 89.06 / 88.34 ms (dense 88.28, 5 loops), ResNet50 keep 0.3 47.63 /
# 47.26 (dense 76.00), keep 0.5 74.21 / 71.60 (78.35); at 200 / 300 (18:04,
# ResNet50's 256 -> 1024 convs on 14x14 maps, 227 per element, then left out)
# keep 0.3 49.10 / 46.14 (77.13). No other network's plan changes from 200 up.
PAYING_MIN_SAVED_MACS_PER_SCATTERED = 300

# With more than one interpreter thread, XNNPACK splits the dense convs across
# the threads while the compact path gains little (its builtin GATHER and
# TOPK_V2 run on one; benchmarks/thread_scaling.py): compacting pays at lower
# keep ratios only, and `convert(..., num_threads=2)` (and `paying_gates`) use
# these cutoffs instead of AUTO_CHAIN_CUTOFF(_MID) and AUTO_INPUT_CUTOFF.
# Drawn masks, capacities 1.26x the count, rank-16 predictors, the network
# gated only where gates pay by the 1-thread / these cutoffs, timed with 2
# threads side by side
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
# per-image paths above choose. With gates left, the static path multiplies
# their mask into its output, which the per-image paths can defer into the
# next layer. Measured on trained MobileNetV1s, frozen or not (x86 XNNPACK,
# 1 thread, 2026-12-05, `benchmarks/frozen_gates.py --static_min_decided`,
# the loop order rotated): any cutoff from 0.5 to 0.9 runs within 3% of the
# others, and 1.0 (fully decided layers only) is 1.3-1.5x slower on models
# whose layers keep a few undecided gates (docs/experiments.md, "The static
# threshold revisited"); 0.9 static-prunes the fewest layers of that range.
STATIC_MIN_DECIDED = 0.9


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


def _chains(layer, conv_macs, capacity, num_threads=1, concatenated=False):
    """Whether `auto` computes regular GatedConv `layer` on its active filters only ("chain"), for `num_threads`.

    By the layer's size and capacity alone: `_auto_chained` then looks at
    what reads its output.

    `concatenated`: whether a `Concatenate` reads its output (`_concatenated`).
    """
    macs = conv_macs[layer.name]
    pixels = _output_pixels(layer, conv_macs)
    if macs < AUTO_MIN_MACS or pixels < AUTO_MIN_PIXELS:
        return False
    filters = layer.conv.filters
    low, high = AUTO_CHAIN_MID_PIXELS
    if num_threads > 1:
        cutoff = AUTO_MULTITHREAD_CHAIN_CUTOFF
    else:
        mid = low <= pixels <= high and not concatenated
        cutoff = AUTO_CHAIN_CUTOFF_MID if mid else AUTO_CHAIN_CUTOFF
    return capacity <= cutoff * filters


class _Readers(NamedTuple):
    """What reads a GatedConv's output (`_gate_readers`)."""

    layers: list  # the reading layers; `None` stands for the model's output
    elements: int  # elements per image of the tensor they read


def _gate_readers(network):
    """`{GatedConv name: _Readers}`, zero-preserving layers after the conv looked through.

    (Pooling, padding, activations mapping 0 to 0: a compact output passes
    them compact, and they may shrink it, as a global pooling does.)
    """
    nodes = _graph.layer_nodes(network)
    readers = _graph.consumers(network, nodes)
    found = {}
    for layer in network.layers:
        if isinstance(layer, GatedConv):
            last = layer
            while len(readers.get(id(last), [])) == 1 and _passes_zero_channels(readers[id(last)][0]):
                last = readers[id(last)][0]
            elements = int(np.prod(nodes[id(last)].outputs[0].shape[1:]))
            found[layer.name] = _Readers(readers.get(id(last), []), elements)
    return found


class _Channels(NamedTuple):
    """A tensor that is zero outside the active filters of one gate (`_walk_gated`)."""

    gate: str  # that gated layer's name
    fraction: float  # the fraction of the tensor's channels expected non-zero (present, where compact)
    compact: bool  # whether the export carries it with those channels only (a "chain")


def _walk_gated(network, on_gated):
    """Follows the gates' zero channels through `network`, calling `on_gated(layer, source)` on each GatedConv in order.

    `source` is the `_Channels` of the conv's input where a gate's zeros
    reach it (through layers that keep a zero channel zero, and
    `ChannelZeroPad`, whose added channels lower the fraction), else None;
    `on_gated` returns the `_Channels` of the conv's output, or None.
    """
    channels = {}  # id(tensor) -> _Channels
    for node in _graph.model_nodes(network):
        if node.is_input or node.operation is None:
            continue
        layer = node.operation
        source = channels.get(id(node.input_tensors[0])) if len(node.input_tensors) == 1 else None
        out = None
        if isinstance(layer, GatedConv):
            out = on_gated(layer, source)
        elif source is not None and _passes_zero_channels(layer):
            out = source
        elif source is not None and isinstance(layer, ChannelZeroPad):
            width = int(node.input_tensors[0].shape[-1])
            out = source._replace(fraction=source.fraction * width / (width + layer.pad))
        channels[id(node.outputs[0])] = out


def _passes_zero_channels(layer):
    """Whether `layer` keeps an all-zero channel all-zero (so a compact tensor passes it compact)."""
    return isinstance(layer, ZERO_PRESERVING_LAYERS) or (
        isinstance(layer, ELEMENTWISE_ACTIVATION_LAYERS) and _keeps_zero(layer))


def _concatenated(gate_readers):
    """Names of the GatedConvs whose output a `Concatenate` reads, from `_gate_readers`."""
    return {name for name, readers in gate_readers.items()
            if any(isinstance(reader, keras.layers.Concatenate) for reader in readers.layers)}


def _scatters_into(reader, paying):
    """Whether `reader` is a k x k or depthwise conv that puts a compact input back to full width (gated at `paying`).

    A gated conv that pays reads only the present channels; one left
    ungated is its plain conv.
    """
    if isinstance(reader, GatedConv):
        if reader.name in paying:
            return False
        reader = reader.conv
    if isinstance(reader, keras.layers.DepthwiseConv2D):
        return True
    return isinstance(reader, keras.layers.Conv2D) and tuple(reader.kernel_size) != (1, 1)


def _reads_compact(reader, paying, putting_back=()):
    """Whether `reader` takes a compact input as it is in a network gated at `paying` (no channel put back).

    A gated conv in `paying`, a plain 1x1 stride-1 conv (its kernel rows of
    the present channels) and layers passing zero channels do; an `Add`, a
    `Concatenate`, any other conv and the model's output (`None`) do not. A
    gated conv outside `paying` is a plain conv (the network gated at
    `paying` only) unless named in `putting_back`: gated convs that put a
    compact input back to full width first (masked dense, pruned by their
    weights: `_reads_compact_under`).
    """
    if isinstance(reader, GatedConv):
        if reader.name in paying:
            return True
        if reader.name in putting_back:
            return False
        reader = reader.conv
    return reader is not None and (_is_plain_pointwise(reader) or _passes_zero_channels(reader)
                                   or isinstance(reader, ChannelZeroPad))


def _is_plain_pointwise(layer):
    """Whether `layer` is an ungated 1x1, stride-1, ungrouped Conv2D (a matmul over channels)."""
    return (type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last"
            and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1)


def _saved_macs(layer, conv_macs, capacity, input_keep):
    """Multiply-adds the compact path of regular GatedConv `layer` saves on its own.

    `capacity` filters out of all, on an input of which `input_keep` of the
    channels are present (1.0: dense). A k x k conv on a dense input outside
    `AUTO_IM2COL_PIXELS` computes every filter, then selects: none.
    """
    if input_keep == 1.0 and tuple(layer.conv.kernel_size) != (1, 1) and not _im2col_pays(layer, conv_macs):
        return 0.0
    return conv_macs[layer.name] * (1.0 - capacity / layer.conv.filters * input_keep)


def _saves_too_little_put_back(layer, read, reading, conv_macs, capacity, input_keep, putting_back=()):
    """Whether every reader of `layer`'s compact output (`read`, a `_Readers`) puts it back, for too little saved.

    `reading`, `putting_back`: the gated convs that read a compact input as
    it is and those that put it back, as `_reads_compact`'s. The rule of
    `PAYING_MIN_SAVED_MACS_PER_SCATTERED`.
    """
    if any(_reads_compact(reader, reading, putting_back) for reader in read.layers):
        return False
    saved = _saved_macs(layer, conv_macs, capacity, input_keep)
    return saved < PAYING_MIN_SAVED_MACS_PER_SCATTERED * read.elements


def _auto_chained(network, conv_macs, capacities, num_threads=1, static=(), policies=None):
    """Names of the regular GatedConvs the export computes on their active filters only (a "chain").

    Those with policy `"chain"` and a capacity, and those `auto` picks by
    `_chains`, except a chain whose every reader puts its compact output back
    to full width (an `Add`, a `Concatenate`, a separable or strided conv
    left ungated, the classifier: every gated conv reads it as it is) where
    the conv saves fewer than `PAYING_MIN_SAVED_MACS_PER_SCATTERED`
    multiply-adds per element put back: masking its output costs less; nor
    a conv that saves nothing itself (`_saved_macs`: it computes every
    filter, then selects) whose whole output some reader puts back, as
    Xception's stem conv (read by a separable conv; every gate, keep 0.3,
    93.63 -> 90.68 ms, dense 89.11, 60 test images x 3 loops, 19:26-19:27).
    After a pooling less is put back: ResNet-18's stem chain pays and stays.
    Every gate, drawn masks at keep 0.3, without / with the first rule (1 thread,
    60 test images x 3 loops, 2026-12-05 18:30-18:36): ResNet50-224 58.04 /
    46.08 ms (dense 76.20; keep 0.5: 74.08 / 67.72, dense 76.12), Xception
    93.23 / 91.44 (88.24), DenseNet121 48.07 / 47.39 (56.21).

    Args:
        network: the functional network of an FTWT model.
        conv_macs, capacities: `_conv_macs`, `_compact_capacities`.
        num_threads: as `convert`'s.
        static: names of the layers pruned by their weights (never compacted).
        policies: `{gated layer name: policy}` (missing: `"auto"`).
    """
    policies = policies or {}
    readers = _gate_readers(network)
    concatenated = _concatenated(readers)
    gated = [layer for layer in network.layers if isinstance(layer, GatedConv)]
    reading = {layer.name for layer in gated if _reads_compact_under(layer, policies.get(layer.name, "auto"), static)}
    putting_back = {layer.name for layer in gated} - reading
    candidates = {}  # name -> (fraction of its input's channels present, policy "chain" forced)

    def compacts(layer, source):  # `source`: a compact input's `_Channels`, else None
        if layer.name in static:
            return None
        policy = policies.get(layer.name, "auto")
        capacity = capacities.get(layer.name)
        if layer.is_depthwise:
            return source if policy in ("auto", "chain") else None  # keeps its input's channels
        if capacity is not None and (policy == "chain" or (policy == "auto" and _chains(
                layer, conv_macs, capacity, num_threads, layer.name in concatenated))):
            candidates[layer.name] = (1.0 if source is None else source.fraction, policy == "chain")
            return _Channels(layer.name, capacity / layer.conv.filters, compact=True)
        return None

    _walk_gated(network, compacts)
    chained = set(candidates)
    for name, (input_fraction, forced) in reversed(list(candidates.items())):
        layer, read = network.get_layer(name), readers[name]
        if forced or all(_reads_compact(reader, reading, putting_back) for reader in read.layers):
            continue
        if _saves_too_little_put_back(layer, read, reading, conv_macs, capacities[name], input_fraction,
                                      putting_back):
            chained.discard(name)
        elif (_saved_macs(layer, conv_macs, capacities[name], input_fraction) == 0
              and read.elements >= _output_pixels(layer, conv_macs) * layer.conv.filters):
            chained.discard(name)
    return chained


def _reads_compact_under(layer, policy, static=()):
    """Whether gated `layer` reads a per-image compact input as it is under export `policy` (`_Builder._gated`).

    Not when pruned by its weights (`static`: its kernel is cut to static
    channels only) or masked dense (`"dense"`): both put the channels back
    first; a depthwise conv only when it chains (`"auto"`, `"chain"`); a
    regular one otherwise (the chain, `gather`, `gather_inputs`, a cutoff's
    gathering branch).
    """
    if layer.name in static:
        return False
    if layer.is_depthwise:
        return policy in ("auto", "chain")
    return policy != "dense"


def _input_cutoff(num_threads):
    """The largest input keep ratio at which `auto` reads only a large conv's present input channels."""
    return AUTO_MULTITHREAD_INPUT_CUTOFF if num_threads > 1 else AUTO_INPUT_CUTOFF


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
    """Output pixels of GatedConv `layer` (from its dense multiply-adds; a depthwise kernel's last axis is 1)."""
    kernel_h, kernel_w, inputs, filters = layer.conv.kernel.shape
    return conv_macs[layer.name] // (kernel_h * kernel_w * inputs * filters)


def paying_gates(model, calibration_images=None, calibration=None, num_threads=1, static_gates=True):
    """The gated layers whose masks the calibrated `auto` export turns into skipped work.

    The `auto` export (with these calibration images, see
    `_Builder.auto_policy`) computes only the active filters of a large
    regular conv whose capacity is at most `AUTO_CHAIN_CUTOFF` of its
    filters (`AUTO_CHAIN_CUTOFF_MID` on mid-size outputs), and the
    depthwise convs that read its compact output; those gates pay, except
    where such a depthwise conv reads a map of more than
    `PAYING_MAX_DEPTHWISE_CHAIN_PIXELS` (there the pair runs no faster
    than ungated, before its predictors), and except a chain on a map of
    `AUTO_CHAIN_MID_PIXELS` or more whose output a k x k conv that does not
    pay reads (left ungated, it would put the output back to full width),
    and except a regular conv's chain that every reader puts back (an `Add`,
    a `Concatenate`, ...) where the conv itself saves fewer than
    `PAYING_MIN_SAVED_MACS_PER_SCATTERED` multiply-adds per element put back.
    The mid-size cutoff is not for a conv a `Concatenate` reads. It also
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
    >>> from ftwt_keras.export import calibrate, paying_gates
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
        static_gates: as `convert`'s. When True, the layers the export
            prunes by their predictors' weights (`statically_pruned_layers`)
            are left out: they skip the same work on every image, not per
            image, and the convs reading them take their channels as fixed
            at export, never gathered per image. Pass False for masks the
            weights fix by construction (`set_keep_ratio`), as to `convert`.

    Returns:
        The names of the paying gated layers, in the network's order (empty
        when no gate pays: then no gated export of this network is faster
        than its dense one on such a CPU).
    """
    check_ftwt_model(model)
    _check_threads(num_threads)
    network = _graph.as_functional(model.network)
    calibration = _calibration_of(model, calibration_images, calibration)
    if calibration is None:
        raise ExportError("`paying_gates` needs `calibration_images` or a `calibration`: which gates pay depends on them.")
    keeps = calibration.keep_ratios
    capacities = _compact_capacities(network, calibration)
    conv_macs = _conv_macs(model)
    static = _statically_pruned(network) if static_gates else {}
    readers = _gate_readers(network)
    concatenated = _concatenated(readers)
    paying = set()
    chained = []  # (name, fraction of its input's channels present) of the gates `auto` computes compactly, in order

    def pays(layer, source):  # `source`: the `_Channels` of the input where a gate zeroes it, else None
        if layer.name in static:
            return None  # pruned at export: its output's channels are fixed, nothing to gather per image
        compact_input = source is not None and source.compact
        if (layer.is_depthwise and compact_input  # (the chain's map: a strided conv's input may be padded)
                and _output_pixels(network.get_layer(source.gate), conv_macs) > PAYING_MAX_DEPTHWISE_CHAIN_PIXELS):
            paying.discard(source.gate)  # the chain does not pay here: neither gate does
            return None
        if (layer.is_depthwise and compact_input) or (not layer.is_depthwise and _chains(
                layer, conv_macs, capacities[layer.name], num_threads, layer.name in concatenated)):
            paying.add(layer.name)  # computes only its active filters / its input's channels
            chained.append((layer.name, source.fraction if compact_input else 1.0))
            return _Channels(layer.name, keeps[layer.name], compact=True)
        if (not compact_input and source is not None and source.fraction <= _input_cutoff(num_threads)
                and _may_gather_inputs(layer, conv_macs)):
            paying.update((source.gate, layer.name))
        return _Channels(layer.name, keeps[layer.name], compact=False)

    _walk_gated(network, pays)
    # A chain on a map of AUTO_CHAIN_MID_PIXELS or more whose compact output a k x k conv left
    # ungated puts back to full width (in the network gated at the paying layers) saves less
    # than that costs: InceptionV3-224's 64 -> 96 3x3 branch convs on 25x25 maps, keep 0.5,
    # capacity 0.64, each gated alone, 56.1-56.4 ms against dense's 55.9 (60 test images x 3
    # loops, 2026-12-05 15:58-16:01). VGG16-bn-32's conv7 (8x8) scatters into conv8 and pays.
    # And a regular conv's chain that every reader puts back saves too little where its conv does
    # (`PAYING_MIN_SAVED_MACS_PER_SCATTERED`). Last first: a reader's fate is known when its
    # producer is judged.
    for name, input_keep in reversed(chained):
        layer, read = network.get_layer(name), readers[name]
        if name not in paying:
            continue
        if (_output_pixels(layer, conv_macs) >= AUTO_CHAIN_MID_PIXELS[0]
                and any(_scatters_into(reader, paying) for reader in read.layers)):
            paying.discard(name)
        elif not layer.is_depthwise and _saves_too_little_put_back(layer, read, paying, conv_macs, capacities[name],
                                                                   input_keep, putting_back=static):
            paying.discard(name)
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
    >>> from ftwt_keras.export import set_keep_ratio, statically_pruned_layers
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


def kept_gates(model, calibration, num_threads=1, static_gates=True):
    """The gates a network gated only where gates pay keeps: `paying_gates`, and those pruned by their weights.

    A layer the export prunes by its predictors' weights
    (`statically_pruned_layers`, with `static_gates`) skips its off filters
    on every image, so its gates pay too, though not per image; `ungate`
    the others for that network (`edge/benchmark.py`'s "lean" export; the
    start of `measured_paying_gates`).

    Args:
        model: an `ftwt_keras.FTWTModel`.
        calibration: the `Calibration` the export will use.
        num_threads, static_gates: as `paying_gates`'.

    Returns:
        Names of gated layers, in the network's order.
    """
    kept = set(paying_gates(model, calibration=calibration, num_threads=num_threads, static_gates=static_gates))
    if static_gates:
        kept.update(statically_pruned_layers(model))
    return [layer.name for layer in model.gated_layers if layer.name in kept]


def compacted_layers(model, calibration=None, policy="auto", num_threads=1, static_gates=True):
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
            layers `_auto_chained` picks, `"chain"` every one with a capacity.
        num_threads: the interpreter threads the export is for (as `convert`).
        static_gates: as `convert`'s: when True, the layers the export prunes
            by their predictors' weights (`statically_pruned_layers`) are not
            compacted per image.

    Returns:
        Names of gated layers, in the network's order.
    """
    check_ftwt_model(model)
    network = _graph.as_functional(model.network)
    policies = _policies(model, policy)
    capacities = _compact_capacities(network, calibration)
    conv_macs = _conv_macs(model)
    static = _statically_pruned(network) if static_gates else {}
    chained = _auto_chained(network, conv_macs, capacities, num_threads, static, policies)
    return [layer.name for layer in model.gated_layers if layer.name in chained]


def cap_compacted_gates(model, images, ratio=1.1, policy="auto", num_threads=1, static_gates=True):
    """Caps the gated regular convs that the export then computes compactly, and no others.

    `ftwt_keras.cap_gates` on every gated regular conv, then the caps of those
    the export would not compact with them (`compacted_layers`) removed again:
    there a cap only changes the model and adds a `TOPK_V2`. Layers the export
    prunes by their predictors' weights (`statically_pruned_layers`) are not
    capped: a cap that could bind leaves no gate decided, which would trade
    their static pruning for a predictor and a top-k. The capped
    layers compute exactly their caps, with no margin, no overflow check and
    no fallback, and need no calibration images. The result is another
    model: `benchmarks/capped_accuracy.py` measures what caps cost.

    Args:
        model: an `ftwt_keras.FTWTModel` (changed in place; save it to keep the caps).
        images: raw images like those the model will see (training images).
        ratio: each cap in multiples of the layer's mean count on `images`.
        policy, num_threads, static_gates: those the export will use (as `convert`).

    Returns:
        `{gated layer name: capacity}` of the capped layers (empty where no
        layer compacts, e.g. MobileNetV1 at 32x32 under `auto`).
    """
    from ftwt_keras import capping

    check_ftwt_model(model)
    static = _statically_pruned(_graph.as_functional(model.network)) if static_gates else {}
    regular = [layer.name for layer in model.gated_layers if not layer.is_depthwise and layer.name not in static]
    capping.cap_gates(model, images, ratio=ratio, layer_names=regular)
    compacted = compacted_layers(model, policy=policy, num_threads=num_threads, static_gates=static_gates)
    capacities = capping.set_gate_capacities(model, {name: None for name in regular if name not in compacted})
    return {name: capacities[name] for name in compacted}


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
