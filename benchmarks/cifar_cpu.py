"""FTWT's accuracy / FLOPs trade-off on real CIFAR-10 at CPU scale.

    python benchmarks/cifar_cpu.py                       # the full protocol (see README "Results")
    python benchmarks/cifar_cpu.py --analyze_only        # tables and plots from finished runs
    python benchmarks/cifar_cpu.py --epochs=15 --baseline_dir=runs/cifar_cpu --output_dir=runs/cifar_cpu_e15 ...

The last reuses a finished run's dense baseline to try another FTWT schedule;
`--baseline_model=M.keras` starts from any dense MobileNetV1 of width --alpha.

One dense baseline (MobileNetV1, width --alpha), then FTWT from it for each
--thresholds value in decoupled mode and for --joint_thresholds in joint
mode. For every run: top-1 on the full test set, the FLOPs reduction measured
with `ftwt_keras.flops` on it, the reduction `estimate_flops_reduction`
predicts from the baseline before FTWT training, gate accuracy, training
time, per-layer keep ratios, which filters fire on every test image, on
none (a static pruning's share of the reduction) or on some only, per-image
MACs on clean and on shifted
(noisy, blurred) test images and on the images the dense baseline gets right
vs wrong, and the measured .tflite speed-up vs dense
(LiteRT, XNNPACK, 1 thread, batch 1, --tflite_images real test images).
With --static_alphas, controls a careful comparison needs: dense MobileNetV1s
trained from scratch for as many epochs as each FTWT model gets in all, at
the baseline's width (equal training, no pruning) and narrower (a static
network with the MACs FTWT reaches), with their top-1, MACs and .tflite
time beside the baseline's.

Every stage is resumable: re-running the same command skips finished runs
and resumes an interrupted one at its last epoch; a finished run analyzed
before a measurement was added gets only that measurement. Outputs:
`--output_dir/<run>/` (models, histories, TensorBoard logs, analysis.npz),
`--results` (JSON rows, fractions in 0..1), and beside it, named after it, a
Markdown table and PNG plots (needs matplotlib: `pip install -e .[test]`).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from ftwt_keras.recipes import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/cifar_cpu", "Checkpoints, models and per-run analysis.")
flags.DEFINE_string("results", "benchmarks/results/cifar10_cpu.json",
                    "Results JSON (a .md table and PNG plots go beside it).")
flags.DEFINE_float("alpha", 0.25, "MobileNetV1 width multiplier.")
flags.DEFINE_string("baseline_dir", None,
                    "Reuse the dense baseline of another --output_dir (its baseline.keras and training time) "
                    "instead of training one, e.g. to try another FTWT schedule from the same baseline.")
flags.DEFINE_string("baseline_model", None,
                    "Start the FTWT runs from this dense MobileNetV1 .keras (width --alpha) instead of training "
                    "one, e.g. a longer-trained model; its epochs are recorded as --baseline_epochs says, and "
                    "its training time as unknown.")
flags.DEFINE_integer("baseline_epochs", 15, "Dense baseline epochs (LR 0.1, x0.1 at 50% and 75%).")
flags.DEFINE_integer("epochs", 10, "FTWT epochs per run (--lr, x0.1 at 75%); 10 fill the 100-min budget on "
                     "an undisturbed 2-core host here (README).")
flags.DEFINE_float("lr", 0.02,
                   "Backbone learning rate of the FTWT runs (the paper's 0.01 loses 0.2-3.8 points of top-1 in this "
                   "short schedule, see README).")
flags.DEFINE_list("thresholds", ["0.6", "0.55", "0.5"], "Decoupled-mode thresholds r.")
flags.DEFINE_list("joint_thresholds", ["0.55"], "Joint-mode thresholds r.")
flags.DEFINE_float("joint_gradient_scale", 0.001,
                   "Joint runs: factor on the gate-loss gradient reaching the backbone (1.0: the paper's joint "
                   "mode, which collapses in this short schedule, see README).")
flags.DEFINE_float("gate_lr", 0.1, "Mask predictor learning rate.")
flags.DEFINE_bool("use_softmax", False,
                  "Softmax over the pooled channels in the mask predictors (the official predictor has it; "
                  "in a short schedule it leaves the predictors nearly input-blind, see README).")
flags.DEFINE_integer("predictor_rank", None,
                     "Factor each mask predictor through this many channels (default: the paper's full predictor).")
flags.DEFINE_enum("target", "uniform", ["mass", "uniform"],
                  "Gate targets: the top r fraction of each layer's filters by heatmap score (the official "
                  "code's uniform rule, the default: it loses less top-1 here, see README), or the filters "
                  "holding the heatmap mass r (the paper's rule).")
flags.DEFINE_float("cooldown", 0.3, "Fraction of FTWT epochs with the gate loss on (the paper: 0.5).")
flags.DEFINE_integer("warmup_steps", 100, "Predictor warm-up batches toward all-ones.")
flags.DEFINE_integer("seed", 0, "Random seed of the baseline and every FTWT run (data order, initial predictors).")
flags.DEFINE_integer("train_take", None, "Use only the first N training images (smoke runs).")
flags.DEFINE_integer("test_take", None, "Use only the first N test images (smoke runs).")
flags.DEFINE_integer("tflite_images", 200, "Real test images timed per .tflite (0: skip the edge timing).")
flags.DEFINE_float("noise_std", 25.0, "Std of the Gaussian pixel noise of the shifted test set (0..255 scale).")
flags.DEFINE_float("blur_sigma", 1.0, "Gaussian blur sigma (pixels) of the second shifted test set.")
flags.DEFINE_list("static_alphas", [],
                  "Controls: dense MobileNetV1 of these widths trained from scratch for --baseline_epochs + "
                  "--epochs epochs (what every FTWT model gets in all), e.g. 0.25,0.19,0.16: the equal-training "
                  "dense model and narrower networks with about r = 0.9's and 0.83's MACs.")
flags.DEFINE_bool("analyze_only", False, "Only rebuild the JSON, table and plots from finished runs.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")
common.define_fine_tuning_flags()  # FTWT runs: --threshold_ramp_epochs, --distillation_*
flags.adopt_module_key_flags(common)  # ... listed by --help too
flags.register_validator("lr", lambda value: value > 0, message="--lr must be a positive learning rate (e.g. 0.01).")
flags.register_validator("gate_lr", lambda value: value > 0,
                         message="--gate_lr must be a positive learning rate (e.g. 0.1).")


ANALYSIS_FILE = "analysis.npz"
STATIC_FILE = "static.json"


def run_name(threshold, mode, scale=1.0, target="mass"):
    suffix = "" if mode == "decoupled" or scale == 1.0 else f"_g{scale:g}"
    return f"r{float(threshold):g}_{mode}{suffix}" + ("" if target == "mass" else f"_{target}")


def static_run_name(alpha):
    return f"static_x{alpha:g}"


def _static_alphas():
    """--static_alphas as positive floats.

    Raises:
        app.UsageError: a value is not a positive number (checked before any training starts).
    """
    alphas = []
    for text in FLAGS.static_alphas:
        try:
            alpha = float(text)
        except ValueError:
            alpha = 0.0
        if not alpha > 0:
            raise app.UsageError(
                f"--static_alphas takes positive width multipliers (e.g. 0.25,0.19,0.16); got {text!r}.")
        alphas.append(alpha)
    return alphas


def _runs():
    """(threshold, mode, joint gradient scale) of every FTWT run."""
    runs = [(float(t), "decoupled", 0.0) for t in FLAGS.thresholds]
    runs += [(float(t), "joint", FLAGS.joint_gradient_scale) for t in FLAGS.joint_thresholds]
    return runs


# Settings that may differ between the run that wrote a results.json and the one reading it.
_NOT_COMPARED = ("output_dir", "baseline", "verbose")


def check_finished_run(run_dir, config, file_name="results.json"):
    """Raises a `ValueError` if the finished run in `run_dir` used other settings than `config`."""
    with open(os.path.join(run_dir, file_name)) as file:
        saved = json.load(file)["config"]
    changed = sorted(k for k in config if k not in _NOT_COMPARED and k in saved and saved[k] != config[k])
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} there, {config[k]!r} now" for k in changed)
        raise ValueError(
            f"{run_dir} holds a finished run with other settings ({details}). Pass another "
            "--output_dir, or move that run away to redo it with these flags."
        )


def _config(output_dir, threshold=1.0, mode="decoupled", baseline=None, scale=0.0, alpha=None,
            baseline_epochs=None):
    return {
        "output_dir": output_dir, "dataset": "cifar10", "data_dir": None, "model": "mobilenet_v1",
        "alpha": FLAGS.alpha if alpha is None else alpha, "depth": 20, "image_size": 32, "batch_size": 128,
        "num_classes": 10, "train_take": FLAGS.train_take, "test_take": FLAGS.test_take, "baseline": baseline,
        "baseline_epochs": FLAGS.baseline_epochs if baseline_epochs is None else baseline_epochs,
        "baseline_lr": 0.1, "baseline_milestones": ["0.5", "0.75"],
        "epochs": FLAGS.epochs, "lr": FLAGS.lr, "milestones": ["0.75"], "gate_lr": FLAGS.gate_lr,
        "gate_loss_weight": 1.0, "joint_gradient_scale": scale,
        "pooling": "avg", "use_softmax": FLAGS.use_softmax, "predictor_rank": FLAGS.predictor_rank,
        "weight_decay": 5e-4, "threshold": threshold, "mode": mode,
        "target": FLAGS.target, "cooldown": FLAGS.cooldown, "warmup_steps": FLAGS.warmup_steps,
        "threshold_ramp_epochs": FLAGS.threshold_ramp_epochs, "distillation_weight": FLAGS.distillation_weight,
        "distillation_temperature": FLAGS.distillation_temperature, "ungated_layers": FLAGS.ungated_layers,
        "estimate_images": 2048, "seed": FLAGS.seed, "verbose": FLAGS.verbose,
    }


def load_reused_baseline(path):
    """The given baseline at `path`, checked against --alpha and --baseline_epochs.

    Both are recorded in every row, so a reused baseline must have been trained
    with them. The epochs are checked where a --baseline_dir holds the history of
    its training; a --baseline_model has none, so its epochs are taken as given.

    Raises:
        ValueError: `path` is missing, not a dense model, or the baseline was
            trained with other settings.
    """
    import keras

    import ftwt_keras as fk

    if not os.path.exists(path):
        if FLAGS.baseline_model:
            raise ValueError(f"--baseline_model={path} does not exist. Pass the path of a saved dense .keras model.")
        raise ValueError(
            f"--baseline_dir={FLAGS.baseline_dir} holds no baseline.keras. Pass the --output_dir of a "
            "protocol run whose stage 1 finished, or drop --baseline_dir to train a baseline here."
        )
    history = os.path.join(os.path.dirname(path), "baseline_history.csv")
    if FLAGS.baseline_dir and os.path.exists(history):
        with open(history) as file:
            epochs = len({line.split(",")[0] for line in file} - {"epoch"})  # a resumed run may repeat one
        if epochs != FLAGS.baseline_epochs:
            raise ValueError(
                f"The baseline {path} was trained for {epochs} epoch{'' if epochs == 1 else 's'}; "
                f"pass --baseline_epochs={epochs}."
            )
    expected = common.build_model(_config(FLAGS.output_dir)).count_params()
    baseline = keras.saving.load_model(path)
    if isinstance(baseline, fk.FTWTModel):
        raise ValueError(
            f"The baseline {path} is a gated FTWT model. Save it dense first: "
            "`ftwt_keras.ungate(model, [layer.name for layer in model.gated_layers]).save(...)`."
        )
    found = baseline.count_params()
    if found != expected:
        raise ValueError(
            f"The baseline {path} has {found:,} weights, but MobileNetV1 x{FLAGS.alpha:g} has {expected:,}: "
            "pass the --alpha it was trained with."
        )
    return baseline


def shifted_images(images, kind, noise_std=25.0, blur_sigma=1.0):
    """The test images under a distribution shift: `"noise"` or `"blur"` (0..255 floats).

    Noise: i.i.d. Gaussian pixel noise of std `noise_std`, clipped to 0..255
    (seeded, so every run sees the same noise). Blur: a separable Gaussian of
    `blur_sigma` pixels with reflected borders.
    """
    import numpy as np
    import tensorflow as tf

    if kind == "noise":
        rng = np.random.default_rng(0)
        return np.clip(images + rng.normal(0.0, noise_std, images.shape), 0, 255).astype("float32")
    radius = max(1, int(round(3 * blur_sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blur_sigma) ** 2)
    taps /= taps.sum()
    kernel = np.outer(taps, taps)[:, :, None, None] * np.eye(3)[None, None]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.nn.conv2d(padded, kernel.astype("float32"), 1, "VALID").numpy()


def analyze(model, load_baseline, run_dir):
    """Per-run measurements beyond the recipe's results.json, saved to ANALYSIS_FILE.

    `load_baseline()` returns the dense baseline (called only if it is needed).

    An existing file is completed, not redone: only the measurements it lacks
    are made, so runs analyzed before a measurement existed gain it with their
    .tflite timings kept.
    """
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data

    path = os.path.join(run_dir, ANALYSIS_FILE)
    out = dict(np.load(path)) if os.path.exists(path) else {}
    missing = _missing_measurements(out)
    images, labels = data.cifar_arrays("cifar10", "test", take=FLAGS.test_take)
    dense = fk.flops.count_macs(model)
    out["dense_macs"] = np.array(dense)
    if "firing" in missing:
        rates = fk.flops.firing_rates(model, images, batch_size=500)
        out["names"] = np.array(list(rates))
        out["layer_keep"] = np.array([r.mean() for r in rates.values()])
        out["filter_widths"] = np.array([len(r) for r in rates.values()])
        out["filter_firing"] = np.concatenate(list(rates.values()))
        # The network with the filters that fired on no test image removed, every other one computed for
        # every image and no predictor run: what a static pruning would keep of FTWT's savings.
        never_on = {name: (r > 0).astype("float32")[None] for name, r in rates.items()}
        with_predictors = float(fk.flops.executed_macs(fk.flops.mac_terms(model), never_on)[0])
        predictors = fk.flops.count_macs(model, include_predictors=True) - dense
        out["static_macs"] = np.array(with_predictors - predictors)
    if "accuracy" in missing:
        for kind in ("clean", "noise", "blur"):
            shifted = images if kind == "clean" else shifted_images(images, kind, FLAGS.noise_std, FLAGS.blur_sigma)
            out[f"macs_{kind}"] = fk.flops.dynamic_macs(model, shifted, batch_size=250)
            logits = model.predict(shifted, batch_size=250, verbose=0)
            out[f"accuracy_{kind}"] = np.array(np.mean(np.argmax(logits, -1) == labels))
            base_logits = load_baseline().predict(shifted, batch_size=250, verbose=0)
            out[f"baseline_accuracy_{kind}"] = np.array(np.mean(np.argmax(base_logits, -1) == labels))
            if kind == "clean":  # per image: right or wrong (both models), and the dense model's confidence
                out["correct_clean"] = np.argmax(logits, -1) == labels
                out["baseline_correct_clean"] = np.argmax(base_logits, -1) == labels
                out["baseline_confidence_clean"] = _softmax_max(base_logits)
    if missing & {"timing", "agreement"}:
        dynamic = dynamic_flatbuffer(model)  # converted once for both
        if "timing" in missing:
            out.update(time_tflite(model, dynamic, images[: FLAGS.tflite_images]))
        if "agreement" in missing:  # on every test image, not only the timed ones
            out.update(tflite_agreement(model, dynamic, images))
    np.savez(path, **out)
    return out


def _missing_measurements(analysis_keys):
    """The parts of `analyze` not yet made, each known by a key it writes (the .tflite ones only if timed)."""
    marks = {"firing": "filter_firing", "accuracy": "baseline_correct_clean"}
    if FLAGS.tflite_images:
        marks.update(timing="tflite_dense_ms", agreement="tflite_logit_error")
    return {part for part, key in marks.items() if key not in analysis_keys}


def analysis_is_complete(run_dir):
    """Whether `analyze` has made every measurement for this run (see its docstring)."""
    import numpy as np

    path = os.path.join(run_dir, ANALYSIS_FILE)
    if not os.path.exists(path):
        return False
    with np.load(path) as analysis:
        return not _missing_measurements(analysis.files)


def _softmax_max(logits):
    import numpy as np

    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return (shifted.max(-1) / shifted.sum(-1)).astype("float32")


def cost_by_difficulty(macs, dense_macs, baseline_correct, baseline_confidence):
    """Does the gate spend more on hard images? Hardness is judged by the dense baseline.

    Returns the mean FLOPs reduction on the test images the baseline classifies
    correctly and on those it gets wrong (None for an empty group), and the
    Spearman rank correlation between an image's executed MACs and the
    baseline's confidence in it (its top softmax probability): negative when
    less confident images cost more.
    """
    import numpy as np

    macs = np.asarray(macs, "float64")
    baseline_correct = np.asarray(baseline_correct, bool)

    def reduction(group):
        return 1.0 - float(np.mean(macs[group])) / dense_macs if np.any(group) else None

    def ranks(values):  # average ranks, so that ties (many images share a MACs count) count once
        _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return (first + (counts - 1) / 2.0)[inverse]

    a, b = ranks(macs), ranks(np.asarray(baseline_confidence, "float64"))
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return {
        "flops_reduction_baseline_right": reduction(baseline_correct),
        "flops_reduction_baseline_wrong": reduction(~baseline_correct),
        "macs_confidence_correlation": float(np.sum(a * b)) / norm if norm > 0 else None,
    }


def _decided_by_image(firing):
    """Filters on for 10-90% of the images: the image decides, not a rare flip."""
    return (firing >= 0.1) & (firing <= 0.9)


def how_dynamic(analysis):
    """How much of a run's pruning depends on the image, from its analysis (None for older analyses).

    Fractions of all gated filters that fired on no test image, on every one,
    on some only, and on 10-90% of them (decided by the image, not just
    rarely flipped); and `static_flops_reduction`, what removing the filters
    that never fired saves with every other filter computed for every image
    and no predictor run: the part of the reduction a static pruning of this
    network would give (`flops_reduction` charges the predictors).
    """
    import numpy as np

    if "filter_firing" not in analysis:
        return dict.fromkeys(("filters_never_on", "filters_always_on", "filters_varying", "filters_on_10_to_90_percent",
                              "static_flops_reduction"))
    firing = np.asarray(analysis["filter_firing"])
    never, always = float(np.mean(firing == 0)), float(np.mean(firing == 1))
    return {
        "filters_never_on": never,
        "filters_always_on": always,
        "filters_varying": 1.0 - never - always,
        "filters_on_10_to_90_percent": float(np.mean(_decided_by_image(firing))),
        "static_flops_reduction": 1.0 - float(analysis["static_macs"]) / float(analysis["dense_macs"]),
    }


def dynamic_flatbuffer(model):
    """The FTWT model's .tflite as the rows time and check it: policy `auto`, calibrated on 64 training images."""
    from ftwt_keras import data
    from ftwt_keras.export import tflite

    calibration = data.cifar_arrays("cifar10", "train[:64]")[0]  # auto's static per-layer choice
    return tflite.convert(model, policy="auto", calibration_images=calibration)


