"""Tests on the real CIFAR-10 (built offline by .ci/run from ../shared/data)."""

import keras
import numpy as np
import pytest

import ftwt_keras as fk
from ftwt_keras import data


@pytest.fixture(scope="module")
def cifar_subset():
    try:
        train = data.cifar("cifar10", "train[:2048]", batch_size=64, seed=0)
        test = data.cifar("cifar10", "test[:512]", batch_size=256)
    except FileNotFoundError as error:
        pytest.fail(f"CIFAR-10 must be prepared for these tests (.ci/run does it): {error}")
    return train, test


def test_pipeline_yields_raw_pixels_and_labels(cifar_subset):
    train, test = cifar_subset
    images, labels = next(iter(train))
    assert images.shape == (64, 32, 32, 3) and images.dtype == "float32"
    assert labels.shape == (64,) and labels.dtype == "int32"
    assert float(np.max(images)) > 100.0  # raw pixels, not normalized
    assert sum(int(b[0].shape[0]) for b in test) == 512


def test_cifar_arrays_match_the_evaluation_pipeline(cifar_subset):
    _, test = cifar_subset
    images, labels = data.cifar_arrays("cifar10", "test", take=512)
    assert images.shape == (512, 32, 32, 3) and images.dtype == "float32"
    assert labels.shape == (512,) and labels.dtype == "int32"
    np.testing.assert_array_equal(images, np.concatenate([np.asarray(x) for x, _ in test]))
    np.testing.assert_array_equal(labels, np.concatenate([np.asarray(y) for _, y in test]))
    with pytest.raises(ValueError, match="no images"):
        data.cifar_arrays("cifar10", "test", take=0)
    # Upsampled for phone-resolution timing: each pixel becomes a 7x7 patch of about its value.
    large, same_labels = data.cifar_arrays("cifar10", "test", take=4, image_size=224)
    assert large.shape == (4, 224, 224, 3) and large.dtype == "float32"
    np.testing.assert_array_equal(same_labels, labels[:4])
    np.testing.assert_allclose(large[:, 3::7, 3::7], images[:4], atol=1e-3)


def test_short_fit_on_real_cifar_raises_gate_accuracy(cifar_subset):
    train, test = cifar_subset
    base = fk.models.mobilenet_v1(alpha=0.25)
    base.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    base.fit(train, epochs=2, verbose=0)
    model = fk.gate(base, threshold=0.95)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    before = model.evaluate(test, verbose=0, return_dict=True)
    model.fit(train, epochs=2, verbose=0)
    after = model.evaluate(test, verbose=0, return_dict=True)
    assert after["gate_accuracy"] > before["gate_accuracy"] + 0.05, (before, after)
    assert after["gate_loss"] < before["gate_loss"]


def test_estimate_on_real_images_is_in_range(cifar_subset):
    _, test = cifar_subset
    base = fk.models.resnet_cifar(depth=20)
    estimate = fk.estimate_flops_reduction(base, test, threshold=0.9, max_batches=1)
    assert 0.0 < estimate < 1.0


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_tfds_cifar10.py"):
        data.cifar("cifar10", "train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="manual"):
        data.imagenet("train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder(str(tmp_path / "nope"), (32, 32))
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.load("mnist-ish", "train")


def test_image_folder_pipeline_reads_the_real_jpegs(tmp_path):
    import pathlib
    import subprocess

    archive = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.xz"
    if not archive.exists():
        pytest.skip("../shared/data/cifar10-jpeg.tar.xz is not beside this checkout")
    subprocess.run(["tar", "xJf", str(archive), "-C", str(tmp_path), "--wildcards", "*test/cat/000*", "*test/dog/000*"],
                   check=True)
    batches = list(data.image_folder(str(tmp_path / "test"), (32, 32), batch_size=8))
    images, labels = batches[0]
    assert images.shape[1:] == (32, 32, 3) and float(np.max(images)) > 100.0
    assert set(np.concatenate([np.asarray(b[1]) for b in batches]).tolist()) == {0, 1}
