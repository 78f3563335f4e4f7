"""keras.applications models a user may bring: do they gate, and is their .tflite exact?

    python benchmarks/applications_export.py                      # the list below, 80x80
    python benchmarks/applications_export.py --applications=DenseNet121,InceptionV3 --size=96

For each application (random weights, 10 classes, `--size` pixels; those
taking [-1, 1] inputs get a `Rescaling` in front): `ftwt_keras.gate` (separable
convs, which it cannot gate, left dense), then batch-norm statistics and
predictor biases drawn as the export tests draw them (`tests/export_helpers.
perturb`: without them a random init's logits and masks hardly depend on the
image), then `ftwt_keras.export.convert` (policy `auto`) and the .tflite run
beside Keras on `--num_images` CIFAR-10 test images resized to `--size`.
Prints per model the gated layers, the largest logit difference as a fraction
of the logit range (the edge issue's bound: 1e-3) and the top-1 agreement, or
the error `gate` / `convert` raised. A network whose random init's logits span
next to nothing (VGG16: no batch norm) has gates at float rounding from
flipping and says little.
"""

import os
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Taking raw [0, 255] pixels (their preprocessing inside) / taking [-1, 1] pixels.
RAW_PIXELS = ("EfficientNetB0", "EfficientNetV2B0", "MobileNetV3Large", "MobileNetV3Small", "ConvNeXtTiny")
UNIT_RANGE = ("MobileNet", "MobileNetV2", "ResNet50", "ResNet50V2", "DenseNet121", "InceptionV3", "Xception", "VGG16")

flags.DEFINE_list("applications", list(RAW_PIXELS) + list(UNIT_RANGE), "keras.applications model names.")
flags.DEFINE_integer("size", 80, "Input height and width (InceptionV3 needs >= 75, Xception >= 71).", lower_bound=32)
flags.DEFINE_integer("num_images", 16, "CIFAR-10 test images, resized.", lower_bound=1)
FLAGS = flags.FLAGS


def _application(name, size):
    import keras

    import ftwt_keras as fk

    build = getattr(keras.applications, name)
    if name in UNIT_RANGE:
        return fk.models.application_on_raw_pixels(build, (size, size, 3), weights=None, classes=10,
                                                   classifier_activation=None)
    return build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.applications) - set(RAW_PIXELS + UNIT_RANGE))
    if unknown:
        raise app.UsageError(f"Unknown --applications {unknown}; known: {', '.join(RAW_PIXELS + UNIT_RANGE)}.")
    import keras
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data
    from ftwt_keras.export import tflite

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from export_helpers import perturb

    images = data.cifar_arrays("cifar10", f"test[:{FLAGS.num_images}]")[0]
    images = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (FLAGS.size, FLAGS.size))).astype("float32")
    for name in FLAGS.applications:
        start = time.time()
        keras.utils.set_random_seed(0)
        try:
            model = fk.gate(_application(name, FLAGS.size),
                            layers_to_gate=lambda layer: not isinstance(layer, keras.layers.SeparableConv2D))
            model = perturb(model, seed=0)
            actual = tflite.run(tflite.convert(model), images)
        except (ValueError, tflite.ExportError) as error:  # what a user would be told
            print(f"{name:18s} refused: {type(error).__name__}: {str(error)[:300]}", flush=True)
            continue
        expected = np.asarray(model.predict(images, verbose=0))
        logit_range = float(np.ptp(expected))
        print(f"{name:18s} {len(model.gated_layers):4d} gated  max |tflite - keras| / range "
              f"{np.abs(actual - expected).max() / logit_range:.1e}  same top-1 "
              f"{np.mean(actual.argmax(1) == expected.argmax(1)):.3f}  (logit range {logit_range:.2g}, "
              f"{time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    app.run(main)
