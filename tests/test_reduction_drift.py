"""benchmarks/reduction_drift.py end to end on real CIFAR-10 test images."""

import os

import ftwt_keras as fk
from conftest import ROOT, run_python

SCRIPT = os.path.join(ROOT, "benchmarks", "reduction_drift.py")


def test_drift_table_of_a_freshly_gated_model(tmp_path):
    base = fk.models.mobilenet_v1(alpha=0.25)
    base.save(tmp_path / "base.keras")
    fk.gate(base, threshold=0.8).save(tmp_path / "gated.keras")
    result = run_python(SCRIPT, f"--baseline={tmp_path / 'base.keras'}", f"--models={tmp_path / 'gated.keras'}",
                        "--test_images=64")
    assert result.returncode == 0, result.stderr[-3000:]
    row = [line for line in result.stdout.splitlines() if "gated.keras" in line]
    assert len(row) == 1, result.stdout
    cells = [cell.strip() for cell in row[0].strip("|").split("|")]
    assert cells[1] == "0.8"
    estimate, dense_targets, gated_targets, achieved, drift, error = map(float, cells[2:])
    # Untrained: run dense, the gated model's targets are the baseline's.
    assert abs(dense_targets - estimate) <= 0.1
    assert abs(drift - (gated_targets - estimate)) <= 0.11 and abs(error - (achieved - gated_targets)) <= 0.11
