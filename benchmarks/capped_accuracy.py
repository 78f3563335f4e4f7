"""What capping a trained model's gates costs in accuracy (`ftwt_keras.cap_gates`).

    python benchmarks/capped_accuracy.py --model=runs/demo/model.keras
    python benchmarks/capped_accuracy.py --model=runs/demo/model.keras --finetune_ratio=1.0

Each gated regular conv is capped at --ratios times its mean number of active
filters on --calibration_images CIFAR training images (a compact edge export
then computes exactly that many filters, with no margin and no fallback), and
the capped model is evaluated on the test split: top-1, FLOPs reduction, and
how many images keep the uncapped model's top-1. With --finetune_ratio, the
model capped at that ratio is then trained --finetune_epochs more epochs with
the caps in place (SGD at --finetune_lr; --nofinetune_gate_loss: the backbone
only, as the recipes' `--cap_ratio --cap_epochs` stage) and
evaluated again, and so is the uncapped model (the control: more training
alone may change top-1). With --export_ratio, the model capped at that ratio
is also exported (--export_policy; "chain" computes every capped conv
compactly, at exactly its cap, with no fallback) and its .tflite logits are
compared with Keras's on the test images.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "runs/demo/model.keras", "A trained FTWT model (.keras) of CIFAR images.")
flags.DEFINE_string("dataset", "cifar10", "tfds CIFAR dataset the model was trained on.")
flags.DEFINE_list("ratios", ["1.2", "1.1", "1.05", "1.0", "0.95"], "Capacities as multiples of each mean count.")
flags.DEFINE_integer("calibration_images", 2000, "Training images whose mean counts set the capacities.")
flags.DEFINE_integer("test_images", None, "Test images to evaluate on (default: the whole split).")
flags.DEFINE_float("finetune_ratio", None, "Fine-tune the model capped at this ratio (default: no fine-tuning).")
flags.DEFINE_integer("finetune_epochs", 1, "Epochs of fine-tuning with the caps in place.")
flags.DEFINE_float("finetune_lr", 0.002, "Backbone learning rate while fine-tuning (predictors: the same).")
flags.DEFINE_bool("finetune_gate_loss", True,
                  "Train the predictors toward their targets while fine-tuning; --nofinetune_gate_loss trains the "
                  "backbone only, as the recipes' --cap_epochs do (the predictors, and the counts the caps follow, "
                  "stay).")
flags.DEFINE_integer("train_images", None, "Fine-tune on the first this many training images (default: all).")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
flags.DEFINE_float("export_ratio", None, "Also export the model capped at this ratio and check its logits.")
flags.DEFINE_string("export_policy", "chain", "The --export_ratio export's policy (see ftwt_keras.export.convert).")


def evaluate(model, images, labels, batch_size):
    """(top-1 predictions, top-1 accuracy, FLOPs reduction) of `model` on `images`."""
    import numpy as np

    from ftwt_keras import flops

    predictions = np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).argmax(-1)
    macs = flops.dynamic_macs(model, images, batch_size=batch_size)
    return predictions, float(np.mean(predictions == labels)), 1.0 - float(macs.mean()) / model.dense_macs


def check_export(model, calibration, regular, images):
    """Prints how exactly the capped model's .tflite gives its Keras logits on `images`."""
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras.export import tflite

    fk.cap_gates(model, calibration, ratio=FLAGS.export_ratio, layer_names=regular)
    flatbuffer = tflite.convert(model, policy=tflite.parse_policy(FLAGS.export_policy))
    operators = tflite.op_names(flatbuffer)
    expected = np.asarray(model.predict(images, batch_size=FLAGS.batch_size, verbose=0))
    actual = tflite.run(flatbuffer, images)
    error = np.abs(actual - expected).max(axis=1) / (expected.max(axis=1) - expected.min(axis=1))
    print(f"Export of the model capped at {FLAGS.export_ratio:g}x, policy {FLAGS.export_policy} "
          f"({operators.count('BATCH_MATMUL')} BATCH_MATMUL, {operators.count('IF')} IF): same top-1 on "
          f"{100 * np.mean(actual.argmax(1) == expected.argmax(1)):.2f}% of {len(images)} images; logit difference "
          f"/ range: max {error.max():.2e}, {int(np.sum(error > 1e-6))} images above 1e-6, "
          f"{int(np.sum(error > 1e-3))} above 1e-3", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    ratios = [float(ratio) for ratio in FLAGS.ratios]
    if FLAGS.finetune_ratio is not None:
        ratios = sorted(set(ratios) | {FLAGS.finetune_ratio}, reverse=True)
    import keras
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data, flops
    from ftwt_keras.recipes.common import compile_ftwt

    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model: no file {FLAGS.model!r} (train one with `make demo`).")
    model = keras.saving.load_model(FLAGS.model)
    if not isinstance(model, fk.FTWTModel):
        raise app.UsageError(f"--model: {FLAGS.model} is not an FTWT model.")
    calibration = data.cifar_arrays(FLAGS.dataset, f"train[:{FLAGS.calibration_images}]")[0]
    split = "test" if FLAGS.test_images is None else f"test[:{FLAGS.test_images}]"
    images, labels = data.cifar_arrays(FLAGS.dataset, split)
    labels = np.asarray(labels).reshape(-1)
    filters = {layer.name: layer.filters for layer in model.gated_layers if not layer.is_depthwise}
    regular = list(filters)
    fk.set_gate_capacities(model, {name: None for name in regular})
    mean_counts = {name: keep * filters[name]
                   for name, keep in flops.keep_ratios(model, calibration).items() if name in regular}
    uncapped, accuracy, reduction = evaluate(model, images, labels, FLAGS.batch_size)
    print(f"{FLAGS.model}: {len(images)} test images; {len(regular)} gated regular convs capped, "
          f"mean counts from {len(calibration)} training images")
    print("| capacities | capacities / mean count | top-1 | FLOPs reduction | same top-1 as uncapped |")
    print("|---|---|---|---|---|")
    print(f"| none | - | {100 * accuracy:.2f}% | {100 * reduction:.1f}% | 100% |")
    for ratio in ratios:
        capacities = fk.cap_gates(model, calibration, ratio=ratio, layer_names=regular)
        size = sum(capacities[name] for name in regular) / sum(mean_counts.values())
        predictions, accuracy, reduction = evaluate(model, images, labels, FLAGS.batch_size)
        same = float(np.mean(predictions == uncapped))
        print(f"| {ratio:g}x mean count | {size:.3f} | {100 * accuracy:.2f}% | {100 * reduction:.1f}% | "
              f"{100 * same:.2f}% |", flush=True)
    if FLAGS.export_ratio is not None:
        check_export(model, calibration, regular, images)
    if FLAGS.finetune_ratio is None:
        return
    # The control: the same fine-tuning without caps (more epochs alone may change top-1).
    for ratio in (FLAGS.finetune_ratio, None):
        model = keras.saving.load_model(FLAGS.model)
        if ratio is None:
            fk.set_gate_capacities(model, {name: None for name in regular})
        else:
            fk.cap_gates(model, calibration, ratio=ratio, layer_names=regular)
        compile_ftwt(model, FLAGS.finetune_lr, FLAGS.finetune_lr, 5e-4)
        keras.utils.set_random_seed(0)
        train = data.cifar(FLAGS.dataset, "train", batch_size=128, training=True, take=FLAGS.train_images)
        model.fit(train, epochs=FLAGS.finetune_epochs, verbose=2,
                  callbacks=[] if FLAGS.finetune_gate_loss else [fk.callbacks.GateCooldown(0.0)])
        predictions, accuracy, reduction = evaluate(model, images, labels, FLAGS.batch_size)
        caps = "none" if ratio is None else f"{ratio:g}x mean count"
        what = "" if FLAGS.finetune_gate_loss else " (backbone only)"
        print(f"| {caps}, fine-tuned{what} {FLAGS.finetune_epochs} epoch(s) at lr {FLAGS.finetune_lr:g} | - | "
              f"{100 * accuracy:.2f}% | {100 * reduction:.1f}% | {100 * float(np.mean(predictions == uncapped)):.2f}% |",
              flush=True)


if __name__ == "__main__":
    app.run(main)
