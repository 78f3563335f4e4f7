"""Calibration: what images like the model's say about each gated layer's masks.

A `Calibration` holds each gated layer's mean keep ratio and the static
capacity a compact layer gets in the export (`calibrate`); `"auto"` picks
each layer's computation from it (`ftwt_keras.export.planning`).
"""

import dataclasses
import math
import os

import numpy as np
from keras import ops

from ftwt_keras import _graph
from ftwt_keras.export.checks import ExportError


# A compact layer's static capacity: the most filters any calibration image
# kept on, plus this many standard deviations of that count over the
# calibration images. The margin follows how much the layer's count varies
# (a fixed 5% of the filters before 2026-12-04). On the `make demo` model, 2
# stds left none of the 10,000 CIFAR-10 test images beyond a capacity (5% of
# the filters: 0.10%; 0 stds: 10.9%), at capacities 1.26x the mean count
# (`benchmarks/capacity_overflow.py`). An image beyond a capacity is still
# exact: the masked-dense network recomputes it.
CAPACITY_STDS = 2.0


@dataclasses.dataclass
class Calibration:
    """What calibration images say about each gated layer's masks.

    `keep_ratios`: `{layer name: mean fraction of active filters}`.
    `capacities`: `{layer name: static number of filters a compact layer
    computes}`: the most active filters any calibration image had, plus
    `CAPACITY_STDS` standard deviations of that count over the images (at
    most all the filters). An image with more active filters than that at any
    compacted layer is computed again by the exact masked-dense path (one
    builtin IF at the end), so fewer or less typical calibration images cost
    speed, never exactness.
    """

    keep_ratios: dict
    capacities: dict

    def overflows(self, counts, layer_names=None):
        """bool (N,): which images keep more filters on than some layer's capacity.

        Args:
            counts: `gate_counts` of N images.
            layer_names: the layers to check (default: every calibrated
                layer, an upper bound: an export checks only the layers it
                compacts).
        """
        names = self.capacities if layer_names is None else layer_names
        beyond = [np.asarray(counts[name]) > self.capacities[name] for name in names]
        if not beyond:
            return np.zeros(len(next(iter(counts.values()), [])), bool)
        return np.any(beyond, axis=0)

    def with_capacity_ratio(self, model, ratio):
        """A copy whose capacities are at least `ratio` x each layer's mean count (at most its filters).

        For masks that do not vary by image, such as those `set_keep_ratio`
        draws: calibrated on them, a capacity is exactly the count, a margin
        that real masks, varying by image, never leave. Benchmarks of drawn
        masks use this to pay for the margin real masks need
        (`benchmarks/capacity_overflow.py` measures it on a trained model).
        """
        if ratio < 1.0:
            raise ExportError(f"`ratio` must be >= 1 (capacities below the mean count); got {ratio}.")
        filters = _filter_counts(model)
        capacities = {name: min(filters[name], max(capacity, int(math.ceil(ratio * self.keep_ratios[name]
                                                                              * filters[name] - 1e-6))))
                      for name, capacity in self.capacities.items()}
        return Calibration(dict(self.keep_ratios), capacities)

    def with_binomial_spread(self, model, num_images=64, capacity_stds=None, seed=0):
        """A copy whose capacities allow the spread of independent gates (at least the present ones).

        The capacities `calibrate` would give on `num_images` images if each
        filter were on independently with its layer's keep ratio (binomial
        counts): for masks that do not vary by image, such as those
        `set_keep_ratio` draws, whose own calibration leaves no margin. An
        estimate, not a bound: the `make demo` model's counts spread 0.15-0.89x
        the binomial amount up to block 5's depthwise conv (filters nearly always
        on or off) and 0.89-2.50x from block 5's pointwise conv on
        (`benchmarks/capacity_overflow.py --per_layer`, all 10,000 test images).
        """
        rng = np.random.default_rng(seed)
        filters = _filter_counts(model)
        counts = {name: rng.binomial(filters[name], min(1.0, self.keep_ratios[name]), num_images)
                  for name in self.capacities}
        spread = _capacities_from_counts(counts, filters, capacity_stds)
        capacities = {name: max(capacity, spread[name]) for name, capacity in self.capacities.items()}
        return Calibration(dict(self.keep_ratios), capacities)


