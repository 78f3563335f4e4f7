"""ftwt_keras.export.latency: latency rows, their tables and chart, and a device's times read back."""

import json

import numpy as np
import pytest

from ftwt_keras.export import ExportError, latency

TIMES = {"dense": 10.0, "dynamic": 5.0, "predictors": 11.0, "masked_dense": 12.0}


def _rows():
    """Rows as edge/benchmark.py writes them: MobileNetV1 at two resolutions, 1 and 2 threads, three keeps."""
    row = {"model": "mobilenet_v1_1", "predictor_rank": None, "dense_ms": 10.0, "predictors_ms": 11.0,
           "masked_dense_ms": 12.0, "gates": 27}
    rows = [
        {**row, "resolution": resolution, "threads": threads, "flops_reduction": reduction, "keep": 1 - reduction,
         "masks": f"random, keep {1 - reduction:g} per layer", "dynamic_ms": 10.0 / (0.8 + reduction / threads),
         "speedup": 0.8 + reduction / threads, "ideal_speedup": 1 / (1 - reduction)}
        for resolution in (32, 224) for threads in (1, 2) for reduction in (0.0, 0.5, 0.9)
    ]
    for lean in (rows[8], rows[11]):  # the 224x224 keep-0.1 line (both threads) also timed gated at the paying layers only
        lean.update(lean_gates=20, lean_ms=5.0, lean_speedup=2.0 / lean["threads"], lean_flops_reduction=0.8,
                    lean_ideal_speedup=5.0)
        lean.update(capped_ratio=1.1, capped_gates=14, capped_ms=4.0, capped_speedup=2.5 / lean["threads"],
                    capped_flops_reduction=0.9)
    for field in [field for field in rows[11] if field.startswith("capped_")]:
        del rows[11][field]  # with 2 threads no conv compacted, so nothing was capped
    # That line (1 thread) with the dense model in full int8 and the capped model with int8 weights beside it.
    rows[8].update(dense_int8_ms=2.4, speedup_vs_int8=0.41, capped_int8_weights_ms=3.0, capped_int8_weights_speedup=3.33,
                   capped_int8_weights_vs_int8=0.8)
    rows.append({**rows[1], "model": "vgg16_bn_rank16", "predictor_rank": 16})  # --network=vgg16_bn
    return rows


def test_a_row_holds_the_times_and_the_speed_ups_they_give():
    extra = {"dense_macs": 100.0, "capped_ratio": 1.0, "capped_gates": 13, "capped_executed": 10.0,
             "lean_plan": "rules", "lean_gates": 20, "lean_executed": 25.0}
    times = {**TIMES, "dense_int8": 4.0, "lean": 8.0, "capped": 4.0, "capped_int8_weights": 5.0}
    row = latency.latency_row({"model": "m", "keep": 0.3}, extra, times, spread={"dense": 0.5, "dynamic": 0.25})
    assert row["model"] == "m" and row["dense_ms"] == 10.0 and row["dynamic_ms"] == 5.0 and row["speedup"] == 2.0
    assert row["dense_iqr_ms"] == 0.5 and row["dynamic_iqr_ms"] == 0.25
    assert row["speedup_vs_int8"] == 0.8  # the dense int8 model's time over the dynamic export's
    assert (row["lean_speedup"], row["lean_flops_reduction"], row["lean_ideal_speedup"]) == (1.25, 0.75, 4.0)
    assert (row["capped_speedup"], row["capped_flops_reduction"], row["capped_gates"]) == (2.5, 0.9, 13)
    assert row["capped_int8_weights_speedup"] == 2.0 and row["capped_int8_weights_vs_int8"] == 0.8
    # Only what was timed: no int8 reference, no comparison with it; times from benchmark_model have no spread.
    row = latency.latency_row({"model": "m"}, {"dense_macs": 100.0, **extra},
                              {**TIMES, "capped": 4.0, "capped_int8_weights": 5.0})
    assert "speedup_vs_int8" not in row and "capped_int8_weights_vs_int8" not in row and "lean_ms" not in row
    assert row["dense_iqr_ms"] is None
    summary = latency.row_summary({**row, "resolution": 32, "keep": 0.3, "threads": 1, "flops_reduction": 0.9,
                                   "ideal_speedup": 10.0}, convert_seconds=3.2)
    assert "speed-up 2.00x" in summary and "[convert 3s]" in summary and "(IQR" not in summary
    assert summary.splitlines()[-1].endswith("the capped model with int8 weights: 5.00 ms, speed-up 2.00x")


def test_tables_put_thread_counts_side_by_side_and_the_lean_network_apart():
    tables = latency.markdown_tables(_rows()).split("\n\n")
    main = tables[0].splitlines()
    assert len(main) == 2 + 7  # header, rule, one line per network, resolution and keep (threads side by side)
    assert "| capped gates, int8 weights, 1 thread: speed-up / against dense full int8 |" in main[0]
    assert main[2].startswith("| 224x224 | full | 0.10 | 90.0% | 10.00 ms | 11.00 ms | 12.00 ms | 5.88 ms | 1.70x (10.00x) "
                              "| 1.25x |")
    # The capped model beside it (1 thread only), the dense model in int8, the capped one with int8 weights.
    assert main[2].endswith("| 4.00 ms: 2.50x / - | 2.40 ms (0.41x) | 3.00 ms: 3.33x / 0.80x |")
    assert main[-2].startswith("| 32x32 | full | 1.00 | 0.0% |") and main[-2].endswith("| - | - | - |")
    assert main[-1].startswith("| 32x32, vgg16_bn | rank 16 | 0.50 | 50.0% |")  # the network named where not MobileNetV1
    assert any(table.startswith("Capped gates:") and "1.1x" in table for table in tables)
    assert any(table.startswith("Capped gates, int8 weights:") and "not exact" in table for table in tables)
    assert any(table.startswith("Dense in full int8:") and "float32 but the last." in table for table in tables)
    lean = tables[-1].splitlines()
    assert lean[2:] == ["| 224x224 | full | 0.10 | 20 of 27 | 80.0% | 10.00 ms | 5.00 ms | 2.00x (5.00x) | 1.00x | 1.70x |"]
    # Rows timed with 2 threads only (--threads=2): the tables say so, in both tables.
    two = latency.markdown_tables([row for row in _rows() if row["threads"] == 2])
    assert "1 thread" not in two and two.count("speed-up, 2 threads (ideal) |") == 2 and "all gates, 2 threads" in two


