import csv
import json
import math
import os

import keras
import numpy as np
import pytest

import ftwt_keras as fk  # registers the layers for load_model
from conftest import refusals, run_python
from ftwt_keras.recipes import common


def _run(args):
    return run_python("-m", "ftwt_keras.recipes.mobilenet_cifar", *args, timeout=900)


def test_recipe_runs_both_stages_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = [f"--output_dir={out}", "--alpha=0.25", "--train_take=256", "--test_take=256",
            "--baseline_epochs=1", "--epochs=2", "--estimate_images=128", "--batch_size=64",
            "--threshold=0.9", "--warmup_steps=2", "--distillation_weight=0.5",
            "--threshold_ramp_epochs=2", "--ungated_layers=conv1,block1_*", "--cap_ratio=1.1", "--cap_epochs=1",
            "--freeze_agreement=0.9", "--freeze_epochs=1"]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("threshold", "mode", "baseline_accuracy", "accuracy", "flops_reduction",
                "estimated_flops_reduction", "gate_accuracy"):
        assert key in results
    assert results["test_images"] == 256 and results["threshold"] == 0.9
    assert (out / "model.keras").exists() and (out / "baseline.keras").exists()
    assert results["config"]["ungated_layers"] == ["conv1", "block1_*"]
    assert len(keras.saving.load_model(out / "model.keras").gated_layers) == 24  # 27 convs, 3 left dense
    gated_names = [layer.name for layer in keras.saving.load_model(out / "model.keras").gated_layers]
    for stage in (results, results["capped"], results["frozen"]):  # each model's layer-wise keep ratios
        assert list(stage["layer_keep_ratios"]) == gated_names
        assert all(0.0 <= ratio <= 1.0 for ratio in stage["layer_keep_ratios"].values())
    gates = fk.static_gates.static_gates_of(keras.saving.load_model(out / "model.keras")).values()
    decided = sum(g.decided for g in gates) / sum(len(g.always_on) for g in gates)
    assert results["gates_decided_by_weights"] == decided
    assert f"gates the weights alone decide {100 * decided:.1f}%" in result.stdout
    assert (out / "logs" / "ftwt").is_dir()
    history = list(csv.DictReader((out / "ftwt_history.csv").read_text().splitlines()))
    assert "distillation_loss" in history[0]  # from the baseline
    assert [float(epoch["threshold"]) for epoch in history] == [0.95, 0.9]  # the ramp to r
    assert "FLOPs reduction" in result.stdout
    # Stage 3: each gated regular conv capped at 1.1x its mean count on the --estimate_images (training)
    # images, then one epoch of the backbone only: the predictors, and so the counts, stay.
    uncapped = keras.saving.load_model(out / "model.keras")
    capped = keras.saving.load_model(out / "model_capped.keras")
    images = fk.data.cifar_arrays("cifar10", "train[:128]")[0]
    keeps = fk.flops.keep_ratios(uncapped, images)
    regular = [layer for layer in uncapped.gated_layers if not layer.is_depthwise]
    expected = {layer.name: min(layer.filters, math.ceil(1.1 * keeps[layer.name] * layer.filters - 1e-6))
                for layer in regular}
    assert results["capped"]["capacities"] == expected
    assert {layer.name: layer.capacity for layer in capped.gated_layers} == {
        layer.name: expected.get(layer.name) for layer in uncapped.gated_layers}
    for before, after in zip(uncapped.gated_layers, capped.gated_layers):
        for old, new in zip(before.predictor.weights, after.predictor.weights):
            np.testing.assert_array_equal(old.numpy(), new.numpy())
    assert not np.array_equal(uncapped.gated_layers[-1].conv.kernel.numpy(), capped.gated_layers[-1].conv.kernel.numpy())
    capped_history = list(csv.DictReader((out / "capped_history.csv").read_text().splitlines()))
    assert len(capped_history) == 1 and float(capped_history[0]["gate_loss_weight"]) == 0.0
    assert results["capped"]["fine_tune_epochs"] == 1 and 0.0 <= results["capped"]["accuracy"] <= 1.0
    assert "Fine-tuning with the capped gates for 1 epochs at learning rate 0.0001" in result.stderr  # the schedule's last
    assert "Capped at 1.1x the mean active filters" in result.stdout
    # Stage 4: the capped model's gates that agree on >= 90% of the same images frozen, then one epoch of
    # the backbone only: the frozen gates stay frozen.
    frozen = keras.saving.load_model(out / "model_frozen.keras")
    expected_frozen = fk.freeze_gates(capped, images, min_agreement=0.9)
    gates = fk.static_gates.static_gates_of(frozen)
    assert sum(g.decided for g in expected_frozen.values()) > 0
    for name, expected_gates in expected_frozen.items():
        assert (gates[name].always_on >= expected_gates.always_on).all()
        assert (gates[name].always_off >= expected_gates.always_off).all()
    assert results["frozen"]["gates_decided_by_weights"] == fk.static_gates.decided_fraction(frozen)
    assert fk.static_gates.decided_fraction(frozen) == fk.static_gates.decided_fraction(capped)
    assert not np.array_equal(capped.gated_layers[-1].conv.kernel.numpy(), frozen.gated_layers[-1].conv.kernel.numpy())
    frozen_history = list(csv.DictReader((out / "frozen_history.csv").read_text().splitlines()))
    assert len(frozen_history) == 1 and float(frozen_history[0]["gate_loss_weight"]) == 0.0
    assert results["frozen"]["fine_tune_epochs"] == 1 and results["frozen"]["agreement"] == 0.9
    assert "Fine-tuning with the frozen gates for 1 epochs" in result.stderr
    assert "Gates agreeing on >= 0.9 of the training images frozen" in result.stdout
    # Re-running skips finished stages.
    again = _run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Stage 1 already done" in again.stderr and "Stage 2 already done" in again.stderr
    assert "Stage 3 already done" in again.stderr and "Stage 4 already done" in again.stderr
    # ... and still reports the time the stages took, not 0.
    rewritten = json.loads((out / "results.json").read_text())
    assert rewritten["capped"] == results["capped"] and rewritten["frozen"] == results["frozen"]
    assert rewritten["capped"]["train_seconds"] == json.loads((out / "capped_seconds.json").read_text())["seconds"] > 0
    for stage in ("baseline", "ftwt"):
        stored = json.loads((out / f"{stage}_seconds.json").read_text())["seconds"]
        assert rewritten[f"{stage}_train_seconds"] == results[f"{stage}_train_seconds"] == stored > 0


