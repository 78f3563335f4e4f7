"""The .tflite with float16 or int8 weights against float32: file size, logits, accuracy and latency.

    python benchmarks/weight_dtypes.py                       # MobileNetV1-224, drawn masks at keep 0.3 and 0.5
    python benchmarks/weight_dtypes.py --model runs/demo/model.keras --num_images=2000
    python benchmarks/weight_dtypes.py --keeps=0.3 --capped_ratio=1.0       # compacted convs capped: no fallback

`convert(..., weight_dtype=...)`: "float16" stores the weights in half
precision (LiteRT's float16 quantization, dequantized once when the
interpreter prepares the model), "int8" in 8 bits (LiteRT's dynamic-range
quantization), and "int8 full" in 8 bits with int8 activations where LiteRT
has an int8 kernel (`representative_images=`: full-integer quantization, the
ranges set on the calibration images). For the dense and the dynamic export
(--policy, calibrated on --calibration_images test images; with --capped_ratio
the convs it compacts capped first) of each model this prints each file's size
(and whether it holds the exact fallback, a float32 `IF` branch in every dtype),
how far the reduced-precision logits are from the float32 export's (max
absolute difference over the logit range, top-1 agreement) on --num_images real
CIFAR-10 test images, with --model the top-1 accuracy against their labels,
and every export timed side by side (`loop_medians`, XNNPACK, --threads,
--loops).

Without --model: a zoo MobileNetV1 with rank-16 predictors, batch norms
drawn as the edge benchmark draws them and masks drawn at each keep ratio
(`export.set_keep_ratio`; capacities 1.26x, every predictor run): no
trained weights, as in `edge/benchmark.py --mode=imagenet`, so no accuracy.
With --model: that trained model's own masks (--keeps unused).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A trained FTWT model (.keras) taking CIFAR-10 images (default: drawn masks).")
flags.DEFINE_integer("resolution", 224, "Input size of the drawn-mask MobileNetV1 (test images resized to it).")
flags.DEFINE_float("alpha", 1.0, "Width multiplier of the drawn-mask MobileNetV1.")
flags.DEFINE_list("keeps", ["0.3", "0.5"], "Keep ratios of the drawn masks.")
flags.DEFINE_integer("num_images", 100, "Real CIFAR-10 test images compared (the first 300 of them timed).")
flags.DEFINE_integer("calibration_images", 32, "Of those, the first ones calibrate the dynamic exports.")
flags.DEFINE_integer("loops", 3, "Side-by-side timing loops.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_string("policy", "auto", "The dynamic export's policy (`convert`'s: auto, chain, gather, ...).")
flags.DEFINE_float("capped_ratio", 0.0,
                   "Cap the convs the export compacts at this multiple of their mean count on the calibration images "
                   "(`export.cap_compacted_gates`: no overflow fallback, so a full-int8 file keeps no float32 branch); "
                   "0: no caps.")
flags.register_validator("capped_ratio", lambda value: value >= 0, message="--capped_ratio must be >= 0.")

# LiteRT's float16 and int8 (dynamic-range) weights, and full-integer int8 (activations too).
DTYPES = ("float32", "float16", "int8", "int8 full")


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import ftwt_keras as fk
    from ftwt_keras import export
    from ftwt_keras.export import tflite
    from ftwt_keras.export.drawn_masks import DRAWN_CAPACITY_RATIO

    policy = tflite.parse_policy(FLAGS.policy)
    drawn = not FLAGS.model
    if drawn:
        size = FLAGS.resolution
        models = {}
        for keep in FLAGS.keeps:
            base = fk.models.mobilenet_v1(input_shape=(size, size, 3), num_classes=1000, alpha=FLAGS.alpha)
            model = fk.gate(base, predictor_rank=16, use_softmax=False)
            export.randomize_batch_norm(model)
            models[f"keep {keep}"] = export.set_keep_ratio(model, float(keep))
    else:
        trained = export.load_ftwt_model(FLAGS.model)
        size = int(trained.network.inputs[0].shape[1])
        models = {"trained": trained}
    images, labels = fk.data.cifar_arrays("cifar10", "test", take=FLAGS.num_images, image_size=size)
    print(f"{export.cpu_name()}, {FLAGS.threads} thread(s), {len(images)} test images at {size}x{size}, "
          f"TF {tf.__version__}, Keras {keras.__version__}")
    for name, model in models.items():
        if FLAGS.capped_ratio:
            capped = export.cap_compacted_gates(model, images[: FLAGS.calibration_images], ratio=FLAGS.capped_ratio,
                                                policy=policy, num_threads=FLAGS.threads, static_gates=not drawn)
            name += f", {len(capped)} compacted convs capped at {FLAGS.capped_ratio:g}x their mean count"
        calibration = export.calibrate(model, images[: FLAGS.calibration_images])
        if drawn:  # the same masks on every image: capacities with the edge benchmark's margin
            calibration = calibration.with_capacity_ratio(model, DRAWN_CAPACITY_RATIO)
        exports = {}
        for dtype in DTYPES:
            options = dict(weight_dtype="int8", representative_images=images[: FLAGS.calibration_images]) if (
                dtype == "int8 full") else dict(weight_dtype=dtype)
            exports[f"dense {dtype}"] = export.convert(model, dynamic=False, **options)
            # Drawn masks are decided by the weights: static pruning would make them a static network.
            exports[f"dynamic {dtype}"] = export.convert(model, policy=policy, calibration=calibration,
                                                         static_gates=not drawn, num_threads=FLAGS.threads, **options)
        print(f"\n{name}:")
        for kind in ("dense", "dynamic"):
            reference = export.run(exports[f"{kind} float32"], images, FLAGS.threads)
            for dtype in DTYPES:
                flatbuffer = exports[f"{kind} {dtype}"]
                logits = reference if dtype == "float32" else export.run(flatbuffer, images, FLAGS.threads)
                line = f"  {kind:7s} {dtype:9s}: {len(flatbuffer) / 1e6:6.2f} MB"
                if dtype != "float32":
                    gap, spread = float(np.abs(logits - reference).max()), float(np.ptp(reference))
                    gap = f"{gap / spread:.1e} of the range" if spread > 0 else f"{gap:.1e} (the logits do not vary)"
                    same = float(np.mean(logits.argmax(1) == reference.argmax(1)))
                    line += (f" ({len(flatbuffer) / len(exports[f'{kind} float32']):.2f}x); logits within {gap} of "
                             f"float32's, same top-1 on {100 * same:.1f}%")
                if not drawn:
                    line += f"; top-1 accuracy {100 * float(np.mean(logits.argmax(1) == labels)):.2f}%"
                if "IF" in tflite.op_names(flatbuffer):  # LiteRT quantizes no IF branch: a float32 copy in the file
                    line += "; holds the exact fallback (IF)"
                print(line)
        medians = tflite.median_ms(exports, images[:300], FLAGS.loops, FLAGS.threads)
        print("  ms (median of the loops' medians): " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    app.run(main)
