"""Which gates pay on a device that runs no Python: candidate networks to time there, and the choice from the times.

`measured_paying_gates` times its candidate networks where it runs. A phone
runs `benchmark_model`, not Python: `export_candidates` writes the same
candidates (`gate_candidates`) and the dense network as `.tflite` files with
a manifest (and `device.write_device_script` the adb script that times them),
`benchmark_model_ms` reads the time out of `benchmark_model`'s
output for each, and `pick_candidate` takes the fastest that beats dense.
Before training, the candidates are the dense baseline gated at r with masks
drawn at its targets (`drawn_at_targets`); the pick's `ungated_layers` are
then what the recipes' `--ungated_layers` takes.
"""

import json
import os

from ftwt_keras.export.checks import ExportError, _check_threads, check_ftwt_model
from ftwt_keras.export.measured import gate_candidates

MANIFEST = "candidates.json"


def export_candidates(model, calibration, output_dir, num_threads=1, static_gates=False, drop_divisor=4,
                      int8_images=None):
    """Writes `model`'s `gate_candidates` and its dense network as `.tflite` files, and their manifest.

    Files: `dense.tflite`, `gated_<i>.tflite` for the i-th candidate (each
    gating a subset of the one before), and `candidates.json`: `{"threads",
    "dense", "candidates": [{"file", "gates", "ungated_layers"}]}`, where
    `ungated_layers` are `model`'s gated layers that the candidate leaves
    dense. Time each file where the model will run (`benchmark_model`, see
    edge/README.md) and pass the times to `pick_candidate`. With
    `int8_images`, also `dense_int8.tflite` (manifest key `"dense_int8"`): the
    dense network in full-integer int8, what an app may ship instead of any
    float32 export, to time beside them.

    Args:
        model: an `ftwt_keras.FTWTModel`, e.g. from `drawn_at_targets`.
        calibration: the `Calibration` the exports use.
        output_dir: where to write (created if missing).
        num_threads: the interpreter threads the device will run with.
        static_gates, drop_divisor: as `measured_paying_gates`' (drawn masks:
            `static_gates=False`).
        int8_images: `(N, H, W, C)` raw images that set the int8 ranges of
            `dense_int8.tflite` (`convert`'s `representative_images`); None:
            no such file.

    Returns:
        The manifest (a dict, as written).
    """
    from ftwt_keras.export.tflite import convert, save

    check_ftwt_model(model)
    _check_threads(num_threads)
    if calibration is None:
        raise ExportError("`export_candidates` needs the `calibration` the exports will use.")
    os.makedirs(output_dir, exist_ok=True)
    save(convert(model, dynamic=False), os.path.join(output_dir, "dense.tflite"))
    manifest = {"threads": num_threads, "dense": "dense.tflite"}
    if int8_images is not None:
        save(convert(model, dynamic=False, weight_dtype="int8", representative_images=int8_images),
             os.path.join(output_dir, "dense_int8.tflite"))
        manifest["dense_int8"] = "dense_int8.tflite"
    names = [layer.name for layer in model.gated_layers]
    candidates = []
    for index, (kept, network) in enumerate(gate_candidates(model, calibration, num_threads, static_gates,
                                                            drop_divisor)):
        file = f"gated_{index}.tflite"
        save(convert(network, calibration=calibration, static_gates=static_gates, num_threads=num_threads),
             os.path.join(output_dir, file))
        candidates.append({"file": file, "gates": kept, "ungated_layers": [n for n in names if n not in kept]})
    manifest["candidates"] = candidates
    with open(os.path.join(output_dir, MANIFEST), "w") as file:
        json.dump(manifest, file, indent=2)
    return manifest


def read_manifest(output_dir):
    """The manifest `export_candidates` wrote in `output_dir`."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.exists(path):
        raise ExportError(f"No {MANIFEST} in {output_dir}: write the candidates first (edge/candidates.py --baseline ...).")
    with open(path) as file:
        return json.load(file)


def pick_candidate(manifest, times_ms, margin=0.01):
    """The fastest candidate at least `margin` faster than dense, from `{file: ms}`; None when none is.

    Args:
        manifest: `export_candidates`' (or `read_manifest`).
        times_ms: each file's time on the device, the dense one's included
            (candidates without a time are skipped).
        margin: how much faster than dense (a fraction of its time).

    Returns:
        The candidate's manifest entry with its `ms` added, or None: ship
        the dense model.
    """
    if manifest["dense"] not in times_ms:
        raise ExportError(f"No time for the dense model ({manifest['dense']}): every candidate is judged against it.")
    dense_ms = times_ms[manifest["dense"]]
    timed = [dict(entry, ms=times_ms[entry["file"]]) for entry in manifest["candidates"] if entry["file"] in times_ms]
    faster = [entry for entry in timed if entry["ms"] <= (1.0 - margin) * dense_ms]
    return min(faster, key=lambda entry: entry["ms"]) if faster else None
