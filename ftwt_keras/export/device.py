"""Timing `.tflite` files on a phone, which runs no Python: an adb script for LiteRT's `benchmark_model`, and its output read back.

`write_device_script` writes `run_on_device.sh` into a folder of exports: it
pushes them (and any input files) to the phone adb reaches, runs
`benchmark_model` once per `DeviceRun` and saves each output beside its file
on the host; `benchmark_model_ms` reads the time back out of such an output.
`edge/benchmark.py --device_dir` and `edge/candidates.py` both write one.
"""

import dataclasses
import os
import re
import shlex
from typing import Optional

from ftwt_keras.export.checks import ExportError

DEVICE_SCRIPT = "run_on_device.sh"
REMOTE_DIR = "/data/local/tmp/ftwt"  # where the files go on the phone
BENCHMARK_MODEL = "/data/local/tmp/benchmark_model"  # where LiteRT's benchmark binary is (or is pushed)
_AVERAGE = re.compile(r"Inference timings in us: .*Inference \(avg\): ([0-9.eE+-]+)")


@dataclasses.dataclass(frozen=True)
class DeviceRun:
    """One `benchmark_model` run of a `.tflite` file on the device.

    Attributes:
        file: the `.tflite` file, in the folder the script is written to.
        log: where its output goes, in that folder (the name `benchmark_model_ms` is given to read).
        threads: interpreter threads (`--num_threads`).
        num_runs: timed invokes (`--num_runs`); their mean is the time.
        warmup_runs: invokes before timing (`--warmup_runs`).
        image: a file of raw float32 pixels in the folder, `(size, size, 3)`, fed to the export's input
            `images` (its masks then are that image's); None: `benchmark_model`'s random input.
        size: the input's height and width, with `image`.
    """

    file: str
    log: str
    threads: int = 1
    num_runs: int = 200
    warmup_runs: int = 20
    image: Optional[str] = None
    size: Optional[int] = None

    def __post_init__(self):
        if (self.image is None) != (self.size is None):
            raise ExportError(f"DeviceRun of {self.file}: pass `image` and `size` together (the input file and its "
                              f"height and width); got image={self.image!r}, size={self.size!r}.")

    def command(self):
        """The script's line for this run: `$RUN` is empty or `taskset <mask>` (the script's `PIN`)."""
        line = (f"adb shell $RUN {BENCHMARK_MODEL} --graph={REMOTE_DIR}/{self.file} --num_threads={self.threads} "
                f"--use_xnnpack=true --warmup_runs={self.warmup_runs} --num_runs={self.num_runs}")
        if self.image is not None:  # the export's input, "images" (`convert`), fed this image's pixels
            line += (f" --input_layer=images --input_layer_shape=1,{self.size},{self.size},3"
                     f" --input_layer_value_files=images:{REMOTE_DIR}/{self.image}")
        return f"{line} > {shlex.quote(self.log)}"


def write_device_script(folder, runs):
    """Writes `folder/run_on_device.sh`, which times `runs` on the phone adb reaches; returns its path.

    The script pushes every file the runs name, runs them in order and saves
    each output as its run's `log` in `folder` (`benchmark_model` prints its
    results on stdout; an error goes to the terminal and stops the script).
    `BENCHMARK_MODEL=<a local build>` pushes LiteRT's `benchmark_model` first
    (else it must be at `BENCHMARK_MODEL` on the phone); `PIN=<taskset mask>`
    (e.g. `f0`, the big cores of many phones) pins every run to those cores.

    Args:
        folder: the folder holding the runs' files.
        runs: `DeviceRun`s.

    Raises:
        ExportError: no runs, or a run's file (or image) is not in `folder`.
    """
    if not runs:
        raise ExportError("No runs to write a device script for.")
    pushed = sorted({run.file for run in runs} | {run.image for run in runs if run.image is not None})
    missing = [name for name in pushed if not os.path.exists(os.path.join(folder, name))]
    if missing:
        raise ExportError(f"{missing} not in {folder}: write the files before the script that pushes them.")
    lines = ["#!/bin/sh", "# Times every .tflite of this folder on the phone adb reaches (edge/README.md).",
             f"# Needs LiteRT's benchmark_model at {BENCHMARK_MODEL}: BENCHMARK_MODEL=<a local build> pushes it first.",
             "# PIN=<taskset mask> (e.g. PIN=f0, the big cores of many phones) runs it on those cores.",
             "set -e", 'cd "$(dirname "$0")"',
             f'if [ -n "$BENCHMARK_MODEL" ]; then adb push "$BENCHMARK_MODEL" {BENCHMARK_MODEL}; '
             f"adb shell chmod +x {BENCHMARK_MODEL}; fi",
             'RUN=""; if [ -n "$PIN" ]; then RUN="taskset $PIN"; fi',
             f"adb shell mkdir -p {REMOTE_DIR}"]
    lines += [f"adb push {shlex.quote(name)} {REMOTE_DIR}/{name}" for name in pushed]
    lines += [run.command() for run in runs]
    path = os.path.join(folder, DEVICE_SCRIPT)
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def benchmark_model_ms(text):
    """The mean inference time, in ms, that LiteRT's `benchmark_model` printed in `text` (its output)."""
    found = _AVERAGE.findall(text)
    if not found:
        raise ExportError("No 'Inference timings in us: ... Inference (avg): N' line in this benchmark_model output: "
                          "save the whole output of one benchmark_model run per file.")
    return float(found[-1]) / 1e3
