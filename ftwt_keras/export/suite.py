"""A model's exports timed side by side on this CPU: `ExportSuite`, what `edge/benchmark.py` runs.

A dynamic export's time alone says little: the suite converts, for one FTWT
model, the exports that tell where its time goes, and times them in one loop
(`runtime.loop_times`: each invoke alone, the exports alternating image by
image), one row (`latency.latency_row`) per thread count:

- `dense`: the same weights as the ordinary dense network, the reference;
- `dense_int8` (`int8_reference`): that network in LiteRT's full-integer int8;
- `predictors`: the dense network that also runs every mask predictor, not
  applied: what the predictors, which every exact per-image export runs, add
  at most (read by nothing, they may run after the last conv);
- `masked_dense`: every layer computed dense, then masked (policy `dense`);
- `dynamic`: the export under test (`policy`);
- `lean` (with calibration images): the network gated only where gates pay
  (`kept_gates`, or `measured_paying_gates` with `lean_plan="measured"`; the
  other gates `ungate`d). Another model: with drawn masks the kept gates keep
  theirs, what a model trained with gates there only would run; on a trained
  model, removing gates it was trained with costs accuracy, and the kept
  gates, reading other activations, give other masks: read its speed-up
  against its own FLOPs reduction (`lean_flops_reduction`);
- `capped` (`capped_ratio`, where any layer compacts): the convs the export
  compacts capped at that many times their mean count (`cap_compacted_gates`;
  another model; the model gets its own caps back), and with
  `capped_int8_weights` that model with int8 weights.

The dynamic, lean and capped exports are converted for each thread count
(`convert(num_threads=...)`: with more threads fewer layers compact). With a
`latency.DeviceFolder` the exports are written there for a phone instead of
timed. Masks are the model's own, or drawn (`set_keep_ratio`) and said so:
drawn masks are the same on every image, so no gate is pruned statically and
compact layers get a capacity margin (`drawn_capacities`).

Example:

>>> import numpy as np, ftwt_keras as fk
>>> from ftwt_keras.export import ExportSuite, set_keep_ratio
>>> model = fk.gate(fk.models.mobilenet_v1(input_shape=(32, 32, 3), num_classes=10, alpha=0.25))
>>> _ = set_keep_ratio(model, 0.3)
>>> images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
>>> suite = ExportSuite(threads=(1,), capped_ratio=0, int8_reference=False, warmup=1, verbose=False)
>>> [row] = suite.measure(model, images, "mnv1", drawn_keep=0.3)
>>> row["threads"], row["masks"], row["dense_ms"] > 0
(1, 'random, keep 0.3 per layer', True)
"""

import os
import time

import numpy as np

from ftwt_keras import flops
from ftwt_keras.capping import set_gate_capacities
from ftwt_keras.export.calibration import calibrate
from ftwt_keras.export.checks import ExportError, _check_threads
from ftwt_keras.export.drawn_masks import DRAWN_CAPACITY_RATIO
from ftwt_keras.export.latency import latency_row, row_summary
from ftwt_keras.export.measured import measured_paying_gates
from ftwt_keras.export.planning import cap_compacted_gates, kept_gates, parse_policy
from ftwt_keras.export.runtime import cpu_name, loop_times, medians_over_loops
from ftwt_keras.gating import ungate

LEAN_PLANS = ("rules", "measured")
_MAC_IMAGES = 64  # images whose mean executed MACs a row reports (and the capped and measured plans use)


