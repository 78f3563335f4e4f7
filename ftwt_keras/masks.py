"""Self-supervised gate targets: which filters of a layer should fire.

FTWT trains each mask predictor toward a binary target computed from the
layer's own (dense) output. Both rules below follow the official FTWT code:
a filter's score is the spatial maximum of its absolute activation.

All functions take channels-last activations, `(batch, height, width,
channels)` (or already pooled `(batch, channels)`), and return a float mask of
shape `(batch, channels)` holding 0.0 and 1.0. They are written in `keras.ops`
and run on any Keras backend.
"""

import keras
import numpy as np
from keras import ops

# Scores at or below this value count as "dead" (the official code's delta).
DEAD_FILTER_TOLERANCE = 1e-5


def filter_scores(activations):
    """Per-sample, per-filter heatmap score: the spatial max of `|activations|`.

    Args:
        activations: tensor of shape `(batch, height, width, channels)` or
            `(batch, channels)`.

    Returns:
        Tensor of shape `(batch, channels)`.
    """
    activations = ops.abs(ops.convert_to_tensor(activations))
    rank = len(activations.shape)
    if rank == 4:
        return ops.max(activations, axis=(1, 2))
    if rank == 2:
        return activations
    raise ValueError(
        "Expected channels-last activations of rank 4 (batch, height, width, "
        f"channels) or rank 2 (batch, channels); got shape {activations.shape}."
    )


def _float32_scores(activations):
    """`filter_scores` in float32, where the targets' rules compute.

    Under mixed precision the activations are float16 or bfloat16: a float16
    sum of a layer's scores can overflow (65504), and bfloat16's 8-bit
    mantissa would move the cumulative sum's crossing.
    """
    return ops.cast(filter_scores(activations), "float32")


def check_threshold(threshold, name="threshold"):
    """Raises a `ValueError` unless `0 < threshold <= 1`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(
            f"`{name}` must be a number in (0, 1]; got {threshold!r}."
        )
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(
            f"`{name}` must be in (0, 1] (the fraction of heatmap mass to "
            f"keep; 1.0 drops only dead filters); got {threshold}."
        )
    return float(threshold)


def mass_mask(activations, threshold):
    """Heatmap-mass target: the filters that carry a fraction `threshold` of mass.

    Scores (see `filter_scores`) are divided by their sum over filters and
    sorted in decreasing order (the lower index first among equal scores); a
    filter is on while the cumulative sum, including itself, stays within
    `threshold + 1e-5`. The filter whose score makes the sum cross `threshold`
    is off. `threshold=1.0` keeps every filter whose normalized score is above
    1e-5, i.e. drops only dead filters.

    A sample whose activations are all zero has no mass to distribute: every
    filter is dead and its mask is **all zeros** (skipping the filters gives the
    same all-zero output). The result never contains NaN.

    The rule is the official code's sort and cumulative sum, computed without
    sorting every filter (see `_mass_prefix`): it runs in every gated layer of
    every training step.

    Args:
        activations: `(batch, height, width, channels)` or `(batch, channels)`.
        threshold: float in (0, 1], the fraction of heatmap mass to keep.

    Returns:
        float32 tensor `(batch, channels)` of 0.0 / 1.0 (whatever the activations' dtype).

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.5, 0.3, 0.2, 0.0]], "float32")
    >>> np.asarray(mass_mask(x, 0.8)).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    threshold = check_threshold(threshold)
    scores = _float32_scores(activations)
    dtype = scores.dtype
    total = ops.sum(scores, axis=-1, keepdims=True)
    has_mass = total > 0
    normalized = scores / ops.where(has_mass, total, ops.ones_like(total))
    if threshold >= 1.0:
        keep = normalized > DEAD_FILTER_TOLERANCE
    else:
        keep = ops.logical_and(_mass_prefix(normalized, threshold), has_mass)
    return ops.cast(keep, dtype)


