"""Predicting FTWT's FLOPs reduction before any FTWT training."""

import numpy as np

from ftwt_keras import flops, gating
from ftwt_keras.training import FTWTModel


def estimate_flops_reduction(model, dataset, threshold, target="mass", max_batches=None, layers_to_gate=None,
                             verbose=0):
    """The FLOPs reduction that threshold `r` promises, from the dense baseline.

    The paper's claim: the mask predictors learn to reproduce the heatmap-mass
    targets, so the reduction is fixed by `r` before training. This runs the
    *dense* baseline (every filter computed) on `dataset`, takes each gated
    unit's ground-truth target mask at `threshold`, and counts the MACs those
    masks would execute (same convention as `ftwt_keras.flops`, predictors
    included).

    Args:
        model: a plain trained model (or an `FTWTModel`, run with gates open).
        dataset: images as an array, or an iterable of `(images, labels)`
            batches.
        threshold: float in (0, 1].
        target: `"mass"` or `"uniform"`.
        max_batches: stop after this many batches (None: the whole dataset).
        layers_to_gate: for a plain `model`, the convs `gate()` will gate
            (as its argument); None: every conv.
        verbose: 0 silent, 1 a progress bar over the batches, 2 one line at
            the end.

    Returns:
        Float in (-inf, 1): 1 - mean executed MACs / dense MACs.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> base = fk.models.resnet_cifar(depth=20)
    >>> images = np.random.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> 0.0 < fk.estimate_flops_reduction(base, images, threshold=0.9) < 1.0
    True
    """
    # A plain model is gated (weights copied) only to locate its conv units; the
    # pass below runs it dense, so its outputs are the baseline's.
    if isinstance(model, FTWTModel):
        if layers_to_gate is not None:
            raise ValueError("`layers_to_gate` is for a plain model; an FTWTModel's gated layers are fixed.")
        gated = model
    else:
        gated = gating.gate(model, threshold, target=target, layers_to_gate=layers_to_gate)
    return _target_reduction(gated, dataset, apply_masks=False, threshold=threshold, target=target,
                             max_batches=max_batches, verbose=verbose)


def target_flops_reduction(model, dataset, apply_masks=True, max_batches=None, verbose=0):
    """The FLOPs reduction of an FTWT model's own targets, at its thresholds.

    What the predictors are being trained toward at this point of training.
    `estimate_flops_reduction` is this number for the dense baseline; during
    FTWT training the network changes and so do its targets. Comparing the
    three numbers splits the gap between the estimate and the achieved
    reduction (`ftwt_keras.flops.dynamic_macs`) into the targets' drift and
    the predictors' error.

    Args:
        model: an `FTWTModel`.
        dataset: images as an array, or an iterable of `(images, labels)`
            batches.
        apply_masks: True (default): targets of the gated network, each
            layer seeing the inputs its upstream gates leave (as in training).
            False: targets of the same weights run dense (every filter on).
        max_batches: stop after this many batches (None: the whole dataset).
        verbose: 0 silent, 1 a progress bar over the batches, 2 one line at
            the end.

    Returns:
        Float: 1 - mean MACs that the target masks execute / dense MACs.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20), threshold=0.9)
    >>> images = np.random.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> 0.0 < fk.target_flops_reduction(model, images, apply_masks=False) < 1.0
    True
    """
    if not isinstance(model, FTWTModel):
        raise ValueError(
            f"target_flops_reduction needs an FTWTModel; got {type(model).__name__}. For a plain "
            "baseline use estimate_flops_reduction(model, dataset, threshold)."
        )
    return _target_reduction(model, dataset, apply_masks=apply_masks, max_batches=max_batches, verbose=verbose)


def _target_reduction(gated, dataset, apply_masks, threshold=None, target=None, max_batches=None, verbose=0):
    """Mean reduction of the target masks of `gated` (thresholds/rules: its own when None)."""
    terms = gated.mac_terms

    def target_macs(records):
        return flops.executed_macs(terms, {name: record.target for name, record in records.items()})

    executed = list(flops.map_gate_records(gated, dataset, target_macs, targets=True, apply_masks=apply_masks,
                                           threshold=threshold, target=target, max_batches=max_batches,
                                           verbose=verbose))
    if not executed:
        raise ValueError("`dataset` is empty: the target reduction needs images.")
    return float(1.0 - np.concatenate(executed).mean() / float(gated.dense_macs))


__all__ = ["estimate_flops_reduction", "target_flops_reduction"]