class ExportSuite:
    """How to time a model's exports side by side; `measure` times them.

    Args:
        threads: interpreter thread counts, a row each.
        policy: the dynamic export's policy (as `convert`, or its command-line text: "auto", "0.6").
        loops: side-by-side loops, each with fresh interpreters in a rotated order; a row's times are
            the median over loops of each loop's median.
        warmup: untimed invokes per export before each loop.
        drawn_capacities: for drawn masks, the compact layers' capacities: a number r >= 1 (at least r x
            the count: drawn masks leave the count itself no margin; `DRAWN_CAPACITY_RATIO` is what the
            `make demo` model's real masks needed), or "binomial" (the spread of independent gates).
        lean_plan: how the lean network's gates are picked: "rules" (`kept_gates`, the export's
            cutoffs) or "measured" (`measured_paying_gates`, timed here).
        capped_ratio: the capped model's caps, in multiples of each layer's mean count (0: no capped
            model).
        capped_int8_weights: also time the capped model with int8 weights.
        int8_reference: also time the dense network in full int8 (`references` needs `int8_images`).
        save_dir: a folder each dynamic export is saved to (None: not saved).
        verbose: print each row (and the measured plans) as it comes.

    Raises:
        ExportError: a value out of range, naming it.
    """

    def __init__(self, threads=(1,), policy="auto", loops=1, warmup=20, drawn_capacities=DRAWN_CAPACITY_RATIO,
                 lean_plan="rules", capped_ratio=1.1, capped_int8_weights=True, int8_reference=True, save_dir=None,
                 verbose=True):
        self.threads = tuple(threads)
        if not self.threads:
            raise ExportError("`threads` is empty: give at least one thread count.")
        for count in self.threads:
            _check_threads(count)
        self.policy = parse_policy(policy) if isinstance(policy, str) else policy
        if isinstance(loops, bool) or not isinstance(loops, int) or loops < 1:
            raise ExportError(f"`loops` must be a positive int; got {loops!r}.")
        self.loops, self.warmup = loops, int(warmup)
        self.drawn_capacities = _capacity_rule(drawn_capacities)
        if lean_plan not in LEAN_PLANS:
            raise ExportError(f"`lean_plan` must be one of {list(LEAN_PLANS)}; got {lean_plan!r}.")
        self.lean_plan = lean_plan
        if capped_ratio and capped_ratio < 1.0:
            raise ExportError(f"`capped_ratio` must be >= 1 (caps below the mean count), or 0 for no capped "
                              f"model; got {capped_ratio}.")
        self.capped_ratio = capped_ratio
        self.capped_int8_weights, self.int8_reference = capped_int8_weights, int8_reference
        self.save_dir, self.verbose = save_dir, verbose

    def references(self, model, int8_images=None):
        """`{"dense": float32 flatbuffer}` and, with `int8_reference`, `"dense_int8"`: the dense network.

        Make them once and pass them to every `measure` of the same network (its keep ratios, its
        predictor ranks: the dense network is the same).

        Args:
            model: an `FTWTModel`.
            int8_images: training-like raw images whose activations set the int8 ranges (with
                `int8_reference`).
        """
        from ftwt_keras.export.tflite import convert

        if self.int8_reference and int8_images is None:
            raise ExportError("`int8_reference` needs `int8_images` (training-like images for the int8 ranges), "
                              "or int8_reference=False.")
        references = {"dense": convert(model, dynamic=False)}
        if self.int8_reference:
            references["dense_int8"] = convert(model, dynamic=False, weight_dtype="int8",
                                               representative_images=int8_images)
        return references

    def calibrated(self, model, calibration, drawn):
        """The `Calibration` the dynamic export uses: `calibrate(model, calibration)`, None without images.

        With `drawn` masks (the same on every image) the capacities get `drawn_capacities`' margin; a
        trained model's own masks set theirs.
        """
        if calibration is None:
            return None
        calibrated = calibrate(model, calibration)
        if not drawn:
            return calibrated
        if self.drawn_capacities == "binomial":
            return calibrated.with_binomial_spread(model, num_images=len(calibration))
        return calibrated.with_capacity_ratio(model, self.drawn_capacities)

    def measure(self, model, images, label, drawn_keep=None, calibration=None, references=None, int8_images=None,
                device=None):
        """Times `model`'s exports side by side on `images`; returns a row per thread count.

        Args:
            model: an `FTWTModel`, with its own masks or masks drawn by `set_keep_ratio`.
            images: `(N, H, W, 3)` raw pixels, each timed alone.
            label: the rows' `model` field (and the saved files' names).
            drawn_keep: the keep ratio `set_keep_ratio` drew the masks at (None: the model's own masks,
                which vary by image).
            calibration: training-like raw images for `calibrate` (static capacities, the lean network);
                None: no lean network, and the export chooses per image with a builtin IF.
            references: `references(model, ...)`, made once per network (None: made here).
            int8_images: for `references` when made here (default: the first 32 of `calibration`, else
                of `images`).
            device: a `latency.DeviceFolder`: the exports are written there for a phone instead of timed,
                and its entries returned.

        Returns:
            A list of `latency_row` dicts (with `device`: of `DeviceFolder.add` entries).

        Raises:
            ExportError: what the export refuses; `drawn_keep` with masks that vary by image; `device`
                with `lean_plan="measured"`.
        """
        from ftwt_keras.export.tflite import convert, save  # tflite re-exports this module's names

        if device is not None and self.lean_plan == "measured":
            raise ExportError("lean_plan='measured' times the lean network here, but `device` times the exports on "
                              "another device: use lean_plan='rules' there (or `edge/candidates.py`).")
        images = np.asarray(images, np.float32)
        drawn = drawn_keep is not None
        if references is None:
            int8_images = int8_images if int8_images is not None else (
                calibration if calibration is not None else images)[:32]
            references = self.references(model, int8_images)
        calibrated = self.calibrated(model, calibration, drawn)
        # Drawn masks are the same on every image by construction, and stand in for masks that are
        # not: a static-gate export would prune them away for good; keep every predictor running.
        static = not drawn
        shared = {
            **references,
            "predictors": convert(model, dynamic=False, with_predictors=True),
            "masked_dense": convert(model, policy="dense", static_gates=static),
        }
        sample = images[:_MAC_IMAGES]
        executed = float(np.mean(flops.dynamic_macs(model, sample, batch_size=16)))
        dense_macs = flops.count_macs(model)
        masks = {name: np.asarray(mask) for name, mask in flops.gate_masks_of(model, sample[:16]).items()}
        if drawn and not all((mask == mask[:1]).all() for mask in masks.values()):
            raise ExportError(f"drawn_keep={drawn_keep} labels masks drawn by `set_keep_ratio` (the same on every "
                              f"image), but '{label}''s masks vary by image: draw them first "
                              f"(export.set_keep_ratio(model, {drawn_keep})), or leave out drawn_keep.")
        keep = float(np.mean([mask.mean() for mask in masks.values()]))
        keep_label = f"{float(drawn_keep)}" if drawn else "predicted"
        rows = []
        for threads in self.threads:
            tuned, extra = self._thread_tuned(model, sample, calibration, calibrated, drawn, threads,
                                              references["dense"])
            extra.update(dense_macs=dense_macs, capped_ratio=self.capped_ratio, lean_plan=self.lean_plan)
            if self.save_dir:
                save(tuned["dynamic"], os.path.join(
                    self.save_dir, f"{label}_{images.shape[1]}_keep{keep_label}_threads{threads}.tflite"))
            fields = {
                "model": label,
                "resolution": int(images.shape[1]),
                "keep": round(keep, 3),
                "threads": threads,
                "flops_reduction": round(1.0 - executed / dense_macs, 3),
                "ideal_speedup": round(dense_macs / executed, 3),
                "images": int(len(images)),
                "loops": self.loops,
                "policy": str(self.policy),
                "calibration_images": 0 if calibration is None else int(len(calibration)),
                "drawn_capacities": (str(self.drawn_capacities) if calibration is not None and drawn else None),
                "predictor_rank": model.gated_layers[-1].predictor_rank,
                "gates": len(model.gated_layers),
                "masks": "predicted" if not drawn else f"random, keep {keep_label} per layer",
                "cpu": cpu_name(),
            }
            exports = {**shared, **tuned}
            if device is not None:
                rows.append(device.add(fields, extra, exports))
                self._say(f"{label:>16} {fields['resolution']:>4} keep={fields['keep']:<5} thr={threads}: "
                          f"{len(exports)} exports written to {device.folder} [convert {extra['convert_seconds']:.0f}s]")
                continue
            loops = loop_times(exports, images, self.loops, threads, self.warmup)
            median = medians_over_loops(loops)
            spread = {name: 1e3 * float(np.median([np.percentile(times, 75) - np.percentile(times, 25)
                                                   for times in values]))
                      for name, values in loops.items()}
            row = latency_row(fields, extra, median, spread)
            rows.append(row)
            self._say(row_summary(row, extra["convert_seconds"]))
        return rows

    def _thread_tuned(self, model, sample, calibration, calibrated, drawn, threads, dense_flatbuffer):
        """The exports converted for `threads` threads, and their conversion time, gate counts and MACs.

        Dynamic: `model` under `policy`. Lean (with calibration images): the network gated only where
        gates pay for that many threads (the dense model where none does). Capped (`capped_ratio`, where
        any layer compacts): the convs the export compacts capped at that ratio; `model` gets its own caps
        back.
        """
        from ftwt_keras.export.tflite import convert

        static = not drawn
        options = dict(policy=self.policy, static_gates=static, num_threads=threads)
        start = time.time()
        exports = {"dynamic": convert(model, calibration=calibrated, **options)}
        extra = {"convert_seconds": time.time() - start}
        if calibration is not None:
            if self.lean_plan == "measured":
                plan = measured_paying_gates(model, calibrated, sample, num_threads=threads, static_gates=static,
                                             loops=2, warmup=self.warmup)
                self._say(f"{'':>16} measured plan ({threads} thread(s)), gates kept: ms against dense's: "
                          + ", ".join(f"{count}: {ms:.2f} / {dense_ms:.2f}" for count, ms, dense_ms in plan.tried))
                kept = set(plan.gates)  # static ones included
            else:
                kept = set(kept_gates(model, calibrated, threads, static))  # the export's capacities
            lean = ungate(model, [layer.name for layer in model.gated_layers if layer.name not in kept])
            extra.update(lean_gates=len(kept),
                         lean_executed=float(np.mean(flops.dynamic_macs(lean, sample, batch_size=16))))
            exports["lean"] = (convert(lean, calibration=self.calibrated(lean, calibration, drawn), **options)
                               if kept else dense_flatbuffer)
        if self.capped_ratio:
            own_caps = {layer.name: layer.capacity for layer in model.gated_layers}
            try:
                compacted = cap_compacted_gates(model, sample if calibration is None else calibration,
                                                ratio=self.capped_ratio, **options)
                if compacted:
                    capped_calibration = None
                    if calibration is not None:
                        capped_calibration = calibrate(model, calibration)
                        if drawn:  # the count itself; the caps (the same ratio) bound it
                            capped_calibration = capped_calibration.with_capacity_ratio(model, self.capped_ratio)
                    exports["capped"] = convert(model, calibration=capped_calibration, **options)
                    if self.capped_int8_weights:
                        exports["capped_int8_weights"] = convert(model, calibration=capped_calibration,
                                                                 weight_dtype="int8", **options)
                    extra.update(capped_gates=len(compacted),
                                 capped_executed=float(np.mean(flops.dynamic_macs(model, sample, batch_size=16))))
            finally:  # the model as it came, caps of its own included
                set_gate_capacities(model, own_caps)
        return exports, extra

    def _say(self, text):
        if self.verbose:
            print(text, flush=True)


def _capacity_rule(value):
    """`drawn_capacities` checked: "binomial" or a float >= 1."""
    if value == "binomial":
        return value
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = 0.0
    if ratio < 1.0:
        raise ExportError(f"`drawn_capacities` takes 'binomial' or a number >= 1; got {value!r}.")
    return ratio