# Score levels of `_mass_prefix`'s histogram. More levels leave fewer filters to
# sort in the crossing level but make the histogram longer; 128 was fastest
# for 32..1024 filters at batch 128 on CPU.
MASS_LEVELS = 128


def _mass_prefix(normalized, threshold):
    """Which filters the sort-and-cumsum rule keeps, from `(batch, C)` shares.

    Equivalent to sorting each row in decreasing order and keeping the prefix
    whose cumulative sum stays within `threshold + DEAD_FILTER_TOLERANCE`, but
    without a full sort (on CPU, TopK and Cumsum over every filter were the
    FTWT train step's largest extra cost, more than the predictors' matmuls).
    A selection in two steps:

    1. Each score gets one of `MASS_LEVELS` levels, linear in the score up to
       the row's maximum: a monotone map, so a higher level never holds a lower
       score and equal scores share a level. The mass of each level (one
       segment sum) and the mass at or above it (a small matmul) tell the level
       where the cumulative sum crosses the threshold: every filter above it
       is on, every filter below it off.
    2. Only the filters of that crossing level are sorted (a top-k of the few
       of them per row), their cumulative sum added to the mass above, and the
       kept ones scattered back.

    Sums are taken in another order than a sequential cumsum, so a decision
    can differ from it only where the cumulative sum is within float rounding
    (~1e-7) of `threshold + DEAD_FILTER_TOLERANCE`. The top-k's k is the
    largest crossing level's size, known only at run time; under XLA, whose
    shapes must be static, it is every filter (see `_static_shapes_required`),
    which gives the same decisions.
    """
    levels = MASS_LEVELS
    batch = ops.shape(normalized)[0]
    channels = normalized.shape[-1]
    peak = ops.max(normalized, axis=-1, keepdims=True)
    scale = levels / ops.where(peak > 0, peak, ops.ones_like(peak))
    # Truncation is floor for scores >= 0; the top score lands in the top level.
    level = ops.cast(ops.minimum(normalized * scale, levels - 1), "int32")
    rows = ops.arange(batch, dtype="int32")[:, None]
    level_mass = ops.segment_sum(
        ops.reshape(normalized, (-1,)),
        ops.reshape(rows * levels + level, (-1,)),
        num_segments=batch * levels,
    )
    level_mass = ops.reshape(level_mass, (-1, levels))
    # mass_from[:, k]: the mass of levels >= k (column `levels` is empty).
    at_or_above = np.tril(np.ones((levels, levels + 1), "float32"))  # [j, k] = j >= k
    mass_from = ops.matmul(level_mass, ops.convert_to_tensor(at_or_above, level_mass.dtype))
    crossed = mass_from - threshold > DEAD_FILTER_TOLERANCE  # true for levels 0..cut
    # The crossing level; -1 if even the whole row stays within the threshold.
    cut = ops.sum(ops.cast(crossed, "int32"), axis=-1, keepdims=True) - 1
    mass_above_cut = ops.take_along_axis(mass_from, cut + 1, axis=-1)
    in_cut = level == cut
    # Sort the crossing level's filters only; the others are padded with -1.
    # Rows with fewer candidates than k get padding in their top k: the
    # `values >= 0` below keeps it off even where rounding lets the cumulative
    # sum of the whole crossing level stay under the threshold.
    if _static_shapes_required():
        k = channels  # the candidates first, then the -1 padding: the same prefix
    else:
        k = ops.maximum(ops.max(ops.sum(ops.cast(in_cut, "int32"), axis=-1)), 1)
    values, order = ops.top_k(ops.where(in_cut, normalized, -ops.ones_like(normalized)), k=k)
    cumulative = mass_above_cut + ops.cumsum(ops.maximum(values, 0.0), axis=-1)
    kept = ops.logical_and(values >= 0, cumulative - threshold <= DEAD_FILTER_TOLERANCE)
    kept_in_cut = scatter_rows(order, ops.cast(kept, "int32"), (batch, channels))
    return ops.logical_or(level > cut, kept_in_cut > 0)