def gate_counts(model, images, batch_size=32, targets=False):
    """`{gated layer name: int array (N,)}`: how many filters each gate keeps on for each of `images`.

    `targets=True` counts the filters of the gates' training targets instead
    (see `calibrate`).
    """
    from ftwt_keras import flops

    def on_counts(records):
        return {name: ops.sum(record.target if targets else record.mask, axis=-1) for name, record in records.items()}

    counts = {}
    for batch_counts in flops.map_gate_records(model, images, on_counts, batch_size=batch_size, targets=targets,
                                               apply_masks=not targets):
        for name, count in batch_counts.items():
            counts.setdefault(name, []).append(np.rint(count))
    return {name: np.concatenate(parts).astype(np.int64) for name, parts in counts.items()}


def calibrate(model, images, batch_size=32, capacity_stds=None, targets=False):
    """`Calibration` of `model`'s gates on raw `images` (N, H, W, C).

    With `targets=True` it calibrates on the masks the predictors are trained
    toward (each gate's heatmap target at its threshold, every filter
    computed) instead of the predictors' own masks. That works before any
    FTWT training: gated at threshold r, a dense baseline's targets say which
    gates will pay in the export (`paying_gates(model, calibration=...)`), so
    that only those are gated and trained (`gate(base, layers_to_gate=...)`,
    the recipes' `--gate_only_paying`). The predictors then learn masks close
    to these, but keep somewhat more filters on (the FLOPs estimate's error);
    `paying_gates` on the trained model checks.

    Args:
        model: an `ftwt_keras.FTWTModel`.
        images: raw images like those the model will see (an array, or an
            iterable of batches); a few dozen suffice.
        batch_size: images per Keras forward pass (for an array).
        capacity_stds: the capacity margin in standard deviations of each
            layer's count over `images` (default `CAPACITY_STDS`).
        targets: calibrate on the gates' training targets (see above).

    Example:

    >>> import ftwt_keras as fk, numpy as np
    >>> from ftwt_keras.export import calibrate
    >>> model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    >>> calibration = calibrate(model, np.random.rand(8, 32, 32, 3).astype("float32") * 255)
    >>> sorted(calibration.capacities)[:2]
    ['block10_dw', 'block10_pw']
    """
    if isinstance(images, np.ndarray):
        images = checked_images(images, _graph.as_functional(model.network))
    counts = gate_counts(model, images, batch_size, targets=targets)
    filters = _filter_counts(model)
    keep_ratios = {name: float(count.mean() / filters[name]) for name, count in counts.items()}
    return Calibration(keep_ratios, _capacities_from_counts(counts, filters, capacity_stds))


def _filter_counts(model):
    return {layer.name: layer.filters for layer in model.gated_layers}


def _capacities_from_counts(counts, filters, capacity_stds=None):
    """Each layer's capacity: the most filters any image kept on plus `capacity_stds` stds of the count."""
    stds = CAPACITY_STDS if capacity_stds is None else float(capacity_stds)
    if stds < 0:
        raise ExportError(f"`capacity_stds` must be >= 0; got {stds}.")
    capacities = {}
    for name, count in counts.items():
        spread = float(np.std(count, ddof=1)) if len(count) > 1 else 0.0
        margin = int(math.ceil(stds * spread))
        capacities[name] = min(filters[name], max(1, int(np.max(count)) + margin))
    return capacities


