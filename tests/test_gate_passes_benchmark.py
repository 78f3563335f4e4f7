"""benchmarks/gate_passes.py end to end on a few real CIFAR-10 test images."""

import os
import re

from conftest import ROOT, run_python

SCRIPT = os.path.join(ROOT, "benchmarks", "gate_passes.py")


def test_eager_and_compiled_passes_are_timed_and_agree():
    result = run_python(SCRIPT, "--alphas=0.25", "--num_images=12", "--batch_size=8", "--loops=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match[0]: match[1:] for match in re.findall(
        r"^\s+(\w+)\s+eager\s+([\d.]+)\s+compiled \(trace included\)\s+([\d.]+)\s+[\d.]+x\s+max difference (\S+)$",
        result.stdout, flags=re.M)}
    assert set(rows) == {"dynamic_macs", "estimate_flops_reduction"}, result.stdout
    for eager, compiled, difference in rows.values():
        assert float(eager) > 0 and float(compiled) > 0 and float(difference) <= 1e-6
