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

The package's modules: `checks` (what the exporter accepts), `calibration`
(keep ratios and capacities from images), `planning` (`"auto"`'s rules and
which gates pay), `builder` (the TensorFlow graph), `folding` (a conv and its
batch norm as one kernel and bias), `compact` (activations carried with some
channels only, and gate masks), `runtime` (running and timing a `.tflite`),
`agreement` (a `.tflite` against its Keras model, image by image), `measured`
(which gates pay, by timing), `drawn_masks` (stand-ins for trained masks in
benchmarks), `suite` (a model's exports timed side by side), and this
module: conversion, which re-exports the public names of the others.
"""

import os

import numpy as np

from ftwt_keras import _graph
from ftwt_keras.export.agreement import LOGIT_TOLERANCE, agreement, agreement_report, keras_reference
from ftwt_keras.export.builder import _Builder
from ftwt_keras.export.compact import Compact
from ftwt_keras.export.folding import FoldedUnit, fold_batch_norm
from ftwt_keras.export.calibration import (
    CAPACITY_STDS,
    Calibration,
    _calibration_of,
    calibrate,
    checked_images,
    gate_counts,
    load_calibration_images,
)
from ftwt_keras.export.checks import (
    SUPPORTED_LAYERS,
    WEIGHT_DTYPES,
    ExportError,
    _check_backend,
    _check_threads,
    _check_weight_dtype,
    _tf,
    check_ftwt_model,
    load_ftwt_model,
)
from ftwt_keras.export.candidates import export_candidates, pick_candidate, read_manifest
from ftwt_keras.export.device import DEVICE_SCRIPT, DeviceRun, benchmark_model_ms, write_device_script
from ftwt_keras.export.drawn_masks import drawn_at_targets, randomize_batch_norm, set_keep_ratio
from ftwt_keras.export.planning import (
    AUTO_CHAIN_CUTOFF,
    AUTO_CHAIN_CUTOFF_MID,
    AUTO_CHAIN_MID_PIXELS,
    AUTO_IM2COL_PIXELS,
    AUTO_INPUT_CUTOFF,
    AUTO_MIN_FILTERS,
    AUTO_MIN_MACS,
    AUTO_MIN_PIXELS,
    AUTO_MULTITHREAD_CHAIN_CUTOFF,
    AUTO_MULTITHREAD_INPUT_CUTOFF,
    POLICIES,
    STATIC_MIN_DECIDED,
    _conv_macs,
    _policies,
    cap_compacted_gates,
    compacted_layers,
    parse_policy,
    kept_gates,
    paying_gates,
    statically_pruned_layers,
)
from ftwt_keras.export.measured import TimedPlan, gate_candidates, measured_paying_gates
from ftwt_keras.export.runtime import (
    RUNTIMES,
    cpu_name,
    interpreter,
    loop_medians,
    loop_times,
    median_ms,
    run,
    runner,
    time_invokes,
    time_side_by_side,
)
from ftwt_keras.export.suite import LEAN_PLANS, ExportSuite


def convert(model, dynamic=True, policy="auto", with_predictors=False, calibration_images=None, stop_at=None,
            capacity_stds=None, calibration=None, static_gates=True, num_threads=1, weight_dtype="float32",
            representative_images=None):
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
            more than one, XNNPACK splits the dense convs across threads while
            the compact path gains little (its `GATHER` and `TOPK_V2` run on
            one; `benchmarks/thread_scaling.py`), so fewer layers compact
            (`AUTO_MULTITHREAD_CHAIN_CUTOFF`, `..._INPUT_CUTOFF`). The
            export is exact at any thread count; only its speed is tuned.
        weight_dtype: how the file stores the weights. `"float32"`
            (default): exact. `"float16"`: about half the file (LiteRT's
            float16 quantization); the interpreter dequantizes them once,
            when it prepares the model, and computes in float32 at the same
            speed. `"int8"`: about a quarter to half the file (LiteRT's
            dynamic-range quantization: int8 weights; ops with hybrid kernels
            quantize their input on the fly, compact layers gather int8
            weight rows and dequantize them). Faster than float32 where
            the predictors' weight reads weigh: capped
            (`cap_compacted_gates`), MobileNetV1-224 at keep 0.3 ran at
            0.89-1.01x of the dense full-int8 model's speed (5.07 against
            5.10 ms at best, AMD CPU; `edge/benchmark.py`'s last column).
            Both are close, not exact: besides the rounding of each weight, a
            gate whose logit lies near 0 can flip (`make demo`'s model, 2,000
            test images: top-1 changed on 0.8% in float16, 3.4% in int8, the
            accuracy within 0.5 points; `benchmarks/weight_dtypes.py`).
        representative_images: with `weight_dtype="int8"`, `(N, H, W, C)`
            raw images whose activations set int8 ranges for the activations
            too: LiteRT's full-integer quantization, int8 kernels wherever
            LiteRT has one, float32 elsewhere; input and output stay float32.
            What many phone apps ship as their dense model; the dynamic
            export runs slower in it than in float32: its matmuls with
            run-time weights get LiteRT's own int8 kernels, not XNNPACK's
            (written as `FULLY_CONNECTED`, the faster of them), and int8
            makes the skipped work cheaper, not the gates' own (MobileNetV1-224
            at keep 0.3 on an AMD CPU: 8.3 ms against 6.2 in float32 and the
            dense full-int8 model's 5.0; `benchmarks/weight_dtypes.py`).
            The exact fallback for an image beyond a compact layer's
            capacity stays float32 (LiteRT quantizes no `IF` branch): a
            larger file than float32's, unless every compact layer is
            capped (`cap_compacted_gates`: no fallback; MobileNetV1-224 5.0
            MB against 22.5 uncapped and the dense int8 model's 4.5).

    Returns:
        The `.tflite` model as bytes. Input: raw RGB pixels `(1, H, W, 3)`
        float32, as the Keras model takes them. Output: logits `(1, classes)`
        (the first output).

    Raises:
        ExportError: not an FTWT model, an unsupported layer, the graph
            would need Flex (Select TF) ops, or Keras runs on another backend
            than TensorFlow.
    """
    _check_backend()
    check_ftwt_model(model)
    _check_threads(num_threads)
    _check_weight_dtype(weight_dtype)
    if representative_images is not None and weight_dtype != "int8":
        raise ExportError("`representative_images` set the int8 ranges of the activations (full-integer "
                          f"quantization): pass them with weight_dtype='int8', not {weight_dtype!r}.")
    if with_predictors and dynamic:
        raise ExportError("`with_predictors=True` needs `dynamic=False` (the dynamic export runs them anyway).")
    tf = _tf()
    # The export computes in float32, also for a network trained in mixed precision.
    network = _graph.in_float32(_graph.as_functional(model.network))
    if representative_images is not None:
        representative_images = checked_images(representative_images, network, what="Representative images")
    policies = _policies(model, policy)
    calibration = _calibration_of(model, calibration_images, calibration, capacity_stds, needed=dynamic)
    conv_macs = _conv_macs(model)
    builder = _Builder(network, dynamic, policies, conv_macs, with_predictors, calibration, static_gates, num_threads,
                       integer_matmuls=representative_images is not None)
    shape = (1,) + tuple(int(d) for d in network.inputs[0].shape[1:])

    if stop_at is not None and stop_at not in {layer.name for layer in network.layers}:
        raise ExportError(f"`stop_at`: the network has no layer named {stop_at!r}.")

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="images")], autograph=False)
    def serve(images):
        return builder(images, stop_at)

    converter = _converter(tf, serve)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # No converter environment and model hash in the file: the runtime never reads them, and writing
    # them unpacks and repacks the whole flatbuffer in Python (~10% of converting MobileNetV1 x0.25).
    converter.exclude_conversion_metadata = True
    if weight_dtype != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # without a dataset: weights only
        if weight_dtype == "float16":
            converter.target_spec.supported_types = [tf.float16]
    if representative_images is not None:
        converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
        # int8 kernels where LiteRT has them, float32 builtins elsewhere (the masks' CEIL, the top-k, ...).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
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


