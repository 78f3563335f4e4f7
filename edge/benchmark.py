"""Time the dense and the dynamic (FTWT, gathered) .tflite side by side with LiteRT.

    python edge/benchmark.py                      # both modes, 1 and 2 threads
    python edge/benchmark.py --model runs/x/ftwt.keras              # a trained model, on CIFAR-10 test images
    python edge/benchmark.py --model m.keras --images 'photos/[:200]' --calibration 'train_photos/[:64]'  # on yours
    python edge/benchmark.py --mode imagenet --per_layer --keeps 0.3 --threads 1   # time per layer
    python edge/benchmark.py --mode imagenet --device_dir phone    # write the exports for a phone (no timing here)
    python edge/benchmark.py --model m.keras --device_dir phone   # ... timed there on real test images
    python edge/benchmark.py --device_logs phone --device_name "Pixel 8"   # its benchmark_model outputs -> rows

Mode "cifar": MobileNetV1 (--network: VGG16-bn, ResNet-56 or ResNet-18) on
>= 200 real CIFAR-10 test images at 32x32; the gates are untrained, so masks
are drawn at random at each --keeps ratio per layer (said in the output).
Mode "imagenet": --network at 224x224 (--imagenet_size), 1000 classes,
random weights and batch-norm statistics (no ImageNet weights exist here), masks drawn at each
--keeps ratio per layer, timed on CIFAR-10 test images resized to that size.
With --model, a trained FTWT .keras instead: timed at its own input size, its
masks from its predictors, on --images (default: CIFAR-10 test images at that
size; your own: an image folder or a .npy), calibrated on --calibration.

Each configuration runs `ftwt_keras.export.ExportSuite` (its docstring
says what each export is): the dense and the dynamic export, timed side by
side with the references that show where the gap goes (the dense model plus
every mask predictor, `predictors_ms`; every layer masked but computed dense,
`masked_dense_ms`), and, as flags ask, the network gated only where gates
pay (`lean_*`: another model; on a trained one it costs accuracy, see
`ungate`: read its speed-up against its own FLOPs reduction, or train one so
with the recipes' --gate_only_paying and time it with
benchmarks/trained_side_by_side.py), the capped model (`capped_*`: another
model, `benchmarks/capped_accuracy.py` measures its accuracy), the dense model
in full int8 (`dense_int8_ms`) and the capped model with int8 weights. Each
invoke is timed alone (batch 1, XNNPACK on, after warm-up), the exports
alternating image by image (with --loops N, N such loops, each with fresh
interpreters in a rotated order: then the median over loops of each loop's
median); rows give medians, the interquartile spread, the measured speed-up
and the ideal one (dense MACs / executed MACs, predictors included, from
ftwt_keras.flops). Rows go to --output as {"rows": [...]}, with the
README's tables beside it (`<output>.md`) and a chart of measured and ideal speed-up against FLOPs
reduction (`<output>.png`, needs matplotlib); `--plot_only` rewrites both
from the JSON. With --device_dir the same exports are written for timing on a
phone instead (LiteRT's benchmark_model over adb: run_on_device.sh beside
them), and --device_logs turns the outputs it saved into the same rows.
"""

import functools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The export is a TensorFlow graph built through Keras layers: Keras runs on TensorFlow here whatever
# KERAS_BACKEND says (a model saved on any backend loads on it).
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "both", ["cifar", "imagenet", "both"], "What to time.")
flags.DEFINE_string("model", None,
                    "A trained FTWT .keras model to time instead of --network, at its own input size, its masks from "
                    "its predictors (--mode, --network, --keeps and --predictor_ranks do not apply).")
flags.DEFINE_string("images", None,
                    "With --model: the images to time on, whose masks its predictors give: an image folder (PATH or "
                    "PATH[:N], files at any depth) or NAME:SPLIT, resized to the model's input, or a .npy of raw images; "
                    "the first --num_images. Default: CIFAR-10 test images at the model's input size.")
flags.DEFINE_string("calibration", None,
                    "With --model: the calibration images (the same kinds as --images; the first 32 also set the "
                    "dense int8 model's ranges). Default: the first --calibration_images CIFAR-10 training images "
                    "at the model's input size.")
