"""FTWT recipe: MobileNetV1 on CIFAR.

    python -m ftwt_keras.recipes.mobilenet_cifar --flagfile=recipes/<row>.flags

Stage 1 trains the dense baseline (or takes --baseline), stage 2 trains FTWT;
re-running the same command resumes after a kill. See ftwt_keras.recipes.common.
"""

from absl import app, flags

from ftwt_keras.recipes import common

common.define_flags(model="mobilenet_v1", output_dir="runs/mobilenet_cifar", threshold=1.0)
flags.adopt_module_key_flags(common)  # --help lists the recipe flags


if __name__ == "__main__":
    app.run(common.main)
