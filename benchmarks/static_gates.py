"""Gates a trained model's weights decide for every image, and what pruning them statically gives on LiteRT.

    python benchmarks/static_gates.py --model runs/demo_softmax/model.keras

    python benchmarks/static_gates.py --model runs/demo_softmax/model.keras --resolution=224

Prints, per gated layer, how many gates `ftwt_keras.static_gates` proves on
or off for every input; checks the export with static gates (the default)
and without (`static_gates=False`: every predictor in full) against Keras on
real CIFAR-10 test images (both with `auto` calibrated on --calibration_images
training images, as `edge/convert.py --calibration`); then times dense, static and per-image exports
side by side (`export.time_side_by_side`, XNNPACK, --threads), --repeats
times over the first 300 images, and prints the medians; with --all_decided
(default) also the export of the model with its undecided gates made always
on, which is no longer the trained model: what the static export would run if
the weights decided every gate.

--resolution runs a zoo MobileNetV1 (`ftwt_keras.models.mobilenet_v1`) at
another input size with the trained weights, predictors included: at 224,
the ImageNet layout (first conv stride 2), on upsampled test images. Which
gates the weights decide does not depend on the input size, so this times
the trained model's static and per-image gates at phone resolution; its
accuracy there means nothing.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from _mobilenet_at import mobilenet_at  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A trained FTWT model (.keras) taking CIFAR-10 images.")
flags.DEFINE_string("dataset", "cifar10", "tfds dataset of the images (its test split).")
flags.DEFINE_integer("num_images", 1000, "Test images for the exactness check; the first 300 are timed.")
flags.DEFINE_integer("repeats", 3, "Side-by-side timing loops.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_integer("calibration_images", 64,
                     "Training images for the exports' `auto` choices (`convert(calibration_images=...)`); 0: none.")
flags.DEFINE_bool("all_decided", True,
                  "Also time, in the same loop, the model with its undecided gates made always on (timing only, "
                  "another model): the best the static export could do, a network pruned statically with no predictor.")
flags.DEFINE_integer("resolution", None, "Zoo MobileNetV1 only: run the trained weights at this input size.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.model:
        raise app.UsageError("--model is required.")
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data
    from ftwt_keras.export import tflite
    from ftwt_keras.static_gates import static_gates_of

    model = tflite.load_ftwt_model(FLAGS.model)
    if FLAGS.resolution:
        try:
            model = mobilenet_at(model, FLAGS.resolution)
        except ValueError as error:
            raise app.UsageError(f"--resolution: {error}") from error
    gates = static_gates_of(model)
    total = sum(len(g.always_on) for g in gates.values())
    print(f"{FLAGS.model}: {sum(g.decided for g in gates.values())} of {total} gates decided by the weights; "
          f"{sum(g.all_decided for g in gates.values())} of {len(gates)} layers entirely.")
    print("| layer | filters | always on | always off | per image |\n|---|---|---|---|---|")
    for name, g in gates.items():
        on, off = int(g.always_on.sum()), int(g.always_off.sum())
        print(f"| {name} | {len(g.always_on)} | {on} | {off} | {len(g.always_on) - on - off} |")

    size = int(model.network.inputs[0].shape[1])
    images, _ = data.cifar_arrays(FLAGS.dataset, f"test[:{FLAGS.num_images}]", image_size=size)
    calibration = None
    if FLAGS.calibration_images:
        calibration = data.cifar_arrays(FLAGS.dataset, f"train[:{FLAGS.calibration_images}]", image_size=size)[0]
    expected = np.asarray(model.predict(images, batch_size=100, verbose=0))
    flatbuffers = {"dense": tflite.convert(model, dynamic=False)}
    for name, static in (("static", True), ("per_image", False)):
        flatbuffer = flatbuffers[name] = tflite.convert(model, static_gates=static, calibration_images=calibration)
        actual = tflite.run(flatbuffer, images)
        print(f"{name}: {len(tflite.op_names(flatbuffer))} ops, max |logit difference| "
              f"{np.abs(actual - expected).max():.2e} (logit range {np.ptp(expected):.2f}), same top-1 on "
              f"{100 * np.mean(actual.argmax(1) == expected.argmax(1)):.2f}% of {len(images)} images")
    if FLAGS.all_decided:
        for layer in model.gated_layers:  # the undecided gates made always on
            fk.fix_gates(layer, always_on=~(gates[layer.name].always_on | gates[layer.name].always_off))
        flatbuffers["all_decided"] = tflite.convert(model, calibration_images=calibration)
    medians = tflite.loop_medians(flatbuffers, images[:300], FLAGS.repeats, num_threads=FLAGS.threads, warmup=20)
    print(f"Median ms per image ({FLAGS.threads} thread(s), {FLAGS.repeats} side-by-side loops of "
          f"{min(300, len(images))} images):")
    for name, values in medians.items():
        speedup = ", ".join(f"{d / v:.2f}x" for d, v in zip(medians["dense"], values))
        print(f"  {name}: {', '.join(f'{v:.3f}' for v in values)} ms (dense speed: {speedup})")
    return 0


if __name__ == "__main__":
    app.run(main)
