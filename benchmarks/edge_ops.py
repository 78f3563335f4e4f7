"""Where the time of a gathered .tflite goes: single builtin ops, timed side by side.

    python benchmarks/edge_ops.py                         # three MobileNetV1-224 layer shapes
    python benchmarks/edge_ops.py --shapes=14x512 --keep=0.3
    python benchmarks/edge_ops.py --predictor_weights     # MobileNetV1's predictors: fp32 / int8 / fp16
    python benchmarks/edge_ops.py --predictor_pool        # predictors pooling the padded vs unpadded input
    python benchmarks/edge_ops.py --conv3x3               # a compact 3x3 conv: run-time filter vs im2col
    python benchmarks/edge_ops.py --thread_overhead       # what a second thread costs per op and per partition

For each activation shape (H x H x C, batch 1) and keep ratio k, converts tiny
builtins-only graphs with TFLite and times each invoke alone with LiteRT
(XNNPACK on, 1 thread), all graphs alternating image by image. The graphs are
the building blocks of the dynamic export (`ftwt_keras.export.tflite`):

- `dense dw3x3 + pw` : the dense block (static weights, XNNPACK), the time to beat;
- `pw gathered k x k`: a 1x1 conv on k*C input channels computing k*C filters,
  weights gathered at run time (BATCH_MATMUL);
- `pw gathered k x C`: the same conv reading k*C input channels, all C filters
  (only the input side compacted; weight rows gathered);
- `dw dense`         : the 3x3 depthwise conv alone on all C channels (XNNPACK);
- `dw gathered k`    : the same conv on k*C compact channels, its filter gathered at
  run time (converts only with a static k: DEPTHWISE_CONV_2D needs a constant
  channel count, and then runs on the builtin kernel, not XNNPACK);
- `gather channels`  : selecting k*C channels of an NHWC activation (GATHER, last axis);
- `gather rows (CHW)`: the same selection in channels-first layout (GATHER, axis 0);
- `transpose CHW->HWC`: changing layout once;
- `mask multiply`    : multiplying the activation by a per-channel 0/1 mask;
- `predictor`        : global average pool (MEAN) + matmul (a mask predictor);
- `predictor AVG_POOL`: the same with the pool as a global AVERAGE_POOL_2D;
- `elementwise pass` : x + 1, one read and one write of the activation (memory speed).

The per-element costs show when gathering pays: a gather costs a few ns per
element moved, a 1x1 conv about C_out * (time per MAC) per input element.

`--predictor_weights` times instead the matrix-vector products of every mask
predictor of a gated MobileNetV1 (`--alpha`) at batch 1, with float32 weights and
with the converter's int8 (dynamic range) and float16 weight storage, and prints
how far their outputs move from float32.

`--predictor_pool` times whole MobileNetV1-224 exports (`--alpha`, full and
rank-64 predictors): dense, dense + every predictor pooling its conv's
unpadded input (what `gate()` builds: the official predictor sees the input
before the conv's padding), and dense + predictors pooling the zero-padded
input in front of the strided convs (the earlier behaviour), to show what
reading the padded tensor costs: it keeps XNNPACK from fusing that PAD into
the conv.

`--conv3x3` times one 3x3 conv (`--conv_cases`, keep `--keep`) three ways:
the dense conv on all channels (`CONV_2D`, constant filter, XNNPACK), the
time to beat; its k active filters as one `CONV_2D` whose filter is gathered
at run time (which XNNPACK does not take: the builtin kernel runs it); and
the export's way, im2col (`STRIDED_SLICE` windows, `CONCATENATION`) and a
`BATCH_MATMUL` with gathered weight rows (XNNPACK). A case reads its input
compact (k of C channels, as behind a compacted layer) unless it says
`full`; both compact forms are checked against the dense conv's output.

`--thread_overhead` times, with 1 and 2 interpreter threads, a chain of
`--chain_ops` tiny elementwise ops (on 14x14x64) that XNNPACK runs as one
partition, the same chain cut into `--partitions` partitions by builtin
`GATHER`s between its ops, and those `GATHER`s alone: what a second thread
costs per XNNPACK op and per XNNPACK partition where the work is too small to
split. A compact export is made of many small ops in many partitions (capped
MobileNetV1-224: 89 partitions), which is why it can run slower with 2
threads than with 1 (`benchmarks/thread_scaling.py`).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["112x64", "56x128", "14x512"], "Activation shapes as HxC (square H x H x C).")
flags.DEFINE_float("keep", 0.5, "Fraction of channels kept by the gathers and the gathered conv.")
flags.DEFINE_integer("repeats", 200, "Timed invokes per graph.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_bool("predictor_weights", False, "Time MobileNetV1's predictor matvecs with fp32 / int8 / fp16 weights.")
flags.DEFINE_bool("predictor_pool", False,
                  "Time MobileNetV1-224 with predictors pooling the padded vs the unpadded input.")
flags.DEFINE_bool("conv3x3", False, "Time a compact 3x3 conv: dense vs run-time filter vs im2col + matmul.")
flags.DEFINE_list("conv_cases", ["32x16", "16x32", "8x64", "56x64", "14x256", "32x16:full", "28x128:full",
                                 "56x64:full:s2"],
                  "--conv3x3 cases: SIZExFILTERS (a square map, as many input channels), then `:full` for an "
                  "input with all channels, `:s2` for stride 2.")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier for --predictor_weights and --predictor_pool.")
flags.DEFINE_bool("thread_overhead", False,
                  "Time chains of tiny ops with 1 and 2 threads: what a second thread costs per XNNPACK op and "
                  "per XNNPACK partition.")
flags.DEFINE_integer("chain_ops", 300, "--thread_overhead: elementwise ops in the chain.", lower_bound=2)
flags.DEFINE_integer("partitions", 100, "--thread_overhead: XNNPACK partitions the cut chain runs as.", lower_bound=2)


def _flatbuffer(fn, specs, weights="float32"):
    import tensorflow as tf

    function = tf.function(fn, input_signature=specs, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if weights != "float32":  # the converter's post-training weight storage
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if weights == "float16":
            converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def graphs(size, channels, keep, seed=0):
    """`{name: (flatbuffer, inputs)}` of the op graphs listed in the module doc."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    kept = max(1, int(round(keep * channels)))
    # pointwise: (C_in, C_out)
    depthwise = rng.normal(size=(3, 3, channels, 1)).astype("float32")
    pointwise = rng.normal(size=(channels, channels)).astype("float32")
    bias = rng.normal(size=(channels,)).astype("float32")
    mask = (rng.uniform(size=(1, 1, 1, channels)) < keep).astype("float32")
    active = np.sort(rng.choice(channels, kept, replace=False)).astype("int32")
    full = rng.normal(size=(1, size, size, channels)).astype("float32")
    compact = np.ascontiguousarray(full[..., :kept])
    chw = np.ascontiguousarray(full[0].transpose(2, 0, 1).reshape(channels, size * size))
    spec = tf.TensorSpec(full.shape, tf.float32)
    index_spec = tf.TensorSpec((kept,), tf.int32)

    def dense_block(x):
        y = tf.nn.relu(tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME"))
        return tf.nn.relu(tf.nn.conv2d(y, pointwise[None, None], 1, "SAME") + bias)

    def gathered_pointwise(x, index):
        weights = tf.gather(tf.gather(tf.constant(pointwise.T.copy()), index), index, axis=1)  # (out, in)
        y = tf.linalg.matmul(tf.reshape(x, [1, size * size, -1]), weights[None], adjoint_b=True)
        return tf.nn.relu(y + tf.gather(tf.constant(bias), index))

    def gathered_inputs(x, index):
        weights = tf.gather(tf.constant(pointwise), index)  # (in, out): rows of the active inputs
        y = tf.linalg.matmul(tf.reshape(x, [1, size * size, -1]), weights[None])
        return tf.nn.relu(y + bias)

    def predictor(x):
        return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), tf.constant(pointwise)) + bias

    def predictor_avg_pool(x):
        pooled = tf.reshape(tf.nn.avg_pool2d(x, (size, size), 1, "VALID"), [1, channels])
        return tf.matmul(pooled, tf.constant(pointwise)) + bias

    def dense_depthwise(x):
        return tf.nn.relu(tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME"))

    def gathered_depthwise(x, index):
        weights = tf.gather(tf.constant(depthwise), index, axis=2)
        return tf.nn.relu(tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1], "SAME"))

    return {
        "dense dw3x3 + pw": (_flatbuffer(dense_block, [spec]), [full]),
        "pw gathered k x k": (_flatbuffer(gathered_pointwise, [tf.TensorSpec(compact.shape, tf.float32), index_spec]),
                              [compact, active]),
        "pw gathered k x C": (_flatbuffer(gathered_inputs, [tf.TensorSpec(compact.shape, tf.float32), index_spec]),
                              [compact, active]),
        "dw dense": (_flatbuffer(dense_depthwise, [spec]), [full]),
        "dw gathered k": (_flatbuffer(gathered_depthwise, [tf.TensorSpec(compact.shape, tf.float32), index_spec]),
                          [compact, active]),
        "gather channels": (_flatbuffer(lambda x, i: tf.gather(x, i, axis=-1), [spec, index_spec]), [full, active]),
        "gather rows (CHW)": (_flatbuffer(lambda x, i: tf.gather(x, i), [tf.TensorSpec(chw.shape, tf.float32),
                                                                        index_spec]), [chw, active]),
        "transpose CHW->HWC": (_flatbuffer(lambda x: tf.transpose(tf.reshape(x, [channels, size, size]), [1, 2, 0]),
                                           [tf.TensorSpec(chw.shape, tf.float32)]), [chw]),
        "mask multiply": (_flatbuffer(lambda x: x * tf.constant(mask), [spec]), [full]),
        "predictor": (_flatbuffer(predictor, [spec]), [full]),
        "predictor AVG_POOL": (_flatbuffer(predictor_avg_pool, [spec]), [full]),
        "elementwise pass": (_flatbuffer(lambda x: x + 1.0, [spec]), [full]),
    }


