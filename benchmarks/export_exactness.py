"""How exactly the dynamic .tflite reproduces Keras, pooled over every FTWT model cifar_cpu.py checked.

    python benchmarks/export_exactness.py --runs=runs/cifar_cpu,runs/cifar_cpu_s1,runs/cifar_cpu_s2

`benchmarks/cifar_cpu.py` runs each trained FTWT model's dynamic .tflite on
every test image beside Keras and stores, per image, the largest logit
difference (as a fraction of Keras's logit range), whether the top-1 agrees,
and the smallest |gate logit| (how close the image's nearest gate is to
flipping) in `<run>/analysis.npz`. This pools every `r*/analysis.npz` under
the given output folders and prints how many image-model pairs agree to
float32 rounding, how many differ by more but stay within the edge issue's
bound, how many exceed it, and how close to 0 a gate logit of each image that
differs by more than rounding is.
"""

import glob
import os

from absl import app, flags

flags.DEFINE_list("runs", None, "cifar_cpu.py output folders (each holding r*/analysis.npz).", required=True)
flags.DEFINE_float("tolerance", 1e-3, "The edge issue's bound on the logit difference, as a fraction of the range.")
flags.DEFINE_float("rounding", 1e-6, "Logit differences up to this fraction of the range count as float32 rounding.")
FLAGS = flags.FLAGS


def pooled_agreement(analyses, tolerance=1e-3, rounding=1e-6):
    """Pools the per-image .tflite-vs-Keras checks of several analyses.

    Args:
        analyses: mappings with `tflite_logit_error`, `tflite_same_top1` and
            `gate_margin` per image (cifar_cpu.py's analysis.npz).
        tolerance: the bound on the logit difference (fraction of the logit range).
        rounding: differences up to this count as float32 rounding.

    Returns:
        A dict: `pairs`, `same_top1`, `within_rounding`, `within_tolerance`
        (counts of image-model pairs), `beyond_rounding` (the differences
        above `rounding`, sorted) and `largest_gate_margin_beyond_rounding`
        (the largest smallest-|gate logit| among those images; None if none).

    Example:

    >>> import numpy as np
    >>> check = {"tflite_logit_error": np.array([1e-7, 2e-3]), "tflite_same_top1": np.array([True, True]),
    ...          "gate_margin": np.array([0.4, 1e-6])}
    >>> pooled_agreement([check])["within_tolerance"]
    1
    """
    import numpy as np

    pairs = same_top1 = within_rounding = within_tolerance = 0
    beyond, margins = [], []
    for analysis in analyses:
        error = np.asarray(analysis["tflite_logit_error"], dtype=np.float64)
        pairs += error.size
        same_top1 += int(np.sum(analysis["tflite_same_top1"]))
        within_rounding += int(np.sum(error <= rounding))
        within_tolerance += int(np.sum(error <= tolerance))
        above_rounding = error > rounding
        beyond.extend(error[above_rounding].tolist())
        margins.extend(np.asarray(analysis["gate_margin"])[above_rounding].tolist())
    return {
        "pairs": pairs, "same_top1": same_top1, "within_rounding": within_rounding,
        "within_tolerance": within_tolerance, "beyond_rounding": sorted(beyond),
        "largest_gate_margin_beyond_rounding": max(margins) if margins else None,
    }


def main(argv):
    del argv
    import numpy as np

    paths = []
    for folder in FLAGS.runs:
        found = sorted(glob.glob(os.path.join(folder, "r*", "analysis.npz")))
        if not found:
            raise app.UsageError(f"No r*/analysis.npz under {folder!r}: pass cifar_cpu.py output folders "
                                 "whose runs were analyzed (their .tflite checked against Keras).")
        paths += found
    analyses = []
    for path in paths:
        analysis = np.load(path)
        if "tflite_logit_error" not in analysis:
            raise app.UsageError(f"{path} predates the .tflite check: re-run cifar_cpu.py on its folder to add it.")
        analyses.append(analysis)
    pooled = pooled_agreement(analyses, FLAGS.tolerance, FLAGS.rounding)
    beyond = np.asarray(pooled["beyond_rounding"])
    print(f"{len(paths)} models, {pooled['pairs']:,} image-model pairs (.tflite vs Keras logits)")
    print(f"same top-1: {pooled['same_top1']:,}")
    print(f"logits within {FLAGS.rounding:g} of the range (float32 rounding): {pooled['within_rounding']:,}")
    print(f"logits within {FLAGS.tolerance:g} of the range: {pooled['within_tolerance']:,}")
    if beyond.size:
        outside = beyond[beyond > FLAGS.tolerance]
        print(f"beyond rounding, within {FLAGS.tolerance:g}: {beyond.size - outside.size} "
              f"({', '.join(f'{x:.1e}' for x in beyond[beyond <= FLAGS.tolerance])})")
        print(f"beyond {FLAGS.tolerance:g}: {outside.size} ({', '.join(f'{100 * x:.2f}%' for x in outside)})")
        print(f"largest smallest-|gate logit| of those {beyond.size} images: "
              f"{pooled['largest_gate_margin_beyond_rounding']:.1e} (a gate at float32 rounding from flipping)")


if __name__ == "__main__":
    app.run(main)
