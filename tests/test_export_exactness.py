"""benchmarks/export_exactness.py: pooling the .tflite-vs-Keras checks of several runs."""

import os

import numpy as np
from conftest import ROOT, benchmark_script, run_python

SCRIPT = os.path.join(ROOT, "benchmarks", "export_exactness.py")


def _check(errors, same_top1, margins):
    return {"tflite_logit_error": np.array(errors), "tflite_same_top1": np.array(same_top1),
            "gate_margin": np.array(margins)}


def _export_exactness():
    return benchmark_script("export_exactness")


def test_pooled_agreement_counts_each_band_over_all_runs():
    pooled = _export_exactness().pooled_agreement(
        [_check([1e-7, 5e-4, 2e-3], [True, True, False], [0.5, 1e-6, 2e-6]),
         _check([0.0, 1e-6], [True, True], [0.3, 0.2])], tolerance=1e-3, rounding=1e-6)
    assert (pooled["pairs"], pooled["same_top1"]) == (5, 4)
    assert (pooled["within_rounding"], pooled["within_tolerance"]) == (3, 4)  # 1e-6 itself counts as rounding
    assert pooled["beyond_rounding"] == [5e-4, 2e-3]
    assert pooled["largest_gate_margin_beyond_rounding"] == 2e-6  # only the images beyond rounding


def test_pooled_agreement_with_every_image_exact_has_no_margin():
    pooled = _export_exactness().pooled_agreement([_check([0.0, 3e-7], [True, True], [0.5, 0.1])])
    assert pooled["beyond_rounding"] == [] and pooled["largest_gate_margin_beyond_rounding"] is None


def test_cli_pools_the_runs_folders_and_refuses_empty_ones(tmp_path):
    for folder, errors in (("seed0", [0.0, 2e-3]), ("seed1", [1e-7, 1e-7])):
        os.makedirs(tmp_path / folder / "r0.9_decoupled")
        np.savez(tmp_path / folder / "r0.9_decoupled" / "analysis.npz", **_check(errors, [True, True], [0.4, 1e-6]))
    os.makedirs(tmp_path / "seed0" / "static_x0.2")  # controls have no .tflite check: not pooled
    run = run_python(SCRIPT, f"--runs={tmp_path / 'seed0'},{tmp_path / 'seed1'}")
    assert run.returncode == 0, run.stderr
    assert "2 models, 4 image-model pairs" in run.stdout
    assert "beyond 0.001: 1 (0.20%)" in run.stdout
    empty = run_python(SCRIPT, f"--runs={tmp_path / 'none'}")
    assert empty.returncode != 0 and "No r*/analysis.npz under" in empty.stderr
