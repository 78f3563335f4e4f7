"""Run .tflite files on images with nothing but numpy, absl-py and ai-edge-litert: their logits (and times).

    python edge/run_tflite.py --tflite_dir=exports --images=exports/images.npy --output=exports/logits.npz
    python edge/run_tflite.py --tflite_dir=exports --images=exports/images.npy --output=logits.npz \\
        --api=compiled_model --loops=3 --threads=1

For a machine with Python but without TensorFlow or Keras: an ARM64 Linux
board or server (`pip install ai-edge-litert absl-py`), or an ARM64 Python run
by QEMU on a desktop (`edge/arm64_python.sh` builds one;
`benchmarks/arm64_exactness.py` drives it). A phone's Android runs no such
wheel: time there with `benchmark_model` (edge/README.md). Every `.tflite` in --tflite_dir runs on
every image of --images (a .npy of (N, H, W, 3) float32 raw pixels, as the
models take them) through --api (LiteRT's Interpreter, or LiteRT 2.x's
CompiledModel); --output gets a .npz of `logits/<file name>` (N, classes)
arrays, and the machine (`machine`, `cpu`, `api`, `threads`). With --loops N
the files are also timed, side by side, image by image, N times
(`ftwt_keras.export.runtime.loop_times`): `seconds/<file name>` (N loops,
images), and the medians printed; they mean something on real hardware only,
not under an emulator.

The runner is `ftwt_keras/export/runtime.py`, loaded by its path: the package
itself imports Keras, which such a machine need not have.
"""

import importlib.util
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite_dir", None, "Folder of the .tflite files to run (each file in it, not below).")
flags.DEFINE_string("images", None, "A .npy file of (N, H, W, 3) float32 images, raw pixels as the models take them.")
flags.DEFINE_string("output", None, "The .npz file to write the logits (and times) to.")
flags.DEFINE_enum("api", "interpreter", ["interpreter", "compiled_model"],
                  "The LiteRT API to run the files through: the Interpreter or LiteRT 2.x's CompiledModel (CPU).")
flags.DEFINE_integer("threads", 1, "CPU threads.", lower_bound=1)
flags.DEFINE_integer("loops", 0, "Also time the files side by side this many times (0: logits only).", lower_bound=0)
flags.mark_flags_as_required(["tflite_dir", "images", "output"])

_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ftwt_keras", "export",
                        "runtime.py")


def _runtime():
    """`ftwt_keras.export.runtime`, loaded from its file (numpy and ai-edge-litert only; no Keras)."""
    spec = importlib.util.spec_from_file_location("ftwt_runtime", _RUNTIME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    import numpy as np

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not os.path.isdir(FLAGS.tflite_dir):
        raise app.UsageError(f"--tflite_dir={FLAGS.tflite_dir!r} is not a folder.")
    files = sorted(name for name in os.listdir(FLAGS.tflite_dir) if name.endswith(".tflite"))
    if not files:
        raise app.UsageError(f"No .tflite file in --tflite_dir={FLAGS.tflite_dir!r}.")
    if not os.path.isfile(FLAGS.images):
        raise app.UsageError(f"--images={FLAGS.images!r} does not exist.")
    images = np.load(FLAGS.images)
    if images.ndim != 4 or not len(images):
        raise app.UsageError(f"--images must hold a non-empty (N, H, W, C) array; {FLAGS.images} holds "
                             f"{images.shape}.")
    runtime = _runtime()
    paths = {name: os.path.join(FLAGS.tflite_dir, name) for name in files}
    results = {"machine": np.array(runtime.platform.machine()), "cpu": np.array(runtime.cpu_name()),
               "api": np.array(FLAGS.api), "threads": np.array(FLAGS.threads)}
    for name, path in paths.items():
        results[f"logits/{name}"] = runtime.run(path, images, FLAGS.threads, api=FLAGS.api)
        print(f"{name}: {len(images)} images run ({FLAGS.api}, {runtime.platform.machine()}).", flush=True)
    if FLAGS.loops:
        loops = runtime.loop_times(paths, images, FLAGS.loops, FLAGS.threads, api=FLAGS.api)
        for name, median in runtime.medians_over_loops(loops).items():
            results[f"seconds/{name}"] = np.array(loops[name])
            print(f"{name}: {median:.3f} ms (median over {FLAGS.loops} side-by-side loops of each loop's median).")
    np.savez(FLAGS.output, **results)
    print(f"Wrote the logits of {len(files)} files on {len(images)} images to {FLAGS.output}.")
    return 0


if __name__ == "__main__":
    app.run(main)
