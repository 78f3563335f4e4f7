"""The two-stage FTWT recipe shared by every `python -m ftwt_keras.recipes.*` app.

Stage 1 trains (or loads) the dense baseline; stage 2 gates it and trains
FTWT; with `--cap_ratio`, stage 3 caps the trained gates (`ftwt_keras.cap_gates`,
not in the paper) and fine-tunes with the caps in place; with
`--freeze_agreement`, stage 4 freezes the gates that (nearly) always take one
decision (`ftwt_keras.freeze_gates`, not in the paper: the edge export prunes
them statically) in the final model and fine-tunes with them frozen. Every stage
checkpoints every epoch (`keras.callbacks.BackupAndRestore`), so re-running the
same command after a kill resumes where it stopped; a finished stage is
skipped. Outputs in `--output_dir`: `baseline.keras`, `model.keras`
(`model_capped.keras` with `--cap_ratio`, `model_frozen.keras` with
`--freeze_agreement`), `results.json`, `paying_plan.json` with `--gate_only_paying` (the
convs it gates, reused by a resumed run), TensorBoard logs under `logs/`, and each
stage's training time summed over the runs that resumed it
(`baseline_seconds.json`, `ftwt_seconds.json`, `capped_seconds.json`, `frozen_seconds.json`).
"""

import json
import os
import time

from absl import flags, logging

FLAGS = flags.FLAGS


def _export_runs_here():
    from ftwt_keras.export.checks import keras_runs_on_tensorflow

    return keras_runs_on_tensorflow()