def test_stage_clock_adds_to_the_time_of_a_killed_run(tmp_path):
    (tmp_path / "ftwt_seconds.json").write_text(json.dumps({"seconds": 100.0}))
    callback, finish = common.stage_clock(str(tmp_path), "ftwt")
    callback.on_epoch_end(0)
    assert 100.0 <= common.stored_seconds(str(tmp_path), "ftwt") < 130.0
    assert 100.0 <= finish() < 130.0
    assert common.stored_seconds(str(tmp_path), "baseline") is None
    _, fresh = common.stage_clock(str(tmp_path), "baseline")
    assert 0.0 <= fresh() < 30.0


def test_recipe_help_and_bad_flags():
    result = run_python("-m", "ftwt_keras.recipes.resnet_cifar", "--help", timeout=300)
    for flag in ("--threshold:", "--epochs:", "--distillation_weight:", "--threshold_ramp_epochs:",
                 "--freeze_agreement:"):
        assert flag in result.stdout  # the plain --help lists the flags the recipe takes from common
    bad = run_python("-m", "ftwt_keras.recipes.vgg_cifar", "--mode=both", timeout=300)
    assert bad.returncode != 0 and "mode" in bad.stderr  # the app's own report of a bad flag
    expected = {
        "--distillation_weight=1.0": "--distillation_weight must be in [0, 1)",
        "--epochs=2 --threshold_ramp_epochs=3": "--threshold_ramp_epochs must be in [0, --epochs]",
        "--cap_ratio=0": "--cap_ratio must be positive",
        "--freeze_agreement=0.3": "--freeze_agreement must be in [0.5, 1.0]",
        "--paying_plan=timed": "--paying_plan=timed chooses the convs of --gate_only_paying",
        # Refused by the recipe's run before any training:
        "--alpha=0.25 --ungated_layers=blok1_*": "['blok1_*'] match no conv layer",
        "--alpha=0.25 --gate_only_paying": "no gate of mobilenet_v1 at 32x32 can pay in the edge export",
    }
    said, asked = refusals("ftwt_keras.recipes.mobilenet_cifar", *(flags.split() for flags in expected),
                           main="common.main")
    for (flags, message), answer in zip(expected.items(), said):
        assert answer is not None and message in answer, (flags, answer)
    assert "Epoch 1/" not in asked.stdout + asked.stderr  # refused before any training


