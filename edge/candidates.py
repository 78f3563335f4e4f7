"""Choose the gates to train by timing candidate networks on the device (a phone runs no Python).

    # 1. Before FTWT training: candidates from the dense baseline at r, masks drawn at its targets.
    python edge/candidates.py --baseline runs/x/baseline.keras --threshold 0.5 --target uniform \\
        --predictor_rank 16 --calibration cifar10:train[:256] --output_dir candidates
    # 2. On the phone: one benchmark_model run per file, each output saved as <file>.log (edge/README.md):
    sh candidates/run_on_device.sh
    # 3. The fastest candidate that beats dense, and the --ungated_layers that train it:
    python edge/candidates.py --pick candidates

Step 1 writes dense.tflite, dense_int8.tflite (the dense network in
full-integer int8, --int8_reference), gated_<i>.tflite (the network gated
only where gates pay, `ftwt_keras.export.paying_gates`, then fewer and fewer
gates: `ftwt_keras.export.gate_candidates`), candidates.json, and
run_on_device.sh, the adb commands that time them (`BENCHMARK_MODEL=<a local
build>` pushes benchmark_model first, `PIN=<taskset mask>` pins the cores).
Step 3 reads <file>.log next to each file and says whether the pick also beats
the dense int8 model.
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
flags.DEFINE_string("baseline", None, "Step 1: the dense baseline (.keras) FTWT training will gate.")
flags.DEFINE_float("threshold", None, "Step 1: r, the heatmap-mass fraction training will use.")
flags.DEFINE_enum("target", "mass", ["mass", "uniform"],
                  "Step 1: the target rule training will use (ftwt_keras.gate's default: mass).")
flags.DEFINE_integer("predictor_rank", None, "Step 1: the predictor rank training will use (default: full).")
flags.DEFINE_list("ungated_layers", [], "Step 1: conv layers training will leave dense (names or patterns).")
flags.DEFINE_string("calibration", None, "Step 1: training images, a .npy file (N, H, W, 3), an image folder (PATH or "
                    "PATH[:N]) or NAME:SPLIT (e.g. cifar10:train[:256]), resized to the model's input: the "
                    "targets' keep ratios and capacities.")
flags.DEFINE_string("output_dir", None, "Step 1: where to write the .tflite files and candidates.json.")
flags.DEFINE_integer("threads", 1, "Step 1: the interpreter threads the device will run with.")
flags.register_validator("threads", lambda value: value >= 1, message="--threads must be >= 1.")
flags.DEFINE_bool("int8_reference", True,
                  "Step 1: also write dense_int8.tflite, the dense network in full-integer int8 (ranges from the "
                  "--calibration images): every candidate is float32, and an app may ship int8 instead; step 3 "
                  "says how the pick compares with it.")
flags.DEFINE_integer("num_runs", 200, "Step 1: benchmark_model's timed invokes per file, in the device script.")
flags.DEFINE_integer("warmup", 20, "Step 1: benchmark_model's invokes before timing, in the device script.")
flags.register_validator("num_runs", lambda value: value >= 1, message="--num_runs must be >= 1.")
flags.register_validator("warmup", lambda value: value >= 0, message="--warmup must be >= 0.")
flags.DEFINE_string("pick", None, "Step 3: a folder of step 1, with one benchmark_model output per file "
                    "as <file>.log (e.g. gated_0.tflite.log).")
flags.DEFINE_float("margin", 0.01, "Step 3: how much faster than dense a candidate must be (fraction of its time).")


def main(argv):
    if not FLAGS["verbosity"].present:  # absl's app would print TensorFlow's and tfds's INFO lines
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(FLAGS.pick) == bool(FLAGS.baseline):
        raise app.UsageError("Pass --baseline (with --threshold, --calibration, --output_dir) to write candidates, "
                             "or --pick DIR to choose from their times.")
    from ftwt_keras.export import tflite

    try:
        if FLAGS.pick:
            print(_pick(FLAGS.pick))
            return 0
        if FLAGS.threshold is None or not FLAGS.calibration or not FLAGS.output_dir:
            raise app.UsageError("--baseline needs --threshold, --calibration and --output_dir.")
        _write(tflite)
    except tflite.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _write(tflite):
    import keras

    from ftwt_keras import gating
    from ftwt_keras.training import FTWTModel

    if not os.path.exists(FLAGS.baseline):
        raise tflite.ExportError(f"No model file at {FLAGS.baseline}.")
    baseline = keras.saving.load_model(FLAGS.baseline)
    if isinstance(baseline, FTWTModel):
        raise tflite.ExportError(f"{FLAGS.baseline} is an FTWT model: pass the dense baseline it was gated from "
                                 "(the recipes' baseline.keras); its candidates are gated at --threshold here.")
    images = tflite.load_calibration_images(FLAGS.calibration, baseline,
                                            what=f"--calibration={FLAGS.calibration}: the images")
    layers = gating.layers_except(baseline, FLAGS.ungated_layers) if FLAGS.ungated_layers else None
    model, calibration = tflite.drawn_at_targets(baseline, images, FLAGS.threshold, target=FLAGS.target,
                                                 layers_to_gate=layers, predictor_rank=FLAGS.predictor_rank)
    manifest = tflite.export_candidates(model, calibration, FLAGS.output_dir, num_threads=FLAGS.threads,
                                        int8_images=images if FLAGS.int8_reference else None)
    files = _files(manifest)
    print(f"Wrote {len(files)} models to {FLAGS.output_dir} (masks drawn at the targets of r={FLAGS.threshold:g}):")
    for entry in manifest["candidates"]:
        print(f"  {entry['file']}: gated at {', '.join(entry['gates'])} ({len(entry['gates'])} of "
              f"{len(model.gated_layers)} gated convs)")
    if not manifest["candidates"]:
        print("  (no gate pays at this r by the export's rules: train at a lower r, or not for speed)")
    script = tflite.write_device_script(FLAGS.output_dir, [
        tflite.DeviceRun(file, f"{file}.log", FLAGS.threads, num_runs=FLAGS.num_runs, warmup_runs=FLAGS.warmup)
        for file in files])
    print(f"Time them on the device: sh {script} (one benchmark_model run per file, its output saved as "
          f"<file>.log beside it; BENCHMARK_MODEL=<a local build> pushes benchmark_model first, PIN=<taskset mask> "
          f"pins the cores), then: python edge/candidates.py --pick {FLAGS.output_dir}")


def _files(manifest):
    """Every file of a candidates folder: the dense references first."""
    references = [manifest["dense"]] + ([manifest["dense_int8"]] if "dense_int8" in manifest else [])
    return references + [entry["file"] for entry in manifest["candidates"]]


def _pick(folder):
    from ftwt_keras.export import tflite

    manifest = tflite.read_manifest(folder)
    times = {}
    for file in _files(manifest):
        log = os.path.join(folder, f"{file}.log")
        if os.path.exists(log):
            with open(log) as handle:
                try:
                    times[file] = tflite.benchmark_model_ms(handle.read())
                except tflite.ExportError as error:
                    raise tflite.ExportError(f"{log}: {error}") from None
    lines = [f"  {file}: {ms:.2f} ms" for file, ms in times.items()]
    chosen = tflite.pick_candidate(manifest, times, margin=FLAGS.margin)
    if chosen is None:
        verdict = (f"No candidate ran at least {100 * FLAGS.margin:g}% faster than dense: on this device, train "
                   "without gates for speed (or at a lower r and time again).")
    else:
        train = (f"the recipe's flags plus --ungated_layers={','.join(chosen['ungated_layers'])} (added to any it "
                 "had)" if chosen["ungated_layers"] else "the recipe's flags as they are")
        gates = len(chosen["gates"])
        speedup = times[manifest["dense"]] / chosen["ms"]
        verdict = (f"{chosen['file']} ({gates} gate{'s' if gates > 1 else ''}) ran at {speedup:.2f}x of dense. "
                   f"To train it: {train}, without --gate_only_paying.")
    int8_ms = times.get(manifest.get("dense_int8"))
    if int8_ms is not None:
        best = chosen["ms"] if chosen is not None else times[manifest["dense"]]
        what = chosen["file"] if chosen is not None else "the float32 dense model"
        if int8_ms < best:
            verdict += (f"\nBut the dense model in full int8 ({manifest['dense_int8']}, {int8_ms:.2f} ms) ran faster "
                        f"than {what} ({best:.2f} ms): an app that can ship int8 gains no speed from gates here "
                        "(the exports are float32).")
        else:
            verdict += (f"\n{what} also beat the dense model in full int8 ({manifest['dense_int8']}, "
                        f"{int8_ms:.2f} ms) at {int8_ms / best:.2f}x.")
    return "\n".join(["Times on the device (benchmark_model, mean):", *lines, verdict])


if __name__ == "__main__":
    app.run(main)
