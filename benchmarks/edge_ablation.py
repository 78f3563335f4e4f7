"""Where a whole MobileNetV1 export's time goes: the `auto` export with one part cut out at a time.

    python benchmarks/edge_ablation.py                        # 224x224, rank-64 predictors, keep 0.3
    python benchmarks/edge_ablation.py --predictor_rank=0 --keep=0.5
    python benchmarks/edge_ablation.py --capped_ratio=1.0     # the compacted convs capped

MobileNetV1 (x --alpha) at --resolution with random weights and batch-norm statistics
(as `edge/benchmark.py --mode=imagenet`), every conv gated, masks drawn at
--keep per layer, capacities --drawn_capacities times the drawn count (the
margin real masks need, see `edge/benchmark.py`). Side by side, alternating
image by image on CIFAR-10 test images resized to --resolution, 1 thread:
`dense`, the `auto` export, and `auto` with one part of the compact path cut
out (`_export_ablations.ablated_exports`): `no_predictors`, `constant_masks`
(the masks as constants: every top-k, index and weight gather folded, the
statically pruned network with the same MACs; what it saves is what deciding
per image costs), `static_weights` (no weight gathers or top-k),
`static_depthwise` (the compact depthwise convs with constant filters, on
XNNPACK instead of the builtin kernel) and
`no_constants` (batch-norm shifts 0). Each ablation computes something else
than the model: its time, subtracted from `auto`'s, is what that part costs.
Medians over --repeats loops. With --capped_ratio, the convs the export
compacts are capped at that many times their count first
(`export.cap_compacted_gates`, as `edge/benchmark.py --capped_ratio`): no
margin, no fallback; the ablations then cut parts out of that export
(`static_weights` keeps the caps' `TOPK_V2`s, which the masks need).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("resolution", 224, "Input height and width.")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier.")
flags.DEFINE_float("keep", 0.3, "Keep ratio per layer of the drawn masks.")
flags.DEFINE_integer("predictor_rank", 64, "Mask predictor rank (0: the paper's full predictors).")
flags.DEFINE_float("drawn_capacities", 1.26, "Compact layers' capacities as a multiple of the drawn count (>= 1).")
flags.DEFINE_integer("num_images", 60, "CIFAR-10 test images per timing loop (each invoke timed alone).")
flags.DEFINE_integer("calibration_images", 64, "CIFAR-10 training images to calibrate the capacities on.")
flags.DEFINE_integer("repeats", 3, "Timing loops; the median of their medians.")
flags.DEFINE_float("capped_ratio", None, "Cap the convs the export compacts at this many times their count "
                   "(default: uncapped, capacities --drawn_capacities x the count).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.drawn_capacities < 1.0:
        raise app.UsageError(f"--drawn_capacities must be >= 1; got {FLAGS.drawn_capacities}.")
    import ftwt_keras as fk
    from _export_ablations import ablated_exports
    from ftwt_keras import data
    from ftwt_keras.export import tflite

    size, rank = FLAGS.resolution, FLAGS.predictor_rank or None
    calibration_images = data.cifar_arrays("cifar10", f"train[:{FLAGS.calibration_images}]", image_size=size)[0]
    images = data.cifar_arrays("cifar10", f"test[:{FLAGS.num_images}]", image_size=size)[0]

    def gated(base):
        return tflite.set_keep_ratio(fk.gate(base, predictor_rank=rank), FLAGS.keep, seed=0)

    base = fk.models.mobilenet_v1(input_shape=(size, size, 3), num_classes=1000, alpha=FLAGS.alpha)
    unshifted = gated(base)  # batch norm as built: shifts 0; the same masks (same seed)
    model = gated(tflite.randomize_batch_norm(base))
    capacity_ratio = FLAGS.drawn_capacities
    if FLAGS.capped_ratio:
        for network in (model, unshifted):
            tflite.cap_compacted_gates(network, calibration_images, ratio=FLAGS.capped_ratio, static_gates=False)
        capacity_ratio = FLAGS.capped_ratio  # the count itself; the caps (the same ratio) bound it
    calibration = tflite.calibrate(model, calibration_images).with_capacity_ratio(model, capacity_ratio)
    flatbuffers = {"dense": tflite.convert(model, dynamic=False), "auto": tflite.convert(model, calibration=calibration, static_gates=False)}
    flatbuffers.update(ablated_exports(model, unshifted, calibration=calibration, static_gates=False))
    medians = tflite.median_ms(flatbuffers, images, FLAGS.repeats)
    print(f"MobileNetV1-{size}, {'full' if rank is None else f'rank {rank}'} predictors, keep {FLAGS.keep}, "
          f"{'caps' if FLAGS.capped_ratio else 'capacities'} {capacity_ratio:g}x the count, 1 thread, "
          f"{FLAGS.num_images} images x {FLAGS.repeats}:")
    for name, ms in medians.items():
        cost = "" if name in ("dense", "auto") else f"  (that part costs {medians['auto'] - ms:+.2f} ms)"
        print(f"  {name:<17} {ms:6.2f} ms  {medians['dense'] / ms:5.2f}x dense{cost}")


if __name__ == "__main__":
    app.run(main)
