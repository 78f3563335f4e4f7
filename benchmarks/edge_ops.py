"""Where the time of a gathered .tflite goes: single builtin ops, timed side by side.

    python benchmarks/edge_ops.py                         # three MobileNetV1-224 layer shapes
    python benchmarks/edge_ops.py --shapes=14x512 --keep=0.3

For each activation shape (H x H x C, batch 1) and keep ratio k, converts tiny
builtins-only graphs with TFLite and times each invoke alone with LiteRT
(XNNPACK on, 1 thread), all graphs alternating image by image. The graphs are
the building blocks of the dynamic export (`ftwt_keras.export.tflite`):

- `dense dw3x3 + pw` : the dense block (static weights, XNNPACK), the time to beat;
- `pw gathered k x k`: a 1x1 conv on k*C input channels computing k*C filters,
  weights gathered at run time (BATCH_MATMUL);
- `pw gathered k x C`: the same conv reading k*C input channels, all C filters
  (only the input side compacted; weight rows gathered);
- `gather channels`  : selecting k*C channels of an NHWC activation (GATHER, last axis);
- `gather rows (CHW)`: the same selection in channels-first layout (GATHER, axis 0);
- `transpose CHW->HWC`: changing layout once;
- `mask multiply`    : multiplying the activation by a per-channel 0/1 mask;
- `predictor`        : global average pool + matmul (a mask predictor);
- `elementwise pass` : x + 1, one read and one write of the activation (memory speed).

The per-element costs show when gathering pays: a gather costs a few ns per
element moved, a 1x1 conv about C_out * (time per MAC) per input element.
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


def _flatbuffer(fn, specs):
    import tensorflow as tf

    function = tf.function(fn, input_signature=specs, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
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

    return {
        "dense dw3x3 + pw": (_flatbuffer(dense_block, [spec]), [full]),
        "pw gathered k x k": (_flatbuffer(gathered_pointwise, [tf.TensorSpec(compact.shape, tf.float32), index_spec]),
                              [compact, active]),
        "pw gathered k x C": (_flatbuffer(gathered_inputs, [tf.TensorSpec(compact.shape, tf.float32), index_spec]),
                              [compact, active]),
        "gather channels": (_flatbuffer(lambda x, i: tf.gather(x, i, axis=-1), [spec, index_spec]), [full, active]),
        "gather rows (CHW)": (_flatbuffer(lambda x, i: tf.gather(x, i), [tf.TensorSpec(chw.shape, tf.float32),
                                                                        index_spec]), [chw, active]),
        "transpose CHW->HWC": (_flatbuffer(lambda x: tf.transpose(tf.reshape(x, [channels, size, size]), [1, 2, 0]),
                                           [tf.TensorSpec(chw.shape, tf.float32)]), [chw]),
        "mask multiply": (_flatbuffer(lambda x: x * tf.constant(mask), [spec]), [full]),
        "predictor": (_flatbuffer(predictor, [spec]), [full]),
        "elementwise pass": (_flatbuffer(lambda x: x + 1.0, [spec]), [full]),
    }


def time_graphs(built, repeats, threads):
    """Median seconds per invoke of each graph, alternating graphs invoke by invoke."""
    import numpy as np

    from ftwt_keras.export import tflite

    runners = {}
    for name, (flatbuffer, inputs) in built.items():
        runner = tflite.interpreter(flatbuffer, threads)
        for detail, value in zip(runner.get_input_details(), inputs):
            if tuple(detail["shape"]) != value.shape:
                runner.resize_tensor_input(detail["index"], value.shape)
        runner.allocate_tensors()
        for detail, value in zip(runner.get_input_details(), inputs):
            runner.set_tensor(detail["index"], value)
        runners[name] = runner
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


if __name__ == "__main__":
    app.run(main)
