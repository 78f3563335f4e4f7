"""Self-supervised gate targets: which filters of a layer should fire.

FTWT trains each mask predictor toward a binary target computed from the
layer's own (dense) output. Both rules below follow the official FTWT code:
a filter's score is the spatial maximum of its absolute activation.

All functions take channels-last activations, `(batch, height, width,
channels)` (or already pooled `(batch, channels)`), and return a float mask of
shape `(batch, channels)` holding 0.0 and 1.0. They are written in `keras.ops`
and run on any Keras backend.
"""

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
    sorted in decreasing order; a filter is on while the cumulative sum,
    including itself, stays within `threshold + 1e-5`. The filter whose score
    makes the sum cross `threshold` is off. `threshold=1.0` keeps every filter
    whose normalized score is above 1e-5, i.e. drops only dead filters.

    A sample whose activations are all zero has no mass to distribute: every
    filter is dead and its mask is **all zeros** (skipping the filters gives the
    same all-zero output). The result never contains NaN.

    Args:
        activations: `(batch, height, width, channels)` or `(batch, channels)`.
        threshold: float in (0, 1], the fraction of heatmap mass to keep.

    Returns:
        Float tensor `(batch, channels)` of 0.0 / 1.0.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.5, 0.3, 0.2, 0.0]], "float32")
    >>> np.asarray(mass_mask(x, 0.8)).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    threshold = check_threshold(threshold)
    scores = filter_scores(activations)
    dtype = scores.dtype
    total = ops.sum(scores, axis=-1, keepdims=True)
    has_mass = total > 0
    normalized = scores / ops.where(has_mass, total, ops.ones_like(total))
    if threshold >= 1.0:
        keep = normalized > DEAD_FILTER_TOLERANCE
    else:
        channels = scores.shape[-1]
        # top_k orders by score, the lower index first among equal scores.
        sorted_scores, order = ops.top_k(normalized, k=channels, sorted=True)
        cumulative = ops.cumsum(sorted_scores, axis=-1)
        # Scores are >= 0, so the kept filters are a prefix of that order...
        kept = cumulative - threshold <= DEAD_FILTER_TOLERANCE
        # ...i.e. every filter ranked at or above the last kept one: compare
        # with it rather than un-sort (a second sort and a gather).
        last_score = ops.min(
            ops.where(kept, sorted_scores, ops.full_like(sorted_scores, 2.0)),
            axis=-1,
            keepdims=True,
        )
        at_last_score = ops.logical_and(kept, sorted_scores == last_score)
        last_index = ops.max(
            ops.where(at_last_score, order, ops.full_like(order, -1)), axis=-1, keepdims=True
        )
        index = ops.arange(channels, dtype=order.dtype)
        keep = ops.logical_or(
            normalized > last_score,
            ops.logical_and(normalized == last_score, index <= last_index),
        )
        keep = ops.logical_and(keep, has_mass)
    return ops.cast(keep, dtype)


def uniform_mask(activations, prune_ratio):
    """Uniform target: drop a fixed fraction of the lowest filters, plus dead ones.

    `int(prune_ratio * channels)` filters with the lowest scores are off, and so
    is every filter whose score is at most 1e-5. An all-zero sample therefore
    gets an all-zero mask. The result never contains NaN.

    Args:
        activations: `(batch, height, width, channels)` or `(batch, channels)`.
        prune_ratio: float in [0, 1), the fraction of filters to drop.

    Returns:
        Float tensor `(batch, channels)` of 0.0 / 1.0.

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
    scores = filter_scores(activations)
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
]
