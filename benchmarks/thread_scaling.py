"""The same .tflite files timed with 1 and 2 threads: what a second thread gives each export, under either LiteRT API.

    python benchmarks/thread_scaling.py                        # MobileNetV1-224, rank-16 predictors, keep 0.3, capped
    python benchmarks/thread_scaling.py --keep=0.5 --predictor_rank=0 --capped_ratio=0
    python benchmarks/thread_scaling.py --runtimes=interpreter  # LiteRT's Interpreter only

A zoo MobileNetV1 (--alpha) with random weights and batch-norm statistics and
masks drawn at --keep per layer, as `edge/benchmark.py --mode=imagenet` draws
them (no ImageNet weights exist here), timed on real CIFAR-10 test images
resized to --resolution. Unlike edge/benchmark.py, which makes each dynamic
export for the thread count it is timed with (`convert(num_threads=...)`), the
exports here are made once (for --plan_threads) and each file is timed with
every --threads count, side by side (`tflite.median_ms`, --loops): the dense
model, the dense model plus every mask predictor, the dynamic export and, with
--capped_ratio, the model with its compacted convs capped at that multiple of
their mean count (`export.cap_compacted_gates`; another model). It prints each
file's median time per thread count and its speed-up over its own time with
the fewest threads. Each file runs through every LiteRT API of --runtimes
(`runtime.RUNTIMES`): the Interpreter (LiteRT 1.x's, what benchmark_model
runs) and LiteRT 2.x's CompiledModel (what apps written for LiteRT 2.x run),
both in the same side-by-side loop, after a check that both give the same
logits on the timed images.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"  # the export is a TensorFlow graph
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("resolution", 224, "Input size (test images resized to it).")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier.")
flags.DEFINE_integer("predictor_rank", 16, "Mask predictors' rank (`gate(predictor_rank=...)`); 0: the paper's full ones.",
                     lower_bound=0)
flags.DEFINE_float("keep", 0.3, "Keep ratio per layer of the drawn masks.")
flags.DEFINE_float("capped_ratio", 1.0, "Also time the compacted convs capped at this multiple of their mean count; 0: not.",
                   lower_bound=0.0)
flags.DEFINE_string("policy", "auto", "The dynamic export's policy (`convert`'s).")
flags.DEFINE_integer("plan_threads", 1, "The thread count the exports are made for (`convert(num_threads=...)`).",
                     lower_bound=1)
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts to time each file with.")
flags.DEFINE_integer("num_images", 120, "Real CIFAR-10 test images timed.", lower_bound=1)
flags.DEFINE_integer("calibration_images", 64, "CIFAR-10 training images calibrating the dynamic export.",
                     lower_bound=1)
flags.DEFINE_integer("loops", 3, "Side-by-side timing loops per thread count.", lower_bound=1)
flags.DEFINE_list("runtimes", ["interpreter", "compiled_model"],
                  "The LiteRT APIs to run each file through (`ftwt_keras.export.runtime.RUNTIMES`).")
flags.register_validator("runtimes", lambda names: bool(names) and set(names) <= {"interpreter", "compiled_model"},
                         message="--runtimes takes interpreter and/or compiled_model.")
flags.register_validator("threads", lambda counts: all(count.isdigit() and int(count) > 0 for count in counts),
                         message="--threads takes positive integers.")


def main(argv):
    del argv
    import ftwt_keras as fk
    from ftwt_keras import export
    from ftwt_keras.export import tflite
    from ftwt_keras.export.drawn_masks import DRAWN_CAPACITY_RATIO

    size, threads = FLAGS.resolution, sorted({int(count) for count in FLAGS.threads})
    images = fk.data.cifar_arrays("cifar10", f"test[:{FLAGS.num_images}]", image_size=size)[0]
    calibration = fk.data.cifar_arrays("cifar10", f"train[:{FLAGS.calibration_images}]", image_size=size)[0]
    classes = 10 if size == 32 else 1000
    base = fk.models.mobilenet_v1(input_shape=(size, size, 3), num_classes=classes, alpha=FLAGS.alpha)
    model = fk.gate(base, predictor_rank=FLAGS.predictor_rank or None, use_softmax=False)
    export.randomize_batch_norm(model)
    export.set_keep_ratio(model, FLAGS.keep, seed=0)
    policy = tflite.parse_policy(FLAGS.policy)
    # Drawn masks are the same on every image: every predictor kept running (no static pruning), capacities
    # with edge/benchmark.py's margin for the masks of a trained model.
    options = dict(policy=policy, static_gates=False, num_threads=FLAGS.plan_threads)
    exports = {
        "dense": export.convert(model, dynamic=False),
        "dense + predictors": export.convert(model, dynamic=False, with_predictors=True),
        "dynamic": export.convert(model, calibration=export.calibrate(model, calibration).with_capacity_ratio(
            model, DRAWN_CAPACITY_RATIO), **options),
    }
    capped = []
    if FLAGS.capped_ratio:
        capped = export.cap_compacted_gates(model, calibration, ratio=FLAGS.capped_ratio, **options)
        if capped:
            exports["capped"] = export.convert(model, calibration=export.calibrate(model, calibration).with_capacity_ratio(
                model, FLAGS.capped_ratio), **options)
    predictors = "full" if not FLAGS.predictor_rank else f"rank-{FLAGS.predictor_rank}"
    print(f"{export.cpu_name()}: MobileNetV1 x{FLAGS.alpha:g} at {size}x{size}, {predictors} predictors, masks drawn "
          f"at keep {FLAGS.keep:g} per layer, exports made for {FLAGS.plan_threads} thread(s)"
          + (f", {len(capped)} compacted convs capped at {FLAGS.capped_ratio:g}x" if capped else "")
          + f"; {len(images)} test images x {FLAGS.loops} loops per thread count.", flush=True)
    # Every file under every API, side by side: named "dynamic" through the Interpreter,
    # "dynamic (CompiledModel)" through LiteRT 2.x's CompiledModel.
    runtimes = list(dict.fromkeys(FLAGS.runtimes))
    timed = {_labelled(name, api): (flatbuffer, api) for name, flatbuffer in exports.items() for api in runtimes}
    if len(runtimes) > 1:
        differing = [name for name, flatbuffer in exports.items()
                     if len({tflite.run(flatbuffer, images, api=api).tobytes() for api in runtimes}) > 1]
        print(f"Through {' and '.join(runtimes)}: "
              + (f"different logits from {', '.join(differing)}." if differing else
                 f"the same logits from every file on the {len(images)} images."), flush=True)
    flatbuffers = {label: flatbuffer for label, (flatbuffer, _) in timed.items()}
    apis = {label: api for label, (_, api) in timed.items()}
    times = {count: tflite.median_ms(flatbuffers, images, FLAGS.loops, num_threads=count, api=apis)
             for count in threads}
    fewest = threads[0]
    print("| export | " + " | ".join(f"{count} thread(s)" for count in threads) + " |")
    print("|---" * (len(threads) + 1) + "|")
    for label in timed:
        cells = [f"{times[count][label]:.2f} ms" + ("" if count == fewest else
                                                    f" ({times[fewest][label] / times[count][label]:.2f}x)")
                 for count in threads]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


def _labelled(name, api):
    """An export's name in the table: as is through the Interpreter, "(CompiledModel)" added through LiteRT 2.x's."""
    return name if api == "interpreter" else f"{name} (CompiledModel)"


if __name__ == "__main__":
    app.run(main)
