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
    # Logits computed elsewhere (another machine's LiteRT) are compared as given; the file is not run.
    flatbuffer = export.convert(model, calibration_images=cifar_images[:8])
    shifted = export.run(flatbuffer, cifar_images)
    shifted[0] += 0.01 * np.ptp(shifted)
    given = export.agreement(model, None, cifar_images, logits=shifted)
    assert given["logit_error"][0] > export.LOGIT_TOLERANCE and (given["logit_error"][1:] <= export.LOGIT_TOLERANCE).all()
    with pytest.raises(ValueError, match=r"`logits` must be the .tflite's logits on the \d+ images"):
        export.agreement(model, None, cifar_images, logits=shifted[:2])
    # Keras's side computed once for several checks: the same answers, and the given reference is what is compared.
    reference = export.keras_reference(model, cifar_images)
    again = export.agreement(model, None, cifar_images, logits=shifted, reference=reference)
    for key in given:
        np.testing.assert_array_equal(again[key], given[key])
    moved = dict(reference, logits=reference["logits"].copy())
    moved["logits"][1:] += np.ptp(reference["logits"])
    moved_check = export.agreement(model, None, cifar_images, logits=shifted, reference=moved)
    assert (moved_check["logit_error"][1:] > export.LOGIT_TOLERANCE).all()
    with pytest.raises(ValueError, match=r"`reference` must be `keras_reference` on these \d+ images"):
        export.agreement(model, None, cifar_images[:2], logits=shifted[:2], reference=reference)

    # The dense export computes every filter: another network, which the check must catch.
    other = export.agreement(model, export.convert(model, dynamic=False), cifar_images)
    assert (other["logit_error"] > export.LOGIT_TOLERANCE).sum() > len(cifar_images) // 2
    assert "beyond has a gate within" in export.agreement_report(other)

    with pytest.raises(export.ExportError, match=r"The images to check must be a non-empty array \(N, 32, 32, 3\)"):
        export.agreement(model, export.convert(model), cifar_images[:, :16])


def test_a_capped_layer_s_margin_is_also_the_gap_at_its_cap(cifar_images):
    """A capped gate flips where its logit crosses 0 or where the k-th and next positive logits swap."""
    model = perturb(fk.gate(fk.models.resnet_cifar(depth=20)))
    capacities = fk.cap_gates(model, cifar_images, ratio=0.8)
    checked = export.agreement(model, export.convert(model), cifar_images)
    assert checked["same_top1"].all() and (checked["logit_error"] <= export.LOGIT_TOLERANCE).all()
    with fk.record_gates() as recorder:
        model.network(cifar_images, training=False)
    nearest = np.full(len(cifar_images), np.inf)
    binding = 0
    for record in recorder.records:
        logits = keras.ops.convert_to_numpy(record.logits)
        nearest = np.minimum(nearest, np.abs(logits).min(axis=1))
        capacity = capacities.get(record.layer.name)
        if capacity is not None and capacity < logits.shape[1]:
            top = -np.sort(-logits, axis=1)
            gap = np.where(top[:, capacity] > 0, top[:, capacity - 1] - top[:, capacity], np.inf)
            binding += int(np.sum(np.isfinite(gap)))
            nearest = np.minimum(nearest, gap)
    assert binding > 0  # caps that bind on some images: the gap is tested, not only |logit|
    np.testing.assert_allclose(checked["gate_margin"], nearest, rtol=1e-6)
