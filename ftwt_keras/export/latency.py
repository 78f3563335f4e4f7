"""Latency rows of timed exports, their Markdown tables and chart, and rows read back from a device.

`edge/benchmark.py` times the dense and the dynamic `.tflite` side by side
(with the reference exports beside them) and turns each configuration's
median times into a row (`latency_row`): the times, the speed-up against the
dense model and, from the MACs, the ideal one. `markdown_tables` and
`plot_speedups` present the rows, `write_report` writes all three as
`{"rows": [...]}` JSON, its tables and its chart. On a phone the same
exports run under LiteRT's `benchmark_model`: `DeviceFolder` writes them with
the adb script that runs them, `rows_from_device_logs` reads its outputs back
into the same rows.

Example:

>>> row = latency_row({"model": "m", "resolution": 224, "keep": 0.3, "threads": 1},
...                   {"dense_macs": 100.0},
...                   {"dense": 10.0, "dynamic": 5.0, "predictors": 10.5, "masked_dense": 10.6})
>>> row["speedup"]
2.0
"""

import json
import os

import numpy as np

from ftwt_keras.export.checks import ExportError
from ftwt_keras.export.device import DEVICE_SCRIPT, DeviceRun, benchmark_model_ms, write_device_script

DEVICE_ROWS = "device_rows.json"  # in a folder of exports for a device: each row's fields, exports and files


def latency_row(fields, extra, median, spread=None):
    """A row of the results: `fields` (what was timed) with the times `median` (`{export: ms}`), their
    interquartile `spread` (None where unknown: times from `benchmark_model`) and what follows from them.

    Args:
        fields: what was timed (model, resolution, keep, threads, FLOPs reduction, ...), copied into the row.
        extra: what the row needs beside the times: `dense_macs`, and for the lean and capped exports their
            gate counts, executed MACs, plan and cap ratio.
        median: `{export name: ms}` with at least `dense`, `dynamic`, `predictors` and `masked_dense`; with
            `dense_int8`, `lean`, `capped`, `capped_int8_weights` where those were timed.
        spread: `{export name: ms}`, interquartile ranges, or None.

    Returns:
        A dict: `fields` with `dense_ms`, `dynamic_ms`, `speedup` and the fields of each further export.
    """
    dense_macs = extra["dense_macs"]
    row = dict(fields)
    row.update(
        dense_ms=round(median["dense"], 3),
        dynamic_ms=round(median["dynamic"], 3),
        speedup=round(median["dense"] / median["dynamic"], 3),
        predictors_ms=round(median["predictors"], 3),
        masked_dense_ms=round(median["masked_dense"], 3),
        dense_iqr_ms=None if spread is None else round(float(spread["dense"]), 3),
        dynamic_iqr_ms=None if spread is None else round(float(spread["dynamic"]), 3),
    )
    if "dense_int8" in median:
        row.update(dense_int8_ms=round(median["dense_int8"], 3),
                   speedup_vs_int8=round(median["dense_int8"] / median["dynamic"], 3))
    if "lean" in median:
        row.update(
            lean_plan=extra["lean_plan"],
            lean_gates=extra["lean_gates"],
            lean_ms=round(median["lean"], 3),
            lean_speedup=round(median["dense"] / median["lean"], 3),
            lean_flops_reduction=round(1.0 - extra["lean_executed"] / dense_macs, 3),
            lean_ideal_speedup=round(dense_macs / extra["lean_executed"], 3),
        )
    if "capped" in median:
        row.update(
            capped_ratio=extra["capped_ratio"],
            capped_gates=extra["capped_gates"],
            capped_ms=round(median["capped"], 3),
            capped_speedup=round(median["dense"] / median["capped"], 3),
            capped_flops_reduction=round(1.0 - extra["capped_executed"] / dense_macs, 3),
        )
    if "capped_int8_weights" in median:
        row.update(capped_int8_weights_ms=round(median["capped_int8_weights"], 3),
                   capped_int8_weights_speedup=round(median["dense"] / median["capped_int8_weights"], 3))
        if "dense_int8" in median:
            row["capped_int8_weights_vs_int8"] = round(median["dense_int8"] / median["capped_int8_weights"], 3)
    return row


