"""FTWT recipe: CIFAR ResNet (default depth 56) on CIFAR.

    python -m ftwt_keras.recipes.resnet_cifar --flagfile=recipes/<row>.flags

Stage 1 trains the dense baseline (or takes --baseline), stage 2 trains FTWT;
re-running the same command resumes after a kill. See ftwt_keras.recipes.common.
"""

from absl import app, flags

from ftwt_keras.recipes import common

common.define_flags(model="resnet_cifar", output_dir="runs/resnet_cifar", threshold=0.8)
flags.adopt_module_key_flags(common)  # --help lists the recipe flags


if __name__ == "__main__":
    app.run(common.main)