def test_recipe_gates_only_where_gates_pay_in_the_export(tmp_path):
    """--gate_only_paying: the convs whose gates the export turns into skipped work, planned before FTWT."""
    from ftwt_keras.export import tflite

    out = tmp_path / "run"
    result = run_python("-m", "ftwt_keras.recipes.vgg_cifar", f"--output_dir={out}", "--train_take=128",
                        "--test_take=128", "--baseline_epochs=1", "--epochs=1", "--estimate_images=64",
                        "--batch_size=64", "--target=uniform", "--threshold=0.3", "--gate_only_paying", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    baseline = keras.saving.load_model(out / "baseline.keras")
    images = fk.data.cifar_arrays("cifar10", "train[:64]")[0]
    gated = fk.gate(baseline, threshold=0.3, target="uniform")
    planned = tflite.paying_gates(gated, calibration=tflite.calibrate(gated, images, targets=True), static_gates=False)
    assert planned and results["planned_paying_gates"] == planned
    model = keras.saving.load_model(out / "model.keras")
    assert [layer.name for layer in model.gated_layers] == planned
    assert set(results["paying_gates"]) <= set(planned)
    assert f"Gated only the {len(planned)} convs whose gates pay in the edge export" in result.stdout
    config = {"edge_threads": 1, "threshold": 0.3}
    assert common.plan_report(planned, results["paying_gates"], config) in result.stdout


def test_timed_paying_plan_keeps_what_times_faster_and_a_resumed_run_reuses_it(tmp_path, cifar_images):
    """--paying_plan=timed: the rules' convs, fewer until the gated network times faster; one plan per folder and flags."""
    import tensorflow as tf

    from ftwt_keras.export import tflite

    from export_helpers import two_paying_convs

    baseline = two_paying_convs()  # untrained: its targets at r still keep few filters; conv1 and conv2 pay
    images = np.asarray(keras.ops.image.resize(cifar_images, (28, 28)))
    estimate = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), "int64"))).batch(16)
    config = {"threshold": 0.3, "target": "uniform", "edge_threads": 1, "output_dir": str(tmp_path)}
    rules, plan = common.paying_layers(dict(config, paying_plan="rules"), baseline, estimate)
    assert plan is None and rules == ["conv1", "conv2"]  # test_recipe_gates_only_where_gates_pay_in_the_export

    timed = dict(config, paying_plan="timed")
    spells = iter([11.0, 9.0, 9.0])  # slower with every rule's conv gated, faster after the first drop

    def timer(flatbuffers):
        assert tflite.op_names(flatbuffers["dense"]).count("CONV_2D") == 3  # the dense network, every time
        return {"dense": 10.0, "gated": next(spells)}

    names, record = common.planned_layers(timed, baseline, estimate, timer=timer)
    assert names == ["conv2"] and record["gates"] == names  # conv1's mask removes fewer multiply-adds
    assert record["flags"] == {"paying_plan": "timed", "edge_threads": 1, "threshold": 0.3, "target": "uniform",
                               "ungated_layers": []}
    assert (record["dense_ms"], record["gated_ms"]) == (10.0, 9.0) and record["cpu"] == tflite.cpu_name()
    assert [step["gates"] for step in record["tried"]] == [len(rules), len(names), len(names)]
    assert json.loads((tmp_path / "paying_plan.json").read_text()) == record

    def untimed(flatbuffers):
        raise AssertionError("a resumed run times again")

    def faster(flatbuffers):
        return {"dense": 10.0, "gated": 8.0}

    assert common.planned_layers(timed, baseline, estimate, timer=untimed) == (names, record)
    # Other flags before FTWT training started in the folder: planned again; after: refused.
    assert common.planned_layers(dict(timed, threshold=0.2), baseline, estimate, timer=faster)[0] == rules
    (tmp_path / "backup_ftwt").mkdir()
    with pytest.raises(ValueError, match=r"made for --threshold=0.2 \(asked: 0.3\), and FTWT training in"):
        common.planned_layers(timed, baseline, estimate, timer=untimed)
    every, plan = common.paying_layers(timed, baseline, images, timer=faster)  # an array of images will do
    assert every == rules and plan.tried == [(2, 8.0, 10.0), (2, 8.0, 10.0)]
    assert common.timed_plan_report(record) == (
        f"Timed on this machine ({tflite.cpu_name()}): gated at 1 conv 9.00 ms against dense 10.00 ms (1.11x, masks drawn "
        "at the targets' keep ratios; 3 timings).")
    assert common.timed_plan_report(dict(record, gates=[], gated_ms=None, cpu=None)) == (  # plans made before 12-06
        "Timed on this machine: no network gated at the paying convs ran faster than dense (10.00 ms, 3 timings).")


