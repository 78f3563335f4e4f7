"""How exactly a `.tflite` export reproduces its Keras model, image by image.

A float32 export computes the same function as Keras up to float32 summation
order. That order can decide a gate whose logit lies within rounding of 0, so
an image with such a gate may take other filters in the two and its logits
differ by more than rounding; so can a capped layer's (`GatedConv(capacity=k)`)
whose k-th and next positive logits lie within rounding of each other.
`agreement` reports each image's nearest gate to either boundary
(`gate_margin`) beside its logit difference, so such images can be told apart
from a wrong export.
"""

import numpy as np

from ftwt_keras import _graph
from ftwt_keras.export.calibration import checked_images
from ftwt_keras.export.runtime import run

# The edge issue's bound on a float32 export's logit difference, as a fraction of the logit range.
LOGIT_TOLERANCE = 1e-3


def keras_reference(model, images, batch_size=250):
    """What `agreement` compares a `.tflite` with: Keras's logits on `images` and each image's nearest gate.

    One Keras pass; pass the result as `agreement(..., reference=)` to check several `.tflite` runs on
    the same images (other APIs, other machines) against one pass.

    Args:
        model: the `FTWTModel` the `.tflite` files were exported from.
        images: `(N, H, W, C)` raw pixels, as the model takes them.
        batch_size: Keras's batch size.

    Returns:
        A dict: `logits` `(N, classes)` and `gate_margin` `(N,)` (see `agreement`).

    Raises:
        ExportError: `images` are not a batch of the model's input.
    """
    from keras import ops

    from ftwt_keras import flops

    def nearest_gate(records):  # each image's smallest distance to a gate's decision boundary
        margins = []
        for record in records.values():
            margins.append(ops.min(ops.abs(record.logits), axis=1))
            capacity = record.layer.capacity
            if capacity is not None and capacity < record.logits.shape[-1]:
                top = ops.top_k(record.logits, capacity + 1)[0]  # descending
                # The k-th and the next swap places only where the next is on too (> 0).
                binding = top[:, capacity] > 0
                margins.append(ops.where(binding, top[:, capacity - 1] - top[:, capacity], float("inf")))
        return ops.min(ops.stack(margins, axis=1), axis=1)

    images = checked_images(images, _graph.as_functional(model.network), what="The images to check")
    # One Keras pass for both the logits and the gates (as `predict` computes them).
    margins, logits = zip(*flops.map_gate_records(model, images, nearest_gate, batch_size=batch_size,
                                                  with_outputs=True))
    return {"logits": np.concatenate(logits), "gate_margin": np.concatenate(margins)}


def agreement(model, flatbuffer, images, num_threads=1, batch_size=250, api="interpreter", logits=None,
              reference=None):
    """Runs `flatbuffer` and `model` on `images` and compares them per image.

    Args:
        model: the `FTWTModel` the `.tflite` was exported from.
        flatbuffer: the `.tflite` bytes or path (batch 1, as `convert` writes it).
        images: `(N, H, W, C)` raw pixels, as the model takes them.
        num_threads: CPU threads of the `.tflite`.
        batch_size: Keras's batch size.
        api: the LiteRT API to run the `.tflite` with (`runtime.RUNTIMES`).
        logits: `(N, classes)`, the `.tflite`'s logits on `images` computed
            elsewhere (another machine: `edge/run_tflite.py`); then
            `flatbuffer` is not run here (it may be None).
        reference: `keras_reference(model, images)`, computed once for
            several checks on the same images; then Keras is not run here.

    Returns:
        A dict of `(N,)` arrays: `logit_error` (the largest absolute logit
        difference, as a fraction of the range of Keras's logits over all
        `images`), `same_top1` (bool) and `gate_margin` (how near the image's
        nearest gate is to flipping in Keras: its smallest |gate logit|, or
        in a capped layer whose cap binds, if smaller, the gap between the
        k-th largest logit and the next).

    Raises:
        ExportError: `images` are not a batch of the model's input.
        ValueError: `logits` or `reference` are not one row per image.

    Example:

    >>> import numpy as np, ftwt_keras as fk
    >>> from ftwt_keras import export
    >>> model = fk.gate(fk.models.resnet_cifar(depth=20))
    >>> images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    >>> checked = export.agreement(model, export.convert(model), images)
    >>> bool(checked["same_top1"].all()), bool((checked["logit_error"] <= export.LOGIT_TOLERANCE).all())
    (True, True)
    """
    images = checked_images(images, _graph.as_functional(model.network), what="The images to check")
    if reference is None:
        reference = keras_reference(model, images, batch_size)
    expected = np.asarray(reference["logits"], np.float32)
    if len(expected) != len(images) or len(reference["gate_margin"]) != len(images):
        raise ValueError(f"`reference` must be `keras_reference` on these {len(images)} images; it holds "
                         f"{len(expected)} images' logits.")
    if logits is None:
        actual = run(flatbuffer, images, num_threads, api)
    else:
        actual = np.asarray(logits, np.float32)
        if actual.shape != expected.shape:
            raise ValueError(f"`logits` must be the .tflite's logits on the {len(images)} images, "
                             f"{expected.shape}; got {actual.shape}.")
    logit_range = max(float(expected.max() - expected.min()), np.finfo(np.float32).tiny)
    return {
        "logit_error": np.abs(actual - expected).max(axis=1) / logit_range,
        "same_top1": actual.argmax(axis=1) == expected.argmax(axis=1),
        "gate_margin": np.asarray(reference["gate_margin"]),
    }


def agreement_report(checked, tolerance=LOGIT_TOLERANCE):
    """One sentence on an `agreement` result: top-1 agreement, logits within `tolerance`, the largest difference.

    Example:

    >>> import numpy as np
    >>> agreement_report({"logit_error": np.array([1e-7, 2e-3]), "same_top1": np.array([True, True]),
    ...                   "gate_margin": np.array([0.4, 1e-6])})
    "Against Keras on 2 images: the same top-1 on 2, logits within 0.001 of Keras's logit range on 1 (largest difference 2.0e-03 of the range); each of the 1 beyond has a gate within 1.0e-06 of flipping in Keras (its logit that near 0, or a capped layer's k-th and next logits that near each other)."
    """
    error = checked["logit_error"]
    count = len(error)
    within = int(np.sum(error <= tolerance))
    line = (f"Against Keras on {count} images: the same top-1 on {int(np.sum(checked['same_top1']))}, logits "
            f"within {tolerance:g} of Keras's logit range on {within} (largest difference {float(error.max()):.1e} "
            "of the range)")
    if within < count:  # say how near a gate of theirs is to flipping, for telling rounding from an error
        margin = float(checked["gate_margin"][error > tolerance].max())
        line += (f"; each of the {count - within} beyond has a gate within {margin:.1e} of flipping in Keras (its "
                 "logit that near 0, or a capped layer's k-th and next logits that near each other)")
    return line + "."


__all__ = ["LOGIT_TOLERANCE", "agreement", "agreement_report", "keras_reference"]