flags.DEFINE_list("keeps", ["0.3", "0.5", "0.7", "1.0"], "Keep ratios per layer for drawn masks.")
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
flags.register_validator("threads", lambda counts: bool(counts) and all(c.isdigit() and int(c) > 0 for c in counts),
                         message="--threads takes positive ints.")
flags.DEFINE_integer("num_images", 200, "Timed images per configuration (real CIFAR-10 test images, or --images).")
flags.DEFINE_integer("warmup", 20, "Untimed invokes before timing.")
flags.DEFINE_integer("loops", 1,
                     "Side-by-side loops per configuration, each with fresh interpreters in an order rotated by "
                     "one export (ftwt_keras.export.tflite.loop_times); a row's times are the median over loops of "
                     "each loop's median. More than 1 on noisy hosts: with 2 threads one interpreter instance can "
                     "run 25% slower than the next.", lower_bound=1)
flags.DEFINE_string("policy", "auto", "Dynamic export policy: gather, dense, auto, or a keep cutoff in [0, 1].")
flags.DEFINE_list("predictor_ranks", ["full"],
                  "Mask predictors of the random-weight models: 'full' (the paper's) and/or ints (a low-rank "
                  "MaskPredictor, ftwt_keras.gate(predictor_rank=...)); each is timed against the same dense model.")
# keras.applications timed here: {--network: (builder, whether it takes [-1, 1] pixels and so runs behind
# `ftwt_keras.models.application_on_raw_pixels`)}. The others take raw pixels: MobileNetV3 and EfficientNet
# preprocess inside; ResNet50 and DenseNet121 expect their `preprocess_input` (BGR means / ImageNet standard
# deviations), left out: with random weights and batch-norm statistics it changes no timing.
APPLICATIONS = {
    "mobilenet_v3_small": ("MobileNetV3Small", False),
    "mobilenet_v3_large": ("MobileNetV3Large", False),
    "efficientnet_b0": ("EfficientNetB0", False),
    "inception_v3": ("InceptionV3", True),
    "xception": ("Xception", True),
    "resnet50": ("ResNet50", False),
    "densenet121": ("DenseNet121", False),
}
NETWORKS = ("mobilenet_v1", "vgg16_bn", "resnet56", "resnet18", "mobilenet_v2") + tuple(APPLICATIONS)
flags.DEFINE_enum("network", "mobilenet_v1", NETWORKS,
                  "Random-weight network to time (when no --model): MobileNetV1 (--alpha), VGG16-bn, the "
                  "CIFAR ResNet-56, the ImageNet ResNet-18, or keras.applications' MobileNetV2 (--alpha), "
                  "MobileNetV3Small / Large, EfficientNetB0 (their classifier and squeeze-and-excitation convs "
                  "stay dense), InceptionV3 and Xception (>= 75 and 71 pixels; its separable convs stay dense), "
                  "ResNet50 and DenseNet121 (concatenated layers).")
flags.DEFINE_integer("imagenet_size", 224,
                     "Mode imagenet: the input size (InceptionV3 and Xception take 299x299 as trained on ImageNet).")
flags.register_validator("imagenet_size", lambda size: size > 32,
                         message="--imagenet_size must be larger than 32 (32x32 is --mode=cifar).")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 / V2 width multiplier (when no --model).")
flags.DEFINE_integer("calibration_images", 64,
                     "CIFAR-10 training images (or, with --model, --calibration) from which --policy=auto picks each "
                     "layer's computation once (0: per image, with builtin IF).")
flags.DEFINE_string("drawn_capacities", "1.26",
                    "Drawn masks keep the same filters on for every image, so calibration alone gives each "
                    "compact layer exactly its count as capacity, which real masks, varying by image, never "
                    "allow. A number r >= 1: capacities at least r x the count (1.26: what the default margin "
                    "gave the demo model's gates, with no overflow on the 10,000 test images: "
                    "benchmarks/capacity_overflow.py; 1: no margin). 'binomial': the capacities calibration "
                    "would give if each filter were on independently with its layer's keep ratio.")