def _converter(tf, function):
    """A TFLite converter for the `tf.function` `function`, skipping TF's freezing where it has nothing to do.

    `TFLiteConverter.from_concrete_functions` first freezes the function (its
    variables into constants) by rebuilding the graph op by op in Python: a third
    or more of converting the graphs `convert` traces (`convert` of a gated
    VGG16-BN: 5.0-6.9 s with it, 3.2-4.1 s without), which hold every weight as
    a constant already. All they capture are eager tensors (such as a
    `Normalization` layer's mean): written into the `GraphDef` as `Const` nodes
    here, the graph goes to the same MLIR converter through its `GraphDef`
    entry point and gives the same bytes (tests/test_export.py). A graph that
    captures anything else (a variable) takes TF's own path.
    """
    concrete = function.get_concrete_function()
    captured = {internal.op.name: external for external, internal in concrete.graph.captures}
    if any(value.dtype == tf.resource or not hasattr(value, "numpy") for value in captured.values()):
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    graph_def = concrete.graph.as_graph_def()
    for node in graph_def.node:
        if node.name in captured:  # a Placeholder fed with the captured tensor
            dtype = node.attr["dtype"].type
            node.op = "Const"
            node.ClearField("attr")
            node.attr["dtype"].type = dtype
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(captured[node.name].numpy()))
    inputs = [tensor for tensor in concrete.inputs if tensor.op.name not in captured]
    return tf.compat.v1.lite.TFLiteConverter(graph_def, inputs, concrete.outputs)


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


