"""The mass target of every gated layer of one train step: `masks.mass_mask` vs a full sort.

    python benchmarks/mass_target.py                  # MobileNetV1 x1.0, batch 128, r = 0.95
    python benchmarks/mass_target.py --alpha=0.25 --threshold=0.83

`ftwt_keras.masks.mass_mask` finds each row's crossing filter from a histogram
of the scores' mass and sorts only the filters of the crossing level. The
reference here is the rule computed as the official code does, and as
ftwt_keras did before: sort every filter (TopK), cumulative sum, keep the
prefix within the threshold. Both run as one `tf.function` over the filter
scores of every gated layer of the model (random scores: |normal| times a
per-filter scale, 10% dead filters), timed alternately call by call; the
script also counts the decisions where they differ (only where the cumulative
sum is within float rounding of the threshold).
"""

import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow loads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier (the layer widths).")
flags.DEFINE_integer("batch_size", 128, "Rows per layer.")
flags.DEFINE_float("threshold", 0.95, "Mass threshold r.")
flags.DEFINE_integer("repeats", 30, "Timed calls of each.")
FLAGS = flags.FLAGS


def sorted_mass_mask(scores, threshold):
    """The rule with a full sort (ftwt_keras before the histogram): TopK, cumsum, compare.

    The kept filters are a prefix of the sorted order, so instead of un-sorting,
    each filter is compared with the last kept one (ties: by index).
    """
    from keras import ops

    from ftwt_keras.masks import DEAD_FILTER_TOLERANCE

    total = ops.sum(scores, axis=-1, keepdims=True)
    has_mass = total > 0
    normalized = scores / ops.where(has_mass, total, ops.ones_like(total))
    channels = scores.shape[-1]
    sorted_scores, order = ops.top_k(normalized, k=channels, sorted=True)  # lower index first on ties
    kept = ops.cumsum(sorted_scores, axis=-1) - threshold <= DEAD_FILTER_TOLERANCE
    last_score = ops.min(ops.where(kept, sorted_scores, 2.0), axis=-1, keepdims=True)
    at_last_score = ops.logical_and(kept, sorted_scores == last_score)
    last_index = ops.max(ops.where(at_last_score, order, -1), axis=-1, keepdims=True)
    index = ops.arange(channels, dtype=order.dtype)
    keep = ops.logical_or(
        normalized > last_score, ops.logical_and(normalized == last_score, index <= last_index)
    )
    return ops.cast(ops.logical_and(keep, has_mass), scores.dtype)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import numpy as np
    import tensorflow as tf

    import ftwt_keras as fk
    from ftwt_keras import masks

    widths = [layer.filters for layer in fk.gate(fk.models.mobilenet_v1(alpha=FLAGS.alpha)).gated_layers]
    rng = np.random.default_rng(0)
    scores = []
    for width in widths:
        rows = np.abs(rng.normal(size=(FLAGS.batch_size, width))) * rng.gamma(1.0, size=(1, width))
        rows[:, rng.random(width) < 0.1] = 0.0
        scores.append(tf.constant(rows.astype("float32")))
    rules = {
        "mass_mask (histogram)": tf.function(lambda xs: [masks.mass_mask(x, FLAGS.threshold) for x in xs]),
        "full sort (TopK) + cumsum": tf.function(lambda xs: [sorted_mass_mask(x, FLAGS.threshold) for x in xs]),
    }
    results = {name: [np.asarray(m) for m in rule(scores)] for name, rule in rules.items()}
    times = {name: [] for name in rules}
    for _ in range(FLAGS.repeats):
        for name, rule in rules.items():
            start = time.perf_counter()
            np.asarray(rule(scores)[-1])
            times[name].append(time.perf_counter() - start)
    differing = sum(int(np.sum(a != b)) for a, b in zip(*results.values()))
    decisions = sum(m.size for m in results["full sort (TopK) + cumsum"])
    print(f"MobileNetV1 x{FLAGS.alpha:g}: {len(widths)} gated layers of {min(widths)}-{max(widths)} filters, "
          f"batch {FLAGS.batch_size}, r = {FLAGS.threshold:g}, {os.cpu_count()} CPUs, TF {tf.__version__}")
    for name, values in times.items():
        print(f"  {name:24s} {1e3 * np.median(values):7.1f} ms (median of {FLAGS.repeats})")
    print(f"  decisions that differ: {differing} of {decisions}")
    return 0


if __name__ == "__main__":
    app.run(main)