def row_summary(row, convert_seconds=None):
    """`row` in a few lines of text, as edge/benchmark.py prints it (with the conversion time, if given)."""
    spread = "" if row["dense_iqr_ms"] is None else f" (IQR {row['dense_iqr_ms']:.2f})"
    dynamic_spread = "" if row["dynamic_iqr_ms"] is None else f" (IQR {row['dynamic_iqr_ms']:.2f})"
    convert = "" if convert_seconds is None else f"  [convert {convert_seconds:.0f}s]"
    lines = [f"{row['model']:>16} {row['resolution']:>4} keep={row['keep']:<5} thr={row['threads']} "
             f"FLOPs-{100 * row['flops_reduction']:4.1f}%  dense {row['dense_ms']:7.2f} ms{spread}  "
             f"dynamic {row['dynamic_ms']:7.2f} ms{dynamic_spread}  speed-up {row['speedup']:.2f}x  "
             f"ideal {row['ideal_speedup']:.2f}x  | dense+predictors {row['predictors_ms']:.2f} ms  "
             f"masked dense {row['masked_dense_ms']:.2f} ms{convert}"]
    indent = " " * 17
    if "dense_int8_ms" in row:
        lines.append(f"{indent}dense in full int8: {row['dense_int8_ms']:.2f} ms; the dynamic export (float32) runs at "
                     f"{row['speedup_vs_int8']:.2f}x of its speed")
    if "lean_ms" in row:
        lines.append(f"{indent}gated only at the {row['lean_gates']} layers that pay (another model): "
                     f"{row['lean_ms']:.2f} ms, speed-up {row['lean_speedup']:.2f}x, "
                     f"FLOPs-{100 * row['lean_flops_reduction']:.1f}%, ideal {row['lean_ideal_speedup']:.2f}x")
    if "capped_ms" in row:
        lines.append(f"{indent}the {row['capped_gates']} compacted convs capped at {row['capped_ratio']:g}x their mean "
                     f"count: {row['capped_ms']:.2f} ms, speed-up {row['capped_speedup']:.2f}x, "
                     f"FLOPs-{100 * row['capped_flops_reduction']:.1f}%")
    if "capped_int8_weights_ms" in row:
        against = ("" if "capped_int8_weights_vs_int8" not in row else
                   f", {row['capped_int8_weights_vs_int8']:.2f}x the dense full-int8 model's speed")
        lines.append(f"{indent}the capped model with int8 weights: {row['capped_int8_weights_ms']:.2f} ms, speed-up "
                     f"{row['capped_int8_weights_speedup']:.2f}x{against}")
    return "\n".join(lines)


def device_log_name(file, threads, image=None):
    """Where `benchmark_model`'s output for `file` run with `threads` threads (on `image`) goes, beside it."""
    return f"{file}.threads{threads}" + ("" if image is None else f".{os.path.splitext(image)[0]}") + ".log"


def rows_from_device_logs(folder, device_name):
    """The rows of a folder of exports timed on a device, with the times `benchmark_model` printed there.

    `folder` holds what `edge/benchmark.py --device_dir` wrote (`DEVICE_ROWS`: each row's fields and
    files) and each output `run_on_device.sh` saved beside its file (`device_log_name`). A row timed
    on real images (a trained model's) takes each export's median over them, and their
    interquartile range as its spread. Raises `ExportError` naming what is missing.
    """
    path = os.path.join(folder, DEVICE_ROWS)
    if not os.path.exists(path):
        raise ExportError(f"No {DEVICE_ROWS} in {folder!r}: write the files first (edge/benchmark.py --device_dir=...).")
    with open(path) as file:
        entries = json.load(file)["rows"]
    rows = []
    for entry in entries:
        threads, times, spread = entry["fields"]["threads"], {}, {}
        for name, file_name in entry["files"].items():
            per_image = []
            for image in entry.get("images") or [None]:
                log = os.path.join(folder, device_log_name(file_name, threads, image))
                if not os.path.exists(log):
                    raise ExportError(f"No benchmark_model output {log!r}: run "
                                      f"{os.path.join(folder, DEVICE_SCRIPT)} on the device first (it saves "
                                      "each output there).")
                with open(log) as file:
                    per_image.append(benchmark_model_ms(file.read()))
            times[name] = float(np.median(per_image))
            spread[name] = float(np.percentile(per_image, 75) - np.percentile(per_image, 25))
        timing = entry["fields"].get("timing", "benchmark_model (random inputs)")
        fields = dict(entry["fields"], cpu=device_name, images=len(entry.get("images") or []) or None, loops=1,
                      timing=timing)
        rows.append(latency_row(fields, entry["extra"], times, spread if entry.get("images") else None))
    return rows


