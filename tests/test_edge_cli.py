"""The edge CLIs (edge/convert.py, edge/benchmark.py) and the export benchmarks under benchmarks/, end to end."""

import collections
import json
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from conftest import ROOT, benchmark_script, refusals, run_python  # noqa: E402
from export_helpers import (  # noqa: E402
    BUILDERS,
    assert_same_logits,
    perturb,
    stand_in_adb,
)


def _saved_with_first_layer_decided(tmp_path):
    """A MobileNetV1 x0.25 whose first gated layer's gates are half on, half off for every image; saved."""
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    first = model.gated_layers[0]
    perturb(model, seed=6, decided={first.name: (np.arange(first.filters // 2), np.arange(first.filters // 2, first.filters))})
    path = str(tmp_path / "model.keras")
    model.save(path)
    return model, path


def _depthwise_filters_constant(flatbuffer):
    """For each DEPTHWISE_CONV_2D of the main graph: whether its filter is a constant (XNNPACK takes only those)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    code = schema.BuiltinOperator.DEPTHWISE_CONV_2D
    constant = []
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        op_code = model.OperatorCodes(op.OpcodeIndex())
        if max(op_code.BuiltinCode(), op_code.DeprecatedBuiltinCode()) == code:
            constant.append(model.Buffers(graph.Tensors(op.Inputs(1)).Buffer()).DataLength() > 0)
    return constant


def run_benchmark(script, *flags):
    """Runs `benchmarks/<script>` with `flags` in a subprocess (this checkout on its path)."""
    return run_python(os.path.join(ROOT, "benchmarks", script), *flags)


@pytest.mark.parametrize("script", ["convert.py", "benchmark.py", "candidates.py", "run_tflite.py"])
def test_cli_help(script):
    result = run_python(os.path.join(ROOT, "edge", script), "--help", timeout=120)
    # absl prints the help and exits (with status 1 in absl-py 2.x).
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert "--output" in result.stdout and "Traceback" not in result.stderr


def test_convert_cli_prunes_decided_gates_unless_told_not_to(tmp_path, cifar_images):
    """edge/convert.py: a layer whose gates the weights decide runs no predictor; --nostatic_gates keeps it."""
    model, path = _saved_with_first_layer_decided(tmp_path)
    softmaxes = {}

    def convert(flag, *more):
        return run_python(os.path.join(ROOT, "edge", "convert.py"), f"--model={path}",
                          f"--output={tmp_path / f'{flag}.tflite'}", flag, *more, timeout=300)

    gated, first = len(model.gated_layers), model.gated_layers[0].name
    python_info = re.compile(r"^I\d{4} [\d:.]+ +\d+ \S+\.py:\d+\]", re.M)  # an absl INFO line of a Python module
    for flag, more, pruned in (("--static_gates", (), f"1 of {gated} gated layers pruned by their predictors' "
                                f"weights: {first}."),
                               ("--nostatic_gates", ("--threads=2", "--verbosity=0"),
                                f"0 of {gated} gated layers pruned")):
        result = convert(flag, *more)
        assert result.returncode == 0, result.stderr[-2000:]
        assert pruned in result.stdout and "Pass --calibration" in result.stdout
        # TensorFlow's converter logs at INFO: absl's app shows that only when asked (--verbosity=0).
        assert bool(python_info.search(result.stderr)) == ("--verbosity=0" in more), result.stderr[-2000:]
        flatbuffer = open(tmp_path / f"{flag}.tflite", "rb").read()
        assert_same_logits(flatbuffer, model, cifar_images[:8])
        softmaxes[flag] = export.op_names(flatbuffer).count("SOFTMAX")
    assert softmaxes == {"--static_gates": len(model.gated_layers) - 1, "--nostatic_gates": len(model.gated_layers)}
    shared = (f"--model={path}", f"--output={tmp_path / 'bad.tflite'}")
    said, asked = refusals(os.path.join(ROOT, "edge", "convert.py"), (*shared, "--threads=0"),
                           (*shared, "--dense", "--calibration=imagenet"),
                           (f"--model={path}", f"--output={tmp_path / 'dense.tflite'}", "--dense"))
    assert "--threads must be >= 1" in said[0]
    assert "NAME:SPLIT" in said[1]  # a bad --calibration is refused with --dense too
    assert not (tmp_path / "bad.tflite").exists()
    assert said[2] is None and "it is the timing reference, not an accurate model" in asked.stdout


def test_convert_cli_says_which_gates_skip_work(tmp_path, cifar_images):
    """With --calibration, edge/convert.py names the gates that compute fewer filters, and what the rest cost."""
    model = export.set_keep_ratio(fk.gate(fk.models.vgg16_bn()), keep=0.3)
    path = str(tmp_path / "vgg.keras")
    model.save(path)
    np.save(tmp_path / "calibration.npy", cifar_images[:4])

    def convert(*flags):
        result = run_python(os.path.join(ROOT, "edge", "convert.py"), f"--model={path}",
                            f"--output={tmp_path / 'vgg.tflite'}", f"--calibration={tmp_path / 'calibration.npy'}",
                            *flags, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    # Drawn masks are decided by the weights (zero kernels, +-50 biases): without static pruning,
    # conv2-conv7 compact (as in test_calibration_on_targets_says_before_training_which_gates_will_pay).
    paying = ", ".join(f"conv{i}" for i in range(2, 8))
    out = convert("--nostatic_gates", "--time")
    assert f"6 of 13 compute fewer filters on the calibration images: {paying}." in out
    assert "The other 7 compute every filter" in out
    timed = re.search(re.escape(f"Timed here ({export.cpu_name()}; ")
                      + r"1 thread, 4 calibration images x 3 loops, medians\): dense ([0-9.]+) ms, this "
                      r"\.tflite ([0-9.]+) ms \(([0-9.]+)x\), (no )?faster than dense on this machine\. The dense "
                      r"model in full int8 \(--dense --weight_dtype=int8_full\): ([0-9.]+) ms, this \.tflite at "
                      r"([0-9.]+)x of its speed\.", out)
    assert timed, out
    dense_ms, dynamic_ms, speedup = (float(value) for value in timed.groups()[:3])
    assert dense_ms > 0 and dynamic_ms > 0 and speedup == pytest.approx(dense_ms / dynamic_ms, abs=0.01)
    assert (timed.group(4) is None) == (dynamic_ms < dense_ms)
    int8_ms, int8_speedup = float(timed.group(5)), float(timed.group(6))
    assert int8_ms > 0 and int8_speedup == pytest.approx(int8_ms / dynamic_ms, abs=0.01)
    shared = (f"--model={path}", f"--output={tmp_path / 'x.tflite'}", "--time")
    said, _ = refusals(  # --time times the dynamic export on calibration images only
        os.path.join(ROOT, "edge", "convert.py"), shared,
        (*shared, f"--calibration={tmp_path / 'calibration.npy'}", "--dense"))
    assert all("--time times the dynamic export on the --calibration images" in answer for answer in said), said
    out = convert("--weight_dtype=float16", "--threads=2", "--time")  # with static pruning every layer is pruned
    assert "13 of 13 gated layers pruned by their predictors' weights" in out and "The other" not in out
    # Timed with 2 threads, and with 1: a second thread may slow a gated export down.
    assert "Timed here (" in out and "; 2 threads, 4 calibration images" in out
    timed = re.search(r"this \.tflite ([0-9.]+) ms \(.*With 1 thread this \.tflite takes ([0-9.]+) ms(, less than with 2: "
                      r"run it on one core)?\.$", out, re.M)
    assert timed, out
    threaded_ms, alone_ms = float(timed.group(1)), float(timed.group(2))
    if alone_ms != threaded_ms:  # (equal to 0.01 ms as printed: either)
        assert (timed.group(3) is not None) == (alone_ms < threaded_ms)
    assert "dynamic (gathered), float16 weights" in out
    assert "DEQUANTIZE" in export.op_names(open(tmp_path / "vgg.tflite", "rb").read())
    assert "0 of 13 compute fewer filters on the calibration images." in out  # none is compacted per image


def test_convert_cli_checks_the_export_against_keras(tmp_path, cifar_images, monkeypatch):
    """--check runs the written .tflite beside the Keras model on the images given (make demo does, on 1,000).

    With KERAS_BACKEND=jax in the environment, as a JAX user's shell has: the CLI runs on TensorFlow
    anyway (without JAX installed, Keras would not even import).
    """
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    import keras

    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20)))  # masks and logits that follow the image
    path = str(tmp_path / "resnet.keras")
    model.save(path)
    np.save(tmp_path / "check.npy", cifar_images)
    photos = tmp_path / "photos"  # the images as a device's photos: files in a folder
    photos.mkdir()
    for index, image in enumerate(cifar_images):
        keras.utils.save_img(photos / f"{index:03d}.png", image, scale=False)
    convert = os.path.join(ROOT, "edge", "convert.py")
    shared = (f"--model={path}", f"--output={tmp_path / 'resnet.tflite'}")
    # Checked and timed through LiteRT 2.x's CompiledModel, as an app written for it runs the file.
    result = run_python(convert, *shared, f"--calibration={photos}[:16]", f"--check={photos}", "--time",
                        "--runtime=compiled_model", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count = len(cifar_images)
    assert (f"Checked on {photos}, through LiteRT 2.x's CompiledModel. Against Keras on {count} images: the same "
            f"top-1 on {count}, logits within 0.001 of Keras's logit range on {count}") in result.stdout
    assert f"Timed here ({export.cpu_name()}, through LiteRT 2.x's CompiledModel; 1 thread, 16 calibration" in result.stdout
    assert "compute fewer filters on the calibration images" in result.stdout  # calibrated on the photos
    # The dense reference in full-integer int8, its activations' ranges set on the --calibration images.
    full = run_python(convert, f"--model={path}", f"--output={tmp_path / 'full.tflite'}", "--dense",
                      "--weight_dtype=int8_full", f"--calibration={tmp_path / 'check.npy'}", timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    assert f"Wrote dense, full-integer int8 model to {tmp_path / 'full.tflite'}" in full.stdout
    assert "QUANTIZE" in export.op_names((tmp_path / "full.tflite").read_bytes())
    np.save(tmp_path / "small.npy", cifar_images[:, :16])
    said, _ = refusals(convert, (*shared, f"--check={tmp_path / 'check.npy'}", "--dense"),
                       (*shared, f"--check={tmp_path / 'missing.npy'}"),
                       (f"--model={path}", f"--output={tmp_path / 'x.tflite'}", f"--check={tmp_path / 'small.npy'}"),
                       (f"--model={path}", f"--output={tmp_path / 'x.tflite'}", "--weight_dtype=int8_full"),
                       (f"--model={path}", f"--output={tmp_path / 'x.tflite'}", "--runtime=compiled_model"))
    assert "--check compares the dynamic export with the FTWT model it computes" in said[0]
    assert "Image file" in said[1] and "missing.npy' does not exist" in said[1]
    assert "the images must be a non-empty array (N, 32, 32, 3)" in said[2] and "small.npy" in said[2]
    assert "--weight_dtype=int8_full sets the int8 ranges of the activations on the --calibration images" in said[3]
    assert "--runtime picks the LiteRT API that --check and --time run the .tflite with" in said[4]
    assert not (tmp_path / "x.tflite").exists()  # refused before writing


def test_static_gates_benchmark_reports_decided_gates_exactness_and_times(tmp_path):
    _, path = _saved_with_first_layer_decided(tmp_path)
    result = run_benchmark("static_gates.py", f"--model={path}", "--num_images=8", "--repeats=1",
                           "--calibration_images=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layers entirely." in result.stdout and "| conv1 | 8 | 4 | 4 | 0 |" in result.stdout, result.stdout
    for name in ("static", "per_image"):
        assert re.search(rf"^{name}: \d+ ops, .* same top-1 on 100.00% of 8 images$", result.stdout, re.M), result.stdout
    for name in ("static", "per_image", "all_decided"):
        assert re.search(rf"^  {name}: [0-9.]+ ms \(dense speed: [0-9.]+x\)$", result.stdout, re.M), result.stdout


def test_stage_benchmark_times_every_export():
    """benchmarks/edge_stages.py end to end on a tiny stage, ablations included."""
    result = run_benchmark("edge_stages.py", "--stages=8x32", "--keeps=0.3", "--blocks=1", "--num_inputs=4",
                           "--repeats=1", "--predictor_rank=8", "--ablate")
    assert result.returncode == 0, result.stderr[-2000:]
    line = [line for line in result.stdout.splitlines() if "keep 0.3" in line]
    assert len(line) == 1, result.stdout
    for name in ("dense", "masked", "chain", "no_predictors", "static_weights", "static_depthwise", "no_constants"):
        assert f" {name} " in line[0]


def test_weight_dtypes_benchmark_shrinks_the_files_and_times_all_eight():
    """benchmarks/weight_dtypes.py end to end on a tiny drawn-mask MobileNetV1."""
    result = run_benchmark("weight_dtypes.py", "--resolution=32", "--alpha=0.25", "--keeps=0.3", "--num_images=8",
                           "--calibration_images=4", "--loops=1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^  (dense|dynamic) +(float16|int8 full|int8) *: +[0-9.]+ MB \(([0-9.]+)x\); logits within "
                      r".* of float32's, same top-1 on [0-9.]+%(?:; holds the exact fallback \(IF\))?$", result.stdout, re.M)
    assert [row[:2] for row in rows] == [(kind, dtype) for kind in ("dense", "dynamic")
                                         for dtype in ("float16", "int8", "int8 full")], result.stdout
    ratios = {row[:2]: float(row[2]) for row in rows}
    assert all(0.45 < ratios[kind, "float16"] < 0.6 and ratios[kind, "int8"] < ratios[kind, "float16"]
               for kind in ("dense", "dynamic")), result.stdout
    assert ratios["dense", "int8 full"] < 0.5, result.stdout
    timed = re.search(r"ms \(median of the loops' medians\): " + ", ".join(
        f"{kind} {dtype} [0-9.]+" for dtype in ("float32", "float16", "int8", "int8 full")
        for kind in ("dense", "dynamic")) + "$", result.stdout, re.M)
    assert timed, result.stdout
    # Every layer compact (chain; the stem and 13 pointwise convs regular): the calibrated capacities' exact fallback (an IF branch) in every dynamic file;
    # capped, no fallback in any.
    for capped_ratio in ("0", "1.0"):
        chained = run_benchmark("weight_dtypes.py", "--resolution=32", "--alpha=0.25", "--keeps=0.3",
                                "--num_images=8", "--calibration_images=4", "--loops=1", "--policy=chain",
                                f"--capped_ratio={capped_ratio}")
        assert chained.returncode == 0, chained.stderr[-2000:]
        fallbacks = re.findall(r"^  (dense|dynamic) .*; holds the exact fallback \(IF\)$", chained.stdout, re.M)
        if capped_ratio == "0":
            assert fallbacks == ["dynamic"] * 4, chained.stdout
        else:
            assert "14 compacted convs capped at 1x their mean count" in chained.stdout and not fallbacks


def test_thread_scaling_benchmark_times_each_file_with_each_thread_count():
    """benchmarks/thread_scaling.py end to end on a tiny drawn-mask MobileNetV1 (every layer compact: chain)."""
    result = run_benchmark("thread_scaling.py", "--resolution=32", "--alpha=0.25", "--policy=chain", "--num_images=3",
                           "--calibration_images=4", "--loops=1", "--capped_ratio=1.2", "--threads=2,1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "14 compacted convs capped at 1.2x" in result.stdout
    # Each file through LiteRT's Interpreter and its 2.x CompiledModel, checked to give the same logits.
    assert "Through interpreter and compiled_model: the same logits from every file on the 3 images." in result.stdout
    rows = re.findall(r"^\| ((?:dense|dense \+ predictors|dynamic|capped)(?: \(CompiledModel\))?) \| ([0-9.]+) ms \| "
                      r"([0-9.]+) ms \(([0-9.]+)x\) \|$", result.stdout, re.M)
    names = ["dense", "dense + predictors", "dynamic", "capped"]
    assert [row[0] for row in rows] == [label for name in names for label in (name, f"{name} (CompiledModel)")], \
        result.stdout
    for _, one, two, speedup in rows:  # 1 thread first; the speed-up is the 1-thread time over the 2-thread one
        one, two, speedup = float(one), float(two), float(speedup)  # each printed rounded to 0.01
        assert (one - 0.005) / (two + 0.005) - 0.005 <= speedup <= (one + 0.005) / max(two - 0.005, 1e-9) + 0.005
    said, _ = refusals(os.path.join(ROOT, "benchmarks", "thread_scaling.py"), ("--threads=0",), ("--runtimes=nnapi",))
    assert "--threads takes positive integers" in said[0]
    assert "--runtimes takes interpreter and/or compiled_model" in said[1]


def test_conv3x3_benchmark_computes_the_dense_convs_active_filters():
    """benchmarks/edge_ops.py --conv3x3: both compact forms give the dense conv's active filters, strided too."""
    result = run_benchmark("edge_ops.py", "--conv3x3", "--conv_cases=8x8,6x8:full:s2", "--keep=0.5", "--repeats=3")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\| (\d+x\d+, 8 filters(?:, stride 2)?) \| (compact|full) \| [0-9]+ us \| [0-9]+ us \| [0-9]+ us "
                      r"\| ([0-9.e+-]+) \|$", result.stdout, re.M)
    assert [row[:2] for row in rows] == [("8x8, 8 filters", "compact"), ("6x6, 8 filters, stride 2", "full")], result.stdout
    assert all(float(row[2]) <= 1e-5 for row in rows), result.stdout
    bad = run_benchmark("edge_ops.py", "--conv3x3", "--conv_cases=8x8:wide")
    assert bad.returncode != 0 and "is not SIZExFILTERS[:full][:sN]" in bad.stderr, bad.stderr[-2000:]


def test_thread_overhead_probes_cut_one_chain_into_partitions():
    """benchmarks/edge_ops.py --thread_overhead: the cut chain is the whole chain's ops with a builtin GATHER at
    each cut; the costs per op and per partition come from their times. (In a subprocess: the script defines
    absl flags that other benchmarks define too.)"""
    result = run_benchmark("edge_ops.py", "--thread_overhead", "--chain_ops=12", "--partitions=4", "--repeats=3")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\| (.+?) \| (\d+) \| [0-9.]+ ms \| [0-9.]+ ms \| [+-][0-9]+ us \|$", result.stdout, re.M)
    assert rows == [("12 ops, 1 partition", "12"), ("12 ops, 4 partitions", "15"), ("3 GATHERs alone", "3")], result.stdout
    assert re.search(r"^A second thread adds -?[0-9.]+ us per XNNPACK op and -?[0-9.]+ us per XNNPACK partition",
                     result.stdout, re.M), result.stdout
    said, _ = refusals(os.path.join(ROOT, "benchmarks", "edge_ops.py"),
                       ("--thread_overhead", "--chain_ops=3", "--partitions=4"))
    assert "--partitions (4) cannot exceed --chain_ops (3)" in said[0]


def test_export_ablations_cut_what_they_name(cifar_images):
    """The benchmarks' timing-only exports each remove the part of the compact path that they name."""
    ablated_exports = benchmark_script("_export_ablations").ablated_exports

    def drawn(base):
        return export.set_keep_ratio(fk.gate(base, predictor_rank=8), 0.3)

    unshifted = drawn(BUILDERS["mobilenet_v1"]())
    model = drawn(export.randomize_batch_norm(BUILDERS["mobilenet_v1"]()))
    calibration = export.calibrate(model, cifar_images[:4]).with_capacity_ratio(model, 1.26)
    exports = ablated_exports(model, unshifted, policy="chain", calibration=calibration, static_gates=False)
    exports["chain"] = export.convert(model, policy="chain", calibration=calibration, static_gates=False)
    ops = {name: collections.Counter(export.op_names(flatbuffer)) for name, flatbuffer in exports.items()}
    assert ops["chain"]["SOFTMAX"] > 0 and ops["no_predictors"]["SOFTMAX"] == 0
    assert ops["no_predictors"]["TOPK_V2"] == ops["chain"]["TOPK_V2"] > 0  # its masks are still run-time values
    # Constant masks: every index folded, and with it the weight gathers (a statically pruned network);
    # gathers of activation channels by constant indices are left.
    assert not {"SOFTMAX", "TOPK_V2", "SCATTER_ND"} & set(ops["constant_masks"])
    assert ops["constant_masks"]["GATHER"] < ops["no_predictors"]["GATHER"] / 2
    assert ops["chain"]["TOPK_V2"] > 0 and ops["static_weights"]["TOPK_V2"] == 0
    assert ops["no_constants"]["FULLY_CONNECTED"] < ops["chain"]["FULLY_CONNECTED"]  # no uniform channels' matvecs
    filters_constant = _depthwise_filters_constant(exports["chain"])
    assert not all(filters_constant) and all(_depthwise_filters_constant(exports["static_depthwise"]))
    assert len(_depthwise_filters_constant(exports["static_depthwise"])) == len(filters_constant)


def test_whole_network_ablation_benchmark_runs(cifar_images):
    """benchmarks/edge_ablation.py end to end on a tiny MobileNetV1 at 32x32."""
    result = run_benchmark("edge_ablation.py", "--resolution=32", "--alpha=0.25", "--predictor_rank=8",
                           "--num_images=3", "--calibration_images=4", "--repeats=1", "--capped_ratio=1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 8 predictors, keep 0.3, caps 1x the count, 1 thread, 3 images x 1:" in result.stdout
    for name in ("no_predictors", "constant_masks", "static_weights", "static_depthwise", "no_constants"):
        assert re.search(rf"^  {name} +[0-9.]+ ms .*that part costs [-+][0-9.]+ ms", result.stdout, re.M), result.stdout


def test_benchmark_redraws_its_chart_from_rows(tmp_path):
    """--plot_only rewrites the tables and the chart of the rows in --output (ftwt_keras.export.latency, tested
    there), leaving the rows as they are."""
    pytest.importorskip("matplotlib")
    from ftwt_keras.export import latency

    row = {"model": "mobilenet_v1_1", "predictor_rank": None, "dense_ms": 10.0, "predictors_ms": 11.0,
           "masked_dense_ms": 12.0, "gates": 27, "resolution": 224, "masks": "random, keep 0.3 per layer"}
    rows = [{**row, "threads": threads, "keep": 0.3, "flops_reduction": 0.9, "dynamic_ms": 5.0 * threads,
             "speedup": 2.0 / threads, "ideal_speedup": 10.0} for threads in (1, 2)]
    output = tmp_path / "latency.json"
    output.write_text(json.dumps({"rows": rows}))

    def run(*flags):
        return run_python(os.path.join(ROOT, "edge", "benchmark.py"), "--plot_only", *flags, timeout=120)

    result = run(f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote the tables to {tmp_path / 'latency.md'}." in result.stdout
    assert (tmp_path / "latency.md").read_text() == latency.markdown_tables(rows)
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(output.read_text()) == {"rows": rows}
    missing = run(f"--output={tmp_path / 'none.json'}")
    assert missing.returncode != 0 and "--plot_only needs" in missing.stderr


def test_benchmark_writes_its_exports_for_a_device_and_reads_the_device_times_back(tmp_path, cifar_images):
    """--device_dir writes every export a row would time, with the adb script; --device_logs turns the saved
    benchmark_model outputs into rows, tables and chart (here outputs in its format: no phone is at hand)."""
    script = os.path.join(ROOT, "edge", "benchmark.py")
    device = tmp_path / "device"
    result = run_python(script, "--mode=cifar", "--alpha=0.25", "--keeps=0.3", "--threads=1,2", "--num_images=3",
                        "--calibration_images=4", "--policy=chain", "--capped_ratio=1.2", f"--device_dir={device}",
                        f"--tflite_dir={tmp_path}", f"--output={tmp_path / 'not_written.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "not_written.json").exists()  # nothing timed here
    entries = json.loads((device / "device_rows.json").read_text())["rows"]
    assert [entry["fields"]["threads"] for entry in entries] == [1, 2]
    assert set(entries[0]["files"]) == {"dense", "dense_int8", "predictors", "masked_dense", "dynamic", "lean",
                                        "capped", "capped_int8_weights"}
    files = {file for entry in entries for file in entry["files"].values()}
    assert all((device / file).exists() for file in files)
    assert entries[0]["files"]["dense"] == entries[1]["files"]["dense"]  # one file, timed with 1 and 2 threads
    commands = (device / "run_on_device.sh").read_text()
    for entry in entries:
        for file in entry["files"].values():
            threads = entry["fields"]["threads"]
            assert (f"--graph=/data/local/tmp/ftwt/{file} --num_threads={threads} --use_xnnpack=true"
                    in commands and f"> {file}.threads{threads}.log" in commands)
    # The device's outputs: each file's time in us, made up (1000 + its position, x threads).
    microseconds = {(file, threads): (1000 + 100 * i) * threads for i, file in enumerate(sorted(files)) for threads in (1, 2)}
    read_back = [script, f"--device_logs={device}", "--device_name=Pixel 8", f"--output={tmp_path / 'phone.json'}"]
    said, _ = refusals(script, read_back[1:], ("--mode=cifar", f"--device_dir={device}", "--per_layer"))
    assert "No benchmark_model output" in said[0] and "run_on_device.sh" in said[0]
    assert "--device_dir writes exports for benchmark_model, which runs no Python: not with --per_layer" in said[1]
    for (file, threads), us in microseconds.items():
        (device / f"{file}.threads{threads}.log").write_text(
            f"INFO: Loaded model {file}\nInference timings in us: Init: 5, First inference: 9, Warmup (avg): 8, "
            f"Inference (avg): {us}\n")
    result = run_python(*read_back)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "phone.json").read_text())["rows"]
    for row, entry in zip(rows, entries):
        threads, files_of = entry["fields"]["threads"], entry["files"]
        ms = {name: microseconds[(file, threads)] / 1e3 for name, file in files_of.items()}
        assert row["dense_ms"] == ms["dense"] and row["dynamic_ms"] == ms["dynamic"]
        assert row["speedup"] == round(ms["dense"] / ms["dynamic"], 3)
        assert row["capped_ms"] == ms["capped"] and row["lean_ms"] == ms["lean"]
        assert row["dense_int8_ms"] == ms["dense_int8"]
        assert row["speedup_vs_int8"] == round(ms["dense_int8"] / ms["dynamic"], 3)
        assert row["capped_int8_weights_ms"] == ms["capped_int8_weights"]
        assert row["capped_int8_weights_vs_int8"] == round(ms["dense_int8"] / ms["capped_int8_weights"], 3)
        assert row["cpu"] == "Pixel 8" and row["dense_iqr_ms"] is None
        assert row["flops_reduction"] == entry["fields"]["flops_reduction"] > 0.5
    assert "Timed on: Pixel 8 (LiteRT" in (tmp_path / "phone.md").read_text()


def test_benchmark_times_a_trained_model_on_the_device_on_real_images(tmp_path, cifar_images):
    """A trained model's masks depend on the image: --device_dir writes real test images and times each export on
    each (benchmark_model fed their pixels); --device_logs takes the median over the images and their spread."""
    _, path = _saved_with_first_layer_decided(tmp_path)
    script = os.path.join(ROOT, "edge", "benchmark.py")
    device = tmp_path / "device"
    result = run_python(script, "--mode=cifar", f"--model={path}", "--threads=1", "--num_images=6",
                        "--device_images=3", "--calibration_images=4", "--capped_ratio=0", "--noint8_reference",
                        f"--device_dir={device}", f"--tflite_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (entry,) = json.loads((device / "device_rows.json").read_text())["rows"]
    images = ["image000.raw", "image001.raw", "image002.raw"]
    assert entry["images"] == images and entry["fields"]["masks"] == "predicted"
    for i, image in enumerate(images):  # the first test images, as the model takes them
        np.testing.assert_array_equal(np.fromfile(device / image, "<f4").reshape(32, 32, 3), cifar_images[i])
    commands = (device / "run_on_device.sh").read_text()
    assert "adb push image002.raw /data/local/tmp/ftwt/image002.raw" in commands
    for file in entry["files"].values():
        # the export's input is the "images" the commands name
        assert export.interpreter(str(device / file)).get_input_details()[0]["name"] == "images"
        for image in images:
            assert (f"--graph=/data/local/tmp/ftwt/{file} --num_threads=1 --use_xnnpack=true --warmup_runs=20 "
                    "--num_runs=2 --input_layer=images --input_layer_shape=1,32,32,3 "
                    f"--input_layer_value_files=images:/data/local/tmp/ftwt/{image} > "
                    f"{file}.threads1.{image[:-4]}.log") in commands
    # The script itself, with a stand-in adb that records its calls and answers benchmark_model runs.
    environment, calls = stand_in_adb(tmp_path / "bin", microseconds=1500)
    environment.update(PIN="f0", BENCHMARK_MODEL="/opt/benchmark_model")
    ran = subprocess.run(["sh", str(device / "run_on_device.sh")], env=environment, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    calls = calls.read_text().splitlines()
    assert calls[:2] == ["push /opt/benchmark_model /data/local/tmp/benchmark_model",
                         "shell chmod +x /data/local/tmp/benchmark_model"]
    runs = [call for call in calls if "--graph=" in call]
    assert len(runs) == len(set(entry["files"].values())) * len(images)
    assert all(call.startswith("shell taskset f0 /data/local/tmp/benchmark_model --graph=") for call in runs)
    result = run_python(script, f"--device_logs={device}", f"--output={tmp_path / 'stand_in.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "stand_in.json").read_text())["rows"][0]["dynamic_ms"] == 1.5
    # Made-up outputs: per file, the three images take 1, 2 and 6 ms (x the file's position).
    for position, file in enumerate(sorted(set(entry["files"].values())), start=1):
        for us, image in zip((1000, 2000, 6000), images):
            (device / f"{file}.threads1.{image[:-4]}.log").write_text(
                f"Inference timings in us: Init: 5, First inference: 9, Warmup (avg): 8, Inference (avg): {us * position}\n")
    result = run_python(script, f"--device_logs={device}", "--device_name=Pixel 8", f"--output={tmp_path / 'p.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    position = {file: i for i, file in enumerate(sorted(set(entry["files"].values())), start=1)}
    assert row["dense_ms"] == 2.0 * position[entry["files"]["dense"]]  # the median image
    assert row["dense_iqr_ms"] == 2.5 * position[entry["files"]["dense"]]  # (2 + 6) / 2 - (1 + 2) / 2
    assert row["dynamic_ms"] == 2.0 * position[entry["files"]["dynamic"]] and row["images"] == 3
    assert row["timing"] == "benchmark_model on 3 real test images, 2 invokes each (the median over the images)"
    said, _ = refusals(script, ("--mode=cifar", f"--model={path}", "--num_images=6", "--device_images=7",
                                f"--device_dir={tmp_path / 'none'}"))
    assert "--device_images must be between 1 and --num_images (6); got 7" in said[0]


def test_benchmark_times_a_trained_model_at_its_own_size_on_a_folder_of_photos(tmp_path, cifar_images):
    """--model at an input size CIFAR-10 does not have, timed and calibrated on image files of other sizes."""
    import keras

    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20, input_shape=(40, 40, 3))))
    path = tmp_path / "resnet40.keras"
    model.save(path)
    photos = tmp_path / "photos"
    (photos / "holiday").mkdir(parents=True)
    for index, image in enumerate(cifar_images[:10]):  # 32x32 files, in two folders
        keras.utils.save_img(photos / ("holiday" if index % 2 else "") / f"{index}.png", image, scale=False)
    script = os.path.join(ROOT, "edge", "benchmark.py")
    output = tmp_path / "rows.json"
    result = run_python(script, f"--model={path}", f"--images={photos}", f"--calibration={photos}[:4]",
                        "--num_images=6", "--threads=1", "--capped_ratio=0", "--noint8_reference",
                        f"--output={output}", f"--tflite_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(output.read_text())["rows"]
    assert (row["model"], row["resolution"], row["images"], row["calibration_images"]) == ("resnet40", 40, 6, 4)
    assert row["masks"] == "predicted" and row["dense_ms"] > 0 and row["dynamic_ms"] > 0
    assert f"6 images ({photos})" in result.stdout
    # A model whose input is not square cannot be timed on CIFAR-10 by default; --images belong to a --model.
    wide = tmp_path / "wide.keras"
    fk.gate(fk.models.resnet_cifar(depth=20, input_shape=(32, 48, 3))).save(wide)
    said, _ = refusals(script, (f"--model={wide}", "--threads=1", f"--output={tmp_path / 'no.json'}"),
                       (f"--images={photos}", "--mode=cifar"),
                       (f"--model={path}", "--per_layer"),
                       (f"--model={path}", f"--calibration={photos}", "--calibration_images=0"))
    assert "takes 32x48 images, which CIFAR-10's square ones cannot stand in for: pass --images" in said[0]
    assert "--images and --calibration are the images of a --model" in said[1]
    assert "--per_layer times --network's layers with drawn masks; leave out --model." in said[2]
    assert "--calibration_images=0 asks for no calibration" in said[3]
    assert not (tmp_path / "no.json").exists()


def test_benchmark_times_drawn_masks_with_the_capacity_margin_asked_for(tmp_path, cifar_images):
    """edge/benchmark.py end to end on a tiny MobileNetV1: rows, tables and the --drawn_capacities rule."""

    def run(*flags):
        return run_python(os.path.join(ROOT, "edge", "benchmark.py"), "--mode=cifar", "--alpha=0.25",
                          "--keeps=0.3", "--threads=1", "--num_images=3", "--warmup=1", "--calibration_images=4",
                          f"--output={tmp_path / 'latency.json'}", f"--tflite_dir={tmp_path}", *flags)

    # Every layer compact (`auto` compacts nothing at 32x32): the convs also timed capped at 1.2x the count.
    result = run("--drawn_capacities=binomial", "--policy=chain", "--capped_ratio=1.2", "--loops=2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "latency.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["drawn_capacities"] == "binomial" and rows[0]["images"] == 3
    assert rows[0]["dense_ms"] > 0 and rows[0]["dynamic_ms"] > 0 and rows[0]["flops_reduction"] > 0.5
    tables = (tmp_path / "latency.md").read_text()
    assert "capacities of the compact layers" in tables and "Capped gates" in tables
    assert rows[0]["loops"] == 2 and "the median over 2 side-by-side loops" in tables
    assert rows[0]["cpu"] == export.cpu_name() and f"Timed on: {rows[0]['cpu']} (LiteRT" in tables
    assert rows[0]["capped_ratio"] == 1.2 and rows[0]["capped_gates"] == 14 and rows[0]["capped_ms"] > 0
    assert rows[0]["capped_flops_reduction"] == rows[0]["flops_reduction"]  # drawn masks: the caps never bind
    # The dense model in full int8 beside the float32 exports (--int8_reference, the default).
    assert rows[0]["dense_int8_ms"] > 0
    assert rows[0]["speedup_vs_int8"] == pytest.approx(rows[0]["dense_int8_ms"] / rows[0]["dynamic_ms"], rel=0.01)
    header, row = [[cell.strip() for cell in line.strip("|").split("|")]
                   for line in tables.splitlines() if line.startswith("| ")][:2]
    assert row[header.index("dense in full int8 (dynamic's speed-up against it)")] == (
        f"{rows[0]['dense_int8_ms']:.2f} ms ({rows[0]['speedup_vs_int8']:.2f}x)")
    assert "Dense in full int8" in tables and "every other column is float32 but the last." in tables
    # Beside it the capped model with int8 weights (--capped_int8_weights, the default).
    assert rows[0]["capped_int8_weights_ms"] > 0
    assert rows[0]["capped_int8_weights_vs_int8"] == pytest.approx(
        rows[0]["dense_int8_ms"] / rows[0]["capped_int8_weights_ms"], rel=0.01)
    assert row[header.index("capped gates, int8 weights, 1 thread: speed-up / against dense full int8")] == (
        f"{rows[0]['capped_int8_weights_ms']:.2f} ms: {rows[0]['capped_int8_weights_speedup']:.2f}x / "
        f"{rows[0]['capped_int8_weights_vs_int8']:.2f}x")
    # The network gated where gates pay, by timing here (at 32x32 none pays: the dense model).
    result = run("--lean_plan=measured", "--capped_ratio=0", "--noint8_reference",
                 f"--output={tmp_path / 'measured.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "measured.json").read_text())["rows"]
    assert rows[0]["lean_plan"] == "measured" and rows[0]["lean_gates"] == 0
    assert "dense_int8_ms" not in rows[0] and "full int8" not in (tmp_path / "measured.md").read_text()
    assert "`measured_paying_gates`" in (tmp_path / "measured.md").read_text()
    # A keras.applications network (squeeze-and-excitation and classifier convs dense, the 34 others gated) in
    # mode imagenet at a size of its own (InceptionV3 and Xception take 299x299), 1000 classes.
    result = run("--network=mobilenet_v3_small", "--policy=chain", "--mode=imagenet", "--imagenet_size=40",
                 "--capped_ratio=0", "--noint8_reference", f"--output={tmp_path / 'v3.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "v3.json").read_text())["rows"]
    assert [(row["model"], row["resolution"], row["gates"]) for row in rows] == [("mobilenet_v3_small", 40, 34)]
    assert rows[0]["dynamic_ms"] > 0
    shared = ("--alpha=0.25", "--keeps=0.3", "--threads=1", "--num_images=3", f"--output={tmp_path / 'bad.json'}")
    said, _ = refusals(os.path.join(ROOT, "edge", "benchmark.py"), (*shared, "--drawn_capacities=0.5"),
                       (*shared, "--mode=imagenet", "--imagenet_size=32"), (*shared, "--capped_ratio=0.5"),
                       (*shared, "--threads=1,0"), (*shared, "--policy=fastest"))
    assert "--drawn_capacities takes 'binomial' or a number >= 1" in said[0]
    assert "--imagenet_size must be larger than 32" in said[1]
    assert "--capped_ratio takes 0 (no capped model) or a ratio >= 1" in said[2]
    assert "--threads takes positive ints" in said[3] and "Policy must be one of" in said[4]
    assert not (tmp_path / "bad.json").exists()


def test_capacity_overflow_benchmark_counts_images_beyond_capacities(tmp_path, cifar_images):
    """benchmarks/capacity_overflow.py end to end: capacities from one sparse image leave others beyond them."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    model.save(tmp_path / "m.keras")
    counts = export.gate_counts(model, cifar_images)
    sparsest = int(np.argmin(sum(counts.values())))  # calibrated on it alone, other images overflow
    np.save(tmp_path / "calibration.npy", cifar_images[sparsest : sparsest + 1])
    np.save(tmp_path / "images.npy", cifar_images)
    result = run_benchmark("capacity_overflow.py", f"--model={tmp_path / 'm.keras'}",
                           f"--calibration={tmp_path / 'calibration.npy'}", f"--images={tmp_path / 'images.npy'}",
                           "--capacity_stds=0,10", "--per_layer")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in result.stdout.splitlines()
            if line.startswith("| max")}
    assert set(rows) == {"max + 0 std", "max + 10 std", "max + 0.05 of the filters"}, result.stdout
    beyond = {label: int(cell.split("(")[1].rstrip(") ")) for label, cell in rows.items()}
    assert beyond["max + 0 std"] > 0 and beyond["max + 10 std"] <= beyond["max + 0 std"]
    # --per_layer: each layer's count spread on the checked images, against independent gates'.
    layers = {cells[1].strip(): cells[2:-1] for cells in (line.split("|") for line in result.stdout.splitlines())
              if len(cells) == 9 and cells[1].strip() in counts}
    assert set(layers) == set(counts), result.stdout
    for name, count in counts.items():
        filters, keep, std, binomial = (float(cell) for cell in layers[name][:4])
        assert keep == pytest.approx(count.mean() / filters, abs=6e-4)
        assert std == pytest.approx(count.std(ddof=1), abs=6e-3)
        assert binomial == pytest.approx(np.sqrt(filters * keep * (1 - keep)), abs=2e-2)


def test_trained_side_by_side_benchmark_times_each_model_against_its_dense_export(tmp_path, cifar_images):
    """benchmarks/trained_side_by_side.py: one dense export per architecture, each model's FLOPs and exactness."""
    from ftwt_keras import flops

    mobilenet = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    resnet = perturb(fk.gate(BUILDERS["resnet20"]()), seed=4)
    another_mobilenet = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=5)
    paths = []
    for name, model in (("m", mobilenet), ("r", resnet), ("m2", another_mobilenet)):
        model.save(tmp_path / f"{name}.keras")
        paths.append(str(tmp_path / f"{name}.keras"))
    np.save(tmp_path / "images.npy", cifar_images[:12])
    np.save(tmp_path / "calibration.npy", cifar_images)
    output = tmp_path / "rows.json"
    result = run_benchmark("trained_side_by_side.py", f"--models={','.join(paths)}", "--labels=a,b,c",
                           f"--images={tmp_path / 'images.npy'}", f"--calibration={tmp_path / 'calibration.npy'}",
                           "--loops=2", "--warmup=1", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(row["model"], row["dense"]) for row in rows] == [("a", "dense (a)"), ("b", "dense (b)"), ("c", "dense (a)")]
    for row, model in zip(rows, (mobilenet, resnet, another_mobilenet)):
        executed = flops.dynamic_macs(model, cifar_images[:12]).mean()
        assert row["flops_reduction"] == pytest.approx(1 - executed / flops.count_macs(model), abs=1e-4)
        assert row["same_top1"] == row["logits_within_tolerance"] == 1.0
        assert len(row["loop_ms"]) == 2 and row["speedup"] == pytest.approx(row["dense_ms"] / row["dynamic_ms"],
                                                                             rel=2e-3)
    assert rows[0]["dense_ms"] == rows[2]["dense_ms"] != rows[1]["dense_ms"]
    assert "| a | " in result.stdout and "| c | " in result.stdout
    # Models of two input sizes, and labels that do not name each model once, are refused.
    fk.gate(fk.models.mobilenet_v1(input_shape=(40, 40, 3), alpha=0.25)).save(tmp_path / "m40.keras")
    said, _ = refusals(os.path.join(ROOT, "benchmarks", "trained_side_by_side.py"),
                       (f"--models={paths[0]},{tmp_path / 'm40.keras'}", f"--images={tmp_path / 'images.npy'}"),
                       (f"--models={paths[0]},{paths[1]}", "--labels=a,a"), (f"--models={paths[0]}", "--labels=a,b"),
                       (f"--models={paths[0]},{paths[0]}",))
    assert "--models take different input shapes" in said[0]
    assert all("--labels needs one distinct label per --models entry." in message for message in said[1:3])
    assert "would get the same label" in said[3]


def test_capped_accuracy_benchmark_caps_evaluates_and_fine_tunes(tmp_path, cifar_images):
    """benchmarks/capped_accuracy.py end to end: tighter caps skip more work; both fine-tunings reported."""
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    model.save(tmp_path / "m.keras")
    result = run_benchmark("capped_accuracy.py", f"--model={tmp_path / 'm.keras'}", "--calibration_images=32",
                           "--test_images=24", "--ratios=1.5,0.5", "--finetune_ratio=0.5", "--train_images=128",
                           "--batch_size=32", "--export_ratio=0.5", "--nofinetune_gate_loss")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {cells[1].strip(): [cell.strip() for cell in cells[2:-1]]
            for cells in (line.split("|") for line in result.stdout.splitlines()) if len(cells) == 7}
    reduction = {label: float(cells[2].rstrip("%")) for label, cells in rows.items() if cells[2].endswith("%")}
    assert reduction["0.5x mean count"] > reduction["1.5x mean count"] >= reduction["none"] - 0.1, result.stdout
    assert 0.5 <= float(rows["0.5x mean count"][0]) <= 0.7
    assert float(rows["0.5x mean count"][3].rstrip("%")) < 100.0  # the caps change some image's top-1
    assert {"0.5x mean count, fine-tuned (backbone only) 1 epoch(s) at lr 0.002",
            "none, fine-tuned (backbone only) 1 epoch(s) at lr 0.002"} <= set(rows)
    # The capped model's export: every regular conv compact at its cap, no fallback, Keras's logits.
    check = re.search(r"\((\d+) BATCH_MATMUL, (\d+) IF\): same top-1 on ([\d.]+)% .* (\d+) above 1e-3", result.stdout)
    assert check, result.stdout
    assert check.groups() == ("13", "0", "100.00", "0")  # the 13 pointwise convs (the stem: dense, then selected)


def test_run_tflite_needs_litert_only_and_arm64_exactness_checks_its_logits_against_keras(tmp_path, cifar_images):
    """edge/run_tflite.py runs .tflite files on a machine without Keras or TensorFlow; benchmarks/arm64_exactness.py
    exports trained models, runs them there through --device_python (here this Python stands in for an ARM64 one)
    under both LiteRT APIs, and compares with Keras and with this CPU's LiteRT."""
    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20)))  # masks and logits that follow the image
    path = tmp_path / "resnet.keras"
    model.save(path)
    images = tmp_path / "images.npy"
    np.save(images, cifar_images)
    exports = tmp_path / "exports"
    exports.mkdir()
    export.save(export.convert(model, calibration_images=cifar_images), exports / "resnet.tflite")
    without_keras = ("import runpy, sys; sys.modules.update(keras=None, tensorflow=None); "  # importing them fails
                     "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    ran = run_python("-c", without_keras, os.path.join(ROOT, "edge", "run_tflite.py"), f"--tflite_dir={exports}",
                     f"--images={images}", f"--output={tmp_path / 'logits.npz'}", "--loops=1")
    assert ran.returncode == 0, ran.stderr[-2000:]
    with np.load(tmp_path / "logits.npz") as logits:
        np.testing.assert_array_equal(logits["logits/resnet.tflite"], export.run(exports / "resnet.tflite", cifar_images))
        assert logits["seconds/resnet.tflite"].shape == (1, len(cifar_images)) and str(logits["api"]) == "interpreter"
    script = os.path.join(ROOT, "benchmarks", "arm64_exactness.py")
    shared = (f"--models={path}", f"--images={images}", f"--calibration={images}", f"--work_dir={tmp_path / 'work'}")
    result = run_python(script, *shared, f"--device_python={sys.executable}", f"--output={tmp_path / 'rows.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.load(open(tmp_path / "rows.json"))["rows"]
    count = len(cifar_images)
    assert [row["api"] for row in rows] == ["interpreter", "compiled_model"]
    for row in rows:  # the same machine: the same logits as here, and Keras's
        assert (row["same_top1"], row["within_tolerance"], row["same_as_here"]) == (count, count, count), row
        assert row["machine"] == platform.machine() and row["model"] == f"{tmp_path.name}_resnet"
    assert re.search(rf"^\| {tmp_path.name}_resnet \| {count} \| compiled_model \| {count} / {count} \| {count} / "
                     rf"{count} \| {count} \| 0\.0e\+00 \|$", result.stdout, re.M), result.stdout
    said, _ = refusals(script, (*shared, "--device_python=false", "--output="), ("--device_python=x", "--apis=nnapi"),
                       ("--device_python=x", "--policy=fast"))
    assert "The --device_python run failed (exit status 1): false" in said[0]
    assert "--apis takes interpreter and/or compiled_model" in said[1]
    assert "Policy must be one of" in said[2] and "got 'fast'" in said[2]