def tflite_agreement(model, flatbuffer, images):
    """`export.agreement` under the analysis's keys: `tflite_logit_error`, `tflite_same_top1`, `gate_margin`."""
    from ftwt_keras import export

    checked = export.agreement(model, flatbuffer, images)
    return {"tflite_logit_error": checked["logit_error"], "tflite_same_top1": checked["same_top1"],
            "gate_margin": checked["gate_margin"]}


def export_agreement(analysis, tolerance=1e-3):
    """The .tflite against Keras on the test set, from a run's analysis (None for older analyses).

    `tflite_within_tolerance`: fraction of the images whose logits differ by at
    most `tolerance` of the logit range (the edge issue's bound);
    `tflite_top1_agreement`; `tflite_max_logit_error`; and
    `gate_margin_beyond_tolerance`: the largest smallest-|gate logit| among
    the images beyond it (None if there are none): tiny when only gates at the
    edge of flipping separate the two.
    """
    import numpy as np

    keys = ("tflite_within_tolerance", "tflite_top1_agreement", "tflite_max_logit_error",
            "gate_margin_beyond_tolerance")
    if "tflite_logit_error" not in analysis:
        return dict.fromkeys(keys)
    error = np.asarray(analysis["tflite_logit_error"])
    beyond = error > tolerance
    return dict(zip(keys, (
        float(np.mean(~beyond)),
        float(np.mean(analysis["tflite_same_top1"])),
        float(error.max()),
        float(np.max(analysis["gate_margin"][beyond])) if beyond.any() else None,
    )))