def define_flags(**defaults):
    """Defines the recipe flags; `defaults` override per-recipe default values."""

    def default(name, value):
        return defaults.get(name, value)

    flags.DEFINE_string("output_dir", default("output_dir", "runs/recipe"), "Where checkpoints, logs and results go.")
    flags.DEFINE_string("dataset", default("dataset", "cifar10"), "cifar10, cifar100, imagenet2012 or an image-folder path.")
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_string("model", default("model", "mobilenet_v1"), "Zoo model: mobilenet_v1, resnet_cifar, vgg16_bn, resnet18, resnet34.")
    flags.DEFINE_float("alpha", default("alpha", 1.0), "MobileNetV1 width multiplier.")
    flags.DEFINE_integer("depth", default("depth", 56), "CIFAR ResNet depth.")
    flags.DEFINE_integer("image_size", default("image_size", 32),
                         "Input resolution (CIFAR images are resized to it, after their 32x32 augmentation).")
    flags.DEFINE_integer("batch_size", default("batch_size", 128), "Batch size.")
    flags.DEFINE_integer("train_take", None, "Use only the first N training images (quick runs; tfds datasets only).")
    flags.DEFINE_integer("test_take", None, "Use only the first N test images (quick runs; tfds datasets only).")
    flags.DEFINE_string("baseline", None, "Path of a trained dense .keras model: skips stage 1.")
    flags.DEFINE_integer("baseline_epochs", default("baseline_epochs", 200), "Dense baseline epochs.")
    flags.DEFINE_float("baseline_lr", default("baseline_lr", 0.1), "Dense baseline learning rate.")
    flags.DEFINE_list("baseline_milestones", default("baseline_milestones", ["0.5", "0.75"]),
                      "Baseline LR x0.1 points, as fractions of the epochs.")
    flags.DEFINE_integer("epochs", default("epochs", 200), "FTWT epochs.")
    flags.DEFINE_float("lr", default("lr", 0.01), "FTWT backbone learning rate.")
    flags.DEFINE_list("milestones", default("milestones", ["0.405", "0.61", "0.755"]),
                      "FTWT LR x0.1 points as fractions of the epochs (paper: 81/122/151 of 200).")
    flags.DEFINE_float("gate_lr", default("gate_lr", 0.1), "Mask predictor learning rate.")
    flags.DEFINE_float("weight_decay", default("weight_decay", 5e-4), "Backbone weight decay, PyTorch (coupled L2) convention.")
    flags.DEFINE_float("threshold", default("threshold", 1.0), "Heatmap mass r kept by the gate targets.")
    flags.DEFINE_enum("mode", default("mode", "decoupled"), ["decoupled", "joint"], "FTWT mode.")
    flags.DEFINE_enum("target", default("target", "mass"), ["mass", "uniform"], "Gate target rule.")
    flags.DEFINE_float("gate_loss_weight", default("gate_loss_weight", 1.0),
                       "Gate-loss weight before the cooldown (joint mode: also scales the BCE reaching the backbone).")
    flags.DEFINE_float("joint_gradient_scale", default("joint_gradient_scale", 1.0),
                       "Joint mode: factor on the gate-loss gradient reaching the backbone (1.0: the paper).")
    flags.DEFINE_float("cooldown", default("cooldown", 0.5), "Fraction of FTWT epochs with the gate loss on.")
    flags.DEFINE_enum("pooling", default("pooling", "avg"), ["avg", "max"], "Mask predictor global pooling.")
    flags.DEFINE_bool("use_softmax", default("use_softmax", True), "Softmax over the pooled channels in the predictors.")
    flags.DEFINE_integer("predictor_rank", default("predictor_rank", None),
                         "Factor each mask predictor through this many channels (default: the paper's full "
                         "predictor); cheaper at batch size 1, see MaskPredictor.")
    define_fine_tuning_flags(**defaults)
    flags.DEFINE_integer("warmup_steps", default("warmup_steps", 0), "Predictor warm-up batches toward all-ones.")
    flags.DEFINE_integer("estimate_images", default("estimate_images", 2048),
                         "Training images for the before-training FLOPs estimate (and --cap_ratio's mean counts).")
    flags.DEFINE_bool("gate_only_paying", default("gate_only_paying", False),
                      "Gate only the convs whose masks the edge export turns into skipped work at --image_size "
                      "with --edge_threads interpreter threads (ftwt_keras.export.paying_gates, judged before "
                      "FTWT training from the dense baseline's targets at r on the --estimate_images images): "
                      "every other gate would only add its predictor to the .tflite, so that the model is never "
                      "slower than dense there (not in the paper). Fails before training where no conv can pay, "
                      "e.g. MobileNetV1 at 32x32.")
    flags.DEFINE_enum("paying_plan", default("paying_plan", "rules"), ["rules", "timed"],
                      "With --gate_only_paying, how the paying convs are chosen: 'rules' (the export's cutoffs, "
                      "measured on one x86 CPU: ftwt_keras.export.paying_gates) or 'timed' (those, fewer until the "
                      "network gated at them, with masks drawn at the targets' keep ratios, times faster than dense "
                      "on this machine: ftwt_keras.export.measured_paying_gates; run it on the CPU the .tflite "
                      "will run on). A resumed run reuses the plan in paying_plan.json.")
    flags.register_multi_flags_validator(
        ["paying_plan", "gate_only_paying"], lambda v: v["paying_plan"] == "rules" or v["gate_only_paying"],
        message="--paying_plan=timed chooses the convs of --gate_only_paying: pass both.")
    flags.register_validator(
        "paying_plan", lambda value: value != "timed" or _export_runs_here(),
        message="--paying_plan=timed times .tflite exports, which need Keras's TensorFlow backend: run it with "
                "KERAS_BACKEND=tensorflow, or choose by --paying_plan=rules.")
    flags.DEFINE_integer("edge_threads", default("edge_threads", 1),
                         "With --gate_only_paying: the interpreter threads the .tflite will run with (export it "
                         "with edge/convert.py --threads to match); with more, fewer gates pay.")
    flags.register_validator("edge_threads", lambda value: value >= 1, message="--edge_threads must be >= 1.")
    flags.DEFINE_float("cap_ratio", default("cap_ratio", None),
                       "After FTWT, cap each gated regular conv at this multiple of its mean number of active "
                       "filters (e.g. 1.1; ftwt_keras.cap_gates, not in the paper) and save model_capped.keras: "
                       "its compact .tflite computes exactly the capped filters, with no margin and no fallback. "
                       "Default: no caps.")
    flags.register_validator("cap_ratio", lambda value: value is None or value > 0,
                             message="--cap_ratio must be positive (capacity / mean active filters, e.g. 1.1).")
    flags.DEFINE_integer("cap_epochs", default("cap_epochs", 0),
                         "With --cap_ratio: epochs of fine-tuning with the caps in place (the backbone only: the "
                         "gate loss is off, so the predictors, and with them the counts the caps follow, stay).")
    flags.register_validator("cap_epochs", lambda value: value >= 0, message="--cap_epochs must be >= 0.")
    flags.DEFINE_float("cap_lr", default("cap_lr", None),
                       "Backbone learning rate of the --cap_epochs (default: the FTWT schedule's last one).")
    flags.DEFINE_float("freeze_agreement", default("freeze_agreement", None),
                       "After FTWT (and the caps), freeze each gate that takes one decision on at least this share "
                       "of the --estimate_images training images (e.g. 0.99; ftwt_keras.freeze_gates, not in the "
                       "paper) and save model_frozen.keras: its .tflite computes frozen-off filters nowhere and runs "
                       "no predictor for a layer whose gates are all frozen. Default: none frozen.")
    flags.register_validator("freeze_agreement", lambda value: value is None or 0.5 <= value <= 1.0,
                             message="--freeze_agreement must be in [0.5, 1.0] (the share of images a gate agrees on).")
    flags.DEFINE_integer("freeze_epochs", default("freeze_epochs", 0),
                         "With --freeze_agreement: epochs of fine-tuning with the gates frozen (the backbone only, "
                         "the gate loss off, so the frozen gates stay frozen).")
    flags.register_validator("freeze_epochs", lambda value: value >= 0, message="--freeze_epochs must be >= 0.")
    flags.DEFINE_float("freeze_lr", default("freeze_lr", None),
                       "Backbone learning rate of the --freeze_epochs (default: the FTWT schedule's last one).")
    flags.DEFINE_enum("dtype_policy", default("dtype_policy", "float32"), ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Keras dtype policy of the models built (keras.mixed_precision): mixed_* trains with 16-bit "
                      "activations and float32 weights, for accelerators with 16-bit units; mixed_float16 adds loss "
                      "scaling. A --baseline or a resumed stage keeps the policy it was saved with.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity: 1 progress bar, 2 one line per epoch.")


