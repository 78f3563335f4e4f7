"""How fast do the mask predictors learn their targets? Softmax on/off, gate learning rate.

    python benchmarks/predictor_ablation.py --baseline=runs/demo/baseline.keras

Gates a trained dense baseline at --threshold, freezes the backbone (its
learning rate is 0, so the targets stay fixed), trains only the predictors
for --steps batches of real CIFAR-10 with each --configs entry, and prints,
on --test_images test images: gate accuracy, the FLOPs reduction the
predicted masks give, and the reduction `estimate_flops_reduction` promises
(what perfectly learned predictors would give).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", "runs/demo/baseline.keras", "A trained dense zoo model (.keras), e.g. from make demo.")
flags.DEFINE_float("threshold", 0.9, "Heatmap mass r of the targets.")
flags.DEFINE_integer("steps", 300, "Predictor training batches (batch 128) per configuration.")
flags.DEFINE_integer("test_images", 2048, "Test images for the measurements.")
flags.DEFINE_list("configs", ["softmax:0.1", "softmax:2.0", "no_softmax:0.1"],
                  "Predictor configurations as softmax|no_softmax:gate_learning_rate.")


def parse_config(text):
    """'softmax:0.1' -> (True, 0.1)."""
    kind, _, rate = text.partition(":")
    if kind not in ("softmax", "no_softmax") or not rate:
        raise app.UsageError(f"--configs entries look like softmax:0.1 or no_softmax:0.1; got {text!r}.")
    return kind == "softmax", float(rate)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    configs = [parse_config(text) for text in FLAGS.configs]
    import keras
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data

    baseline = keras.saving.load_model(FLAGS.baseline)
    train = data.cifar("cifar10", "train", 128, seed=0)
    test = data.cifar("cifar10", "test", 256, training=False, take=FLAGS.test_images)
    estimate = fk.estimate_flops_reduction(baseline, test, FLAGS.threshold)
    print(f"{FLAGS.baseline}, r={FLAGS.threshold:g}, {FLAGS.steps} predictor steps, backbone frozen; "
          f"estimated FLOPs reduction {100 * estimate:.1f}%")
    print("| predictor | gate LR | gate accuracy | FLOPs reduction (predicted masks) | estimate | seconds |")
    print("|---|---|---|---|---|---|")
    for use_softmax, rate in configs:
        keras.utils.set_random_seed(0)
        model = fk.gate(baseline, threshold=FLAGS.threshold, use_softmax=use_softmax)
        model.compile(optimizer=keras.optimizers.SGD(0.0), gate_optimizer=keras.optimizers.SGD(rate, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.time()
        model.fit(train.repeat(), steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        seconds = time.time() - start
        metrics = model.evaluate(test, verbose=0, return_dict=True)
        reduction = 1.0 - float(np.mean(fk.flops.dynamic_macs(model, test))) / fk.flops.count_macs(model)
        print(f"| {'softmax' if use_softmax else 'no softmax'} | {rate:g} | {100 * metrics['gate_accuracy']:.1f}% "
              f"| {100 * reduction:.1f}% | {100 * estimate:.1f}% | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
