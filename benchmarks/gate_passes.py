"""Eager against compiled passes over a dataset: `dynamic_macs` and `estimate_flops_reduction`.

    python benchmarks/gate_passes.py                 # MobileNetV1 x0.25 and x1.0, 2,560 CIFAR-10 test images

The passes that read gates over a dataset (`flops.dynamic_macs`,
`firing_rates`, `estimate_flops_reduction`, `target_flops_reduction`, the
export's calibration) run through `flops.map_gate_records`, which compiles the
pass as `model.predict` does from `flops.COMPILE_FROM_BATCHES` batches on.
This times both ways side by side on the same model and images, the compiled
one including its trace (what a user waits for), beside `model.predict` of
the same FTWT model, --loops times in alternating order, and checks that
both ways give the same numbers.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("alphas", ["0.25", "1.0"], "Width multipliers of MobileNetV1 (CIFAR, 32x32).")
flags.DEFINE_integer("num_images", 2560, "Real CIFAR-10 test images per pass.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1)
flags.DEFINE_float("threshold", 0.9, "Threshold r of the gates and of the estimate.")
flags.DEFINE_integer("loops", 2, "Side-by-side loops.", lower_bound=1)


def _positive_numbers(values):
    try:
        return all(float(value) > 0 for value in values)
    except ValueError:
        return False


flags.register_validator("alphas", _positive_numbers, message="--alphas must be positive width multipliers, e.g. 0.25,1.0.")
flags.register_validator("threshold", lambda value: 0 < value <= 1, message="--threshold must be in (0, 1].")


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import ftwt_keras as fk
    from ftwt_keras import export, flops

    images, _ = fk.data.cifar_arrays("cifar10", "test", take=FLAGS.num_images)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(FLAGS.batch_size)
    print(f"{export.cpu_name()}, {len(images)} CIFAR-10 test images in batches of {FLAGS.batch_size}, "
          f"TF {tf.__version__}, Keras {keras.__version__}")
    compiled_from = flops.COMPILE_FROM_BATCHES
    for alpha in map(float, FLAGS.alphas):
        base = fk.models.mobilenet_v1(input_shape=(32, 32, 3), alpha=alpha, num_classes=10)
        model = fk.gate(base, threshold=FLAGS.threshold)
        passes = {
            "dynamic_macs": lambda: flops.dynamic_macs(model, batches),
            "estimate_flops_reduction": lambda: fk.estimate_flops_reduction(base, batches, FLAGS.threshold),
        }
        model.predict(batches.take(1), verbose=0)  # warm-up: the first eager call builds what it needs
        seconds, results = {}, {}
        for loop in range(FLAGS.loops):
            ways = ("eager", "compiled") if loop % 2 == 0 else ("compiled", "eager")
            start = time.perf_counter()
            model.predict(batches, verbose=0)
            seconds.setdefault("predict", []).append(time.perf_counter() - start)
            for name, run in passes.items():
                for way in ways:
                    flops.COMPILE_FROM_BATCHES = 1 if way == "compiled" else sys.maxsize
                    start = time.perf_counter()
                    results[name, way] = run()
                    seconds.setdefault((name, way), []).append(time.perf_counter() - start)
        flops.COMPILE_FROM_BATCHES = compiled_from
        print(f"\nMobileNetV1 x{alpha:g}, r = {FLAGS.threshold:g}: median of {FLAGS.loops} loop(s), seconds "
              f"(model.predict of the FTWT model: {np.median(seconds['predict']):.2f})")
        for name in passes:
            eager, compiled = (float(np.median(seconds[name, way])) for way in ("eager", "compiled"))
            difference = np.max(np.abs(np.asarray(results[name, "eager"]) - np.asarray(results[name, "compiled"])))
            print(f"  {name:26s} eager {eager:6.2f}  compiled (trace included) {compiled:6.2f}  "
                  f"{eager / compiled:4.1f}x  max difference {difference:.3g}")


if __name__ == "__main__":
    app.run(main)