def time_tflite(model, dynamic, images):
    """The dense .tflite of `model` vs its dynamic one (`dynamic`), 1 thread, alternating image by image."""
    import numpy as np

    from ftwt_keras.export import tflite

    flatbuffers = {"dense": tflite.convert(model, dynamic=False), "dynamic": dynamic}
    logging.info("Timing dense and dynamic .tflite on %d test images", len(images))
    median_ms = _median_ms_side_by_side(flatbuffers, images)
    return {"tflite_dense_ms": np.array(median_ms["dense"]), "tflite_dynamic_ms": np.array(median_ms["dynamic"]),
            "tflite_cpu": np.array(tflite.cpu_name())}


def _median_ms_side_by_side(flatbuffers, images):
    """{name: median ms per invoke} of `.tflite` flatbuffers timed alternating image by image, 1 thread."""
    import numpy as np

    from ftwt_keras.export import tflite

    times = tflite.time_side_by_side(flatbuffers, images, num_threads=1, warmup=20)
    return {name: 1e3 * float(np.median(times[name])) for name in flatbuffers}


def analyze_static(model, baseline, run_dir, config, train_seconds):
    """Top-1, MACs and .tflite time of a static-width control beside the baseline's, saved to STATIC_FILE."""
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data

    images, labels = data.cifar_arrays("cifar10", "test", take=FLAGS.test_take)

    def accuracy(network):
        return float(np.mean(np.argmax(network.predict(images, batch_size=250, verbose=0), -1) == labels))

    out = {
        "config": config, "alpha": config["alpha"], "epochs": config["baseline_epochs"],
        "accuracy": accuracy(model), "baseline_accuracy": accuracy(baseline),
        "macs": fk.flops.count_macs(model), "baseline_macs": fk.flops.count_macs(baseline),
        "train_seconds": train_seconds, "tflite_baseline_ms": None, "tflite_ms": None,
    }
    if FLAGS.tflite_images:
        from ftwt_keras.export import tflite

        # convert() exports FTWT models; dynamic=False gives their plain dense network, predictors left out.
        flatbuffers = {name: tflite.convert(fk.gate(network), dynamic=False)
                       for name, network in (("baseline", baseline), ("static", model))}
        logging.info("Timing the baseline's and the x%g control's .tflite on %d test images", config["alpha"],
                     FLAGS.tflite_images)
        median_ms = _median_ms_side_by_side(flatbuffers, images[: FLAGS.tflite_images])
        out["tflite_baseline_ms"], out["tflite_ms"] = median_ms["baseline"], median_ms["static"]
        out["tflite_cpu"] = tflite.cpu_name()
    with open(os.path.join(run_dir, STATIC_FILE), "w") as file:
        json.dump(out, file, indent=1)
    return out


