"""Several trained FTWT models' exact exports timed side by side against dense, each with its own masks.

    python benchmarks/trained_side_by_side.py \\
        --models=runs/every_gate/model.keras,runs/paying/model.keras --labels=every_gate,paying

`edge/benchmark.py --model` times one trained model, in its own run; this
times several in one loop (batch 1, XNNPACK on, each invoke timed alone,
fresh interpreters per loop in a rotated order: `runtime.loop_medians`), so
that models trained differently from the same baseline (every gate against
gated only where gates pay, `--gate_only_paying`; uncapped against capped)
compare on the same host minute. Each model's dynamic export is calibrated
on --calibration (`export.calibrate`, the default capacity margin) and
checked against Keras on the timed images (same top-1, logits within 1e-3 of
the range). Models with the same input and dense multiply-adds share one
dense export (the dense time does not depend on the weights). Prints, per
model: FLOPs reduction on the timed images, dense and dynamic ms (median
over loops of each loop's median, and each loop's), speed-up, and the
export's agreement with Keras; --output writes them as {"rows": [...]}.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The export is a TensorFlow graph built through Keras layers: Keras runs on TensorFlow here.
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", None, "Trained FTWT .keras models, all taking the same input size.", required=True)
flags.DEFINE_list("labels", None, "A short name per model (default: each file's folder and name).")
flags.DEFINE_string("images", "cifar10:test[:200]", "Images to time on (.npy, image folder or NAME:SPLIT), "
                    "resized to the models' input.")
flags.DEFINE_string("calibration", "cifar10:train[:64]", "Calibration images for the exports' capacities (the "
                    "same kinds).")
flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1)
flags.DEFINE_integer("loops", 3, "Side-by-side loops; the median of their medians.", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed invokes per export before each loop.", lower_bound=0)
flags.DEFINE_string("output", None, "Also write the rows to this JSON file.")
flags.register_multi_flags_validator(
    ["models", "labels"],
    lambda values: values["labels"] is None
    or len(set(values["labels"])) == len(values["labels"]) == len(values["models"]),
    message="--labels needs one distinct label per --models entry.")
FLAGS = flags.FLAGS


def _label(path):
    folder, name = os.path.split(os.path.splitext(path)[0])
    return f"{os.path.basename(folder)}/{name}" if folder else name


def main(argv):
    del argv
    import numpy as np

    from ftwt_keras import export, flops
    from ftwt_keras.export.runtime import loop_medians

    labels = FLAGS.labels or [_label(path) for path in FLAGS.models]
    if len(set(labels)) < len(labels):
        raise app.UsageError(f"Two --models would get the same label ({labels}): name them with --labels.")
    models = [export.load_ftwt_model(path) for path in FLAGS.models]
    shapes = {tuple(model.network.inputs[0].shape[1:]) for model in models}
    if len(shapes) > 1:
        raise app.UsageError(f"--models take different input shapes {sorted(shapes)}: time models of one input "
                             "size together.")
    images = export.load_calibration_images(FLAGS.images, models[0], what=f"--images={FLAGS.images}")
    calibration_images = export.load_calibration_images(FLAGS.calibration, models[0])
    exports, dense_of, rows = {}, {}, []
    for label, path, model in zip(labels, FLAGS.models, models):
        dense_macs = flops.count_macs(model)
        dense = dense_of.setdefault(dense_macs, f"dense ({label})")
        if dense not in exports:
            exports[dense] = export.convert(model, dynamic=False)
        exports[label] = export.convert(model, calibration=export.calibrate(model, calibration_images),
                                        num_threads=FLAGS.threads)
        executed = float(np.mean(flops.dynamic_macs(model, images, batch_size=32)))
        checked = export.agreement(model, exports[label], images, num_threads=FLAGS.threads)
        print(f"{label}: {export.agreement_report(checked)}", flush=True)
        within = checked["logit_error"] <= export.LOGIT_TOLERANCE
        rows.append({"model": label, "path": path, "dense": dense, "threads": FLAGS.threads,
                     "images": int(len(images)), "loops": FLAGS.loops,
                     "flops_reduction": round(1.0 - executed / dense_macs, 4),
                     "same_top1": round(float(checked["same_top1"].mean()), 4),
                     "logits_within_tolerance": round(float(within.mean()), 4)})
    cpu = export.cpu_name()
    print(f"Timing {len(exports)} exports side by side: {len(images)} images x {FLAGS.loops} loops, "
          f"{FLAGS.threads} thread(s), on {cpu}...", flush=True)
    per_loop = loop_medians(exports, images, FLAGS.loops, FLAGS.threads, FLAGS.warmup)
    median = {name: float(np.median(values)) for name, values in per_loop.items()}
    print("| model | FLOPs reduction | dense | dynamic | speed-up | loops (dynamic) | same top-1 as Keras |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        row.update(dense_ms=round(median[row["dense"]], 3), dynamic_ms=round(median[row["model"]], 3),
                   loop_ms=[round(value, 3) for value in per_loop[row["model"]]], cpu=cpu)
        row["speedup"] = round(row["dense_ms"] / row["dynamic_ms"], 3)
        print(f"| {row['model']} | {100 * row['flops_reduction']:.1f}% | {row['dense_ms']:.2f} ms | "
              f"{row['dynamic_ms']:.2f} ms | {row['speedup']:.2f}x | "
              f"{' / '.join(f'{value:.2f}' for value in row['loop_ms'])} | {100 * row['same_top1']:.1f}% |")
    if FLAGS.output:
        with open(FLAGS.output, "w") as file:
            json.dump({"rows": rows}, file, indent=1)
        print(f"Wrote {len(rows)} rows to {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)
