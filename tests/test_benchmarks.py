"""Benchmark scripts without a test module of their own (the edge ones: test_edge_cli.py)."""

import os
import re

from conftest import ROOT, refusals, run_python


def _script(name):
    return os.path.join(ROOT, "benchmarks", name)


def test_eager_and_compiled_passes_are_timed_and_agree():
    """benchmarks/gate_passes.py end to end on a few real CIFAR-10 test images."""
    result = run_python(_script("gate_passes.py"), "--alphas=0.25", "--num_images=12", "--batch_size=8", "--loops=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match[0]: match[1:] for match in re.findall(
        r"^\s+(\w+)\s+eager\s+([\d.]+)\s+compiled \(trace included\)\s+([\d.]+)\s+[\d.]+x\s+max difference (\S+)$",
        result.stdout, flags=re.M)}
    assert set(rows) == {"dynamic_macs", "estimate_flops_reduction"}, result.stdout
    for eager, compiled, difference in rows.values():
        assert float(eager) > 0 and float(compiled) > 0 and float(difference) <= 1e-6


def test_train_overhead_refuses_what_the_zoo_or_keras_refuse():
    said, _ = refusals(_script("train_overhead.py"), ["--model=resnet_cifar", "--depth=8"],
                       ["--model=resnet_cifar", "--depth=20", "--dtype_policies=float32,mixed_float8"])
    assert "`depth` must be one of (20, 32, 44, 56, 110); got 8" in said[0]
    assert "mixed_float8" in said[1]


def test_gate_passes_refuses_bad_flags():
    said, _ = refusals(_script("gate_passes.py"), ["--alphas=0.25,wide"], ["--threshold=1.5"])
    assert "--alphas must be positive width multipliers" in said[0] and "--threshold must be in (0, 1]" in said[1]