def define_fine_tuning_flags(**defaults):
    """Defines the FTWT-stage options that are not in the paper (off by default).

    Shared by the recipes and `benchmarks/cifar_cpu.py`, which define `--epochs`
    first (the ramp is validated against it). `defaults` override the defaults.
    """
    flags.DEFINE_integer("threshold_ramp_epochs", defaults.get("threshold_ramp_epochs", 0),
                         "Lower r linearly from 1.0 to the run's threshold over this many FTWT epochs (gradual "
                         "pruning, not in the paper); 0: the run's r from the start, as in the paper.")
    flags.register_multi_flags_validator(
        ["threshold_ramp_epochs", "epochs"], lambda v: 0 <= v["threshold_ramp_epochs"] <= v["epochs"],
        message="--threshold_ramp_epochs must be in [0, --epochs] (0: no ramp), so that r is reached.")
    flags.DEFINE_float("distillation_weight", defaults.get("distillation_weight", 0.0),
                       "Weight of the distillation loss from the dense baseline (teacher) in the backbone's "
                       "loss, in [0, 1); 0: none, as in the paper. Costs one teacher forward pass per step.")
    flags.DEFINE_float("distillation_temperature", defaults.get("distillation_temperature", 4.0),
                       "Softmax temperature of the distillation loss.")
    flags.register_validator("distillation_weight", lambda value: 0 <= value < 1,
                             message="--distillation_weight must be in [0, 1) (0: no distillation; e.g. 0.5).")
    flags.register_validator("distillation_temperature", lambda value: value > 0,
                             message="--distillation_temperature must be positive (e.g. 4).")
    flags.DEFINE_list("ungated_layers", defaults.get("ungated_layers", []),
                      "Conv layers to leave dense, by name or shell-style pattern (e.g. conv1,block1_*); "
                      "default: none, every conv is gated as in the paper.")


def build_model(config):
    from ftwt_keras import models

    shape = (config["image_size"], config["image_size"], 3)
    classes = config["num_classes"]
    name = config["model"]
    if name == "mobilenet_v1":
        return models.mobilenet_v1(shape, classes, alpha=config["alpha"])
    if name == "resnet_cifar":
        return models.resnet_cifar(config["depth"], shape, classes)
    if name == "vgg16_bn":
        return models.vgg16_bn(shape, classes)
    if name in ("resnet18", "resnet34"):
        return getattr(models, name)(shape, classes)
    raise ValueError(f"Unknown --model {name!r}.")


def step_schedule(lr, milestones, epochs):
    """LR x0.1 at each milestone (fractions of `epochs`), as a Keras callback."""
    import keras

    return keras.callbacks.LearningRateScheduler(lambda epoch, current_lr: scheduled_lr(lr, milestones, epochs, epoch))


def scheduled_lr(lr, milestones, epochs, epoch):
    """The learning rate `step_schedule` gives in `epoch` (0-based)."""
    boundaries = sorted(int(round(float(m) * epochs)) for m in milestones)
    return lr * (0.1 ** sum(epoch >= b for b in boundaries))


def sgd(learning_rate, weight_decay):
    """SGD with momentum 0.9 and the decay equivalent to PyTorch's coupled L2.

    PyTorch adds `weight_decay * w` to the gradient, which momentum then
    accumulates: at steady state that shrinks `w` by `lr * wd / (1 - 0.9)` per
    step. Keras' `weight_decay` is decoupled (applied once per step, outside
    momentum), so the paper's 5e-4 becomes 5e-3 here. Only the variables the
    optimizer trains are decayed: the backbone, never the mask predictors.
    """
    import keras

    momentum = 0.9
    return keras.optimizers.SGD(
        learning_rate, momentum=momentum, weight_decay=weight_decay / (1.0 - momentum) or None
    )