def _valid_drawn_capacities(text):
    try:
        return text == "binomial" or float(text) >= 1.0
    except ValueError:
        return False


flags.register_validator("drawn_capacities", _valid_drawn_capacities,
                         message="--drawn_capacities takes 'binomial' or a number >= 1.")
flags.DEFINE_enum("lean_plan", "rules", ["rules", "measured"],
                  "Where the network gated only where gates pay keeps its gates: 'rules' (`paying_gates`, cutoffs "
                  "measured on one x86 CPU) or 'measured' (`measured_paying_gates`: those, fewer until it times at "
                  "least 1% faster than dense twice on this machine, on the first 64 timed images, 2 loops).")
flags.DEFINE_float("capped_ratio", 1.1,
                   "Also time the model with the convs the export compacts capped at this many times their mean "
                   "count (ftwt_keras.cap_gates; drawn masks: the count); 0: not. 1.1 cost the demo model no top-1 "
                   "(benchmarks/capped_accuracy.py).")
flags.register_validator("capped_ratio", lambda ratio: ratio == 0 or ratio >= 1.0,
                         message="--capped_ratio takes 0 (no capped model) or a ratio >= 1.")
flags.DEFINE_bool("capped_int8_weights", True,
                  "Where the capped model is timed, also time it with int8 weights (LiteRT's dynamic-range "
                  "quantization, `convert(weight_dtype='int8')`: int8 weights, float32 activations), the dynamic "
                  "export that comes closest to the dense full-int8 model (README); not exact: a gate whose "
                  "logit is near 0 may flip (benchmarks/weight_dtypes.py counts how often).")
flags.DEFINE_string("output", "benchmarks/results/edge_latency.json", "JSON file for the rows ('' to skip).")
flags.DEFINE_string("tflite_dir", "/tmp/ftwt_edge", "Folder for the .tflite files made on the way.")
flags.DEFINE_bool("per_layer", False,
                  "Instead of the latency table: the time of each gated layer, dense and dynamic, from truncated "
                  "exports timed side by side (ftwt_keras.export.layer_times), at the first --keeps value, "
                  "first --threads value, for each mode and predictor rank.")
flags.DEFINE_string("device_dir", None,
                    "Time on another device instead of here (a phone: LiteRT's benchmark_model over adb): write every "
                    "export the rows would time into this folder, with device_rows.json (each row without its times) "
                    "and run_on_device.sh (the adb commands), and time nothing here. Drawn masks are timed on "
                    "benchmark_model's random inputs (they do not depend on the image); a --model's masks do, so its "
                    "exports are timed on --device_images real test images written beside them, one benchmark_model "
                    "run per image. Not with --per_layer or --lean_plan=measured (both time here).")
flags.DEFINE_integer("device_images", 20,
                     "With --device_dir and --model: how many of the timed test images the phone times each export on "
                     "(raw float32 files; each run does --num_images / --device_images invokes, at least 1, after "
                     "--warmup); a time is the median over the images, its spread their interquartile range.")
flags.DEFINE_string("device_logs", None,
                    "Read back a --device_dir folder after run_on_device.sh saved benchmark_model's output beside each "
                    "file, and write its rows with the device's times to --output (default there: "
                    "benchmarks/results/edge_latency_device.json), with the tables and the chart.")
flags.DEFINE_string("device_name", "the device", "With --device_logs: the device, for the rows and the tables.")
flags.DEFINE_bool("int8_reference", True,
                  "Also time the dense model in LiteRT's full-integer int8 (weights and activations; ranges set on "
                  "32 CIFAR-10 training images): what many apps ship instead of float32. Every other export is "
                  "float32, and on x86 the dense int8 model beat them all (README, edge section); "
                  "--noint8_reference: not.")
flags.DEFINE_bool("plot_only", False, "Only rewrite the Markdown tables and redraw the chart from the rows in --output.")


@functools.lru_cache(maxsize=8)
def _cifar_images(split, size=None):
    """CIFAR-10 images of `split` (at `size`), read once per run: the calibration and int8-range images often agree."""
    from ftwt_keras import data

    return data.cifar_arrays("cifar10", split, image_size=size)[0]