def train_all():
    import keras

    root = FLAGS.output_dir
    common.check_ungated_layers(_config(root))
    os.makedirs(root, exist_ok=True)
    keras.utils.set_random_seed(FLAGS.seed)
    baseline_path = FLAGS.baseline_model or os.path.join(_baseline_root(), "baseline.keras")
    loaded = []  # the dense model the analyses compare with, loaded once, when first needed

    def load_baseline():
        if not loaded:
            loaded.append(keras.saving.load_model(baseline_path))
        return loaded[0]

    if FLAGS.baseline_dir or FLAGS.baseline_model:
        loaded.append(load_reused_baseline(baseline_path))
        logging.info("Stage 1: reusing the dense baseline %s", baseline_path)
    else:
        baseline_config = _config(root)
        train, test, _ = common._datasets(baseline_config)
        logging.info("Stage 1: dense MobileNetV1 x%g baseline, %d epochs", FLAGS.alpha, FLAGS.baseline_epochs)
        common.train_baseline(baseline_config, train, test)  # its time: baseline_seconds.json there
    for threshold, mode, scale in _runs():
        run_dir = os.path.join(root, run_name(threshold, mode, scale, FLAGS.target))
        config = _config(run_dir, threshold, mode, baseline=baseline_path, scale=scale)
        if os.path.exists(os.path.join(run_dir, "results.json")):
            check_finished_run(run_dir, config)
            logging.info("FTWT at r=%g, %s mode: already done (%s)", threshold, mode, run_dir)
        else:
            logging.info("FTWT at r=%g, %s mode%s, %s targets", threshold, mode,
                         f", joint gradient scale {scale:g}" if mode == "joint" else "", FLAGS.target)
            common.run(config)
        if analysis_is_complete(run_dir):
            continue
        analyze(keras.saving.load_model(os.path.join(run_dir, "model.keras")), load_baseline, run_dir)
    for alpha in _static_alphas():
        run_dir = os.path.join(root, static_run_name(alpha))
        # The same epochs in all as every FTWT model (baseline + FTWT), from scratch, one LR schedule.
        config = _config(run_dir, alpha=alpha, baseline_epochs=FLAGS.baseline_epochs + FLAGS.epochs)
        if os.path.exists(os.path.join(run_dir, STATIC_FILE)):
            check_finished_run(run_dir, config, STATIC_FILE)
            logging.info("Static x%g control: already done (%s)", alpha, run_dir)
            continue
        logging.info("Static control: dense MobileNetV1 x%g from scratch, %d epochs", alpha,
                     config["baseline_epochs"])
        keras.utils.set_random_seed(FLAGS.seed)  # independent of how many runs came before it
        train, test, _ = common._datasets(config)
        model, seconds = common.train_baseline(config, train, test)
        analyze_static(model, load_baseline(), run_dir, config, seconds)