def test_report_writes_rows_tables_and_chart(tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "results" / "latency.json"
    written = latency.write_report(_rows(), str(output))
    assert written == {"rows": str(output), "tables": str(tmp_path / "results" / "latency.md"),
                       "chart": str(tmp_path / "results" / "latency.png")}
    assert json.loads(output.read_text()) == {"rows": _rows()}
    assert (tmp_path / "results" / "latency.md").read_text() == latency.markdown_tables(_rows())
    assert (tmp_path / "results" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Redrawn from fewer rows, the JSON they came from left alone.
    written = latency.write_report(_rows()[:3], str(output), tables_only=True)
    assert written["rows"] is None and json.loads(output.read_text()) == {"rows": _rows()}
    assert (tmp_path / "results" / "latency.md").read_text() == latency.markdown_tables(_rows()[:3])


def _fields(threads, masks="random, keep 0.3 per layer"):
    return {"model": "m", "resolution": 32, "keep": 0.3, "threads": threads, "masks": masks,
            "flops_reduction": 0.5, "ideal_speedup": 2.0}


def _log(microseconds):
    return f"Inference timings in us: Init: 5, First inference: 9, Warmup (avg): 8, Inference (avg): {microseconds}\n"


def test_a_device_folder_writes_each_export_once_and_reads_the_device_times_back(tmp_path):
    folder = latency.DeviceFolder(str(tmp_path / "phone"))
    exports = {"dense": b"dense", "dynamic": b"dynamic 1", "predictors": b"predictors", "masked_dense": b"masked"}
    one = folder.add(_fields(1), {"dense_macs": 100.0}, exports)
    two = folder.add(_fields(2), {"dense_macs": 100.0}, {**exports, "dynamic": b"dynamic 2"})
    assert one["files"]["dense"] == two["files"]["dense"] != one["files"]["dynamic"] != two["files"]["dynamic"]
    assert sorted(path.name for path in (tmp_path / "phone").iterdir()) == sorted(
        {*one["files"].values(), *two["files"].values()})
    assert (tmp_path / "phone" / two["files"]["dynamic"]).read_bytes() == b"dynamic 2"
    script, files, runs = folder.write_plan(num_runs=50, warmup_runs=5)
    assert (files, runs) == (5, 8)  # each file with the thread counts of its rows: the shared ones twice
    commands = open(script).read()
    assert commands.count("--warmup_runs=5 --num_runs=50") == 8 and "--input_layer" not in commands
    with pytest.raises(ExportError, match="No benchmark_model output .*run_on_device.sh"):
        latency.rows_from_device_logs(str(tmp_path / "phone"), "Pixel 8")
    for entry, microseconds in ((one, 1000), (two, 600)):
        for name, file in entry["files"].items():
            us = microseconds * (2 if name == "dense" else 1)
            (tmp_path / "phone" / latency.device_log_name(file, entry["fields"]["threads"])).write_text(_log(us))
    rows = latency.rows_from_device_logs(str(tmp_path / "phone"), "Pixel 8")
    assert [(row["threads"], row["dense_ms"], row["dynamic_ms"], row["speedup"]) for row in rows] == [
        (1, 2.0, 1.0, 2.0), (2, 1.2, 0.6, 2.0)]
    assert all(row["cpu"] == "Pixel 8" and row["timing"] == "benchmark_model (random inputs)" for row in rows)
    with pytest.raises(ExportError, match="No device_rows.json in .*--device_dir"):
        latency.rows_from_device_logs(str(tmp_path), "Pixel 8")


def test_a_trained_models_exports_are_timed_on_real_images(tmp_path):
    """Its masks depend on the image: each export runs on each image, and its row takes the median over them."""
    folder = latency.DeviceFolder(str(tmp_path))
    entry = folder.add(_fields(1, masks="predicted"), {"dense_macs": 100.0},
                       {name: name.encode() for name in TIMES})
    with pytest.raises(ExportError, match="pass `images`"):
        folder.write_plan()
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    _, files, runs = folder.write_plan(images, num_runs=6)
    assert (files, runs) == (4, 12) and entry["images"] == ["image000.raw", "image001.raw", "image002.raw"]
    np.testing.assert_array_equal(np.fromfile(tmp_path / "image001.raw", "<f4").reshape(32, 32, 3), images[1])
    assert entry["fields"]["timing"] == "benchmark_model on 3 real test images, 2 invokes each (the median over the images)"
    for name, file in entry["files"].items():
        for us, image in zip((1000, 2000, 6000), entry["images"]):
            scale = 2 if name == "dense" else 1
            (tmp_path / latency.device_log_name(file, 1, image)).write_text(_log(us * scale))
    (row,) = latency.rows_from_device_logs(str(tmp_path), "Pixel 8")
    assert (row["dense_ms"], row["dynamic_ms"], row["images"]) == (4.0, 2.0, 3)  # the median image
    assert row["dense_iqr_ms"] == 5.0 and row["dynamic_iqr_ms"] == 2.5  # (2 + 6) / 2 - (1 + 2) / 2, x2 for dense
