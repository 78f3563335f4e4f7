import pytest

import ftwt_keras as fk


def test_estimate_flops_reduction_from_baseline_targets(images):
    base = fk.models.resnet_cifar(depth=20)
    low = fk.estimate_flops_reduction(base, images, threshold=0.5)
    high = fk.estimate_flops_reduction(base, images, threshold=0.99)
    assert 0.0 < high < low < 1.0
    with pytest.raises(ValueError, match="threshold"):
        fk.estimate_flops_reduction(base, images, threshold=2.0)