def _calibration(size):
    """Training images for the `auto` policy's static choice (None: choose per image with IF)."""
    if not FLAGS.calibration_images:
        return None
    return _cifar_images(f"train[:{FLAGS.calibration_images}]", size=size)


def _suite():
    """The `ExportSuite` the flags describe (an ExportError for a value it refuses)."""
    from ftwt_keras.export import ExportSuite

    return ExportSuite(threads=[int(count) for count in FLAGS.threads], policy=FLAGS.policy, loops=FLAGS.loops,
                       warmup=FLAGS.warmup, drawn_capacities=FLAGS.drawn_capacities, lean_plan=FLAGS.lean_plan,
                       capped_ratio=FLAGS.capped_ratio, capped_int8_weights=FLAGS.capped_int8_weights,
                       int8_reference=FLAGS.int8_reference, save_dir=FLAGS.tflite_dir)


def _write_device_plan(device, images=None):
    """Writes the --device_dir rows and the adb script that times every file there; says how to go on.

    `images`: the real images a trained model's exports are timed on there (its masks are theirs);
    None for drawn masks, which benchmark_model's random inputs serve.
    """
    from ftwt_keras.export import latency

    script, files, runs = device.write_plan(images, num_runs=FLAGS.num_images, warmup_runs=FLAGS.warmup)
    print(f"Wrote {files} .tflite files" + ("" if images is None else f", {len(images)} test images")
          + f" and {latency.DEVICE_ROWS} to {FLAGS.device_dir}, timed nothing here. On the device: sh {script} ({runs} "
          "benchmark_model runs, each output saved beside its file), then: python edge/benchmark.py "
          f"--device_logs={FLAGS.device_dir} --device_name='<the phone>'")


