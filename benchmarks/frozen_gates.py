"""Accuracy against LiteRT latency when a trained model's near-constant gates are frozen.

    python benchmarks/frozen_gates.py --model runs/demo_a1/model.keras

    python benchmarks/frozen_gates.py --model runs/demo_a1/model.keras --resolution=224 --accuracy_images=0

For each --agreements value a (`none`: the model as trained), freezes the gates
that take one decision on at least a share a of --calibration_images training
images (`ftwt_keras.freeze_gates`), then reports: the share of gates the
weights now decide, test top-1 of the frozen Keras model on --accuracy_images
test images and how many of them keep the trained model's prediction, MACs
executed on the first 1,000 calibration images (`ftwt_keras.flops`, which
charges every predictor in full even where the export runs none, so the
backbone's share is shown too), and the exact export
(`edge/convert.py`'s default: static gates on, `auto` calibrated on 64 training
images) checked against the frozen Keras model on --check_images and timed
side by side with the dense export and the others (`export.time_side_by_side`,
XNNPACK, --threads) over the first 300 test images, --repeats loops, medians.

--resolution times a zoo MobileNetV1 at another input size: the gates are
frozen at the model's own size, on its own images, then the weights go to the
network at that size (`_mobilenet_at`), which runs upsampled test images. Which
gates the weights decide does not depend on the input size; its accuracy there
means nothing (set --accuracy_images=0), its times do.

--static_min_decided exports each frozen model again with other cutoffs in
place of the library's `STATIC_MIN_DECIDED` (a layer whose weights decide at
least that share of its gates takes the export's static path), checked like
the default export and timed in the same loops: how the cutoff was chosen. An
export equal to one made before (another cutoff, the default) is timed once
and marked `(= that one)`.

    python benchmarks/frozen_gates.py --model runs/demo_softmax_a1/model.keras \\
        --agreements=none,1.0 --accuracy_images=0 --static_min_decided=0.5,0.7,0.9,1.0

Rows go to --results (JSON) as {"rows": [{"model", "resolution", "agreement", ...}]},
replacing earlier rows of the same model and resolution, each with
"static_layers" (gated layers on the export's static path); with
--static_min_decided each row also holds "static_min_decided": {cutoff:
{"static_layers", "dynamic_ms", "speedup", "export_max_difference", "timed_as"}}.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from _mobilenet_at import mobilenet_at  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A trained FTWT model (.keras) taking CIFAR-10 images.")
flags.DEFINE_string("dataset", "cifar10", "tfds dataset of the images.")
flags.DEFINE_list("agreements", ["none", "1.0", "0.99", "0.9", "0.5"],
                  "`freeze_gates(min_agreement=...)` values; `none` is the model as trained.")
flags.DEFINE_integer("calibration_images", 2000, "Training images the gates are judged on.")
flags.DEFINE_integer("accuracy_images", 10000, "Test images for the Keras top-1 (0: skip).")
flags.DEFINE_integer("check_images", 300, "Test images the export is checked against Keras on (the first are timed).")
flags.DEFINE_integer("timed_images", 300, "Test images timed per loop.")
flags.DEFINE_integer("repeats", 3, "Side-by-side timing loops.")
flags.DEFINE_integer("threads", 1, "Interpreter threads.")
flags.DEFINE_integer("resolution", None, "Zoo MobileNetV1 only: time the frozen weights at this input size.")
flags.DEFINE_list("static_min_decided", [],
                  "Also export each model with these cutoffs in place of the library's `STATIC_MIN_DECIDED` "
                  "(numbers in [0, 1]), timed side by side with the default export.")
flags.DEFINE_string("results", "benchmarks/results/frozen_gates.json", "JSON file the rows are merged into ('' to skip).")


def _frozen(path, agreement, calibration):
    """A fresh copy of the model at `path`, its gates frozen at `agreement`."""
    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    model = tflite.load_ftwt_model(path)
    fk.freeze_gates(model, calibration, min_agreement=agreement)
    return model


def _at_cutoff(cutoff, function, *args, **kwargs):
    """`function(*args, **kwargs)` with `STATIC_MIN_DECIDED` set to `cutoff` for the call (a benchmark-only knob)."""
    import unittest.mock

    from ftwt_keras.export import planning

    with unittest.mock.patch.object(planning, "STATIC_MIN_DECIDED", cutoff):
        return function(*args, **kwargs)


def _merge_rows(path, rows):
    """Writes `rows` into the JSON at `path`, replacing rows of the same model and resolution."""
    existing = []
    if os.path.exists(path):
        with open(path) as file:
            existing = json.load(file)["rows"]
    keys = {(row["model"], row["resolution"]) for row in rows}
    kept = [row for row in existing if (row["model"], row["resolution"]) not in keys]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as file:
        json.dump({"rows": kept + rows}, file, indent=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.model:
        raise app.UsageError("--model is required.")
    try:
        agreements = [None if a == "none" else float(a) for a in FLAGS.agreements]
    except ValueError as error:
        raise app.UsageError(f"--agreements takes numbers in [0.5, 1] or `none`: {error}") from error
    try:
        cutoffs = [float(c) for c in FLAGS.static_min_decided]
    except ValueError as error:
        raise app.UsageError(f"--static_min_decided takes numbers in [0, 1]: {error}") from error
    if any(not 0.0 <= c <= 1.0 for c in cutoffs):
        raise app.UsageError(f"--static_min_decided takes numbers in [0, 1], not {FLAGS.static_min_decided}.")
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data
    from ftwt_keras.export import planning, tflite

    trained = tflite.load_ftwt_model(FLAGS.model)
    size = int(trained.network.inputs[0].shape[1])
    resolution = FLAGS.resolution or size
    calibration = data.cifar_arrays(FLAGS.dataset, f"train[:{FLAGS.calibration_images}]")[0]
    test_images = test_labels = None
    if FLAGS.accuracy_images:
        test_images, test_labels = data.cifar_arrays(FLAGS.dataset, f"test[:{FLAGS.accuracy_images}]")
        trained_top1 = np.asarray(trained.predict(test_images, batch_size=500, verbose=0)).argmax(1)
    count = max(FLAGS.check_images, FLAGS.timed_images)
    run_images = data.cifar_arrays(FLAGS.dataset, f"test[:{count}]", image_size=resolution)[0]
    export_calibration = data.cifar_arrays(FLAGS.dataset, "train[:64]", image_size=resolution)[0]
    dense_macs = fk.flops.count_macs(trained)
    # `dynamic_macs` charges every predictor in full, every image (the library's convention), also
    # where the weights decide every gate and the export runs none: the backbone's share is shown too.
    predictor_macs = fk.flops.count_macs(trained, include_predictors=True) - dense_macs

    rows, flatbuffers = [], {}
    start = time.time()
    for agreement in agreements:
        name = "none" if agreement is None else f"{agreement:g}"
        model = trained if agreement is None else _frozen(FLAGS.model, agreement, calibration)
        executed = float(np.mean(fk.flops.dynamic_macs(model, calibration[:1000])))
        row = {"model": FLAGS.model, "resolution": resolution, "agreement": name,
               "decided": fk.static_gates.decided_fraction(model),
               "flops_reduction": 1.0 - executed / dense_macs,
               "backbone_flops_reduction": 1.0 - (executed - predictor_macs) / dense_macs}
        if FLAGS.accuracy_images:
            top1 = trained_top1 if agreement is None else (
                np.asarray(model.predict(test_images, batch_size=500, verbose=0)).argmax(1))
            row["top1"] = float(np.mean(top1 == test_labels))
            row["same_top1_as_trained"] = float(np.mean(top1 == trained_top1))
        if FLAGS.resolution and FLAGS.resolution != size:
            try:
                model = mobilenet_at(model, FLAGS.resolution)
            except ValueError as error:
                raise app.UsageError(f"--resolution: {error}") from error
        if not flatbuffers:
            flatbuffers["dense"] = tflite.convert(model, dynamic=False)
        flatbuffers[name] = tflite.convert(model, calibration_images=export_calibration)
        expected = np.asarray(model.predict(run_images[: FLAGS.check_images], batch_size=100, verbose=0))
        actual = tflite.run(flatbuffers[name], run_images[: FLAGS.check_images])
        row["export_max_difference"] = float(np.abs(actual - expected).max() / np.ptp(expected))
        row["export_same_top1"] = float(np.mean(actual.argmax(1) == expected.argmax(1)))
        row["static_layers"] = len(tflite.statically_pruned_layers(model))
        if cutoffs:
            row["static_min_decided"] = {}
        for cutoff in cutoffs:
            flatbuffer = _at_cutoff(cutoff, tflite.convert, model, calibration_images=export_calibration)
            difference = np.abs(tflite.run(flatbuffer, run_images[: FLAGS.check_images]) - expected).max()
            # An export equal to one made already is timed once: two instances of one graph differ by
            # a few percent (`loop_medians`), which would read as an effect of the cutoff.
            same = [label for label, made in flatbuffers.items() if made == flatbuffer]
            if not same:
                flatbuffers[f"{name}@{cutoff:g}"] = flatbuffer
            row["static_min_decided"][f"{cutoff:g}"] = {
                "static_layers": len(_at_cutoff(cutoff, tflite.statically_pruned_layers, model)),
                "export_max_difference": float(difference / np.ptp(expected)),
                "timed_as": same[0] if same else f"{name}@{cutoff:g}"}
        rows.append(row)
        print(f"agreement {name}: {100 * row['decided']:.1f}% of gates decided by the weights"
              + (f", top-1 {100 * row['top1']:.2f}%" if "top1" in row else "")
              + f"; export max |difference| {row['export_max_difference']:.1e} of the logit range "
              f"({time.time() - start:.0f} s)", flush=True)

    medians = tflite.loop_medians(flatbuffers, run_images[: FLAGS.timed_images], FLAGS.repeats,
                                  num_threads=FLAGS.threads, warmup=20)
    dense_ms = float(np.median(medians["dense"]))
    print(f"\n{FLAGS.model} at {resolution}x{resolution}, {FLAGS.threads} thread(s), median of {FLAGS.repeats} "
          f"side-by-side loops over {FLAGS.timed_images} images; dense {dense_ms:.3f} ms "
          f"({', '.join(f'{v:.3f}' for v in medians['dense'])})")
    print("| frozen at agreement | gates decided | top-1 | same top-1 as trained | MACs reduction (backbone only) "
          "| .tflite = Keras (max diff / range, same top-1) | dynamic ms | dense speed (per loop) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        values = medians[row["agreement"]]
        row.update(threads=FLAGS.threads, cpu=tflite.cpu_name(), dense_ms=dense_ms,
                   dynamic_ms=float(np.median(values)),
                   speedup=float(np.median([d / v for d, v in zip(medians["dense"], values)])))
        accuracy = (f"{100 * row['top1']:.2f}% | {100 * row['same_top1_as_trained']:.2f}%"
                    if "top1" in row else "- | -")
        print(f"| {row['agreement']} | {100 * row['decided']:.1f}% | {accuracy} | {100 * row['flops_reduction']:.1f}% "
              f"({100 * row['backbone_flops_reduction']:.1f}%) | {row['export_max_difference']:.1e}, {100 * row['export_same_top1']:.1f}% | {row['dynamic_ms']:.3f} "
              f"| {row['speedup']:.2f}x ({', '.join(f'{d / v:.2f}' for d, v in zip(medians['dense'], values))}) |")
    if cutoffs:
        print(f"\nThe same exports with other `STATIC_MIN_DECIDED` cutoffs (the library's: {planning.STATIC_MIN_DECIDED:g}), "
              "same loops:")
        print("| frozen at agreement | cutoff | layers on the static path | max diff / range | dynamic ms "
              "| dense speed (per loop) |\n|---|---|---|---|---|---|")
    for row in rows:
        if cutoffs:
            print(f"| {row['agreement']} | {planning.STATIC_MIN_DECIDED:g} (default) | {row['static_layers']} of "
                  f"{len(trained.gated_layers)} | {row['export_max_difference']:.1e} | {row['dynamic_ms']:.3f} "
                  f"| {row['speedup']:.2f}x |")
        for cutoff, result in row.get("static_min_decided", {}).items():
            values = medians[result["timed_as"]]
            result.update(dynamic_ms=float(np.median(values)),
                          speedup=float(np.median([d / v for d, v in zip(medians["dense"], values)])))
            same = "" if result["timed_as"] == f"{row['agreement']}@{cutoff}" else f" (= {result['timed_as']})"
            print(f"| {row['agreement']} | {cutoff} | {result['static_layers']} of {len(trained.gated_layers)} "
                  f"| {result['export_max_difference']:.1e} | {result['dynamic_ms']:.3f}{same} | {result['speedup']:.2f}x "
                  f"({', '.join(f'{d / v:.2f}' for d, v in zip(medians['dense'], values))}) |")
    if FLAGS.results:
        _merge_rows(FLAGS.results, rows)
        print(f"Rows written to {FLAGS.results}")
    return 0


if __name__ == "__main__":
    app.run(main)