def collect():
    """Rows for every finished run."""
    import numpy as np

    rows = []
    for threshold, mode, scale in _runs():
        run_dir = os.path.join(FLAGS.output_dir, run_name(threshold, mode, scale, FLAGS.target))
        results_path, analysis_path = (os.path.join(run_dir, f) for f in ("results.json", ANALYSIS_FILE))
        if not (os.path.exists(results_path) and os.path.exists(analysis_path)):
            continue
        with open(results_path) as file:
            results = json.load(file)
        analysis = dict(np.load(analysis_path))
        dense = float(analysis["dense_macs"])
        row = {
            "threshold": threshold,
            "mode": mode,
            "joint_gradient_scale": scale if mode == "joint" else None,
            "baseline_accuracy": results["baseline_accuracy"],
            "accuracy": results["accuracy"],
            "flops_reduction": results["flops_reduction"],
            "estimated_flops_reduction": results["estimated_flops_reduction"],
            # The final targets' own reduction (None for runs made before it was recorded).
            "target_flops_reduction": results.get("target_flops_reduction"),
            "gate_accuracy": results["gate_accuracy"],
            "tflite_speedup": None,
            "tflite_dense_ms": None,
            "tflite_dynamic_ms": None,
            "tflite_cpu": None,
            "ideal_speedup": dense / float(np.mean(analysis["macs_clean"])),
            "flops_reduction_noise": 1.0 - float(np.mean(analysis["macs_noise"])) / dense,
            "flops_reduction_blur": 1.0 - float(np.mean(analysis["macs_blur"])) / dense,
            "accuracy_noise": float(analysis["accuracy_noise"]),
            "accuracy_blur": float(analysis["accuracy_blur"]),
            "baseline_accuracy_noise": float(analysis["baseline_accuracy_noise"]),
            "baseline_accuracy_blur": float(analysis["baseline_accuracy_blur"]),
            "ftwt_train_seconds": results["ftwt_train_seconds"],
            "baseline_train_seconds": _baseline_seconds(),
            "dense_macs": int(dense),
            "test_images": results["test_images"],
            "alpha": FLAGS.alpha,
            "baseline_epochs": results["config"]["baseline_epochs"],
            "epochs": results["config"]["epochs"],
            "lr": results["config"]["lr"],
            "predictor_rank": results["config"].get("predictor_rank"),
            "cooldown": results["config"]["cooldown"],
            "target": results["config"]["target"],
            # 0 for runs made before these options existed (none had them).
            "distillation_weight": results["config"].get("distillation_weight", 0.0),
            "threshold_ramp_epochs": results["config"].get("threshold_ramp_epochs", 0),
            "ungated_layers": results["config"].get("ungated_layers", []),
            "seed": results["config"]["seed"],
        }
        row.update(dict.fromkeys(("flops_reduction_baseline_right", "flops_reduction_baseline_wrong",
                                  "macs_confidence_correlation")))  # None for runs analyzed before these
        row.update(how_dynamic(analysis))
        row.update(export_agreement(analysis))
        if "baseline_correct_clean" in analysis:
            row.update(cost_by_difficulty(analysis["macs_clean"], dense, analysis["baseline_correct_clean"],
                                          analysis["baseline_confidence_clean"]))
        if "tflite_dense_ms" in analysis:
            row["tflite_dense_ms"] = float(analysis["tflite_dense_ms"])
            row["tflite_dynamic_ms"] = float(analysis["tflite_dynamic_ms"])
            row["tflite_speedup"] = row["tflite_dense_ms"] / row["tflite_dynamic_ms"]
            if "tflite_cpu" in analysis:  # the CPU they were timed on (not in analyses timed before 2026-12-06)
                row["tflite_cpu"] = str(analysis["tflite_cpu"])
        rows.append((row, analysis))
    return rows


