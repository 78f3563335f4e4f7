"""FTWT recipe: ResNet-18/34 on ImageNet (imagenet2012, manual download).

    python -m ftwt_keras.recipes.resnet_imagenet --flagfile=recipes/<row>.flags

Stage 1 trains the dense baseline (or takes --baseline), stage 2 trains FTWT;
re-running the same command resumes after a kill. See ftwt_keras.recipes.common.
"""

from absl import app, flags

from ftwt_keras.recipes import common

common.define_flags(model="resnet34", output_dir="runs/resnet_imagenet", dataset="imagenet2012", image_size=224, batch_size=256, baseline_epochs=90, epochs=90, threshold=0.95)
flags.adopt_module_key_flags(common)  # --help lists the recipe flags


if __name__ == "__main__":
    app.run(common.main)
