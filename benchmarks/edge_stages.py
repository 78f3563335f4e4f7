"""One MobileNetV1 stage at a time: dense, masked dense and compact (`chain`) exports side by side.

    python benchmarks/edge_stages.py                                  # 56x56x128 .. 7x7x1024, keep 0.3 / 0.5 / 0.7
    python benchmarks/edge_stages.py --stages=14x512 --keeps=0.5 --ablate

A stage is what MobileNetV1 x1.0 runs at one resolution, made uniform: a 1x1
conv to C channels, then --blocks x [3x3 depthwise, 1x1 conv C -> C], each
with batch norm (random statistics, `export.randomize_batch_norm`) and ReLU,
then a 10-way classifier; input H x H x C. Every conv is gated (rank
--predictor_rank predictors) with masks drawn at each --keeps ratio
(`export.set_keep_ratio`). Three exports of each gated model alternate image
by image (`export.time_side_by_side`, 1 thread, XNNPACK on): `dense` (the
plain network), `masked` (every layer dense, then masked: what `auto` does
where compacting does not pay) and `chain` (every layer compact, static
capacities from calibration inputs). Medians over --repeats loops of
--num_inputs random inputs. These timings set `AUTO_CHAIN_CUTOFF`.

`--ablate` adds exports that cut one part of the compact path, to show what
each costs (`_export_ablations.py`: no predictors, no weight gathers, the
depthwise convs on XNNPACK, no batch-norm constants; timings only).
`benchmarks/edge_ablation.py` does the same for a whole MobileNetV1.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("stages", ["56x128", "28x256", "14x512", "7x1024"], "Stages as HxC (input H x H x C).")
flags.DEFINE_list("keeps", ["0.3", "0.5", "0.7"], "Keep ratios per layer for the drawn masks.")
flags.DEFINE_integer("blocks", 5, "Depthwise + pointwise blocks per stage (MobileNetV1 has 5 at 14x14).")
flags.DEFINE_integer("predictor_rank", 64, "Mask predictor rank (0: the paper's full predictors).")
flags.DEFINE_integer("num_inputs", 40, "Random inputs per timing loop (each invoke timed alone).")
flags.DEFINE_integer("repeats", 3, "Timing loops of 5 x --num_inputs invokes; the median of their medians.")
flags.DEFINE_bool("ablate", False, "Also time the compact path with parts cut out (timings only).")


def stage_model(size, channels, blocks):
    """The plain Keras stage (see the module docstring)."""
    import keras

    def unit(x, conv):
        return keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(x)))

    inputs = keras.Input((size, size, channels))
    x = unit(inputs, keras.layers.Conv2D(channels, 1, use_bias=False))
    for _ in range(blocks):
        x = unit(x, keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False))
        x = unit(x, keras.layers.Conv2D(channels, 1, use_bias=False))
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name=f"stage_{size}x{size}x{channels}")


def main(argv):
    del argv
    import numpy as np

    import ftwt_keras as fk
    from _export_ablations import ablated_exports
    from ftwt_keras.export import tflite

    rng = np.random.default_rng(1)
    for stage in FLAGS.stages:
        try:
            size, channels = (int(part) for part in stage.lower().split("x"))
        except ValueError:
            raise app.UsageError(f"--stages takes HxC items such as 14x512; got {stage!r}.") from None
        base = tflite.randomize_batch_norm(stage_model(size, channels, FLAGS.blocks))
        model = fk.gate(base, predictor_rank=FLAGS.predictor_rank or None)
        inputs = np.abs(rng.normal(size=(FLAGS.num_inputs, size, size, channels))).astype(np.float32)
        calibration = inputs[: FLAGS.num_inputs // 2]
        dense = tflite.convert(model, dynamic=False)
        for keep in (float(k) for k in FLAGS.keeps):
            tflite.set_keep_ratio(model, keep, seed=0)
            flatbuffers = {
                "dense": dense,
                "masked": tflite.convert(model, policy="dense", static_gates=False),
                "chain": tflite.convert(model, policy="chain", calibration_images=calibration, static_gates=False),
            }
            if FLAGS.ablate:
                # Freshly built batch norm has no shift: the same masks (same seed), nothing to carry.
                unshifted = fk.gate(stage_model(size, channels, FLAGS.blocks), predictor_rank=FLAGS.predictor_rank or None)
                tflite.set_keep_ratio(unshifted, keep, seed=0)
                flatbuffers.update(ablated_exports(model, unshifted, policy="chain", calibration_images=calibration,
                                                   static_gates=False))
            medians = tflite.loop_medians(flatbuffers, np.concatenate([inputs] * 5), FLAGS.repeats, 1, 20)
            cells = "  ".join(f"{name} {np.median(values):6.2f} ms" for name, values in medians.items())
            print(f"{size:>3}x{size}x{channels:<5} keep {keep:.1f}  {cells}", flush=True)


if __name__ == "__main__":
    app.run(main)