def collect_static():
    """Rows for every finished static-width control."""
    rows = []
    for alpha in _static_alphas():
        path = os.path.join(FLAGS.output_dir, static_run_name(alpha), STATIC_FILE)
        if not os.path.exists(path):
            continue
        with open(path) as file:
            result = json.load(file)
        timed = result["tflite_ms"] is not None
        rows.append({
            "alpha": result["alpha"],
            "epochs": result["epochs"],
            "baseline_accuracy": result["baseline_accuracy"],
            "accuracy": result["accuracy"],
            "flops_reduction": 1.0 - result["macs"] / result["baseline_macs"],
            "macs": result["macs"],
            "baseline_macs": result["baseline_macs"],
            "tflite_baseline_ms": result["tflite_baseline_ms"],
            "tflite_ms": result["tflite_ms"],
            "tflite_speedup": result["tflite_baseline_ms"] / result["tflite_ms"] if timed else None,
            "tflite_cpu": result.get("tflite_cpu"),
            "train_seconds": result["train_seconds"],
            "seed": result["config"]["seed"],
        })
    return sorted(rows, key=lambda row: -row["alpha"])  # widest first, as the FTWT rows go from r = 1


def _baseline_root():
    """The folder holding the dense baseline: --baseline_dir, or --output_dir."""
    return FLAGS.baseline_dir or FLAGS.output_dir


def _baseline_seconds():
    if FLAGS.baseline_model:
        return None  # trained elsewhere, for an unknown time
    return common.stored_seconds(_baseline_root(), "baseline")


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}"


def _percent(value):
    return "n/a" if value is None else _pct(value) + "%"


def _values(rows, key, fmt="{:g}"):
    """The distinct values of `key` over the runs, "a/b" where they differ."""
    return "/".join(fmt.format(value) for value in sorted({row[key] for row, _ in rows}))


def markdown_caption(rows):
    """One line above the table with the settings its rows share (several values: "a/b")."""
    return (f"MobileNetV1 x{_values(rows, 'alpha')}, CIFAR-10 ({_values(rows, 'test_images', '{:,}')} test images), "
            f"seed {_values(rows, 'seed')}: dense baseline {_values(rows, 'baseline_epochs')} epochs; "
            f"FTWT {_values(rows, 'epochs')} epochs at backbone LR {_values(rows, 'lr')}, gate loss on for the "
            f"first {_values(rows, 'cooldown', '{:.0%}')} of them" + _fine_tuning_aids(rows) + ".\n\n")