class DeviceFolder:
    """A folder of exports to time on a phone with `benchmark_model`, and the rows they belong to.

    `add` writes a row's exports (each distinct file once: the dense export
    of a network is one file for all its rows); `write_plan` writes the rows
    (`DEVICE_ROWS`) and `run_on_device.sh`, which runs every file with its
    rows' thread counts and saves each output beside it, for
    `rows_from_device_logs` to read back. `edge/benchmark.py --device_dir`
    is built on it.

    Args:
        folder: where the files go (made if missing).
    """

    def __init__(self, folder):
        self.folder = folder
        self.entries = []
        self._names = {}  # flatbuffer -> its file name

    def add(self, fields, extra, exports):
        """Writes `exports` (`{name: flatbuffer}`) for the row `fields` (and `extra`, see `latency_row`); returns
        its entry: `{"fields", "extra", "files": {name: file name}}`."""
        os.makedirs(self.folder, exist_ok=True)
        files = {}
        for name, flatbuffer in exports.items():
            if flatbuffer not in self._names:
                self._names[flatbuffer] = (f"{fields['model']}_{fields['resolution']}_keep{fields['keep']:g}"
                                           f"_threads{fields['threads']}_{name}.tflite")
                with open(os.path.join(self.folder, self._names[flatbuffer]), "wb") as file:
                    file.write(flatbuffer)
            files[name] = self._names[flatbuffer]
        entry = {"fields": fields, "extra": extra, "files": files}
        self.entries.append(entry)
        return entry

    def write_plan(self, images=None, num_runs=200, warmup_runs=20):
        """Writes `DEVICE_ROWS` and the script timing every file; returns `(script path, files, runs)`.

        Args:
            images: `(N, H, W, 3)` pixels for the rows whose masks are "predicted" (a trained model's: its
                masks depend on the image, so `benchmark_model`'s random inputs would time other masks than
                real images give): each of their exports runs on each image, written as raw float32 files,
                `num_runs // N` invokes each, and such a row takes the median over the images. None: no
                such rows.
            num_runs: timed invokes per export (in all, over the images).
            warmup_runs: invokes before timing.

        Raises:
            ExportError: rows with predicted masks and no `images`.
        """
        predicted = any(entry["fields"]["masks"] == "predicted" for entry in self.entries)
        if predicted and images is None:
            raise ExportError("Rows with predicted masks are timed on real images: pass `images`.")
        names = []
        for i, image in enumerate(images if predicted else []):
            names.append(f"image{i:03d}.raw")
            np.asarray(image, "<f4").tofile(os.path.join(self.folder, names[-1]))
        runs_per_image = max(1, num_runs // max(1, len(names)))
        for entry in self.entries:
            if entry["fields"]["masks"] == "predicted":
                entry["images"] = names
                entry["fields"]["timing"] = (f"benchmark_model on {len(names)} real test images, {runs_per_image} "
                                             "invokes each (the median over the images)")
            else:
                entry["fields"]["timing"] = "benchmark_model (random inputs)"
        runs = sorted({(file, entry["fields"]["threads"], image, entry["fields"]["resolution"])
                       for entry in self.entries for file in entry["files"].values()
                       for image in entry.get("images") or [None]})
        script = write_device_script(self.folder, [
            DeviceRun(file, device_log_name(file, threads, image), threads,
                      num_runs=num_runs if image is None else runs_per_image, warmup_runs=warmup_runs,
                      image=image, size=None if image is None else size)
            for file, threads, image, size in runs])
        with open(os.path.join(self.folder, DEVICE_ROWS), "w") as file:
            json.dump({"rows": self.entries}, file, indent=1)
        return script, len({file for file, *_ in runs}), len(runs)


def markdown_tables(rows):
    """The rows as two Markdown tables: every export timed, and the network gated only where gates pay.

    One line per model and keep ratio: times with the fewest threads timed
    (1, unless no row has 1), with the speed-up at the next thread
    count beside them. The second table holds only rows with `lean_*`
    fields (runs with calibration images). A line timed only with more
    threads (rows of several runs put together) stays in the JSON alone.
    """
    counts = sorted({row["threads"] for row in rows})
    fewest, more = counts[0], (counts[1] if len(counts) > 1 else None)
    lines = {}
    for row in rows:
        rank = row.get("predictor_rank")
        key = (-row["resolution"], rank is not None, rank or 0, row["model"], row["keep"])
        lines.setdefault(key, {})[row["threads"]] = row
    capped = any("capped_ms" in row for row in rows)
    int8 = any("dense_int8_ms" in row for row in rows)
    capped_int8 = any("capped_int8_weights_ms" in row for row in rows)
    speedups = f"speed-up, {_threads(fewest)} (ideal) |" + (f" speed-up, {_threads(more)} |" if more else "")
    main = ["| resolution | predictors | keep | FLOPs reduction | dense | dense + predictors | masked dense | "
            f"dynamic | {speedups}"
            + (f" capped gates, {fewest} / {more} threads |" if capped and more else
               f" capped gates, {_threads(fewest)} |" if capped else "")
            + (" dense in full int8 (dynamic's speed-up against it) |" if int8 else "")
            + (f" capped gates, int8 weights, {_threads(fewest)}: speed-up / against dense full int8 |"
               if capped_int8 else "")]
    lean = ["| resolution | predictors | keep | gates kept | FLOPs reduction | dense | gated at those layers only | "
            f"{speedups} all gates, {_threads(fewest)} |"]
    main.append("|---" * (main[0].count("|") - 1) + "|")
    lean.append("|---" * (lean[0].count("|") - 1) + "|")

    def speedup_of(row, field):  # "-" where that thread count was not timed, or had no such export
        return "-" if row is None or field not in row else f"{row[field]:.2f}x"

    for key in sorted(lines):
        by_threads = lines[key]
        one = by_threads.get(fewest)
        if one is None:
            continue
        two = by_threads.get(more)
        beside = f" {speedup_of(two, 'speedup')} |" if more else ""
        rank = one.get("predictor_rank")
        network = one["model"].split("_rank")[0]
        where = f"{one['resolution']}x{one['resolution']}" + ("" if network.startswith("mobilenet_v1") else f", {network}")
        head = f"| {where} | {'full' if rank is None else f'rank {rank}'} | {one['keep']:.2f} |"
        capped_cell = ""
        if "capped_ms" in one:
            capped_cell = (f" {one['capped_ms']:.2f} ms: {one['capped_speedup']:.2f}x"
                           + (f" / {speedup_of(two, 'capped_speedup')}" if more else "") + " |")
        elif capped:
            capped_cell = " - |"
        int8_cell = ""
        if "dense_int8_ms" in one:
            int8_cell = f" {one['dense_int8_ms']:.2f} ms ({one['speedup_vs_int8']:.2f}x) |"
        elif int8:
            int8_cell = " - |"
        if "capped_int8_weights_ms" in one:
            against = one.get("capped_int8_weights_vs_int8")
            int8_cell += (f" {one['capped_int8_weights_ms']:.2f} ms: {one['capped_int8_weights_speedup']:.2f}x / "
                          + ("-" if against is None else f"{against:.2f}x") + " |")
        elif capped_int8:
            int8_cell += " - |"
        main.append(f"{head} {100 * one['flops_reduction']:.1f}% | {one['dense_ms']:.2f} ms | "
                    f"{one['predictors_ms']:.2f} ms | {one['masked_dense_ms']:.2f} ms | {one['dynamic_ms']:.2f} ms | "
                    f"{one['speedup']:.2f}x ({one['ideal_speedup']:.2f}x) |{beside}{capped_cell}{int8_cell}")
        if "lean_ms" in one:
            lean.append(f"{head} {one['lean_gates']} of {one.get('gates', '?')} | "
                        f"{100 * one['lean_flops_reduction']:.1f}% | {one['dense_ms']:.2f} ms | "
                        f"{one['lean_ms']:.2f} ms | {one['lean_speedup']:.2f}x ({one['lean_ideal_speedup']:.2f}x) |"
                        + (f" {speedup_of(two, 'lean_speedup')} |" if more else "") + f" {one['speedup']:.2f}x |")
    tables = "\n".join(main) + "\n"
    rules = sorted({row["drawn_capacities"] for row in rows if row.get("drawn_capacities")})
    if rules:
        tables = (f"Drawn masks, capacities of the compact layers (`--drawn_capacities`, the margin real masks, "
                  f"which vary by image, need): {' / '.join(_capacity_rule(rule) for rule in rules)}.\n\n" + tables)
    cpus = sorted({row["cpu"] for row in rows if row.get("cpu")})
    if cpus:
        tables = f"Timed on: {' / '.join(cpus)} (LiteRT, XNNPACK on, batch 1).\n\n" + tables
    loops = sorted({row.get("loops", 1) for row in rows} - {1})
    if loops:
        tables = (f"Each time: the median over {' / '.join(map(str, loops))} side-by-side loops of each loop's median "
                  "(fresh interpreters per loop, in a rotated order).\n\n" + tables)
    if int8:
        tables += ("\nDense in full int8: the dense model in LiteRT's full-integer quantization (int8 weights and "
                   "activations, ranges from 32 training images); every other column is float32"
                   + (" but the last" if capped_int8 else "") + ".\n")
    ratios = sorted({row["capped_ratio"] for row in rows if "capped_ratio" in row})
    if ratios:
        tables += (f"\nCapped gates: the convs the export compacts keep at most {' / '.join(f'{r:g}' for r in ratios)}x "
                   "their mean count (`ftwt_keras.cap_gates`; another model) and compute exactly that, with no "
                   "fallback.\n")
    if capped_int8:
        tables += ("\nCapped gates, int8 weights: the capped model in LiteRT's dynamic-range quantization (int8 "
                   "weights, float32 activations); not exact: a gate whose logit is near 0 may flip "
                   "(`benchmarks/weight_dtypes.py` counts the top-1s that change).\n")
    if len(lean) > 2:
        measured = any(row.get("lean_plan") == "measured" for row in rows)
        plan = "`measured_paying_gates`: timed faster than dense here" if measured else "`paying_gates`"
        tables += f"\nGated only at the layers that pay ({plan}; another model, see `ungate`):\n\n"
        tables += "\n".join(lean) + "\n"
    return tables


def plot_speedups(rows, path):
    """Draws measured (1 and 2 threads) and ideal speed-up against FLOPs reduction, one panel per resolution.

    Rows with `lean_*` fields (and at least one paying gate) add the network
    gated only where gates pay, with the fewest threads timed (1, unless no
    row has 1), as open squares; rows with `capped_*` fields the
    capped model, likewise, as open triangles, and with `capped_int8_weights_*`
    fields that model with int8 weights as open diamonds (against the same
    float32 dense model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    resolutions = sorted({row["resolution"] for row in rows}, reverse=True)
    fewest = min(row["threads"] for row in rows)
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.5 * len(resolutions), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, resolution in zip(axes[0], resolutions):
        here = [row for row in rows if row["resolution"] == resolution]
        for color, model in zip(colors, sorted({row["model"] for row in here})):
            runs = [row for row in here if row["model"] == model]
            rank = runs[0].get("predictor_rank")
            kind = f"{model}, " + ("full predictors" if rank is None else f"rank-{rank} predictors")
            for threads in sorted({row["threads"] for row in runs}):
                points = sorted((row["flops_reduction"], row["speedup"]) for row in runs if row["threads"] == threads)
                ax.plot([100 * x for x, _ in points], [y for _, y in points], marker="o", color=color,
                        linestyle="-" if threads == 1 else ":", label=f"{kind}, {threads} thread(s)")
            lean = sorted((row["lean_flops_reduction"], row["lean_speedup"]) for row in runs
                          if row["threads"] == fewest and row.get("lean_gates"))
            if lean:
                ax.plot([100 * x for x, _ in lean], [y for _, y in lean], marker="s", linestyle="none", color=color,
                        markerfacecolor="none", label=f"{kind}, gated only where gates pay, {_threads(fewest)}")
            capped = sorted((row["capped_flops_reduction"], row["capped_speedup"], row["capped_ratio"]) for row in runs
                            if row["threads"] == fewest and "capped_speedup" in row)
            if capped:
                ax.plot([100 * x for x, _, _ in capped], [y for _, y, _ in capped], marker="^", linestyle="none",
                        color=color, markerfacecolor="none",
                        label=f"{kind}, gates capped at {capped[0][2]:g}x the mean count, {_threads(fewest)}")
            capped_int8 = sorted((row["capped_flops_reduction"], row["capped_int8_weights_speedup"]) for row in runs
                                 if row["threads"] == fewest and "capped_int8_weights_speedup" in row)
            if capped_int8:
                ax.plot([100 * x for x, _ in capped_int8], [y for _, y in capped_int8], marker="D", linestyle="none",
                        color=color, markerfacecolor="none", label=f"{kind}, capped, int8 weights, {_threads(fewest)}")
            ideal = sorted({(row["flops_reduction"], row["ideal_speedup"]) for row in runs})
            ax.plot([100 * x for x, _ in ideal], [y for _, y in ideal], linestyle="--", color=color, alpha=0.5,
                    label=f"{kind}: ideal (dense / executed MACs)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_yticks([0.5, 0.75, 1, 1.5, 2, 3, 5, 10])
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("FLOPs reduction (%)")
        ax.set_ylabel("speed-up vs the dense .tflite")
        drawn = all(str(row.get("masks", "")).startswith("random") for row in here)
        masks = "masks drawn at random, fixed keep per layer" if drawn else "masks from the model's predictors"
        rules = sorted({row["drawn_capacities"] for row in here if row.get("drawn_capacities")})
        if rules:
            masks += f",\ncapacities: {' / '.join(_capacity_rule(rule) for rule in rules)}"
        ax.set_title(f"{resolution}x{resolution}, LiteRT XNNPACK, batch 1\n({masks})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15))  # below the axes: inside, it hid points
        ax.grid(True, which="both", alpha=0.3)
    fig.subplots_adjust(wspace=0.25)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the canvas grows to hold the legends
    plt.close(fig)
    return path


def write_report(rows, output, tables_only=False):
    """Writes `rows` as `{"rows": [...]}` to `output`, their tables beside it (`.md`) and their chart (`.png`).

    Args:
        rows: rows of `latency_row`.
        output: the JSON file; the tables and the chart take its name with `.md` and `.png`.
        tables_only: leave `output` as it is (the rows came from it) and rewrite the tables and the chart.

    Returns:
        `{"rows": path or None, "tables": path, "chart": path, or None without matplotlib}`.
    """
    written = {"rows": None}
    if not tables_only:
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with open(output, "w") as file:
            json.dump({"rows": rows}, file, indent=1)
        written["rows"] = output
    stem = os.path.splitext(output)[0]
    with open(stem + ".md", "w") as file:
        file.write(markdown_tables(rows))
    written["tables"] = stem + ".md"
    try:
        written["chart"] = plot_speedups(rows, stem + ".png")
    except ImportError:
        written["chart"] = None
    return written


def _threads(count):
    return f"{count} thread" + ("s" if count > 1 else "")


def _capacity_rule(rule):
    """A --drawn_capacities value in words."""
    return "binomial spread" if rule == "binomial" else f"{float(rule):g}x the count"