SIGNATURE_KEY = "serving_default"


def with_signature(flatbuffer):
    """The flatbuffer with a `serving_default` signature: input `images`, output `logits`.

    `convert` goes through concrete functions, which leave a file without a
    signature and its output tensor named `Identity`; an app then addresses
    both by index. With the signature, LiteRT's signature runners
    (`get_signature_runner()(images=...)["logits"]`, `runSignature` on
    Android) address them by name. The ops are untouched; it adds ~5% to a
    conversion's time, so `export_file` (and `edge/convert.py`,
    `model.export`) sign the file they write, while `convert`'s bytes, timed
    over and over by the benchmarks, stay unsigned.

    Example (`export.interpreter(signed).get_signature_list()`):
    `{"serving_default": {"inputs": ["images"], "outputs": ["logits"]}}`.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    (images,), (logits,) = graph.inputs, graph.outputs
    graph.tensors[logits].name = b"logits"

    def tensor_map(name, index):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = SIGNATURE_KEY, 0
    signature.inputs, signature.outputs = [tensor_map("images", images)], [tensor_map("logits", logits)]
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


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
                static_gates=True, num_threads=1, calibration=None, weight_dtype="float32", representative_images=None):
    """Writes the `.tflite` export of an FTWT model to `output_path`; returns the path.

    The file is `convert`'s flatbuffer `with_signature`: a `serving_default`
    signature from input `images` to output `logits`.

    Args:
        model: an `ftwt_keras.FTWTModel`, or the path of one saved as `.keras`
            (loaded with `load_ftwt_model`).
        output_path: where to write; must end with `.tflite`.
        dynamic, policy, calibration_images, capacity_stds, static_gates,
            num_threads, calibration, weight_dtype, representative_images: as
            in `convert`.
    """
    output_path = os.fspath(output_path)
    if not output_path.endswith(".tflite"):
        raise ExportError(f"Output path {output_path!r} must end with .tflite.")
    if isinstance(model, (str, os.PathLike)):
        model = load_ftwt_model(model)
    flatbuffer = convert(model, dynamic=dynamic, policy=policy, calibration_images=calibration_images,
                         capacity_stds=capacity_stds, calibration=calibration, static_gates=static_gates,
                         num_threads=num_threads, weight_dtype=weight_dtype,
                         representative_images=representative_images)
    return save(with_signature(flatbuffer), output_path)


__all__ = [
    "AUTO_CHAIN_CUTOFF",
    "AUTO_CHAIN_CUTOFF_MID",
    "AUTO_CHAIN_MID_PIXELS",
    "AUTO_IM2COL_PIXELS",
    "AUTO_INPUT_CUTOFF",
    "AUTO_MIN_FILTERS",
    "AUTO_MIN_MACS",
    "AUTO_MIN_PIXELS",
    "AUTO_MULTITHREAD_CHAIN_CUTOFF",
    "AUTO_MULTITHREAD_INPUT_CUTOFF",
    "CAPACITY_STDS",
    "LEAN_PLANS",
    "LOGIT_TOLERANCE",
    "Calibration",
    "Compact",
    "DEVICE_SCRIPT",
    "DeviceRun",
    "ExportError",
    "ExportSuite",
    "FoldedUnit",
    "POLICIES",
    "RUNTIMES",
    "SIGNATURE_KEY",
    "STATIC_MIN_DECIDED",
    "SUPPORTED_LAYERS",
    "TimedPlan",
    "WEIGHT_DTYPES",
    "agreement",
    "agreement_report",
    "benchmark_model_ms",
    "calibrate",
    "cap_compacted_gates",
    "check_ftwt_model",
    "compacted_layers",
    "convert",
    "cpu_name",
    "drawn_at_targets",
    "export_candidates",
    "export_file",
    "fold_batch_norm",
    "gate_candidates",
    "gate_counts",
    "interpreter",
    "keras_reference",
    "kept_gates",
    "layer_times",
    "load_calibration_images",
    "load_ftwt_model",
    "loop_medians",
    "loop_times",
    "measured_paying_gates",
    "median_ms",
    "op_names",
    "parse_policy",
    "paying_gates",
    "pick_candidate",
    "randomize_batch_norm",
    "read_manifest",
    "run",
    "runner",
    "save",
    "set_keep_ratio",
    "statically_pruned_layers",
    "time_invokes",
    "time_side_by_side",
    "with_signature",
    "write_device_script",
]