def _calibration_of(model, calibration_images, calibration, capacity_stds=None, needed=True):
    """The `Calibration` that `convert`'s `calibration_images` or `calibration` argument gives.

    None when neither is given or not `needed` (a dense export): the arguments are checked anyway.
    """
    if calibration is not None:
        if calibration_images is not None:
            raise ExportError("Pass `calibration_images` or a precomputed `calibration`, not both.")
        if not isinstance(calibration, Calibration):
            raise ExportError(f"`calibration` must be a `Calibration` (see `calibrate`); got {type(calibration).__name__}.")
        return calibration if needed else None
    if calibration_images is None or not needed:
        return None
    return calibrate(model, np.asarray(calibration_images, np.float32), capacity_stds=capacity_stds)


def load_calibration_images(spec, model=None, what="Calibration images", limit=None):
    """Images from a command-line value (calibration or checking): a `.npy` file, an image folder or `NAME:SPLIT`.

    A `.npy` file holds raw images `(N, H, W, C)`; `NAME:SPLIT` reads a CIFAR
    split through tfds (e.g. `cifar10:train[:64]`), resized to `model`'s
    input where it is not 32x32 (as the recipes' `--image_size` trains); a
    folder, `PATH` or `PATH[:N]` (N of its images), reads the image files
    under it, such as photos from the device, resized to `model`'s input
    (`data.folder_arrays`).
    With `model` (an `FTWTModel` or a plain Keras model), an `ExportError`
    naming `what` unless they are a batch of its input. `limit`: at most that
    many (a folder's other files are not read).
    """
    network = None if model is None else _graph.as_functional(getattr(model, "network", model))
    input_size = None  # (height, width) that folder and CIFAR images are resized to
    if network is not None and None not in network.inputs[0].shape[1:3]:
        input_size = tuple(int(side) for side in network.inputs[0].shape[1:3])
    folder, take = _folder_and_take(spec)
    if limit is not None:
        take = limit if take is None else min(take, limit)
    if os.path.isdir(folder):
        if network is None:
            raise ExportError(f"{what}: the images of a folder ({spec!r}) are resized to the model's input; "
                              "pass the model.")
        from ftwt_keras import data

        if input_size is None:
            raise ExportError(f"{what}: the model's input has no fixed size to resize the images of {spec!r} to; "
                              "give them as a .npy file.")
        try:
            images = data.folder_arrays(folder, input_size, take=take)
        except ValueError as error:
            raise ExportError(f"{what}: {error}") from None
    elif spec.endswith(".npy"):
        if not os.path.exists(spec):
            raise ExportError(f"Image file {spec!r} does not exist.")
        images = np.load(spec).astype(np.float32)
    else:
        name, _, split = spec.partition(":")
        if name not in ("cifar10", "cifar100") or not split:
            raise ExportError(
                f"Images {spec!r}: pass a .npy file of raw images (N, H, W, C), a folder of image files (PATH, or "
                "PATH[:N] for N of them), or a CIFAR split as NAME:SPLIT, e.g. cifar10:train[:64]."
            )
        from ftwt_keras import data

        # `limit` as tfds's take: only those images are decoded and resized (all 10,000 at 224x224: 6 GB).
        images = data.cifar_arrays(name, split, take=limit, image_size=input_size)[0]
    images = images[:limit]
    return images if network is None else checked_images(images, network, what=what)


def _folder_and_take(spec):
    """`PATH[:N]` -> `(PATH, N)`; anything else -> `(spec, None)`."""
    path, bracket, rest = spec.rpartition("[:")
    if bracket and rest.endswith("]") and rest[:-1].isdigit():
        return path, int(rest[:-1])
    return spec, None


def checked_images(images, network, what="Calibration images"):
    """`images` as float32, or an `ExportError` naming `what` unless they are a non-empty batch of `network`'s input."""
    images = np.asarray(images, np.float32)
    expected = tuple(int(d) for d in network.inputs[0].shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise ExportError(
            f"{what} must be a non-empty array (N, {', '.join(map(str, expected))}) of raw "
            f"pixels like the model's input; got shape {images.shape}."
        )
    return images
