import pytest

import ftwt_keras as fk


def test_estimate_flops_reduction_from_baseline_targets(images):
    base = fk.models.resnet_cifar(depth=20)
    low = fk.estimate_flops_reduction(base, images, threshold=0.5)
    high = fk.estimate_flops_reduction(base, images, threshold=0.99)
    assert 0.0 < high < low < 1.0
    with pytest.raises(ValueError, match="threshold"):
        fk.estimate_flops_reduction(base, images, threshold=2.0)


def test_long_passes_show_keras_progress_when_asked(images, capsys):
    import tensorflow as tf

    base = fk.models.resnet_cifar(depth=20)
    batches = tf.data.Dataset.from_tensor_slices((images, images[:, 0, 0, 0])).batch(2)  # 4 batches
    silent = fk.estimate_flops_reduction(base, batches, threshold=0.9)
    assert capsys.readouterr().out == ""
    assert fk.estimate_flops_reduction(base, batches, threshold=0.9, verbose=2, max_batches=10) == silent
    assert "4/4" in capsys.readouterr().out
    fk.estimate_flops_reduction(base, batches, threshold=0.9, verbose=2, max_batches=3)
    assert "3/3" in capsys.readouterr().out
    fk.target_flops_reduction(fk.gate(base, threshold=0.9), batches.filter(lambda x, y: True), verbose=2)
    assert "4/4" in capsys.readouterr().out  # a dataset of unknown size: known at its end
    fk.flops.dynamic_macs(fk.gate(base, threshold=0.9), images, batch_size=3, verbose=2)
    assert "3/3" in capsys.readouterr().out

def test_estimate_is_the_same_from_the_gated_model_and_changes_nothing(images):
    base = fk.models.mobilenet_v1(alpha=0.25)
    gated = fk.gate(base, threshold=1.0)
    from_base = fk.estimate_flops_reduction(base, images, threshold=0.9)
    from_gated = fk.estimate_flops_reduction(gated, images, threshold=0.9)
    assert abs(from_base - from_gated) < 1e-6
    assert all(layer.threshold == 1.0 for layer in gated.gated_layers)


def test_estimate_counts_only_the_layers_to_gate(images):
    base = fk.models.mobilenet_v1(alpha=0.25)
    keep_dense = fk.gating.layers_except(base, ["conv1", "block1_*", "block2_*"])
    every = fk.estimate_flops_reduction(base, images, threshold=0.5)
    fewer = fk.estimate_flops_reduction(base, images, threshold=0.5, layers_to_gate=keep_dense)
    gated = fk.gate(base, threshold=0.5, layers_to_gate=keep_dense)
    assert abs(fewer - fk.estimate_flops_reduction(gated, images, threshold=0.5)) < 1e-6
    assert 0.0 < fewer < every  # the dense layers execute all their MACs
    with pytest.raises(ValueError, match="for a plain model"):
        fk.estimate_flops_reduction(gated, images, threshold=0.5, layers_to_gate=keep_dense)


def test_target_reduction_of_a_gated_model_dense_gated_and_as_logged(images):
    import keras
    import numpy as np
    from conftest import force_gates

    base = fk.models.mobilenet_v1(alpha=0.25)
    model = fk.gate(base, threshold=0.8)
    estimate = fk.estimate_flops_reduction(base, images, threshold=0.8)
    # Run dense, a freshly gated model's targets are the baseline's.
    assert abs(fk.target_flops_reduction(model, images, apply_masks=False) - estimate) < 1e-6
    # Gated, the targets see what the (untrained) predictors leave on.
    gated = fk.target_flops_reduction(model, images)
    assert abs(gated - estimate) > 1e-3
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        gate_optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logs = model.evaluate(images, np.arange(8) % 10, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["target_flops_reduction"], gated, atol=1e-6)
    force_gates(model, on=True)  # every gate on: the gated network is the dense one
    assert abs(fk.target_flops_reduction(model, images) - estimate) < 1e-6
    with pytest.raises(ValueError, match="FTWTModel"):
        fk.target_flops_reduction(base, images)
