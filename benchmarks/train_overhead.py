"""Images/s of the FTWT train step vs the plain Keras train step, side by side.

    python benchmarks/train_overhead.py --model=mobilenet_v1 --alpha=1.0 --batch_size=128

Both models are the same zoo network with the same batch; the FTWT one is
`ftwt_keras.gate(...)` of it (predictors, targets, two optimizers). Each compiled
train step is timed alone; rounds alternate plain / FTWT so that machine noise
hits both, and the median over all steps is reported.
"""

import os
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow loads

from absl import app, flags

flags.DEFINE_enum("model", "mobilenet_v1", ["mobilenet_v1", "resnet_cifar", "vgg16_bn"], "Zoo model (CIFAR size).")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier.")
flags.DEFINE_integer("depth", 56, "CIFAR ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_float("threshold", 0.95, "FTWT threshold r.")
flags.DEFINE_enum("mode", "decoupled", ["decoupled", "joint"], "FTWT mode.")
flags.DEFINE_bool("jit_compile", False, "Compile both train steps with XLA (`compile(jit_compile=True)`).")
FLAGS = flags.FLAGS


def _build():
    import ftwt_keras as fk

    if FLAGS.model == "mobilenet_v1":
        return fk.models.mobilenet_v1(alpha=FLAGS.alpha)
    if FLAGS.model == "resnet_cifar":
        return fk.models.resnet_cifar(FLAGS.depth)
    return fk.models.vgg16_bn()


def _step_seconds(model, iterator, steps):
    """Wall time of each of `steps` single train steps (waits for the results)."""
    import numpy as np

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logs = model.train_function(iterator)
        np.asarray(logs["loss"])  # block until the step is done
        times.append(time.perf_counter() - start)
    return times


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import ftwt_keras as fk

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (FLAGS.batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, FLAGS.batch_size).astype("int32")
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    plain = _build()
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss(), metrics=["accuracy"],
                  jit_compile=FLAGS.jit_compile)
    ftwt = fk.gate(_build(), threshold=FLAGS.threshold, mode=FLAGS.mode)
    ftwt.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                 gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss(), metrics=["accuracy"],
                 jit_compile=FLAGS.jit_compile)
    iterators = {}
    for name, model in (("plain", plain), ("ftwt", ftwt)):  # trace and warm up
        model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
        model.make_train_function()
        iterators[name] = iter(dataset)
        _step_seconds(model, iterators[name], 2)
    results = {"plain": [], "ftwt": []}
    for round_index in range(FLAGS.rounds):
        for name, model in (("plain", plain), ("ftwt", ftwt)):
            seconds = _step_seconds(model, iterators[name], FLAGS.steps)
            results[name].extend(FLAGS.batch_size / t for t in seconds)
        print(f"round {round_index + 1}: plain {np.median(results['plain'][-FLAGS.steps:]):.0f} img/s, "
              f"ftwt {np.median(results['ftwt'][-FLAGS.steps:]):.0f} img/s")
    plain_ips, ftwt_ips = (float(np.median(results[k])) for k in ("plain", "ftwt"))
    name = f"{FLAGS.model}" + (f" alpha={FLAGS.alpha:g}" if FLAGS.model == "mobilenet_v1" else "")
    print(f"\n{name}, batch {FLAGS.batch_size}, {os.cpu_count()} CPUs, "
          f"oneDNN={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, XLA={FLAGS.jit_compile}, TF {tf.__version__}, Keras {keras.__version__}")
    print(f"plain train step: {plain_ips:.0f} images/s (median of {FLAGS.rounds * FLAGS.steps} steps)")
    print(f"FTWT  train step: {ftwt_ips:.0f} images/s ({FLAGS.mode}, r={FLAGS.threshold:g})")
    print(f"FTWT / plain:     {ftwt_ips / plain_ips:.2f}x")


if __name__ == "__main__":
    app.run(main)