def test_plan_report_names_the_planned_gates_that_do_not_pay():
    """What --gate_only_paying says when the trained masks keep more than the plan's targets did."""
    config = {"edge_threads": 2, "threshold": 0.3}
    planned = ["conv2", "conv3", "conv4"]
    assert common.plan_report(planned, planned, config) == (
        "Gated only the 3 convs whose gates pay in the edge export; with the trained masks 3 of them pay with 2 "
        "threads (ftwt_keras.export.paying_gates on the training images).")
    report = common.plan_report(planned, ["conv4"], config)
    assert "with the trained masks 1 of them pays with 2 threads" in report
    assert report.endswith("conv2, conv3 keep too many filters on some images to pay and only add their predictors: "
                           "cap them (--cap_ratio=1.0 caps at the mean count, with --cap_epochs of fine-tuning) or "
                           "train at a lower --threshold than 0.3.")
    with_caps = dict(config, cap_ratio=1.1)
    assert common.plan_report(planned, ["conv4"], with_caps).endswith(
        "their predictors: the caps of --cap_ratio, checked below, may fix that; else train at a lower --threshold "
        "than 0.3.")
    capped = common.plan_report(planned, ["conv2", "conv4"], dict(with_caps, edge_threads=1), capped=True)
    assert "with the capped masks 2 of them pay with 1 thread " in capped
    assert capped.endswith("conv3 keeps too many filters on some images to pay and only adds its predictor: cap "
                           "harder (a lower --cap_ratio than 1.1) or train at a lower --threshold than 0.3.")


