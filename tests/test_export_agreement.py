"""A .tflite against its Keras model, image by image (`ftwt_keras.export.agreement`)."""

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras import export  # noqa: E402

from export_helpers import perturb  # noqa: E402


def test_agreement_passes_the_export_and_fails_another_network(cifar_images):
    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20)))
    checked = export.agreement(model, export.convert(model, calibration_images=cifar_images[:8]), cifar_images)
    assert set(checked) == {"logit_error", "same_top1", "gate_margin"}
    assert all(values.shape == (len(cifar_images),) for values in checked.values())
    assert checked["same_top1"].all() and (checked["logit_error"] <= export.LOGIT_TOLERANCE).all()
    # Each image's nearest gate to flipping, from the gates' own logits.
    with fk.record_gates() as recorder:
        model.network(cifar_images, training=False)
    logits = np.concatenate([keras.ops.convert_to_numpy(r.logits) for r in recorder.records], axis=1)
    np.testing.assert_allclose(checked["gate_margin"], np.abs(logits).min(axis=1), rtol=1e-6)
    report = export.agreement_report(checked)
    assert report.startswith(f"Against Keras on {len(cifar_images)} images: the same top-1 on {len(cifar_images)}, "
                             f"logits within 0.001 of Keras's logit range on {len(cifar_images)}")
    assert "beyond" not in report

    # The dense export computes every filter: another network, which the check must catch.
    other = export.agreement(model, export.convert(model, dynamic=False), cifar_images)
    assert (other["logit_error"] > export.LOGIT_TOLERANCE).sum() > len(cifar_images) // 2
    assert "beyond has a gate whose Keras logit is within" in export.agreement_report(other)

    with pytest.raises(export.ExportError, match=r"The images to check must be a non-empty array \(N, 32, 32, 3\)"):
        export.agreement(model, export.convert(model), cifar_images[:, :16])