def conv3x3_graphs(size, channels, keep, stride=1, compact_input=True, seed=0):
    """`{name: (flatbuffer, inputs)}`: a 3x3 conv dense, on a run-time filter, and as im2col + matmul.

    The compact forms compute the k = keep * channels active filters (random,
    an input of the graph like the export's active indices) on a compact input
    of the k channels at other random indices, or on all channels when
    `compact_input` is False; the dense form, every filter on every channel.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    kept = max(1, int(round(keep * channels)))
    kernel = (rng.normal(size=(3, 3, channels, channels)) / np.sqrt(9 * channels)).astype("float32")
    filters = np.sort(rng.choice(channels, kept, replace=False)).astype("int32")
    present = np.sort(rng.choice(channels, kept, replace=False)) if compact_input else np.arange(channels)
    full = rng.normal(size=(1, size, size, channels)).astype("float32")
    if compact_input:  # the channels a compact input lacks are zeros in the dense conv's input
        full[..., np.setdiff1d(np.arange(channels), present)] = 0.0
    x = np.ascontiguousarray(full[..., present])
    out_size = (size + stride - 1) // stride
    # Filter-major copies, so that each gather copies contiguous rows.
    by_filter = np.ascontiguousarray(kernel[:, :, present].transpose(3, 0, 1, 2))  # (out, 3, 3, in)
    rows = by_filter.reshape(channels, 9 * len(present))  # (out, 9 * in), im2col's column order

    def dense(image):
        return tf.nn.relu(tf.nn.conv2d(image, kernel, stride, "SAME"))

    def runtime_filter(image, active):
        weights = tf.transpose(tf.gather(tf.constant(by_filter), active), [1, 2, 3, 0])  # HWIO
        return tf.nn.relu(tf.nn.conv2d(image, weights, stride, "SAME"))

    def im2col(image, active):
        total = max((out_size - 1) * stride + 3 - size, 0)  # "SAME": the extra row / column goes after
        padded = tf.pad(image, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
        end = stride * (out_size - 1) + 1
        windows = [padded[:, i:i + end:stride, j:j + end:stride, :] for i in range(3) for j in range(3)]
        columns = tf.reshape(tf.concat(windows, -1), [1, out_size * out_size, 9 * len(present)])
        weights = tf.gather(tf.constant(rows), active)[None]
        return tf.nn.relu(tf.reshape(tf.linalg.matmul(columns, weights, adjoint_b=True),
                                     [1, out_size, out_size, kept]))

    image_spec, index_spec = tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec((kept,), tf.int32)
    return {
        "dense (XNNPACK)": (_flatbuffer(dense, [tf.TensorSpec(full.shape, tf.float32)]), [full]),
        "CONV_2D, run-time filter": (_flatbuffer(runtime_filter, [image_spec, index_spec]), [x, filters]),
        "im2col + BATCH_MATMUL": (_flatbuffer(im2col, [image_spec, index_spec]), [x, filters]),
    }


def predictor_weight_graphs(alpha):
    """`{weights: (flatbuffer, inputs)}`: all predictor matvecs of a gated MobileNetV1-224.

    One graph per weight storage (float32, int8, float16); the input is one
    pooled vector, sliced to each predictor's input width.
    """
    import numpy as np
    import tensorflow as tf

    import ftwt_keras as fk

    model = fk.gate(fk.models.mobilenet_v1(input_shape=(224, 224, 3), num_classes=1000, alpha=alpha))
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=layer.predictor.kernel.shape).astype("float32") for layer in model.gated_layers]
    width = max(kernel.shape[0] for kernel in kernels)
    pooled = rng.normal(size=(1, width)).astype("float32")

    def predictors(x):
        return tf.concat([tf.matmul(x[:, : kernel.shape[0]], tf.constant(kernel)) for kernel in kernels], axis=-1)

    spec = [tf.TensorSpec(pooled.shape, tf.float32)]
    return {weights: (_flatbuffer(predictors, spec, weights), [pooled]) for weights in ("float32", "int8", "float16")}


def predictor_pool_exports(alpha, ranks=(None, 64)):
    """`{name: flatbuffer}`: MobileNetV1-224 dense, and + predictors pooling the unpadded / padded input."""
    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    base = fk.models.mobilenet_v1(input_shape=(224, 224, 3), num_classes=1000, alpha=alpha)
    built = {}
    for rank in ranks:
        model = fk.gate(base, predictor_rank=rank)
        label = "full" if rank is None else f"rank {rank}"
        if not built:
            built["dense"] = tflite.convert(model, dynamic=False)
        built[f"+ predictors ({label}), unpadded"] = tflite.convert(model, dynamic=False, with_predictors=True)
        for layer in model.gated_layers:  # the earlier behaviour: pool the ZeroPadding2D output
            layer.predictor.input_padding = None
        built[f"+ predictors ({label}), padded"] = tflite.convert(model, dynamic=False, with_predictors=True)
    return built


def thread_overhead_graphs(ops, partitions, size=14, channels=64, seed=0):
    """`{name: (flatbuffer, inputs)}`: `ops` tiny elementwise ops in one XNNPACK partition, the same ops cut
    into `partitions` partitions by builtin `GATHER`s (a copy of the whole activation each), those alone."""
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(seed).normal(size=(1, size, size, channels)).astype("float32")
    spec = [tf.TensorSpec(x.shape, tf.float32)]
    cut_after = {round(ops * (index + 1) / partitions) - 1 for index in range(partitions - 1)}

    def chain(cuts):
        def graph(y):
            for index in range(ops):
                y = y * 1.0001 if index % 2 else y + 0.001  # alternating, so that no two fold into one
                if index in cuts:
                    y = tf.gather(y, [0])  # axis 0 of batch 1: a plain copy, on the builtin kernel
            return y
        return graph

    def gathers(y):
        for _ in cut_after:
            y = tf.gather(y, [0])
        return y

    return {f"{ops} ops, 1 partition": (_flatbuffer(chain(set()), spec), [x]),
            f"{ops} ops, {partitions} partitions": (_flatbuffer(chain(cut_after), spec), [x]),
            f"{len(cut_after)} GATHERs alone": (_flatbuffer(gathers, spec), [x])}


def _runner(flatbuffer, inputs, threads):
    """An interpreter for `flatbuffer` with `inputs` set, ready to invoke."""
    from ftwt_keras.export import tflite

    runner = tflite.interpreter(flatbuffer, threads)
    for detail, value in zip(runner.get_input_details(), inputs):
        if tuple(detail["shape"]) != value.shape:
            runner.resize_tensor_input(detail["index"], value.shape)
    runner.allocate_tensors()
    for detail, value in zip(runner.get_input_details(), inputs):
        runner.set_tensor(detail["index"], value)
    return runner


def _outputs(flatbuffer, inputs):
    runner = _runner(flatbuffer, inputs, 1)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"]).copy()


def time_graphs(built, repeats, threads):
    """Median seconds per invoke of each graph, alternating graphs invoke by invoke."""
    import numpy as np

    runners = {name: _runner(flatbuffer, inputs, threads) for name, (flatbuffer, inputs) in built.items()}
    times = {name: [] for name in runners}
    for step in range(repeats + 10):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.invoke()
            if step >= 10:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.predictor_weights:
        return _predictor_weights()
    if FLAGS.predictor_pool:
        return _predictor_pool()
    if FLAGS.conv3x3:
        return _conv3x3()
    if FLAGS.thread_overhead:
        return _thread_overhead()
    print(f"LiteRT, XNNPACK, {FLAGS.threads} thread(s), keep {FLAGS.keep:g}; median of {FLAGS.repeats} invokes.")
    for shape in FLAGS.shapes:
        size, channels = (int(v) for v in shape.lower().split("x"))
        medians = time_graphs(graphs(size, channels, FLAGS.keep), FLAGS.repeats, FLAGS.threads)
        elements = size * size * channels
        print(f"\n{size}x{size}x{channels} ({elements / 1e3:.0f}k elements):")
        print(f"  {'op graph':20s} {'ms':>8s} {'ns per activation element':>26s}")
        for name, seconds in medians.items():
            print(f"  {name:20s} {1e3 * seconds:8.3f} {1e9 * seconds / elements:26.2f}")
    return 0


def _predictor_weights():
    import numpy as np

    built = predictor_weight_graphs(FLAGS.alpha)
    medians = time_graphs(built, FLAGS.repeats, FLAGS.threads)
    reference = _outputs(*built["float32"])
    print(f"MobileNetV1 x{FLAGS.alpha:g} at 224x224: every mask predictor's matvec, batch 1, LiteRT, XNNPACK, "
          f"{FLAGS.threads} thread(s); median of {FLAGS.repeats} invokes.")
    print(f"  {'weights':8s} {'MB':>6s} {'ms':>7s} {'max |out - float32| / range':>28s} {'sign flips':>11s}")
    for weights, (flatbuffer, inputs) in built.items():
        outputs = _outputs(flatbuffer, inputs)
        error = float(np.abs(outputs - reference).max() / np.ptp(reference))
        flips = int(np.sum((outputs > 0) != (reference > 0)))
        print(f"  {weights:8s} {len(flatbuffer) / 1e6:6.1f} {1e3 * medians[weights]:7.3f} {error:28.2e} "
              f"{flips:5d} / {reference.size}")
    return 0


def _predictor_pool():
    import numpy as np

    images = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    built = {name: (flatbuffer, [images]) for name, flatbuffer in predictor_pool_exports(FLAGS.alpha).items()}
    medians = time_graphs(built, FLAGS.repeats, FLAGS.threads)
    print(f"MobileNetV1 x{FLAGS.alpha:g} at 224x224, random weights, LiteRT, XNNPACK, {FLAGS.threads} thread(s); "
          f"median of {FLAGS.repeats} invokes, exports alternating.")
    print(f"  {'export':36s} {'ms':>7s} {'over dense':>11s}")
    for name, seconds in medians.items():
        print(f"  {name:36s} {1e3 * seconds:7.2f} {1e3 * (seconds - medians['dense']):+10.2f}")
    return 0


def _conv_case(case):
    """(size, channels, stride, compact input) of a --conv_cases entry."""
    size, *options = case.lower().split(":")
    try:
        size, channels = (int(v) for v in size.split("x"))
        strides = [int(option[1:]) for option in options if option.startswith("s")]
    except ValueError as error:
        raise app.UsageError(f"--conv_cases: {case!r} is not SIZExFILTERS[:full][:sN]: {error}") from error
    if any(option != "full" and not option.startswith("s") for option in options) or len(strides) > 1:
        raise app.UsageError(f"--conv_cases: {case!r} is not SIZExFILTERS[:full][:sN].")
    return size, channels, strides[0] if strides else 1, "full" not in options


def _conv3x3():
    import numpy as np

    cases = [_conv_case(case) for case in FLAGS.conv_cases]
    print(f"One 3x3 conv, keep {FLAGS.keep:g} of its filters, LiteRT, XNNPACK, {FLAGS.threads} thread(s); "
          f"median of {FLAGS.repeats} invokes, graphs alternating.")
    print("| conv | input | dense (XNNPACK) | `CONV_2D`, run-time filter | im2col + `BATCH_MATMUL` "
          "| max difference from dense |\n|---|---|---|---|---|---|")
    for case, (size, channels, stride, compact) in zip(FLAGS.conv_cases, cases):
        built = conv3x3_graphs(size, channels, FLAGS.keep, stride, compact)
        medians = time_graphs(built, FLAGS.repeats, FLAGS.threads)
        _, (_, active) = built["CONV_2D, run-time filter"]
        reference = _outputs(*built["dense (XNNPACK)"])[..., active]
        difference = max(float(np.abs(_outputs(*built[name]) - reference).max())
                         for name in ("CONV_2D, run-time filter", "im2col + BATCH_MATMUL"))
        times = " | ".join(f"{1e6 * seconds:.0f} us" for seconds in medians.values())
        print(f"| {size}x{size}, {channels} filters{f', stride {stride}' if stride > 1 else ''} "
              f"| {'compact' if compact else 'full'} | {times} | {difference:.1e} |", flush=True)
    return 0


def _thread_overhead():
    from ftwt_keras.export import tflite

    if FLAGS.partitions > FLAGS.chain_ops:
        raise app.UsageError(f"--partitions ({FLAGS.partitions}) cannot exceed --chain_ops ({FLAGS.chain_ops}).")
    built = thread_overhead_graphs(FLAGS.chain_ops, FLAGS.partitions)
    # 1 and 2 threads twice, in turn, so that a drift of the host's speed falls on both.
    runs = [(threads, time_graphs(built, FLAGS.repeats, threads)) for threads in (1, 2, 1, 2)]
    ms = {threads: {name: 1e3 * min(medians[name] for count, medians in runs if count == threads) for name in built}
          for threads in (1, 2)}
    print(f"Chains of tiny ops on 14x14x64, LiteRT, XNNPACK; the lower of two medians of {FLAGS.repeats} invokes "
          "per thread count, graphs alternating.")
    print("| graph | ops | 1 thread | 2 threads | the 2nd thread adds |\n|---|---|---|---|---|")
    added = {}
    for name, (flatbuffer, _) in built.items():
        added[name] = ms[2][name] - ms[1][name]
        print(f"| {name} | {len(tflite.op_names(flatbuffer))} | {ms[1][name]:.3f} ms | {ms[2][name]:.3f} ms "
              f"| {1e3 * added[name]:+.0f} us |")
    whole, cut, alone = added.values()
    per_op = whole / FLAGS.chain_ops
    per_partition = (cut - whole - alone) / (FLAGS.partitions - 1)
    print(f"A second thread adds {1e3 * per_op:.2f} us per XNNPACK op and {1e3 * per_partition:.2f} us per "
          "XNNPACK partition where there is too little work to split.")
    return 0


if __name__ == "__main__":
    app.run(main)
