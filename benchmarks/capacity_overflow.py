"""How often a trained model's images outgrow the static capacities of a calibrated .tflite export.

    python benchmarks/capacity_overflow.py --model=runs/demo/model.keras

A dynamic export with calibration images computes each compact layer on a
static number of filters (`ftwt_keras.export.calibrate`: the most any
calibration image kept on, plus a margin); an image that keeps more on is
computed again by the exact masked-dense network, so it costs about a masked
dense run more. For each margin rule this prints, on the --images split, the
fraction of images beyond some layer's capacity (every gated layer checked:
an upper bound, as an export checks only the layers it compacts) and the
capacities' mean size relative to the mean count (what the margin costs every
image in the compact layers). `--per_layer` adds each layer's count spread
against the binomial one (every filter on independently with the layer's mean
keep ratio: what `Calibration.with_binomial_spread` assumes) and its capacity
under the default rule.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", None, "A trained FTWT .keras model.", required=True)
flags.DEFINE_string("calibration", "cifar10:train[:64]", "Calibration images (.npy, image folder or NAME:SPLIT).")
flags.DEFINE_string("images", "cifar10:test", "Images to check against the capacities (the same kinds).")
flags.DEFINE_list("capacity_stds", ["0", "1", "2", "3"], "Margins in standard deviations of each count.")
flags.DEFINE_float("fixed_margin", 0.05, "Also the margin as a fixed fraction of the filters (the rule before "
                   "2026-12-04); 0 to skip.")
flags.DEFINE_bool("per_layer", False, "Also each layer's count spread against the binomial one, and its capacity.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import math

    from ftwt_keras import export

    model = export.load_ftwt_model(FLAGS.model)
    calibration_images = export.load_calibration_images(FLAGS.calibration, model)
    images = export.load_calibration_images(FLAGS.images, model, what=f"--images={FLAGS.images}")
    counts = export.gate_counts(model, images, batch_size=256)
    mean_count = sum(float(count.mean()) for count in counts.values())
    rules = [(f"max + {float(stds):g} std", export.calibrate(model, calibration_images, capacity_stds=float(stds)))
             for stds in FLAGS.capacity_stds]
    if FLAGS.fixed_margin:
        base = export.calibrate(model, calibration_images, capacity_stds=0)
        filters = {layer.name: layer.filters for layer in model.gated_layers}
        fixed = {name: min(filters[name], capacity + int(math.ceil(FLAGS.fixed_margin * filters[name])))
                 for name, capacity in base.capacities.items()}
        rules.append((f"max + {FLAGS.fixed_margin:g} of the filters", export.Calibration(base.keep_ratios, fixed)))
    print(f"{FLAGS.model}: {len(calibration_images)} calibration images ({FLAGS.calibration}), "
          f"{len(images)} checked ({FLAGS.images}), {len(counts)} gated layers")
    print("| capacity rule | images beyond a capacity | capacities / mean count |")
    print("|---|---|---|")
    for label, calibration in rules:
        beyond = calibration.overflows(counts)
        size = sum(calibration.capacities.values()) / mean_count
        print(f"| {label} | {100 * beyond.mean():.2f}% ({int(beyond.sum())}) | {size:.3f} |")
    if FLAGS.per_layer:
        print(f"\nPer layer, capacities by the default rule (max + {export.CAPACITY_STDS:g} std):")
        _print_per_layer(model, counts, export.calibrate(model, calibration_images))


def _print_per_layer(model, counts, calibration):
    """Each gated layer's count spread on the checked images, against independent gates' (binomial)."""
    import numpy as np

    print("| layer | filters | mean keep | count std | binomial std | std / binomial | capacity / mean count |")
    print("|---|---|---|---|---|---|---|")
    for layer in model.gated_layers:
        count = counts[layer.name]
        mean, std = float(count.mean()), float(count.std(ddof=1)) if len(count) > 1 else 0.0
        keep = mean / layer.filters
        binomial = float(np.sqrt(layer.filters * keep * (1.0 - keep)))
        ratio = f"{std / binomial:.2f}" if binomial > 0 else "-"
        relative = f"{calibration.capacities[layer.name] / mean:.2f}" if mean > 0 else "-"
        print(f"| {layer.name} | {layer.filters} | {keep:.3f} | {std:.2f} | {binomial:.2f} | {ratio} | {relative} |")


if __name__ == "__main__":
    app.run(main)
