"""Export a saved FTWT model (.keras) to a batch-1 LiteRT / TFLite model.

    python edge/convert.py --model M.keras --output M.tflite           # dynamic (gathered) export
    python edge/convert.py --model M.keras --output M_dense.tflite --dense
    python edge/convert.py --model M.keras --output M_fp16.tflite --weight_dtype=float16   # half the file
    python edge/convert.py --model M.keras --output M_int8.tflite --weight_dtype=int8      # smaller still

The dynamic model runs every gate's mask predictor and computes only the
active filters of each image (builtin TFLite ops only; conversion fails rather
than emit Flex ops). Input: raw RGB pixels (1, H, W, 3) float32; output: logits.
It then says which gated layers skip work in that export: those its
predictors' weights prune and, with --calibration, those computing fewer
filters on the calibration images (`ftwt_keras.export.paying_gates`); every
other gate only adds its predictor. With --time (and --calibration) it times
the written model against the dense one on this machine (and against the
dense one in full int8); with --check it runs
it beside the Keras model on the images given and says how far they agree.
See edge/README.md.

    python edge/convert.py --model M.keras --output M.tflite --calibration=cifar10:train[:64] \\
        --check=cifar10:test[:1000] --time
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The export is a TensorFlow graph built through Keras layers: Keras runs on TensorFlow here whatever
# KERAS_BACKEND says (a model saved on any backend loads on it).
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Saved FTWT model (.keras), e.g. from FTWTModel.save().")
flags.DEFINE_string("output", None, "Where to write the .tflite model.")
flags.DEFINE_bool("dense", False, "Export the ordinary dense model with the same weights (no gating): the timing "
                  "reference, not a model to ship (its gated-off filters compute unchecked values).")

DENSE_IS_A_REFERENCE = (
    "This dense export computes every filter, also those the gates kept off in training, whose outputs training "
    "never checked: it is the timing reference, not an accurate model (a model trained with `make demo`'s flags, "
    "2,000 test images, 2026-12-06: 8.25% top-1 dense against 50.85% gated). To ship a dense network, ship the "
    "dense baseline.")
flags.DEFINE_string(
    "policy",
    "auto",
    "Dynamic export only. How each gated layer is computed: 'auto' (the library default: the "
    "choice measured fastest on x86 XNNPACK), 'gather' (only active filters), 'chain' (only "
    "active filters, depthwise convs on their compact input: no activation gathers; static shapes "
    "with --calibration), 'gather_inputs' "
    "(only the input's active channels), 'dense' (all filters, then masked), or a "
    "keep-ratio cutoff in [0, 1]: a builtin IF runs the layer dense when more than that fraction "
    "of its filters is active in the image, gathered otherwise.",
)
flags.DEFINE_string(
    "calibration",
    None,
    "Images like those the model will see, for --policy=auto: a .npy file of raw images "
    "(N, H, W, 3), a folder of image files such as photos from the device (PATH, or PATH[:N] for N of them; "
    "resized to the model's input) or a CIFAR split as NAME:SPLIT (e.g. cifar10:train[:64]; likewise resized). auto "
    "then picks each "
    "layer's computation once, from its mean keep ratio on them, and gives compact layers static "
    "capacities (an image beyond them is recomputed exactly by the masked-dense network); without, "
    "it picks per image with a builtin IF (exact either way, ~0.2 ms per branching layer slower at 224x224).",
)
flags.DEFINE_float(
    "capacity_stds",
    None,
    "With --calibration: each compact layer's capacity is the most filters a calibration image kept on plus "
    "this many standard deviations of that count (default: ftwt_keras.export.tflite.CAPACITY_STDS). Larger: "
    "fewer images recomputed by the fallback, every image slower in the compact layers.",
)
flags.DEFINE_bool(
    "static_gates",
    True,
    "Dynamic export only. Layers whose predictor weights decide gates for every image (see "
    "ftwt_keras.static_gates: the paper's softmax predictor often does) drop their always-off "
    "filters and the predictor columns of every decided gate, as a statically pruned layer would; "
    "exact. --nostatic_gates runs every predictor in full.",
)


flags.DEFINE_integer(
    "threads",
    1,
    "Dynamic export only: the interpreter threads the app will run the .tflite with. With more than one, "
    "XNNPACK splits the dense convs across them while the compact path gains little (its GATHER and TOPK_V2 run on "
    "one), so --policy=auto computes fewer layers compactly. Exact at any thread count.",
)
flags.register_validator("threads", lambda value: value >= 1, message="--threads must be >= 1.")
flags.DEFINE_enum(
    "weight_dtype",
    "float32",
    ["float32", "float16", "int8", "int8_full"],
    "How the .tflite stores its weights: float32 (exact), float16 (half the file: LiteRT's float16 quantization, "
    "dequantized once at load, the same speed) or int8 (a quarter to half the file: LiteRT's dynamic-range "
    "quantization). Both close, not exact: gates whose logit lies near 0 can flip (make demo's model: top-1 "
    "changed on 0.8% / 3.4% of test images, the accuracy within 0.5 points). int8_full (with --calibration, "
    "whose images set the activations' ranges): LiteRT's full-integer quantization, int8 activations too; the "
    "fast dense reference on phones (--dense); the dynamic export runs several times slower in it (README, 'Edge "
    "export').",
)
flags.DEFINE_bool(
    "time",
    False,
    "Dynamic export with --calibration only: then time the written .tflite against the --dense export of the same "
    "weights on the calibration images, side by side on this machine with --threads (3 loops, each invoke alone), "
    "and print both: whether the gates pay here; a float export also against the dense model in full int8, what "
    "an app may ship instead; with --threads above 1, the written .tflite with 1 thread too (a second thread can "
    "slow a gated export down). On a phone, benchmark_model answers that (edge/README.md).",
)
flags.DEFINE_enum(
    "runtime",
    "interpreter",
    ["interpreter", "compiled_model"],
    "The LiteRT API --check and --time run the .tflite with: interpreter (LiteRT's Interpreter, what "
    "benchmark_model runs) or compiled_model (LiteRT 2.x's CompiledModel on the CPU, what apps written for LiteRT "
    "2.x use). Both give the same logits (tests/test_export.py).",
)
flags.DEFINE_string(
    "check",
    None,
    "Dynamic export only: images to run the written .tflite on beside the Keras model (a .npy file of raw images, "
    "an image folder or NAME:SPLIT, as --calibration; e.g. cifar10:test[:1000]): prints on how many the top-1 "
    "agrees and the logits lie within 1e-3 of Keras's range (ftwt_keras.export.agreement). Exact in float32 up to "
    "gates within float32 rounding of 0; --weight_dtype=float16 / int8 move logits further.",
)


def main(argv):
    if not FLAGS["verbosity"].present:  # absl's app would print TensorFlow's and tfds's INFO lines
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.model or not FLAGS.output:
        raise app.UsageError("Both --model and --output are required.")
    if FLAGS.time and (FLAGS.dense or not FLAGS.calibration):
        raise app.UsageError("--time times the dynamic export on the --calibration images: pass --calibration, "
                             "without --dense.")
    if FLAGS.weight_dtype == "int8_full" and not FLAGS.calibration:
        raise app.UsageError("--weight_dtype=int8_full sets the int8 ranges of the activations on the --calibration "
                             "images: pass --calibration.")
    if FLAGS["runtime"].present and not (FLAGS.check or FLAGS.time):
        raise app.UsageError("--runtime picks the LiteRT API that --check and --time run the .tflite with: pass "
                             "either.")
    if FLAGS.check and FLAGS.dense:
        raise app.UsageError("--check compares the dynamic export with the FTWT model it computes; the --dense export "
                             "computes another network (every filter, no gates). Leave out --dense.")
    from ftwt_keras.export import tflite

    try:
        policy = tflite.parse_policy(FLAGS.policy)
        model = tflite.load_ftwt_model(FLAGS.model)
        calibration = None
        checked_images = None  # read, and fitted to the model, before any work
        if FLAGS.check:
            checked_images = tflite.load_calibration_images(FLAGS.check, model, what=f"--check={FLAGS.check}: the images")
        if FLAGS.calibration:  # read (and so checked) with --dense too, where it goes unused
            images = tflite.load_calibration_images(FLAGS.calibration, model,
                                                    what=f"--calibration={FLAGS.calibration}: the images")
            if not FLAGS.dense:
                calibration = tflite.calibrate(model, images, capacity_stds=FLAGS.capacity_stds)
        path = tflite.export_file(model, FLAGS.output, dynamic=not FLAGS.dense, policy=policy,
                                  calibration=calibration, static_gates=FLAGS.static_gates, num_threads=FLAGS.threads,
                                  **_dtype_options(images if FLAGS.calibration else None))
    except tflite.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with open(path, "rb") as file:
        flatbuffer = file.read()
    names = tflite.op_names(flatbuffer)
    kind = "dense" if FLAGS.dense else "dynamic (gathered)"
    if FLAGS.weight_dtype == "int8_full":
        kind += ", full-integer int8"
    elif FLAGS.weight_dtype != "float32":
        kind += f", {FLAGS.weight_dtype} weights"
    print(f"Wrote {kind} model to {path} ({os.path.getsize(path) / 1e6:.2f} MB, {len(names)} ops: "
          f"{', '.join(sorted(set(names)))}).")
    if FLAGS.dense:
        print(DENSE_IS_A_REFERENCE)
    else:
        print(_skipped_work(model, calibration, policy))
    if FLAGS.check:
        checked = tflite.agreement(model, flatbuffer, checked_images, num_threads=FLAGS.threads, api=FLAGS.runtime)
        print(f"Checked on {FLAGS.check}{_through()}. {tflite.agreement_report(checked)}")
    if FLAGS.time:
        print(_timed_here(model, flatbuffer, images))
    return 0


def _dtype_options(images):
    """`convert`'s arguments for --weight_dtype (int8_full: int8, the activations' ranges set on `images`)."""
    if FLAGS.weight_dtype == "int8_full":
        return {"weight_dtype": "int8", "representative_images": images}
    return {"weight_dtype": FLAGS.weight_dtype}


def _timed_here(model, flatbuffer, images, loops=3):
    """The written export and the dense one timed side by side on `images` here: one line.

    A float export is also timed against the dense model in full int8 (what an app may ship instead),
    and with --threads above 1 the written export with 1 thread too: a second thread can make the gated
    export slower (benchmarks/thread_scaling.py), and then an app had better run it on one core.
    """
    from ftwt_keras.export import tflite

    exports = {"dense": tflite.convert(model, dynamic=False, **_dtype_options(images)), "dynamic": flatbuffer}
    if FLAGS.weight_dtype != "int8_full":
        exports["int8"] = tflite.convert(model, dynamic=False, weight_dtype="int8", representative_images=images)
    medians = tflite.median_ms(exports, images, loops, FLAGS.threads, api=FLAGS.runtime)
    dense_ms, dynamic_ms = medians["dense"], medians["dynamic"]
    verdict = "faster than" if dynamic_ms < dense_ms else "no faster than"
    line = (f"Timed here ({tflite.cpu_name()}{_through()}; {FLAGS.threads} thread{'s' if FLAGS.threads > 1 else ''}, "
            f"{len(images)} calibration images "
            f"x {loops} loops, medians): dense {dense_ms:.2f} ms, this .tflite {dynamic_ms:.2f} ms "
            f"({dense_ms / dynamic_ms:.2f}x), {verdict} dense on this machine.")
    if "int8" in medians:
        int8_ms = medians["int8"]
        line += (f" The dense model in full int8 (--dense --weight_dtype=int8_full): {int8_ms:.2f} ms, "
                 f"this .tflite at {int8_ms / dynamic_ms:.2f}x of its speed.")
    if FLAGS.threads > 1:
        alone_ms = tflite.median_ms({"dynamic": flatbuffer}, images, loops, 1, api=FLAGS.runtime)["dynamic"]
        line += (f" With 1 thread this .tflite takes {alone_ms:.2f} ms"
                 + (f", less than with {FLAGS.threads}: run it on one core." if alone_ms < dynamic_ms else "."))
    return line


def _through():
    """The words naming --runtime in a printed line: none for the Interpreter (the default)."""
    return ", through LiteRT 2.x's CompiledModel" if FLAGS.runtime == "compiled_model" else ""


def _skipped_work(model, calibration, policy):
    """Which gates turn into skipped work in the export just written (with this calibration), and what the others cost."""
    from ftwt_keras.export import tflite

    gated = [layer.name for layer in model.gated_layers]
    static = tflite.statically_pruned_layers(model) if FLAGS.static_gates else []
    lines = [f"{len(static)} of {len(gated)} gated layers pruned by their predictors' weights"
             + (f": {', '.join(static)}." if static else ".")]
    if calibration is None or policy != "auto":
        lines.append("Pass --calibration (with --policy=auto) to learn which gates skip work on images like yours.")
        return "\n".join(lines)
    paying = tflite.paying_gates(model, calibration=calibration, num_threads=FLAGS.threads,
                                 static_gates=FLAGS.static_gates)
    lines.append(f"{len(paying)} of {len(gated)} compute fewer filters on the calibration images"
                 + (f": {', '.join(paying)}." if paying else "."))
    rest = [name for name in gated if name not in paying and name not in static]
    if rest:
        lines.append(
            f"The other {len(rest) if len(rest) > 1 else 'one'} compute{'' if len(rest) > 1 else 's'} every filter, "
            f"then mask{'' if len(rest) > 1 else 's'} it: each adds its mask predictor, so this "
            f".tflite runs slower than --dense at those layers. A model gated only where gates pay (recipes: "
            f"--gate_only_paying, with --paying_plan=timed chosen by timing on the machine that runs the recipe) "
            f"measured never slower than dense on the x86 CPU the rules come from; --time times this .tflite here, "
            f"benchmark_model on a phone (edge/README.md, 'Which gates pay')."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
