import pytest

import ftwt_keras as fk


def test_estimate_flops_reduction_from_baseline_targets(images):
    base = fk.models.resnet_cifar(depth=20)
    low = fk.estimate_flops_reduction(base, images, threshold=0.5)
    high = fk.estimate_flops_reduction(base, images, threshold=0.99)
    assert 0.0 < high < low < 1.0
    with pytest.raises(ValueError, match="threshold"):
        fk.estimate_flops_reduction(base, images, threshold=2.0)


def test_estimate_is_the_same_from_the_gated_model_and_changes_nothing(images):
    base = fk.models.mobilenet_v1(alpha=0.25)
    gated = fk.gate(base, threshold=1.0)
    from_base = fk.estimate_flops_reduction(base, images, threshold=0.9)
    from_gated = fk.estimate_flops_reduction(gated, images, threshold=0.9)
    assert abs(from_base - from_gated) < 1e-6
    assert all(layer.threshold == 1.0 for layer in gated.gated_layers)
