"""Candidate networks to time on a device without Python, and the choice from their times (ftwt_keras.export.candidates)."""

import json
import os
import subprocess

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from ftwt_keras.export import tflite as export  # noqa: E402

from conftest import ROOT, run_python  # noqa: E402
from export_helpers import stand_in_adb, two_paying_convs  # noqa: E402


def _log(microseconds):
    """What benchmark_model prints around its result line (LiteRT's BenchmarkLoggingListener)."""
    return ("INFO: Running benchmark for at least 200 iterations and at least 1 seconds\n"
            f"INFO: Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, "
            f"Inference (avg): {microseconds}\n"
            "INFO: Memory footprint delta from the start of the tool (MB): init=4.5 overall=9.1\n")


def test_the_pick():
    """The fastest candidate at least 1% faster than dense."""
    manifest = {"threads": 1, "dense": "dense.tflite", "candidates": [
        {"file": "gated_0.tflite", "gates": ["a", "b"], "ungated_layers": []},
        {"file": "gated_1.tflite", "gates": ["b"], "ungated_layers": ["a"]}]}
    times = {"dense.tflite": 10.0, "gated_0.tflite": 9.5, "gated_1.tflite": 9.0}
    assert export.pick_candidate(manifest, times) == dict(manifest["candidates"][1], ms=9.0)
    assert export.pick_candidate(manifest, dict(times, **{"gated_1.tflite": 11.0}))["file"] == "gated_0.tflite"
    assert export.pick_candidate(manifest, {"dense.tflite": 10.0, "gated_0.tflite": 9.95}) is None  # within 1%
    with pytest.raises(export.ExportError, match="No time for the dense model"):
        export.pick_candidate(manifest, {"gated_0.tflite": 9.0})


def test_candidates_cli_writes_the_networks_to_time_and_picks_from_their_times(tmp_path, cifar_images):
    """edge/candidates.py: the baseline gated at r with drawn masks, at the paying convs and then fewer; each file
    runs; then, from benchmark_model's outputs, the fastest that beats dense and the --ungated_layers to train it."""
    path = str(tmp_path / "baseline.keras")
    two_paying_convs().save(path)
    images = np.asarray(keras.ops.image.resize(cifar_images[:8], (28, 28)))
    np.save(tmp_path / "calibration.npy", images)
    out = tmp_path / "candidates"

    def cli(*flags):
        return run_python(os.path.join(ROOT, "edge", "candidates.py"), *flags, timeout=300)

    result = cli(f"--baseline={path}", "--threshold=0.3", "--target=uniform", f"--calibration={tmp_path / 'calibration.npy'}",
                 f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "candidates.json").read_text())
    assert [entry["gates"] for entry in manifest["candidates"]] == [["conv1", "conv2"], ["conv2"]]
    assert [entry["ungated_layers"] for entry in manifest["candidates"]] == [["conv0"], ["conv0", "conv1"]]
    assert "gated_1.tflite: gated at conv2 (1 of 3 gated convs)" in result.stdout
    assert f"Time them on the device: sh {out / 'run_on_device.sh'}" in result.stdout
    # The script it wrote, run as a user would, with a stand-in adb: every file timed, its output saved beside it.
    environment, calls = stand_in_adb(tmp_path / "bin", microseconds=9000)
    ran = subprocess.run(["sh", str(out / "run_on_device.sh")], env=environment, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    runs = [call for call in calls.read_text().splitlines() if "--graph=" in call]
    files = ["dense.tflite", "dense_int8.tflite", "gated_0.tflite", "gated_1.tflite"]
    assert runs == [f"shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/ftwt/{file} --num_threads=1 "
                    "--use_xnnpack=true --warmup_runs=20 --num_runs=200" for file in files]
    assert all(export.benchmark_model_ms((out / f"{file}.log").read_text()) == 9.0 for file in files)
    assert manifest["dense_int8"] == "dense_int8.tflite"  # the dense network in full int8, to time beside them
    assert "QUANTIZE" in export.op_names((out / "dense_int8.tflite").read_bytes())
    for entry in manifest["candidates"]:  # each file runs the network gated at its convs, with the drawn masks
        flatbuffer = (out / entry["file"]).read_bytes()
        assert export.op_names(flatbuffer).count("TOPK_V2") == len(entry["gates"])  # each one compact
        assert export.run(flatbuffer, images[:2]).shape == (2, 10)
    assert export.op_names((out / "dense.tflite").read_bytes()).count("TOPK_V2") == 0

    for file, microseconds in (("dense.tflite", 10000), ("gated_0.tflite", 11000), ("gated_1.tflite", 9000),
                               ("dense_int8.tflite", 4500)):
        (out / f"{file}.log").write_text(_log(microseconds))
    result = cli(f"--pick={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "  gated_1.tflite: 9.00 ms" in result.stdout and "  dense_int8.tflite: 4.50 ms" in result.stdout
    assert ("gated_1.tflite (1 gate) ran at 1.11x of dense. To train it: the recipe's flags plus "
            "--ungated_layers=conv0,conv1 (added to any it had), without --gate_only_paying.") in result.stdout
    assert ("But the dense model in full int8 (dense_int8.tflite, 4.50 ms) ran faster than gated_1.tflite "
            "(9.00 ms)") in result.stdout
    (out / "dense_int8.tflite.log").write_text(_log(9900))
    result = cli(f"--pick={out}")
    assert "gated_1.tflite also beat the dense model in full int8 (dense_int8.tflite, 9.90 ms) at 1.10x." in result.stdout
    (out / "dense.tflite.log").write_text("INFO: Loaded model\n")
    bad = cli(f"--pick={out}")
    assert bad.returncode == 1 and "dense.tflite.log: No 'Inference timings in us" in bad.stderr
    bad = cli(f"--baseline={path}", f"--pick={out}")
    assert bad.returncode != 0 and "Pass --baseline" in bad.stderr
