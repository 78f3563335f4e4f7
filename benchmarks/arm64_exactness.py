"""Trained models' .tflite run on another machine's LiteRT (an ARM64 CPU, real or emulated) against Keras here.

    python benchmarks/arm64_exactness.py --models=runs/demo/model.keras \\
        --device_python="env PYTHONPATH=/work/arm/site qemu-aarch64-static -cpu cortex-a76 -L /work/arm/sysroot \\
            /work/arm/sysroot/usr/bin/python3.11"

A phone runs LiteRT's ARM64 kernels (NEON; XNNPACK's aarch64 micro-kernels),
which sum in another order than the x86 ones every other check here runs:
a gate whose logit lies near 0 could decide otherwise there. This exports
each of --models as `edge/convert.py` does (calibrated on --calibration,
policy --policy, `auto` by default, the signed file), runs it on --images here (LiteRT on this
CPU) and through --device_python, a command that starts Python on the other
machine (it runs `edge/run_tflite.py`, which needs numpy, absl-py and
ai-edge-litert only), once per LiteRT API of --apis, and compares each
with the Keras model (`export.agreement`: same top-1, logits within 1e-3 of
the range, each image's nearest gate) and with this CPU's LiteRT logits.
The command must see this checkout's files at the same paths (QEMU's user
mode does; edge/README.md, "On an ARM64 CPU", says how to build its Python).
Prints a table; --output writes the rows as {"rows": [...]}.
"""

import json
import os
import shlex
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The export is a TensorFlow graph built through Keras layers: Keras runs on TensorFlow here.
os.environ["KERAS_BACKEND"] = "tensorflow"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["runs/demo/model.keras"], "Trained FTWT .keras models.")
flags.DEFINE_string("device_python", None, "The command that runs Python on the other machine (split as a shell "
                    "would), e.g. 'env PYTHONPATH=SITE qemu-aarch64-static -cpu cortex-a76 -L SYSROOT "
                    "SYSROOT/usr/bin/python3.11'.", required=True)
flags.DEFINE_list("apis", ["interpreter", "compiled_model"], "The LiteRT APIs to run the files through there.")
flags.DEFINE_string("images", "cifar10:test[:1000]", "Images to check on (.npy, image folder or NAME:SPLIT), "
                    "resized to each model's input.")
flags.DEFINE_string("calibration", "cifar10:train[:64]", "Calibration images of the exports (the same kinds).")
flags.DEFINE_string("policy", "auto", "The exports' policy (`convert`'s: auto, chain, gather, dense or a keep cutoff): "
                    "`chain` and `gather` compute every gated conv compactly, so that every compact kernel runs there.")
flags.DEFINE_string("work_dir", "/tmp/ftwt_arm64", "Folder for the exports, images and logits exchanged.")
flags.DEFINE_integer("timeout", 3600, "Seconds one run on the other machine may take.", lower_bound=1)
flags.DEFINE_string("output", "benchmarks/results/arm64_exactness.json", "JSON file for the rows ('' to skip).")
flags.register_validator("apis", lambda names: bool(names) and set(names) <= {"interpreter", "compiled_model"},
                         message="--apis takes interpreter and/or compiled_model.")
FLAGS = flags.FLAGS


def _label(path):
    folder, name = os.path.split(os.path.splitext(path)[0])
    return f"{os.path.basename(folder)}_{name}" if folder else name


def _run_there(folder, api):
    """`edge/run_tflite.py` on the other machine over `folder`'s files: `{file name: logits}` and its machine."""
    import numpy as np

    output = os.path.join(folder, f"logits_{api}.npz")
    command = [*shlex.split(FLAGS.device_python), os.path.join(ROOT, "edge", "run_tflite.py"),
               f"--tflite_dir={folder}", f"--images={os.path.join(folder, 'images.npy')}", f"--output={output}",
               f"--api={api}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"The --device_python run failed (exit status {done.returncode}): "
                           f"{shlex.join(command)}\n{done.stderr[-3000:]}")
    with np.load(output) as ran:
        logits = {key.split("/", 1)[1]: ran[key] for key in ran.files if key.startswith("logits/")}
        return logits, str(ran["machine"]), str(ran["cpu"])