def _image_folder(root, per_class, low, high, seed=0):
    """`root/<class>/<i>.png` for 3 classes: 48x48 noise images with pixel values in [low, high]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(3):
        os.makedirs(root / f"class{label}")
        for index in range(per_class):
            pixels = rng.integers(low, high + 1, (48, 48, 3)).astype("uint8")
            Image.fromarray(pixels).save(root / f"class{label}" / f"{index}.png")


def test_imagenet_recipe_runs_every_stage_on_an_image_folder(tmp_path):
    """resnet_imagenet end to end (ResNet-18 at 64x64) on a folder dataset, caps and frozen gates included,
    in mixed precision.

    Their fine-tuning epochs are left out: test_recipe_runs_both_stages_and_resumes trains those.
    """
    folder = tmp_path / "images"
    _image_folder(folder / "train", 12, 0, 127)
    _image_folder(folder / "test", 6, 128, 255, seed=1)
    out = tmp_path / "run"
    result = run_python("-m", "ftwt_keras.recipes.resnet_imagenet", f"--dataset={folder}", f"--output_dir={out}",
                        "--model=resnet18", "--image_size=64", "--batch_size=8", "--baseline_epochs=1", "--epochs=1",
                        "--estimate_images=16", "--warmup_steps=1", "--cap_ratio=1.1", "--freeze_agreement=0.9",
                        "--dtype_policy=mixed_bfloat16", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["test_images"] == 18 and results["config"]["model"] == "resnet18"
    assert 0.0 <= results["accuracy"] <= 1.0 and "capped" in results and "frozen" in results
    assert results["capped"]["fine_tune_epochs"] == results["frozen"]["fine_tune_epochs"] == 0
    for name in ("baseline.keras", "model.keras", "model_capped.keras", "model_frozen.keras"):
        model = keras.saving.load_model(out / name)
        network = model.network if isinstance(model, fk.FTWTModel) else model
        assert network.outputs[0].shape[-1] == 3 and network.inputs[0].shape[1:] == (64, 64, 3), name
    gated = keras.saving.load_model(out / "model.keras")
    assert len(gated.gated_layers) == 20  # 17 convs + 3 projections
    # Trained in mixed precision (bfloat16 activations, float32 weights), and saved so.
    assert results["config"]["dtype_policy"] == "mixed_bfloat16"
    assert {layer.compute_dtype for layer in gated.gated_layers} == {"bfloat16"}
    assert {v.dtype for v in gated.weights} == {"float32"}


def test_recipes_estimate_and_calibrate_on_training_images_of_an_image_folder(tmp_path):
    """The estimate (and the caps and frozen gates, which read the same images) never sees test images."""
    folder = tmp_path / "images"
    _image_folder(folder / "train", 12, 0, 127)
    _image_folder(folder / "test", 6, 128, 255, seed=1)
    config = {"dataset": str(folder), "image_size": 32, "batch_size": 8, "seed": 0, "estimate_images": 16,
              "data_dir": None, "train_take": None, "test_take": None}
    _, test, estimate = common._datasets(config)
    images = np.concatenate([np.asarray(batch[0]) for batch in estimate])
    assert images.shape == (16, 32, 32, 3) and images.max() <= 127  # training images, and only as many as asked
    labels = np.concatenate([np.asarray(batch[1]) for batch in estimate])
    assert set(labels.tolist()) == {0, 1, 2}  # not the first 16 files, which are classes 0 and 1 only
    assert min(float(np.asarray(batch[0]).min()) for batch in test) >= 128
    (folder / "train" / "README.txt").write_text("not a class")
    assert common.num_classes(str(folder)) == 3 and common.num_classes("cifar100") == 100
    with pytest.raises(FileNotFoundError, match="nor an image folder with train/<class>/"):
        common.num_classes(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--train_take and --test_take apply to tfds datasets"):
        common._datasets(dict(config, train_take=8))


def test_recipes_resize_cifar_to_the_image_size_asked_for():
    """--image_size other than 32 on CIFAR: every pipeline resized after the 32x32 augmentation (the ImageNet layout)."""
    config = {"dataset": "cifar10", "image_size": 96, "batch_size": 8, "seed": 0, "estimate_images": 12,
              "data_dir": None, "train_take": 16, "test_take": 10}
    train, test, estimate = common._datasets(config)
    images, labels = next(iter(train))
    assert images.shape == (8, 96, 96, 3) and labels.shape == (8,)
    test_images = np.concatenate([np.asarray(batch[0]) for batch in test])
    assert test_images.shape == (10, 96, 96, 3)
    assert sum(len(batch[0]) for batch in estimate) == 12
    # The evaluation images are the arrays the export calibrates and checks on at that size.
    np.testing.assert_array_equal(test_images, fk.data.cifar_arrays("cifar10", "test", take=10, image_size=96)[0])
    small = fk.data.cifar_arrays("cifar10", "test", take=10)[0]
    assert np.abs(test_images[:, 1::3, 1::3] - small).mean() < 2.0  # each pixel a 3x3 patch of about its value


def test_imagenet_recipe_reads_the_splits_it_is_told_to(monkeypatch):
    """--train_take / --test_take slice the tfds splits; the estimate reads training images without augmentation."""
    import tensorflow as tf

    calls = []

    def imagenet(split, batch_size, training=None, data_dir=None, image_size=224, seed=None):
        calls.append((split, training))
        return tf.data.Dataset.from_tensor_slices((np.zeros((40, 8, 8, 3), "float32"), np.zeros(40, "int32"))).batch(
            batch_size)

    monkeypatch.setattr(fk.data, "imagenet", imagenet)
    config = {"dataset": "imagenet2012", "image_size": 8, "batch_size": 16, "seed": 0, "estimate_images": 24,
              "data_dir": None, "train_take": 100, "test_take": 50}
    _, _, estimate = common._datasets(config)
    assert calls == [("train[:100]", None), ("validation[:50]", False), ("train", False)]
    assert sum(len(batch[0]) for batch in estimate) == 24
    calls.clear()
    common._datasets(dict(config, train_take=None, test_take=None))
    assert calls == [("train", None), ("validation", False), ("train", False)]