def compile_ftwt(model, lr, gate_lr, weight_decay, **compile_kwargs):
    """Compiles an FTWTModel as the recipes train it.

    The backbone: `sgd(lr, weight_decay)`; the mask predictors: SGD at
    `gate_lr`, momentum 0.9; the task loss: cross-entropy on logits.
    `compile_kwargs` go to `FTWTModel.compile` (metrics, a teacher, ...).
    """
    import keras

    model.compile(
        optimizer=sgd(lr, weight_decay),
        gate_optimizer=keras.optimizers.SGD(gate_lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_kwargs,
    )


def _read_config():
    config = {name: FLAGS[name].value for name in FLAGS if name in _RECIPE_FLAGS}
    config["num_classes"] = num_classes(config["dataset"])
    return config


def num_classes(dataset):
    """Classes of a recipe's `--dataset`: a tfds name, or an image folder's class folders under `train/`."""
    known = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
    if dataset in known:
        return known[dataset]
    train = os.path.join(dataset, "train")
    if not os.path.isdir(train):
        raise FileNotFoundError(f"--dataset={dataset!r} is neither {', '.join(known)} nor an image folder with "
                                "train/<class>/ and test/<class>/ subfolders.")
    return len([name for name in os.listdir(train) if os.path.isdir(os.path.join(train, name))])


_RECIPE_FLAGS = (
    "output_dir dataset data_dir model alpha depth image_size batch_size train_take test_take baseline "
    "baseline_epochs baseline_lr baseline_milestones epochs lr milestones gate_lr weight_decay threshold "
    "mode joint_gradient_scale target pooling use_softmax predictor_rank gate_loss_weight cooldown "
    "threshold_ramp_epochs distillation_weight distillation_temperature ungated_layers warmup_steps estimate_images "
    "gate_only_paying paying_plan edge_threads "
    "cap_ratio cap_epochs cap_lr freeze_agreement freeze_epochs freeze_lr dtype_policy seed verbose"
).split()


def _datasets(config):
    from ftwt_keras import data

    if config["dataset"] in data.CIFAR_DATASETS:
        size = config["image_size"]  # other than 32: the images resized, as for a network in its ImageNet layout
        train = data.cifar(config["dataset"], "train", config["batch_size"], data_dir=config["data_dir"],
                           take=config["train_take"], seed=config["seed"], image_size=size)
        test = data.cifar(config["dataset"], "test", 256, training=False, data_dir=config["data_dir"],
                          take=config["test_take"], image_size=size)
        estimate = data.cifar(config["dataset"], "train", 256, training=False, data_dir=config["data_dir"],
                              take=config["estimate_images"], image_size=size)
        return train, test, estimate
    # The estimate, the --gate_only_paying plan, the caps and the frozen gates read the first
    # --estimate_images training images, prepared as for evaluation (no augmentation): never test images.
    if config["dataset"] == data.IMAGENET:
        size = config["image_size"]
        train = data.imagenet(_first("train", config["train_take"]), config["batch_size"], data_dir=config["data_dir"],
                              image_size=size, seed=config["seed"])
        test = data.imagenet(_first("validation", config["test_take"]), 128, training=False,
                             data_dir=config["data_dir"], image_size=size)
        unaugmented = data.imagenet("train", 128, training=False, data_dir=config["data_dir"], image_size=size)
        return train, test, _first_images(unaugmented, config["estimate_images"])
    if config["train_take"] is not None or config["test_take"] is not None:
        raise ValueError(f"--train_take and --test_take apply to tfds datasets ({', '.join(data.CIFAR_DATASETS)}, "
                         f"{data.IMAGENET}), not to the image folder {config['dataset']!r}: point --dataset at a "
                         "folder with fewer images instead.")
    size = (config["image_size"], config["image_size"])
    train = data.image_folder(os.path.join(config["dataset"], "train"), size, config["batch_size"], True, config["seed"])
    test = data.image_folder(os.path.join(config["dataset"], "test"), size, 256)
    # Shuffled: a folder lists its images class by class, and the first ones would all be of one class.
    unaugmented = data.image_folder(os.path.join(config["dataset"], "train"), size, 128, seed=config["seed"],
                                    shuffle=True)
    return train, test, _first_images(unaugmented, config["estimate_images"])


def _first(split, take):
    """The tfds split of the first `take` examples of `split` (all of it when `take` is None)."""
    return split if take is None else f"{split}[:{take}]"


def _first_images(dataset, count, batch_size=128):
    """The first `count` (image, label) pairs of a batched dataset, in batches of `batch_size`."""
    return dataset.unbatch().take(count).batch(batch_size)


def _callbacks(config, stage, extra=()):
    import keras

    import ftwt_keras as fk

    out = config["output_dir"]
    return [
        *extra,
        keras.callbacks.BackupAndRestore(os.path.join(out, f"backup_{stage}")),
        fk.callbacks.ResumableCSVLogger(os.path.join(out, f"{stage}_history.csv")),
        keras.callbacks.TensorBoard(os.path.join(out, "logs", stage)),
    ]


def stage_clock(output_dir, stage):
    """Training seconds of a resumable stage, summed over the processes that ran it.

    Args:
        output_dir: the stage's output folder.
        stage: `"baseline"`, `"ftwt"`, `"capped"` or `"frozen"`; the total lives in
            `output_dir/<stage>_seconds.json` as `{"seconds": ...}`.

    Returns:
        `(callback, finish)`: the callback stores the running total after every
        epoch, so a resumed run adds to what the killed one had finished;
        `finish()` stores the total once more when the stage is done and returns
        it. An epoch cut by a kill is not counted: it is trained again.
    """
    import keras

    path = _seconds_path(output_dir, stage)
    before = stored_seconds(output_dir, stage) or 0.0
    start = time.time()

    def finish(*_):
        seconds = round(before + time.time() - start, 1)
        with open(path, "w") as file:
            json.dump({"seconds": seconds}, file)
        return seconds

    return keras.callbacks.LambdaCallback(on_epoch_end=finish), finish


def stored_seconds(output_dir, stage):
    """The training seconds `stage_clock` stored for `stage` in `output_dir`, or None without them."""
    path = _seconds_path(output_dir, stage)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return float(json.load(file)["seconds"])


def _seconds_path(output_dir, stage):
    return os.path.join(output_dir, f"{stage}_seconds.json")


def train_baseline(config, train, test):
    """Stage 1: the dense baseline, resumable; returns it and its training seconds."""
    import keras

    path = os.path.join(config["output_dir"], "baseline.keras")
    if config["baseline"]:
        logging.info("Using the given baseline %s", config["baseline"])
        return keras.saving.load_model(config["baseline"]), 0.0
    if os.path.exists(path):
        logging.info("Stage 1 already done: loading %s", path)
        return keras.saving.load_model(path), stored_seconds(config["output_dir"], "baseline") or 0.0
    model = build_model(config)
    model.compile(
        optimizer=sgd(config["baseline_lr"], config["weight_decay"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    epochs = config["baseline_epochs"]
    clock, finish = stage_clock(config["output_dir"], "baseline")
    model.fit(
        train, epochs=epochs, validation_data=test, verbose=config["verbose"], shuffle=False,
        callbacks=_callbacks(config, "baseline", [step_schedule(config["baseline_lr"], config["baseline_milestones"], epochs), clock]),
    )
    model.save(path)
    return model, finish()


def layers_to_gate(config, baseline):
    """`gate()`'s `layers_to_gate` for `--ungated_layers` (None: every conv)."""
    from ftwt_keras import gating

    ungated = config.get("ungated_layers")
    return gating.layers_except(baseline, ungated) if ungated else None


def check_ungated_layers(config):
    """Fails on an `--ungated_layers` pattern that names no conv, before any training."""
    if config.get("ungated_layers"):
        layers_to_gate(config, build_model(config))


def check_some_gate_can_pay(config):
    """With `--gate_only_paying`: fails before any training when no gate of the model could ever pay."""
    from ftwt_keras import gating
    from ftwt_keras.export import tflite

    if not config.get("gate_only_paying"):
        return
    model = build_model(config)
    gated = gating.gate(model, layers_to_gate=layers_to_gate(config, model))
    # The most favourable masks: one filter on per image, so every conv large enough to compact does.
    names = [layer.name for layer in gated.gated_layers]
    sparsest = tflite.Calibration({name: 0.0 for name in names}, {name: 1 for name in names})
    if not tflite.paying_gates(gated, calibration=sparsest, num_threads=config.get("edge_threads", 1),
                               static_gates=False):
        raise ValueError(
            f"--gate_only_paying: no gate of {config['model']} at {config['image_size']}x{config['image_size']} can "
            "pay in the edge export, at any r: no conv is large enough for computing fewer filters to beat "
            f"computing them all (>= {tflite.AUTO_MIN_MACS:,} multiply-adds on a map of >= "
            f"{tflite.AUTO_MIN_PIXELS} pixels, see ftwt_keras.export.paying_gates). Its .tflite would be slower "
            "than dense with any gate; drop the flag to train FTWT for FLOPs anyway."
        )


TIMED_PLAN_IMAGES = 32  # training images each timing of `--paying_plan=timed` runs over (per loop)


def paying_layers(config, baseline, estimate, candidates=None, timer=None):
    """`--gate_only_paying`: the convs of `baseline` whose gates will pay in the export, from its targets at r.

    Gates `baseline` as training will (the run's threshold, target rule and
    predictors; the convs `candidates` selects, as `gate`'s
    `layers_to_gate`), calibrates on the targets of the `estimate` images
    with masks drawn at each layer's mean target keep ratio
    (`export.drawn_at_targets`) and takes `paying_gates`' names. With
    `--paying_plan=timed`, those are the start of `measured_paying_gates`,
    which times that network gated at them against the dense one on this
    machine.

    Args:
        config: the run's flags.
        baseline: the trained dense model.
        estimate: the `--estimate_images` training images (a batched dataset
            of (image, label), or an array of images).
        candidates: as `gate`'s `layers_to_gate`.
        timer: for tests, as `measured_paying_gates`'.

    Returns:
        `(names, plan)`: the convs to gate, and the `TimedPlan` (None with `rules`).
    """
    import numpy as np

    from ftwt_keras.export import tflite

    # Gated as training will gate it (the predictors' cost counts in the timing), masks drawn at the targets.
    drawn, calibration = tflite.drawn_at_targets(
        baseline, estimate, config["threshold"], target=config["target"], layers_to_gate=candidates,
        pooling=config.get("pooling", "avg"), use_softmax=config.get("use_softmax", True),
        predictor_rank=config.get("predictor_rank"))
    threads = config.get("edge_threads", 1)
    # The plan is about the gates training will give: not about what the initial weights happen to decide.
    rules = tflite.paying_gates(drawn, calibration=calibration, num_threads=threads, static_gates=False)
    if config.get("paying_plan", "rules") != "timed" or not rules:
        return rules, None
    if isinstance(estimate, np.ndarray):
        images = estimate[:TIMED_PLAN_IMAGES]
    else:
        images = np.asarray(next(iter(_first_images(estimate, TIMED_PLAN_IMAGES, TIMED_PLAN_IMAGES)))[0])
    plan = tflite.measured_paying_gates(drawn, calibration, images, num_threads=threads, static_gates=False,
                                        timer=timer)
    return plan.gates, plan


def planned_layers(config, baseline, estimate, candidates=None, timer=None):
    """`paying_layers`, once per output folder: a resumed run reads `paying_plan.json` (a timed plan varies).

    A plan made for other flags (`--paying_plan`, `--edge_threads`,
    `--threshold`, `--target`, `--ungated_layers`) is made again while FTWT
    training has not started in the folder, and refused once it has.

    Returns:
        `(names, record)`: the convs to gate and what `paying_plan.json` holds
        (the flags it was made for, the names, and a timed plan's times in ms).
    """
    out = config["output_dir"]
    path = os.path.join(out, "paying_plan.json")
    flags_asked = {"paying_plan": config.get("paying_plan", "rules"), "edge_threads": config.get("edge_threads", 1),
                   "threshold": config["threshold"], "target": config["target"],
                   "ungated_layers": list(config.get("ungated_layers") or [])}
    if os.path.exists(path):
        with open(path) as file:
            record = json.load(file)
        if record.get("flags") == flags_asked:
            logging.info("Reusing the --gate_only_paying plan in %s", path)
            return record["gates"], record
        made_for = record.get("flags", {})
        differing = ", ".join(f"--{name}={made_for.get(name)!r} (asked: {value!r})"
                              for name, value in flags_asked.items() if made_for.get(name) != value)
        if any(os.path.exists(os.path.join(out, name)) for name in ("model.keras", "backup_ftwt")):
            raise ValueError(f"{path} holds the --gate_only_paying plan made for {differing}, and FTWT training in "
                             f"{out} started with it. Use another --output_dir for these flags.")
        logging.info("Planning again: %s was made for %s", path, differing)
    names, plan = paying_layers(config, baseline, estimate, candidates, timer)
    record = {"flags": flags_asked, "gates": names}
    if plan is not None:
        from ftwt_keras.export import cpu_name

        record.update(cpu=cpu_name(), dense_ms=plan.dense_ms, gated_ms=plan.gated_ms,
                      tried=[{"gates": count, "gated_ms": gated, "dense_ms": dense}
                             for count, gated, dense in plan.tried])
    with open(path, "w") as file:
        json.dump(record, file, indent=2)
    return names, record


def timed_plan_report(record):
    """The summary line on a `--paying_plan=timed` plan (`planned_layers`' record)."""
    steps = len(record["tried"])
    where = f"Timed on this machine ({record['cpu']})" if record.get("cpu") else "Timed on this machine"
    if not record["gates"]:
        return (f"{where}: no network gated at the paying convs ran faster than dense "
                f"({record['dense_ms']:.2f} ms, {steps} timings).")
    count = len(record["gates"])
    return (f"{where}: gated at {count} conv{'s' if count > 1 else ''} {record['gated_ms']:.2f} ms "
            f"against dense {record['dense_ms']:.2f} ms ({record['dense_ms'] / record['gated_ms']:.2f}x, masks "
            f"drawn at the targets' keep ratios; {steps} timings).")


def train_ftwt(config, baseline, train, test, gated_layers=None):
    """Stage 2: gate the baseline and train FTWT, resumable; returns it and its training seconds.

    `gated_layers`: `gate`'s `layers_to_gate` (default: from `--ungated_layers`).
    """
    import keras

    import ftwt_keras as fk

    path = os.path.join(config["output_dir"], "model.keras")
    if os.path.exists(path):
        logging.info("Stage 2 already done: loading %s", path)
        return keras.saving.load_model(path), stored_seconds(config["output_dir"], "ftwt") or 0.0
    model = fk.gate(baseline, threshold=config["threshold"], mode=config["mode"], target=config["target"],
                    pooling=config["pooling"], use_softmax=config["use_softmax"],
                    joint_gradient_scale=config["joint_gradient_scale"],
                    predictor_rank=config.get("predictor_rank"),
                    layers_to_gate=gated_layers or layers_to_gate(config, baseline))
    distillation = {}
    if config.get("distillation_weight"):
        distillation = dict(teacher=baseline, student_loss_weight=1.0 - config["distillation_weight"],
                            distillation_temperature=config["distillation_temperature"])
    compile_ftwt(model, config["lr"], config["gate_lr"], config["weight_decay"], metrics=["accuracy"], **distillation)
    epochs = config["epochs"]
    backup = os.path.join(config["output_dir"], "backup_ftwt")
    clock, finish = stage_clock(config["output_dir"], "ftwt")  # started before the warm-up, which it counts
    if config["warmup_steps"] and not os.path.exists(backup):
        logging.info("Warming up the predictors for %d batches", config["warmup_steps"])
        model.warm_up_gates(train.repeat(), steps=config["warmup_steps"], verbose=config["verbose"])
    extra = [
        step_schedule(config["lr"], config["milestones"], epochs),
        *([fk.callbacks.ThresholdScheduler.linear(1.0, config["threshold"], config["threshold_ramp_epochs"])]
          if config.get("threshold_ramp_epochs") else []),
        fk.callbacks.GateCooldown(config["cooldown"], weight=config["gate_loss_weight"]),
        fk.callbacks.FlopsLogger(),
        clock,
    ]
    model.fit(train, epochs=epochs, validation_data=test, verbose=config["verbose"], shuffle=False,
              callbacks=_callbacks(config, "ftwt", extra))
    model.save(path)
    return model, finish()


def _fine_tune_backbone(config, model, train, test, stage, epochs, lr, clock):
    """`epochs` of the backbone alone after a change to the gates, the gate loss off so the predictors stay."""
    import ftwt_keras as fk

    if not epochs:
        return
    lr = lr or scheduled_lr(config["lr"], config["milestones"], config["epochs"], config["epochs"] - 1)
    logging.info("Fine-tuning with the %s gates for %d epochs at learning rate %g", stage, epochs, lr)
    compile_ftwt(model, lr, lr, config["weight_decay"], metrics=["accuracy"])  # gate_lr unused: the loss is off
    model.fit(train, epochs=epochs, validation_data=test, verbose=config["verbose"], shuffle=False,
              callbacks=_callbacks(config, stage, [fk.callbacks.GateCooldown(0.0), fk.callbacks.FlopsLogger(), clock]))


def _finished_stage(config, stage, number):
    """`(model, seconds)` of stage `number` if it already saved `model_<stage>.keras`, else None."""
    import keras

    path = os.path.join(config["output_dir"], f"model_{stage}.keras")
    if not os.path.exists(path):
        return None
    logging.info("Stage %d already done: loading %s", number, path)
    return keras.saving.load_model(path), stored_seconds(config["output_dir"], stage) or 0.0


def train_capped(config, model, train, test, count_images):
    """Stage 3 (`--cap_ratio`): caps `model`'s gates in place and fine-tunes with them, resumable.

    Every gated regular conv keeps at most `cap_ratio` times its mean number of
    active filters on `count_images` (`ftwt_keras.cap_gates`); then
    `--cap_epochs` epochs train the backbone with the caps in place, the gate
    loss off, so that the predictors, and the counts the caps were set from,
    stay as they are. Returns the capped model and its training seconds.
    """
    import ftwt_keras as fk

    finished = _finished_stage(config, "capped", 3)
    if finished:
        return finished
    capacities = fk.cap_gates(model, count_images, ratio=config["cap_ratio"])
    capped = {name: capacity for name, capacity in capacities.items() if capacity is not None}
    logging.info("Capped %d gated convs at %gx their mean active filters: %s", len(capped), config["cap_ratio"], capped)
    clock, finish = stage_clock(config["output_dir"], "capped")
    _fine_tune_backbone(config, model, train, test, "capped", config.get("cap_epochs"), config.get("cap_lr"), clock)
    model.save(os.path.join(config["output_dir"], "model_capped.keras"))
    return model, finish()


def train_frozen(config, model, train, test, calibration_images):
    """Stage 4 (`--freeze_agreement`): freezes `model`'s near-constant gates in place, fine-tunes, resumable.

    Each gate that takes one decision on at least `freeze_agreement` of
    `calibration_images` is frozen to it (`ftwt_keras.freeze_gates`); then
    `--freeze_epochs` epochs train the backbone with the gates frozen, the gate
    loss off. Returns the frozen model and its training seconds.
    """
    import ftwt_keras as fk

    finished = _finished_stage(config, "frozen", 4)
    if finished:
        return finished
    frozen = fk.freeze_gates(model, calibration_images, min_agreement=config["freeze_agreement"])
    logging.info("Froze %d gates on and %d off (agreement >= %g) of %d",
                 sum(int(g.always_on.sum()) for g in frozen.values()),
                 sum(int(g.always_off.sum()) for g in frozen.values()), config["freeze_agreement"],
                 sum(len(g.always_on) for g in frozen.values()))
    clock, finish = stage_clock(config["output_dir"], "frozen")
    _fine_tune_backbone(config, model, train, test, "frozen", config.get("freeze_epochs"), config.get("freeze_lr"),
                        clock)
    model.save(os.path.join(config["output_dir"], "model_frozen.keras"))
    return model, finish()


def _paying_gates(config, model, images):
    """`paying_gates` of the trained `model` on its own masks over `images`, for `--edge_threads`."""
    from ftwt_keras.export import tflite

    # A planned conv that the trained weights prune statically pays too: judge every gate by its masks.
    return tflite.paying_gates(model, calibration=tflite.calibrate(model, images),
                               num_threads=config.get("edge_threads", 1), static_gates=False)


def plan_report(planned, paying, config, capped=False):
    """The summary line on `--gate_only_paying`'s plan checked against the trained masks.

    The plan comes from the baseline's targets; trained predictors vary
    more from image to image, and a planned conv whose capacity (the most
    filters its images keep, `ftwt_keras.export.calibrate`) then exceeds
    what pays only adds its predictor to the `.tflite`. This names those
    convs and what to do about them.

    Args:
        planned: the convs gated by the plan (`paying_layers`).
        paying: those of them that pay with the trained (or capped) masks.
        config: the run's flags (`edge_threads`, `threshold`, and
            `cap_ratio` when `capped`).
        capped: whether `paying` was judged on the capped model.

    Returns:
        One line (a sentence more when some planned conv does not pay).
    """
    threads = config.get("edge_threads", 1)
    which = "capped" if capped else "trained"
    line = (f"Gated only the {len(planned)} convs whose gates pay in the edge export; with the {which} masks "
            f"{len(paying)} of them {'pays' if len(paying) == 1 else 'pay'} with {threads} "
            f"thread{'s' if threads > 1 else ''} (ftwt_keras.export.paying_gates on the training images).")
    missing = [name for name in planned if name not in paying]
    if not missing:
        return line
    verbs = "keeps too many filters on some images to pay and only adds its predictor" if len(missing) == 1 else (
        "keep too many filters on some images to pay and only add their predictors")
    lower = f"train at a lower --threshold than {config['threshold']:g}"
    if capped:
        advice = f"cap harder (a lower --cap_ratio than {config['cap_ratio']:g}) or {lower}"
    elif config.get("cap_ratio"):
        advice = f"the caps of --cap_ratio, checked below, may fix that; else {lower}"
    else:
        advice = f"cap them (--cap_ratio=1.0 caps at the mean count, with --cap_epochs of fine-tuning) or {lower}"
    return f"{line} {', '.join(missing)} {verbs}: {advice}."


def _fine_tuned_results(model, test, dense_macs, epochs, seconds):
    """Test top-1 and FLOPs reduction of a stage 3 / 4 model, with its fine-tuning epochs and seconds."""
    import numpy as np

    import ftwt_keras as fk

    macs, layer_keep_ratios = fk.flops.macs_and_keep_ratios(model, test)
    return {
        "accuracy": float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"]),
        "flops_reduction": float(1.0 - np.mean(macs) / dense_macs),
        "layer_keep_ratios": layer_keep_ratios,
        "fine_tune_epochs": epochs or 0,
        "train_seconds": round(seconds, 1),
    }


def main(argv):
    """The absl `main` of every recipe app."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run()


def run(config=None):
    """Runs both stages and writes `results.json`; returns the results dict."""
    import keras
    import numpy as np

    import ftwt_keras as fk

    config = config or _read_config()
    check_ungated_layers(config)
    check_some_gate_can_pay(config)
    os.makedirs(config["output_dir"], exist_ok=True)
    keras.utils.set_random_seed(config["seed"])
    keras.mixed_precision.set_global_policy(config.get("dtype_policy", "float32"))
    train, test, estimate_data = _datasets(config)

    baseline, baseline_time = train_baseline(config, train, test)
    baseline_accuracy = float(baseline.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    logging.info("Dense baseline test accuracy: %.4f", baseline_accuracy)
    gated_layers = layers_to_gate(config, baseline)
    planned = None
    if config.get("gate_only_paying"):
        planned, plan_record = planned_layers(config, baseline, estimate_data, gated_layers)
        if not planned:
            timed = plan_record.get("tried")
            raise ValueError(
                f"--gate_only_paying: at r={config['threshold']:g} the baseline's targets keep too many filters for "
                + ("any gate to pay on this machine (the network gated at the convs ftwt_keras.export.paying_gates "
                   "picks, and at fewer of them, timed no faster than dense; "
                   f"{os.path.join(config['output_dir'], 'paying_plan.json')}: delete it to time again)" if timed else
                   "any gate to pay in the edge export (ftwt_keras.export.paying_gates)")
                + "; a lower --threshold prunes more. Nothing was gated or trained."
            )
        logging.info("Gating only the %d convs whose gates pay in the edge export: %s", len(planned), planned)
        gated_layers = lambda layer, names=frozenset(planned): layer.name in names  # noqa: E731
    logging.info("Estimating the FLOPs reduction at r=%g from the baseline's targets", config["threshold"])
    estimated = fk.estimate_flops_reduction(baseline, estimate_data, config["threshold"], config["target"],
                                            layers_to_gate=gated_layers, verbose=config["verbose"])
    logging.info("Estimated FLOPs reduction at r=%g before FTWT training: %.4f", config["threshold"], estimated)

    model, ftwt_time = train_ftwt(config, baseline, train, test, gated_layers)
    metrics = model.evaluate(test, verbose=0, return_dict=True)
    macs, layer_keep_ratios = fk.flops.macs_and_keep_ratios(model, test, verbose=config["verbose"])
    dense = fk.flops.count_macs(model)
    # Gates the predictors' weights alone decide for every image: high for an input-blind
    # predictor; the edge export prunes them statically.
    decided = fk.static_gates.decided_fraction(model)
    results = {
        "model": config["model"],
        "dataset": config["dataset"],
        "threshold": config["threshold"],
        "mode": config["mode"],
        "target": config["target"],
        "baseline_accuracy": baseline_accuracy,
        "accuracy": float(metrics["accuracy"]),
        "gate_accuracy": float(metrics["gate_accuracy"]),
        "gates_decided_by_weights": float(decided),
        "dense_macs": int(dense),
        "mean_dynamic_macs": float(np.mean(macs)),
        "flops_reduction": float(1.0 - np.mean(macs) / dense),
        "estimated_flops_reduction": float(estimated),
        # The test-set targets' own reduction (see FTWTModel): drift vs predictor error.
        "target_flops_reduction": float(metrics["target_flops_reduction"]),
        "test_images": int(macs.shape[0]),
        # Per gated layer, the mean fraction of its filters kept on a test image (the paper's layer-wise figure).
        "layer_keep_ratios": layer_keep_ratios,
        **({"planned_paying_gates": planned, "paying_plan": plan_record} if planned else {}),
        "baseline_train_seconds": round(baseline_time, 1),
        "ftwt_train_seconds": round(ftwt_time, 1),
        "config": {k: v for k, v in config.items() if k != "verbose"},
    }
    summary = (
        f"\nBaseline top-1 {100 * baseline_accuracy:.2f}% | FTWT top-1 {100 * results['accuracy']:.2f}% | "
        f"FLOPs reduction {100 * results['flops_reduction']:.1f}% (estimated before training: "
        f"{100 * estimated:.1f}%) | gate accuracy {100 * results['gate_accuracy']:.1f}% | "
        f"gates the weights alone decide {100 * decided:.1f}% | {results['test_images']} test images\n"
        f"Saved {os.path.join(config['output_dir'], 'model.keras')}"
    )
    calibration_images = estimate_data  # training images, not augmented (`_datasets`)
    if planned:
        if plan_record.get("tried"):
            summary += "\n" + timed_plan_report(plan_record)
        # The predictors keep somewhat more filters than their targets: check the plan on the trained masks.
        results["paying_gates"] = _paying_gates(config, model, calibration_images)
        summary += "\n" + plan_report(planned, results["paying_gates"], config)
    if config.get("cap_ratio"):
        model, capped_time = train_capped(config, model, train, test, calibration_images)
        results["capped"] = {
            "ratio": config["cap_ratio"],
            "capacities": {layer.name: layer.capacity for layer in model.gated_layers if layer.capacity},
            **_fine_tuned_results(model, test, dense, config.get("cap_epochs"), capped_time),
        }
        summary += (
            f"\nCapped at {config['cap_ratio']:g}x the mean active filters, fine-tuned "
            f"{results['capped']['fine_tune_epochs']} epochs: top-1 {100 * results['capped']['accuracy']:.2f}% | "
            f"FLOPs reduction {100 * results['capped']['flops_reduction']:.1f}%\n"
            f"Saved {os.path.join(config['output_dir'], 'model_capped.keras')}"
        )
        if planned:
            results["capped"]["paying_gates"] = _paying_gates(config, model, calibration_images)
            summary += "\n" + plan_report(planned, results["capped"]["paying_gates"], config, capped=True)
    if config.get("freeze_agreement"):
        model, frozen_time = train_frozen(config, model, train, test, calibration_images)
        results["frozen"] = {
            "agreement": config["freeze_agreement"],
            "gates_decided_by_weights": float(fk.static_gates.decided_fraction(model)),
            **_fine_tuned_results(model, test, dense, config.get("freeze_epochs"), frozen_time),
        }
        summary += (
            f"\nGates agreeing on >= {config['freeze_agreement']:g} of the training images frozen, fine-tuned "
            f"{results['frozen']['fine_tune_epochs']} epochs: top-1 {100 * results['frozen']['accuracy']:.2f}% | "
            f"FLOPs reduction {100 * results['frozen']['flops_reduction']:.1f}% | gates the weights decide "
            f"{100 * results['frozen']['gates_decided_by_weights']:.1f}%\n"
            f"Saved {os.path.join(config['output_dir'], 'model_frozen.keras')}"
        )
    with open(os.path.join(config["output_dir"], "results.json"), "w") as file:
        json.dump(results, file, indent=2)
    print(summary)
    return results