def scatter_rows(indices, updates, shape):
    """A `shape` = `(batch, channels)` tensor of zeros with `updates[b, j]` at `[b, indices[b, j]]`.

    Each row's `indices` (e.g. a top-k's) must be distinct. A `scatter_update`
    of zeros rather than a `scatter`: the same where indices are distinct, and
    one indexed write on PyTorch, where Keras's `scatter` loops in Python over
    every index (53% of an FTWT train step there).
    """
    rows = ops.broadcast_to(ops.arange(shape[0], dtype=indices.dtype)[:, None], ops.shape(indices))
    return ops.scatter_update(
        ops.zeros(shape, updates.dtype),
        ops.stack([ops.reshape(rows, (-1,)), ops.reshape(indices, (-1,))], axis=-1),
        ops.reshape(updates, (-1,)),
    )


def _static_shapes_required():
    """True while tracing for XLA, which needs every shape before it runs.

    That is always on the JAX backend (`jax.jit`; its eager ops compile
    too) and under `jit_compile=True` on the TensorFlow one, which Keras picks by default on a GPU
    (`compile(jit_compile="auto")`). `jax.jit` refuses a top-k whose k is
    a run-time value; TensorFlow 2.21's XLA bridge accepted it, silently,
    and its mass targets differed from the graph's on 1-16% of a batch's
    decisions (the most where scores tie).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # moved in a later TensorFlow: the static path is right everywhere, only slower
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def uniform_mask(activations, prune_ratio):
    """Uniform target: drop a fixed fraction of the lowest filters, plus dead ones.

    `int(prune_ratio * channels)` filters with the lowest scores are off, and so
    is every filter whose score is at most 1e-5. An all-zero sample therefore
    gets an all-zero mask. The result never contains NaN.

    Args:
        activations: `(batch, height, width, channels)` or `(batch, channels)`.
        prune_ratio: float in [0, 1), the fraction of filters to drop.

    Returns:
        float32 tensor `(batch, channels)` of 0.0 / 1.0 (whatever the activations' dtype).

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.5, 0.3, 0.2, 0.0]], "float32")
    >>> np.asarray(uniform_mask(x, 0.25)).tolist()
    [[1.0, 1.0, 1.0, 0.0]]
    """
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)):
        raise ValueError(f"`prune_ratio` must be a number in [0, 1); got {prune_ratio!r}.")
    if not 0.0 <= float(prune_ratio) < 1.0:
        raise ValueError(
            f"`prune_ratio` must be in [0, 1) (the fraction of filters to "
            f"drop); got {prune_ratio}."
        )
    scores = _float32_scores(activations)
    channels = scores.shape[-1]
    num_pruned = int(float(prune_ratio) * channels)
    alive = scores > DEAD_FILTER_TOLERANCE
    if num_pruned == 0:
        return ops.cast(alive, scores.dtype)
    ranks = ops.argsort(ops.argsort(scores, axis=-1), axis=-1)  # 0 = lowest
    keep = ops.logical_and(ranks >= num_pruned, alive)
    return ops.cast(keep, scores.dtype)


def target_mask(activations, threshold, target="mass"):
    """Dispatches to `mass_mask` or `uniform_mask`.

    For `target="uniform"`, `threshold` is the fraction of filters kept, so
    that in both rules `threshold=1.0` drops only dead filters.
    """
    if target == "mass":
        return mass_mask(activations, threshold)
    if target == "uniform":
        return uniform_mask(activations, 1.0 - check_threshold(threshold))
    raise ValueError(f"`target` must be 'mass' or 'uniform'; got {target!r}.")


__all__ = [
    "DEAD_FILTER_TOLERANCE",
    "filter_scores",
    "check_threshold",
    "mass_mask",
    "uniform_mask",
    "target_mask",
    "scatter_rows",
]
