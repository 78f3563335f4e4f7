"""The adb script that times exports on a phone, and benchmark_model's output read back (ftwt_keras.export.device)."""

import os
import subprocess

import pytest

from ftwt_keras.export import device

from export_helpers import stand_in_adb


def test_benchmark_model_output():
    """The mean of benchmark_model's result line, in ms; a clear error without one."""
    log = ("INFO: Running benchmark for at least 200 iterations and at least 1 seconds\n"
           "INFO: Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, "
           "Inference (avg): 14154.4\n"
           "INFO: Memory footprint delta from the start of the tool (MB): init=4.5 overall=9.1\n")
    assert device.benchmark_model_ms(log) == pytest.approx(14.1544)
    with pytest.raises(device.ExportError, match="No 'Inference timings in us"):
        device.benchmark_model_ms("INFO: Loaded model m.tflite\n")


def test_device_script_pushes_runs_and_saves_each_output(tmp_path):
    """Each run's command line; the script pushes every file once (the binary with BENCHMARK_MODEL), pins the
    cores with PIN, and saves each output as its run's log, here answered by a stand-in adb."""
    for name in ("a.tflite", "b.tflite", "image000.raw"):
        (tmp_path / name).write_bytes(b"\0")
    runs = [device.DeviceRun("a.tflite", "a.threads1.log"),
            device.DeviceRun("a.tflite", "a.threads2.log", threads=2, num_runs=50, warmup_runs=5),
            device.DeviceRun("b.tflite", "b.image000.log", num_runs=10, image="image000.raw", size=32)]
    assert runs[2].command() == (
        "adb shell $RUN /data/local/tmp/benchmark_model --graph=/data/local/tmp/ftwt/b.tflite --num_threads=1 "
        "--use_xnnpack=true --warmup_runs=20 --num_runs=10 --input_layer=images --input_layer_shape=1,32,32,3 "
        "--input_layer_value_files=images:/data/local/tmp/ftwt/image000.raw > b.image000.log")
    script = device.write_device_script(str(tmp_path), runs)
    assert script == str(tmp_path / device.DEVICE_SCRIPT) and os.access(script, os.X_OK)
    environment, calls = stand_in_adb(tmp_path / "bin", microseconds=2500)
    elsewhere = tmp_path / "elsewhere"  # the script works from its own folder
    elsewhere.mkdir()
    ran = subprocess.run(["sh", script], env=dict(environment, PIN="f0", BENCHMARK_MODEL="/opt/benchmark_model"),
                         cwd=elsewhere, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert calls.read_text().splitlines() == [
        "push /opt/benchmark_model /data/local/tmp/benchmark_model",
        "shell chmod +x /data/local/tmp/benchmark_model",
        "shell mkdir -p /data/local/tmp/ftwt",
        "push a.tflite /data/local/tmp/ftwt/a.tflite",
        "push b.tflite /data/local/tmp/ftwt/b.tflite",
        "push image000.raw /data/local/tmp/ftwt/image000.raw",
        *[f"shell taskset f0 {run.command()[len('adb shell $RUN '):].split(' > ')[0]}" for run in runs],
    ]
    for run in runs:
        assert device.benchmark_model_ms((tmp_path / run.log).read_text()) == 2.5
    # Without PIN and BENCHMARK_MODEL: no binary pushed, no taskset.
    calls.unlink()
    ran = subprocess.run(["sh", script], env=environment, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "shell mkdir -p /data/local/tmp/ftwt"
    assert lines[-1].startswith("shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/ftwt/b.tflite ")


def test_device_script_refuses_missing_files_and_no_runs(tmp_path):
    (tmp_path / "a.tflite").write_bytes(b"\0")
    with pytest.raises(device.ExportError, match=r"\['b.tflite'\] not in .*: write the files before the script"):
        device.write_device_script(str(tmp_path), [device.DeviceRun("a.tflite", "a.log"),
                                                   device.DeviceRun("b.tflite", "b.log")])
    with pytest.raises(device.ExportError, match=r"\['image000.raw'\] not in"):
        device.write_device_script(str(tmp_path), [device.DeviceRun("a.tflite", "a.log", image="image000.raw", size=32)])
    with pytest.raises(device.ExportError, match="pass `image` and `size` together"):
        device.DeviceRun("a.tflite", "a.log", image="image000.raw")
    with pytest.raises(device.ExportError, match="No runs"):
        device.write_device_script(str(tmp_path), [])
    assert not (tmp_path / device.DEVICE_SCRIPT).exists()
