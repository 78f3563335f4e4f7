"""Where the gap between the before-training estimate and the achieved FLOPs reduction comes from.

    python benchmarks/reduction_drift.py --baseline=runs/cifar_cpu/baseline.keras \\
        --models=runs/cifar_cpu/r0.9_decoupled/model.keras,runs/cifar_cpu/r0.83_decoupled/model.keras

For each trained FTWT model, on the first --test_images CIFAR-10 test images,
prints four FLOPs reductions at the model's own threshold r:

* estimate: `estimate_flops_reduction` of the dense baseline (the promise of r),
* targets, dense: the trained weights' targets with every filter computed,
* targets, gated: the trained model's targets in its gated network (what the
  predictors are trained toward at the end of training),
* achieved: the predicted masks (`ftwt_keras.flops.dynamic_macs`).

achieved - estimate = (targets, gated - estimate): the targets' drift, plus
(achieved - targets, gated): the predictors' error.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("baseline", None, "The dense baseline .keras the models were trained from.", required=True)
flags.DEFINE_list("models", None, "Trained FTWT .keras models.", required=True)
flags.DEFINE_integer("test_images", 2000, "First N CIFAR-10 test images.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data

    test = data.cifar("cifar10", "test", 250, training=False, take=FLAGS.test_images)
    baseline = keras.saving.load_model(FLAGS.baseline)
    print(f"{FLAGS.test_images} CIFAR-10 test images; FLOPs reductions in %")
    print("| model | r | estimate | targets, dense | targets, gated | achieved | drift of targets | predictor error |")
    print("|---|---|---|---|---|---|---|---|")
    estimates = {}  # by threshold: models trained at the same r share the baseline's estimate
    for path in FLAGS.models:
        model = keras.saving.load_model(path)
        thresholds = {layer.threshold for layer in model.gated_layers}
        if len(thresholds) != 1:
            raise app.UsageError(f"{path} has gated layers with different thresholds {sorted(thresholds)}.")
        threshold = thresholds.pop()
        if threshold not in estimates:
            estimates[threshold] = fk.estimate_flops_reduction(baseline, test, threshold)
        estimate = estimates[threshold]
        dense_targets = fk.target_flops_reduction(model, test, apply_masks=False)
        gated_targets = fk.target_flops_reduction(model, test)
        achieved = 1.0 - float(np.mean(fk.flops.dynamic_macs(model, test))) / fk.flops.count_macs(model)
        cells = [estimate, dense_targets, gated_targets, achieved, gated_targets - estimate, achieved - gated_targets]
        print(f"| {path} | {threshold:g} | " + " | ".join(f"{100 * c:+.1f}" if i >= 4 else f"{100 * c:.1f}"
                                                       for i, c in enumerate(cells)) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
