"""Top-1 of trained FTWT models with their gates, and with every gate removed.

    python benchmarks/ungated_accuracy.py --models=runs/cifar_cpu/r0.9_decoupled/model.keras,...

For each saved FTWT model: accuracy on the CIFAR-10 test set as trained (masks
applied), and of `ftwt_keras.ungate(model, <every gated layer>)`, the same
weights computing every filter. Shows whether a trained model can drop its
gates (e.g. to ship a dense .tflite where no gate pays on the device).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Saved FTWT models (.keras).")
flags.DEFINE_string("split", "test", "CIFAR-10 split to evaluate on.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.models:
        raise app.UsageError("--models is required.")
    import numpy as np

    import ftwt_keras as fk
    from ftwt_keras import data
    from ftwt_keras.export import tflite

    images, labels = data.cifar_arrays("cifar10", FLAGS.split)
    print(f"CIFAR-10 {FLAGS.split}, {len(labels)} images: top-1 gated / every gate removed")
    for path in FLAGS.models:
        model = tflite.load_ftwt_model(path)
        plain = fk.ungate(model, [layer.name for layer in model.gated_layers])
        gated, ungated = (
            float(np.mean(np.argmax(m.predict(images, batch_size=500, verbose=0), axis=1) == labels))
            for m in (model, plain)
        )
        print(f"  {path}: {100 * gated:.1f}% / {100 * ungated:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
