"""Stand-ins for trained masks in benchmarks: masks drawn at a fixed keep ratio, random batch-norm statistics.

Untrained networks pass every image through nearly the same gates; these
make a random-weight FTWT model behave, for timing, like a trained one at a
chosen keep ratio (`edge/benchmark.py`).
"""

import keras
import numpy as np

from ftwt_keras.export.checks import ExportError

# Drawn masks keep the same filters on for every image, so calibrating on them gives each compact layer exactly its
# count as capacity, which real masks (varying by image) never allow. Benchmarks give them this margin instead:
# the capacities the default calibration gave the `make demo` model's gates, as a multiple of their mean counts,
# with no overflow on the 10,000 test images (benchmarks/capacity_overflow.py). The --drawn_capacities defaults of
# `edge/benchmark.py` and `benchmarks/edge_ablation.py` write the same value as a literal: those flags are defined
# before the CLIs import the library (which they do lazily, for a fast --help).
DRAWN_CAPACITY_RATIO = 1.26


def set_keep_ratio(model, keep, seed=0):
    """Makes every gate of `model` keep a fixed random `keep` fraction of its filters.

    For benchmarks of untrained models: each predictor's kernel is zeroed and
    its bias set to +50 for `round(keep * filters)` (at least 1) randomly
    drawn filters and -50 for the others, so every image gets the same masks.

    Args:
        model: an `ftwt_keras.FTWTModel` (changed in place and returned).
        keep: the fraction in (0, 1] for every gate, or `{gated layer name:
            fraction}` naming each gated layer (e.g. the `keep_ratios` of a
            `Calibration` on the gates' targets: masks as sparse as training
            will aim at, layer by layer).
        seed: for the drawn filters.
    """
    names = [layer.name for layer in model.gated_layers]
    keeps = dict(keep) if isinstance(keep, dict) else {name: keep for name in names}
    missing = [name for name in names if name not in keeps]
    if missing:
        raise ExportError(f"`keep` has no keep ratio for the gated layers {missing}: name every gated layer.")
    for name in names:
        if not 0.0 < keeps[name] <= 1.0:
            raise ExportError(f"`keep` must be in (0, 1]; got {keeps[name]} for '{name}'.")
    rng = np.random.default_rng(seed)
    for layer in model.gated_layers:
        units = layer.filters
        count = max(1, int(round(keeps[layer.name] * units)))
        bias = np.full(units, -50.0, np.float32)
        bias[rng.choice(units, count, replace=False)] = 50.0
        layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, np.float32))
        layer.predictor.bias.assign(bias)
    return model


def drawn_at_targets(baseline, images, threshold, seed=0, **gate_options):
    """`baseline` gated at `threshold`, its masks drawn at each gate's mean target keep ratio: a stand-in to time.

    Before any FTWT training there are no trained masks to time. This gates
    `baseline` (`ftwt_keras.gate(baseline, threshold, **gate_options)`: pass
    the `target`, `layers_to_gate` and predictor options training will use,
    since the predictors' cost counts), calibrates on the gates' training
    targets over `images` (`calibrate(..., targets=True)`: each layer's mean
    keep ratio, and capacities for its images' counts) and draws each
    gate's fixed mask at its layer's ratio (`set_keep_ratio`). The
    predictors then keep somewhat more filters than their targets, as the
    FLOPs estimate says.

    >>> import ftwt_keras as fk, numpy as np
    >>> from ftwt_keras.export import drawn_at_targets
    >>> images = np.random.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> model, calibration = drawn_at_targets(fk.models.vgg16_bn(), images, 0.3, target="uniform")
    >>> round(calibration.keep_ratios["conv2"], 2)
    0.31

    Args:
        baseline: a plain Keras model (the dense network to gate).
        images: raw images like those the model will see (an array, or an
            iterable of batches).
        threshold: r, as `gate`'s.
        seed: for the drawn filters.
        **gate_options: the other arguments of `ftwt_keras.gate`.

    Returns:
        `(model, calibration)`: the gated `FTWTModel` with drawn masks and the
        targets' `Calibration`.
    """
    from ftwt_keras import gating
    from ftwt_keras.export.calibration import calibrate

    model = gating.gate(baseline, threshold=threshold, **gate_options)
    calibration = calibrate(model, images, targets=True)
    return set_keep_ratio(model, calibration.keep_ratios, seed=seed), calibration


def randomize_batch_norm(model, seed=0):
    """Gives every BatchNormalization layer of a plain Keras `model` random statistics and affine terms.

    In place, before `gate` (which folds them into its GatedConv layers). For
    benchmarks of untrained models. Freshly built, batch norm's shifts are
    all 0, so a depthwise filter that is on over an input channel that is off
    would output exactly 0, and the export skips carrying such constants. A
    trained network has shifts of both signs; so does this one, so that the
    export pays for them as it would there. Statistics drawn without regard
    to the activations let the signal die with depth, so the logits hardly
    depend on the image: fine for timing with drawn masks, useless for
    checking exactness. Returns `model`.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.2, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
            if layer.scale:  # keras.applications.InceptionV3's have no gamma
                layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0.1, 0.3, channels).astype("float32"))
    return model