def markdown_table(rows):
    lines = [
        "| r | mode | baseline top-1 | FTWT top-1 | drop (pt) | FLOPs red. | estimate | final targets | gate acc. "
        "| FLOPs red. noisy / blurred | FLOPs red. where the baseline is right / wrong (rank corr. with its "
        "confidence) | filters off / on for every test image (their static reduction) "
        "| .tflite = Keras: logits within 1e-3 / same top-1 | .tflite dense / dynamic ms | speed-up (ideal) "
        "| FTWT train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, _ in rows:
        speed = "n/a" if row["tflite_speedup"] is None else (
            f"{row['tflite_dense_ms']:.2f} / {row['tflite_dynamic_ms']:.2f}")
        speedup = "n/a" if row["tflite_speedup"] is None else f"{row['tflite_speedup']:.2f}x"
        correlation = row["macs_confidence_correlation"]
        difficulty = (f"{_percent(row['flops_reduction_baseline_right'])} / "
                      f"{_percent(row['flops_reduction_baseline_wrong'])}"
                      + ("" if correlation is None else f" ({correlation:+.2f})"))
        fixed = "n/a" if row["static_flops_reduction"] is None else (
            f"{_percent(row['filters_never_on'])} / {_percent(row['filters_always_on'])} "
            f"({_percent(row['static_flops_reduction'])})")
        agreement = "n/a" if row["tflite_within_tolerance"] is None else (
            f"{100 * row['tflite_within_tolerance']:.2f}% / {100 * row['tflite_top1_agreement']:.2f}%")
        lines.append(
            f"| {row['threshold']:g} | {_mode(row)} "
            f"| {_pct(row['baseline_accuracy'])} | {_pct(row['accuracy'])} "
            f"| {100 * (row['baseline_accuracy'] - row['accuracy']):+.1f} | {_percent(row['flops_reduction'])} "
            f"| {_percent(row['estimated_flops_reduction'])} | {_percent(row['target_flops_reduction'])} "
            f"| {_pct(row['gate_accuracy'])} "
            f"| {_percent(row['flops_reduction_noise'])} / {_percent(row['flops_reduction_blur'])} "
            f"| {difficulty} | {fixed} | {agreement} | {speed} "
            f"| {speedup} ({row['ideal_speedup']:.2f}x) | {row['ftwt_train_seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def static_markdown_table(static_rows):
    lines = [
        "| control | epochs | baseline top-1 | top-1 | drop (pt) | FLOPs red. | .tflite baseline / control ms "
        "| speed-up | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in static_rows:
        speed, speedup = ("n/a", "n/a") if row["tflite_speedup"] is None else (
            f"{row['tflite_baseline_ms']:.2f} / {row['tflite_ms']:.2f}", f"{row['tflite_speedup']:.2f}x")
        minutes = "n/a" if row["train_seconds"] is None else f"{row['train_seconds'] / 60:.1f}"
        lines.append(
            f"| dense x{row['alpha']:g} from scratch | {row['epochs']} | {_pct(row['baseline_accuracy'])} "
            f"| {_pct(row['accuracy'])} | {100 * (row['baseline_accuracy'] - row['accuracy']):+.1f} "
            f"| {_percent(row['flops_reduction'])} | {speed} | {speedup} | {minutes} |"
        )
    return "\n".join(lines) + "\n"


def plots(rows, prefix, static_rows=()):
    """Writes the three PNG plots as `<prefix>_<plot>.png`; returns their paths."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    base = rows[0][0]["baseline_accuracy"]
    ax.scatter([0], [100 * base], marker="*", s=160, color="k", label="dense baseline", zorder=3)
    for name in sorted({_mode(r) for r, _ in rows}):
        group = [r for r, _ in rows if _mode(r) == name]
        decoupled = group[0]["mode"] == "decoupled"
        name = f"FTWT {name}"
        pts = sorted((r["flops_reduction"], r["accuracy"], r["threshold"]) for r in group)
        ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker="o" if decoupled else "s", label=name)
        # Joint runs land next to the decoupled run of their r: label them below the point, not on its label.
        offset = (4, 4) if decoupled else (4, -11)
        for red, acc, r in pts:
            ax.annotate(f"r={r:g}", (100 * red, 100 * acc), textcoords="offset points", xytext=offset, fontsize=8)
    if static_rows:
        pts = sorted((r["flops_reduction"], r["accuracy"], r["alpha"]) for r in static_rows)
        ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker="^", ls="--", color="gray",
                label=f"dense MobileNetV1 of other widths, {static_rows[0]['epochs']} epochs from scratch")
        for red, acc, alpha in pts:
            ax.annotate(f"x{alpha:g}", (100 * red, 100 * acc), textcoords="offset points", xytext=(4, 8),
                        fontsize=8, color="gray")
    estimates = sorted({(r["threshold"], r["estimated_flops_reduction"]) for r, _ in rows})
    for threshold, estimate in estimates:
        ax.axvline(100 * estimate, color="gray", lw=0.8, ls=":")
        ax.annotate(f"estimate r={threshold:g}", (100 * estimate, 100 * base), rotation=90, fontsize=7, color="gray",
                    textcoords="offset points", xytext=(-9, -60))
    ax.set_xlabel("FLOPs reduction on the test set (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"MobileNetV1 x{FLAGS.alpha:g}, CIFAR-10, CPU-scale schedule, FTWT LR "
                 + _values(rows, "lr") + _fine_tuning_aids(rows, separator="\n"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, f"{prefix}_accuracy_vs_flops.png"))

    firing = [(index, analysis) for index, (_, analysis) in enumerate(rows) if "filter_firing" in analysis]
    fig, axes = plt.subplots(2 if firing else 1, 1, figsize=(7, 7.5 if firing else 4.2), sharex=True, squeeze=False)
    ax = axes[0, 0]
    for index, (row, analysis) in enumerate(rows):
        ax.plot(100 * analysis["layer_keep"], marker=".", color=f"C{index}", label=_label(row))
    ax.set_ylabel("filters kept, mean over test images (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if firing:  # which filters the image decides, layer by layer
        ax = axes[1, 0]
        for index, analysis in firing:  # each run in its colour of the upper panel
            per_layer = np.split(analysis["filter_firing"], np.cumsum(analysis["filter_widths"])[:-1])
            ax.plot([100 * np.mean(_decided_by_image(r)) for r in per_layer], marker=".", color=f"C{index}")
        ax.set_ylabel("filters on for 10-90%\nof the test images (%)")
        ax.grid(alpha=0.3)
    dense_layers = sorted({name for row, _ in rows for name in row["ungated_layers"]})
    axes[-1, 0].set_xlabel("gated layer (input to output; MobileNetV1: stem, then depthwise / pointwise pairs)"
                           + (f"\nleft dense, so not counted: {', '.join(dense_layers)}" if dense_layers else ""))
    paths.append(_save(fig, f"{prefix}_layer_keep.png"))

    middle_row, middle = _middle_run(rows)  # the shift and difficulty panels show one run
    by_difficulty = "baseline_correct_clean" in middle  # runs analyzed before 2026-12-01 lack it
    fig, axes = plt.subplots(1, 3 if by_difficulty else 2, figsize=(16 if by_difficulty else 11, 4))
    for row, analysis in rows:
        dense = float(analysis["dense_macs"])
        axes[0].hist(100 * analysis["macs_clean"] / dense, bins=50, histtype="step",
                     label=_label(row))
    axes[0].set_xlabel("per-image MACs executed (% of dense)")
    axes[0].set_ylabel("test images")
    axes[0].set_title("Per-image cost on CIFAR-10 test")
    axes[0].legend(fontsize=8)
    dense = float(middle["dense_macs"])
    for kind, label in (("clean", "clean"), ("noise", f"Gaussian noise, std {FLAGS.noise_std:g}"),
                        ("blur", f"Gaussian blur, sigma {FLAGS.blur_sigma:g}")):
        axes[1].hist(100 * middle[f"macs_{kind}"] / dense, bins=50, histtype="step", label=label)
    axes[1].set_xlabel("per-image MACs executed (% of dense)")
    axes[1].set_title(f"Shifted inputs\n{_label(middle_row)}")  # two lines: long labels overflow
    axes[1].legend(fontsize=8)
    if by_difficulty:
        right = middle["baseline_correct_clean"].astype(bool)
        cost = 100 * middle["macs_clean"] / dense
        bins = np.histogram_bin_edges(cost, bins=50)  # shared, so that the two densities compare bin by bin
        for group, label in ((right, "dense baseline right"), (~right, "dense baseline wrong")):
            axes[2].hist(cost[group], bins=bins, histtype="step", density=True,
                         label=f"{label} ({int(group.sum())} images)")
        axes[2].set_xlabel("per-image MACs executed (% of dense)")
        axes[2].set_ylabel("density")
        axes[2].set_title(f"Easy vs hard test images\n{_label(middle_row)}")
        axes[2].legend(fontsize=8)
    paths.append(_save(fig, f"{prefix}_per_image_flops.png"))
    plt.close("all")
    return paths


def _mode(row):
    """"decoupled", "joint", or "joint (gradient x0.01)" for a scaled joint run; ", uniform targets" added
    where the targets are not the paper's heatmap mass."""
    scale = row["joint_gradient_scale"]
    mode = row["mode"] if scale in (None, 1.0) else f"{row['mode']} (gradient x{scale:g})"
    return mode if row["target"] == "mass" else f"{mode}, {row['target']} targets"


def _fine_tuning_aids(rows, separator=", "):
    """The note of the options that are not the paper's, after `separator` (empty without them)."""
    aids = [f"distillation {w:g}" for w in sorted({r["distillation_weight"] for r, _ in rows} - {0.0})]
    aids += [f"r ramped over {n} epochs" for n in sorted({r["threshold_ramp_epochs"] for r, _ in rows} - {0})]
    aids += [f"{','.join(names)} dense" for names in sorted({tuple(r["ungated_layers"]) for r, _ in rows} - {()})]
    return f"{separator}with {' and '.join(aids)} (not in the paper)" if aids else ""


def _label(row):
    return f"r={row['threshold']:g} {_mode(row)}"


def _middle_run(rows):
    decoupled = [r for r in rows if r[0]["mode"] == "decoupled"] or rows
    return decoupled[len(decoupled) // 2]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def report():
    rows = collect()
    if not rows:
        print("No finished runs yet.")
        return
    static_rows = collect_static()
    folder = os.path.dirname(FLAGS.results) or "."
    os.makedirs(folder, exist_ok=True)
    with open(FLAGS.results, "w") as file:
        json.dump({"rows": [row for row, _ in rows], "static_rows": static_rows}, file, indent=1)
    table = markdown_caption(rows) + markdown_table(rows)
    if static_rows:
        table += "\n" + static_markdown_table(static_rows)
    stem = os.path.splitext(FLAGS.results)[0]  # the table and plots are named after the results file
    with open(stem + ".md", "w") as file:
        file.write(table)
    print(table)
    try:
        paths = plots(rows, stem, static_rows)
        print("Plots:", ", ".join(paths))
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e .[test]).")
    print(f"Wrote {FLAGS.results}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.baseline_dir and FLAGS.baseline_model:
        raise app.UsageError("Pass --baseline_dir or --baseline_model, not both: they name the same baseline.")
    _static_alphas()  # a bad width fails here, not after the FTWT runs have trained
    if not FLAGS.analyze_only:
        start = time.time()
        train_all()
        logging.info("Protocol done in %.1f min", (time.time() - start) / 60)
    report()


if __name__ == "__main__":
    app.run(main)