def main(argv):
    del argv
    import numpy as np

    from ftwt_keras import export
    from ftwt_keras.export import tflite

    rows = []
    try:
        policy = tflite.parse_policy(FLAGS.policy)
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in FLAGS.models:
        label = _label(path)
        try:
            model = tflite.load_ftwt_model(path)
            images = tflite.load_calibration_images(FLAGS.images, model, what=f"--images={FLAGS.images}")
            calibration = tflite.load_calibration_images(FLAGS.calibration, model,
                                                         what=f"--calibration={FLAGS.calibration}")
        except export.ExportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        folder = os.path.join(FLAGS.work_dir, label)
        os.makedirs(folder, exist_ok=True)
        for stale in os.listdir(folder):  # only this model's file runs there
            if stale.endswith((".tflite", ".npz")):
                os.remove(os.path.join(folder, stale))
        file = f"{label}.tflite"
        exported = tflite.export_file(model, os.path.join(folder, file), policy=policy,
                                      calibration=tflite.calibrate(model, calibration))
        np.save(os.path.join(folder, "images.npy"), np.asarray(images, np.float32))
        here = tflite.run(exported, images)
        reference = tflite.keras_reference(model, images)  # one Keras pass for every check below
        checked_here = tflite.agreement(model, None, images, logits=here, reference=reference)
        logit_range = float(np.ptp(here)) or 1.0
        for api in FLAGS.apis:
            try:
                logits, machine, cpu = _run_there(folder, api)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            checked = tflite.agreement(model, None, images, logits=logits[file], reference=reference)
            row = {
                "model": label,
                "images": int(len(images)),
                "policy": FLAGS.policy,
                "api": api,
                "machine": machine,
                "cpu": cpu,
                "same_top1": int(checked["same_top1"].sum()),
                "within_tolerance": int(np.sum(checked["logit_error"] <= export.LOGIT_TOLERANCE)),
                "largest_logit_error": float(checked["logit_error"].max()),
                "nearest_gate_beyond_tolerance": (float(checked["gate_margin"][checked["logit_error"] >
                                                                               export.LOGIT_TOLERANCE].max())
                                                  if np.any(checked["logit_error"] > export.LOGIT_TOLERANCE)
                                                  else None),
                "same_as_here": int(np.sum(np.all(logits[file] == here, axis=1))),
                "largest_difference_from_here": float(np.abs(logits[file] - here).max() / logit_range),
                "here_cpu": tflite.cpu_name(),
                "here_same_top1": int(checked_here["same_top1"].sum()),
                "here_within_tolerance": int(np.sum(checked_here["logit_error"] <= export.LOGIT_TOLERANCE)),
            }
            rows.append(row)
            print(f"{label} through {api} on {machine} ({cpu}): {tflite.agreement_report(checked)} Against this "
                  f"CPU's LiteRT: the same logits on {row['same_as_here']} of {len(images)} images, at most "
                  f"{row['largest_difference_from_here']:.1e} of the range apart.", flush=True)
    print("| model | images | API | there: same top-1 as Keras / logits within 1e-3 | here | there = here, bit for bit "
          "| largest difference there - here (of the range) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['images']} | {row['api']} | {row['same_top1']} / {row['within_tolerance']} | "
              f"{row['here_same_top1']} / {row['here_within_tolerance']} | {row['same_as_here']} | "
              f"{row['largest_difference_from_here']:.1e} |")
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as handle:
            json.dump({"rows": rows}, handle, indent=1)
        print(f"Wrote {len(rows)} rows to {FLAGS.output}.")
    return 0


if __name__ == "__main__":
    app.run(main)