def _per_layer(suite, resolution, images, calibration, predictor_ranks):
    """Prints (and returns as Markdown) per-layer dense and dynamic times of --network."""
    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    base = _random_network(resolution)
    keep, threads = float(FLAGS.keeps[0]), suite.threads[0]
    lines = []
    for rank in predictor_ranks:
        model = fk.gate(base, predictor_rank=rank, layers_to_gate=_gateable)
        tflite.set_keep_ratio(model, keep, seed=0)
        predictors = "full" if rank is None else f"rank {rank}"
        print(f"{resolution}x{resolution}, {predictors} predictors, keep {keep} per layer, {threads} thread(s): "
              f"per-layer times from truncated exports ({2 * len(model.gated_layers)} conversions)...", flush=True)
        rows = tflite.layer_times(model, images, policy=suite.policy,
                                  calibration=suite.calibrated(model, calibration, drawn=True), num_threads=threads,
                                  warmup=FLAGS.warmup, static_gates=False)
        lines += [f"\n{resolution}x{resolution}, {predictors} predictors, keep {keep}, {threads} thread(s), "
                  f"policy {FLAGS.policy}:\n", "| layer | dense | dynamic |", "|---|---|---|"]
        lines += [f"| {r['layer']} | {r['dense_ms']:.2f} ms | {r['dynamic_ms']:.2f} ms |" for r in rows]
        total = {kind: sum(r[f"{kind}_ms"] for r in rows) for kind in ("dense", "dynamic")}
        lines.append(f"| up to {rows[-1]['layer']} | {total['dense']:.2f} ms | {total['dynamic']:.2f} ms |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


def _run_mode(suite, resolution, images, calibration, predictor_ranks, device=None):
    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    rows = []
    base = _random_network(resolution)
    references = None
    for rank in predictor_ranks:
        label = _network_label() + ("" if rank is None else f"_rank{rank}")
        print(f"{resolution}x{resolution}: {label}, random weights, masks drawn at random at a fixed keep ratio "
              "per layer (not predicted by trained gates).", flush=True)
        model = fk.gate(base, predictor_rank=rank, layers_to_gate=_gateable)
        if references is None:  # the same dense network for every predictor rank
            references = suite.references(model, _cifar_images("train[:32]", resolution))
            tflite.save(references["dense"], os.path.join(FLAGS.tflite_dir, f"{label}_{resolution}_dense.tflite"))
        for keep in FLAGS.keeps:
            tflite.set_keep_ratio(model, float(keep), seed=0)
            rows += suite.measure(model, images, label, drawn_keep=float(keep), calibration=calibration,
                                  references=references, device=device)
    return rows


def _model_images(model):
    """--model's images: `(timed, calibration or None, int8 ranges)`, from --images / --calibration or CIFAR-10."""
    from ftwt_keras.export import tflite

    height, width = (int(size) for size in model.network.inputs[0].shape[1:3])

    def square_size():
        if height != width:
            raise app.UsageError(f"{FLAGS.model} takes {height}x{width} images, which CIFAR-10's square ones cannot "
                                 "stand in for: pass --images and --calibration.")
        return height

    def given(flag, limit=None):
        return tflite.load_calibration_images(FLAGS[flag].value, model, what=f"--{flag}={FLAGS[flag].value}",
                                              limit=limit)

    if FLAGS.images:
        images = given("images", FLAGS.num_images)
    else:
        images = _cifar_images(f"test[:{FLAGS.num_images}]", size=square_size())
    if FLAGS.calibration:
        calibration = given("calibration")
    else:
        calibration = _calibration(square_size()) if FLAGS.calibration_images else None
    int8_images = calibration[:32] if calibration is not None else images[:32]
    return images, calibration, int8_images


def _run_model(suite, model, images, calibration, int8_images, device=None):
    """The rows of --model: its own masks, on `images`."""
    print(f"Trained model {FLAGS.model}, masks from its predictors, {len(images)} images "
          f"({FLAGS.images or 'CIFAR-10 test'}).", flush=True)
    label = os.path.basename(FLAGS.model).replace(".keras", "")
    return suite.measure(model, images, label, calibration=calibration, int8_images=int8_images, device=device)


def _random_network(resolution):
    """--network with random weights and batch-norm statistics: 10 classes at 32x32, else 1000."""
    import keras

    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    shape, num_classes = (resolution, resolution, 3), 10 if resolution == 32 else 1000
    if FLAGS.network == "vgg16_bn":
        base = fk.models.vgg16_bn(input_shape=shape, num_classes=num_classes)
    elif FLAGS.network == "resnet56":
        base = fk.models.resnet_cifar(depth=56, input_shape=shape, num_classes=num_classes)
    elif FLAGS.network == "resnet18":
        base = fk.models.resnet18(input_shape=shape, num_classes=num_classes)
    elif FLAGS.network == "mobilenet_v2":
        base = fk.models.mobilenet_v2(input_shape=shape, num_classes=num_classes, alpha=FLAGS.alpha)
    elif FLAGS.network in APPLICATIONS:
        builder_name, scaled = APPLICATIONS[FLAGS.network]
        application = getattr(keras.applications, builder_name)
        kwargs = dict(weights=None, classes=num_classes, classifier_activation=None)
        if scaled:
            base = fk.models.application_on_raw_pixels(application, shape, **kwargs)
        else:
            base = application(input_shape=shape, **kwargs)
    else:
        base = fk.models.mobilenet_v1(input_shape=shape, num_classes=num_classes, alpha=FLAGS.alpha)
    return tflite.randomize_batch_norm(base)


def _gateable(layer):
    """Every conv `gate` takes; Xception's separable convs (which it refuses) stay dense."""
    import keras

    return not isinstance(layer, keras.layers.SeparableConv2D)


def _network_label():
    return f"{FLAGS.network}_{FLAGS.alpha:g}" if FLAGS.network in ("mobilenet_v1", "mobilenet_v2") else FLAGS.network


def _predictor_ranks():
    """--predictor_ranks as `predictor_rank` values (None: the paper's full predictors)."""
    if any(rank != "full" and not (rank.isdigit() and int(rank) > 0) for rank in FLAGS.predictor_ranks):
        raise app.UsageError(f"--predictor_ranks takes 'full' or positive ints; got {FLAGS.predictor_ranks}.")
    return [None if rank == "full" else int(rank) for rank in FLAGS.predictor_ranks]


def main(argv):
    from ftwt_keras.export import ExportError, latency, tflite

    if not FLAGS["verbosity"].present:  # absl's app would print TensorFlow's and tfds's INFO lines
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.plot_only:
        if not FLAGS.output or not os.path.exists(FLAGS.output):
            raise app.UsageError(f"--plot_only needs the rows of an earlier run in --output ({FLAGS.output!r}).")
        with open(FLAGS.output) as file:
            _report(json.load(file)["rows"], FLAGS.output, tables_only=True)
        return 0
    if FLAGS.device_logs:
        try:
            rows = latency.rows_from_device_logs(FLAGS.device_logs, FLAGS.device_name)
        except ExportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for row in rows:
            print(latency.row_summary(row))
        _report(rows, FLAGS.output if FLAGS["output"].present else "benchmarks/results/edge_latency_device.json")
        return 0
    if FLAGS.num_images < 1:
        raise app.UsageError("--num_images must be positive.")
    if FLAGS.model and FLAGS.per_layer:
        raise app.UsageError("--per_layer times --network's layers with drawn masks; leave out --model.")
    if (FLAGS.images or FLAGS.calibration) and not FLAGS.model:
        raise app.UsageError("--images and --calibration are the images of a --model; --network is timed on "
                             "CIFAR-10.")
    if FLAGS.calibration and not FLAGS.calibration_images:
        raise app.UsageError("--calibration_images=0 asks for no calibration (a builtin IF per image), so "
                             "--calibration would be ignored: leave out one of them.")
    if FLAGS.device_dir and (FLAGS.per_layer or FLAGS.lean_plan == "measured"):
        raise app.UsageError("--device_dir writes exports for benchmark_model, which runs no Python: not with "
                             "--per_layer or --lean_plan=measured (both time here).")
    if FLAGS.device_dir and FLAGS.model and not 1 <= FLAGS.device_images <= FLAGS.num_images:
        raise app.UsageError(f"--device_images must be between 1 and --num_images ({FLAGS.num_images}); got "
                             f"{FLAGS.device_images}.")
    predictor_ranks = _predictor_ranks()  # refuses a bad list before any conversion
    device = latency.DeviceFolder(FLAGS.device_dir) if FLAGS.device_dir else None
    sizes = ((32, "cifar"), (FLAGS.imagenet_size, "imagenet"))
    resolutions = [size for size, mode in sizes if FLAGS.mode in (mode, "both")]
    model_images = None
    try:
        suite = _suite()  # refuses a bad --policy before any conversion
        measure = _per_layer if FLAGS.per_layer else functools.partial(_run_mode, device=device)
        if FLAGS.model:
            model = tflite.load_ftwt_model(FLAGS.model)
            model_images, calibration, int8_images = _model_images(model)
            results = [_run_model(suite, model, model_images, calibration, int8_images, device)]
        else:
            results = [measure(suite, size, _cifar_images(f"test[:{FLAGS.num_images}]", size=size),
                               _calibration(size), predictor_ranks) for size in resolutions]
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if FLAGS.per_layer:
        if FLAGS.output:
            path = os.path.splitext(FLAGS.output)[0] + "_layers.md"
            with open(path, "w") as file:
                file.write("".join(results))
            print(f"Wrote the per-layer tables to {path}.")
        return 0
    rows = [row for result in results for row in result]
    if device is not None:
        _write_device_plan(device, None if model_images is None else model_images[: FLAGS.device_images])
        return 0
    print("Per-layer times: --per_layer (truncated exports timed side by side); per op: LiteRT's benchmark_model "
          f"with --enable_op_profiling=true on the .tflite files in {FLAGS.tflite_dir} (see edge/README.md).")
    _report(rows, FLAGS.output)
    return 0


def _report(rows, output, tables_only=False):
    """`latency.write_report` ('' as `output`: nothing), saying what it wrote."""
    from ftwt_keras.export import latency

    if not output:
        return
    written = latency.write_report(rows, output, tables_only=tables_only)
    if written["rows"]:
        print(f"Wrote {len(rows)} rows to {written['rows']}.")
    print(f"Wrote the tables to {written['tables']}.")
    print(f"Wrote the chart to {written['chart']}." if written["chart"] else
          "matplotlib is not installed: no chart (pip install -e .[plots]).")


if __name__ == "__main__":
    app.run(main)
