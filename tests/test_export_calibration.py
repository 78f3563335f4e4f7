"""Calibration (ftwt_keras.export.calibration): keep ratios, capacities and their margins, calibration images."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from export_helpers import (  # noqa: E402
    BUILDERS,
    assert_same_logits,
    depthwise_input_widths,
    perturb,
)


def test_capacities_add_a_margin_that_follows_each_gate_counts_spread(cifar_images):
    """Masks that never vary get no margin; varying ones the most seen plus CAPACITY_STDS deviations."""
    drawn = export.set_keep_ratio(fk.gate(BUILDERS["mobilenet_v1"]()), 0.3)
    fixed = export.calibrate(drawn, cifar_images[:8])
    for layer in drawn.gated_layers:
        filters = layer.filters
        assert fixed.capacities[layer.name] == max(1, round(0.3 * filters))
    # Benchmarks of drawn masks widen them to the margin real masks need; the export computes that many.
    widened = fixed.with_capacity_ratio(drawn, 1.5)
    for layer in drawn.gated_layers:
        filters = layer.filters
        assert widened.capacities[layer.name] == min(filters, int(np.ceil(1.5 * max(1, round(0.3 * filters)))))
    flatbuffer = export.convert(drawn, policy="chain", calibration=widened, static_gates=False)
    feeding = ["conv1"] + [f"block{index}_pw" for index in range(1, 13)]  # the layer before each depthwise conv
    assert depthwise_input_widths(flatbuffer) == [widened.capacities[name] for name in feeding]
    assert_same_logits(flatbuffer, drawn, cifar_images[:4])
    with pytest.raises(export.ExportError, match="ratio"):
        fixed.with_capacity_ratio(drawn, 0.9)
    # ... or to what independent gates would need: few of 1,000 such images overflow, against most without.
    binomial = fixed.with_binomial_spread(drawn, num_images=64)
    rng = np.random.default_rng(1)
    filters = {layer.name: layer.filters for layer in drawn.gated_layers}
    independent = {name: rng.binomial(filters[name], fixed.keep_ratios[name], 1000) for name in filters}
    assert binomial.overflows(independent).mean() < 0.01 < 0.5 < fixed.overflows(independent).mean()
    assert all(fixed.capacities[name] <= binomial.capacities[name] <= filters[name] for name in filters)
    with pytest.raises(export.ExportError, match="not both"):
        export.convert(drawn, calibration=fixed, calibration_images=cifar_images[:2])
    model = perturb(fk.gate(BUILDERS["mobilenet_v1"]()), seed=3)
    counts = export.gate_counts(model, cifar_images)
    calibration = export.calibrate(model, cifar_images)
    wider = export.calibrate(model, cifar_images, capacity_stds=2 * export.CAPACITY_STDS)
    varying = [name for name, count in counts.items() if count.std() > 0]
    assert varying
    filters = {layer.name: layer.filters for layer in model.gated_layers}
    for name, count in counts.items():
        expected = min(filters[name], int(count.max()) + int(np.ceil(export.CAPACITY_STDS * count.std(ddof=1))))
        assert calibration.capacities[name] == expected
        assert wider.capacities[name] >= expected
    assert any(wider.capacities[name] > calibration.capacities[name] for name in varying)
    assert not calibration.overflows(counts).any()  # calibrated on these very images
    sparsest = int(np.argmin(sum(counts.values())))  # the image with the fewest active filters
    few = export.calibrate(model, cifar_images[sparsest : sparsest + 1])
    beyond = np.any([counts[name] > few.capacities[name] for name in varying], axis=0)
    assert beyond.any() and np.array_equal(few.overflows(counts, varying), beyond)
    with pytest.raises(export.ExportError, match="capacity_stds"):
        export.calibrate(model, cifar_images[:2], capacity_stds=-1)


def test_load_calibration_images(tmp_path, cifar_images):
    path = tmp_path / "calibration.npy"
    np.save(path, cifar_images[:3])
    np.testing.assert_array_equal(export.load_calibration_images(str(path)), cifar_images[:3])
    assert export.load_calibration_images("cifar10:test[:5]").shape == (5, 32, 32, 3)
    # A CIFAR split comes at the model's input size, as the recipes' --image_size trains on it.
    for shape in ((40, 40, 3), (32, 48, 3)):
        model = fk.models.resnet_cifar(depth=20, input_shape=shape)
        images = export.load_calibration_images("cifar10:test[:3]", model)
        np.testing.assert_array_equal(images, fk.data.cifar_arrays("cifar10", "test", take=3,
                                                                   image_size=shape[:2])[0])
        assert images.shape == (3, *shape)
        # `limit` takes the first of the split, the same images (only those are read).
        np.testing.assert_array_equal(export.load_calibration_images("cifar10:test", model, limit=2), images[:2])
    with pytest.raises(export.ExportError, match="does not exist"):
        export.load_calibration_images(str(tmp_path / "missing.npy"))
    with pytest.raises(export.ExportError, match="NAME:SPLIT"):
        export.load_calibration_images("imagenet")


def test_load_calibration_images_from_a_folder_of_photos(tmp_path):
    """A device's own photos (any depth, any size, grayscale or RGBA too) come resized to the model's input."""
    import keras

    folder = tmp_path / "photos"
    (folder / "kitchen" / "old").mkdir(parents=True)
    pixels = {"a.png": np.full((40, 60, 3), 100, "uint8"),  # RGB, another size and aspect
              "kitchen/b.png": np.full((20, 30, 4), 30, "uint8"),  # RGBA: the alpha channel dropped
              "kitchen/old/c.png": np.full((50, 50, 1), 200, "uint8")}  # grayscale: to RGB
    for name, image in pixels.items():
        keras.utils.save_img(folder / name, image, scale=False)
    (folder / "notes.txt").write_text("not an image")
    model = fk.gate(fk.models.mobilenet_v1(input_shape=(24, 24, 3), alpha=0.25, num_classes=10))
    images = export.load_calibration_images(str(folder), model)
    assert images.shape == (3, 24, 24, 3) and images.dtype == np.float32
    assert sorted(float(image.mean()) for image in images) == [30.0, 100.0, 200.0]  # constant images stay constant
    assert all(np.ptp(image) == 0 for image in images)
    assert len(export.load_calibration_images(f"{folder}[:2]", model)) == 2
    # `limit` reads no more than that many: the first of the same order, with or without [:N].
    np.testing.assert_array_equal(export.load_calibration_images(str(folder), model, limit=2), images[:2])
    assert len(export.load_calibration_images(f"{folder}[:2]", model, limit=1)) == 1
    np.testing.assert_array_equal(export.load_calibration_images(str(folder), model), images)  # the same order
    # A plain Keras model (the baseline of edge/candidates.py) gives its input size too.
    assert export.load_calibration_images(f"{folder}[:1]", model.network).shape == (1, 24, 24, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(export.ExportError, match="--check=empty: No images found"):
        export.load_calibration_images(str(tmp_path / "empty"), model, what="--check=empty")
    with pytest.raises(export.ExportError, match="pass the model"):
        export.load_calibration_images(str(folder))
