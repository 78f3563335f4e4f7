import functools
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import force_gates, global_dtype_policy, sgd_compiled_copy, small_resnet

import ftwt_keras as fk
from ftwt_keras.layers import record_gates
from ftwt_keras.training import distillation_loss, gate_objectives


def _compiled(mode="decoupled", threshold=0.9, **gate_kwargs):
    model = fk.gate(small_resnet(), threshold=threshold, mode=mode, **gate_kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _losses(model, images, labels):
    with record_gates(targets=True) as recorder:
        logits = model(images, training=True)
    task = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    gate, _ = gate_objectives(recorder.records)
    return task, gate


def _gradient_norms(model, images, labels, which):
    with tf.GradientTape(persistent=True) as tape:
        task, gate = _losses(model, images, labels)
    loss = task if which == "task" else gate
    backbone = tape.gradient(loss, model.backbone_variables)
    predictors = tape.gradient(loss, model.predictor_variables)
    norm = lambda grads: sum(0.0 if g is None else float(tf.reduce_sum(tf.abs(g))) for g in grads)
    return norm(backbone), norm(predictors)


def test_decoupled_gradients_are_separated(images):
    model = _compiled("decoupled")
    labels = np.arange(8) % 10
    backbone, predictors = _gradient_norms(model, images, labels, "gate")
    assert backbone == 0.0 and predictors > 0.0
    backbone, predictors = _gradient_norms(model, images, labels, "task")
    assert backbone > 0.0 and predictors == 0.0


def test_joint_mode_lets_the_gate_loss_reach_the_backbone(images):
    model = _compiled("joint")
    labels = np.arange(8) % 10
    backbone, predictors = _gradient_norms(model, images, labels, "gate")
    assert backbone > 0.0 and predictors > 0.0
    _, predictors = _gradient_norms(model, images, labels, "task")
    assert predictors == 0.0  # the binary mask carries no gradient


def test_gate_objectives_average_layers_of_different_widths():
    from ftwt_keras.layers import GateRecord

    rng = np.random.default_rng(0)
    records, losses, accuracies = [], [], []
    for channels in (3, 8, 20):
        logits = rng.normal(size=(5, channels)).astype("float32")
        target = (rng.uniform(size=(5, channels)) > 0.5).astype("float32")
        mask = (logits > 0).astype("float32")
        records.append(GateRecord(None, logits, mask, target))
        probability = 1 / (1 + np.exp(-logits.astype("float64")))
        bce = -(target * np.log(probability) + (1 - target) * np.log(1 - probability))
        losses.append(bce.mean(axis=0).sum())  # mean over the batch, sum over filters
        accuracies.append((mask == target).mean())
    loss, accuracy = gate_objectives(records)
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(float(accuracy), np.mean(accuracies), rtol=1e-5)
    warm_loss, warm_accuracy = gate_objectives([r._replace(target=None) for r in records], all_ones=True)
    ones = [np.log1p(np.exp(-r.logits.astype("float64"))).mean(axis=0).sum() for r in records]
    np.testing.assert_allclose(float(warm_loss), np.mean(ones), rtol=1e-5)
    np.testing.assert_allclose(float(warm_accuracy), np.mean([r.mask.mean() for r in records]), rtol=1e-5)
    # Weighted images, as Keras weighs the task loss: each image's BCE times its weight, mean over the batch.
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0], "float32")
    weighted = [(weights[:, None] * bce_of(r)).mean(axis=0).sum() for r in records]
    for sample_weight in (weights, weights[:, None], np.repeat(weights[:, None], 3, axis=1)):
        loss, same_accuracy = gate_objectives(records, sample_weight=sample_weight)
        np.testing.assert_allclose(float(loss), np.mean(weighted), rtol=1e-5)
        assert float(same_accuracy) == pytest.approx(float(accuracy))


def bce_of(record):
    probability = 1 / (1 + np.exp(-record.logits.astype("float64")))
    return -(record.target * np.log(probability) + (1 - record.target) * np.log(1 - probability))


def test_images_of_weight_zero_train_no_predictor(images):
    labels = np.arange(8) % 10
    model = _compiled("decoupled")
    before = [v.numpy().copy() for v in model.predictor_variables]
    model.fit(images, labels, sample_weight=np.zeros(8, "float32"), batch_size=8, epochs=1, verbose=0)
    for got, expected in zip(model.predictor_variables, before):
        np.testing.assert_array_equal(got.numpy(), expected)
    model.fit(images, labels, sample_weight=np.ones(8, "float32"), batch_size=8, epochs=1, verbose=0)
    assert any(not np.array_equal(got.numpy(), expected) for got, expected in zip(model.predictor_variables, before))


def _gate_loss_gradients(model, images, labels):
    with tf.GradientTape() as tape:
        _, gate = _losses(model, images, labels)
    return tape.gradient(gate, [model.backbone_variables, model.predictor_variables])


def test_joint_gradient_scale_scales_only_the_backbone_gradient(images):
    labels = np.arange(8) % 10
    paper = _compiled("joint")
    scaled = _compiled("joint", joint_gradient_scale=0.25)
    scaled.set_weights(paper.get_weights())
    np.testing.assert_array_equal(paper.predict(images, verbose=0), scaled.predict(images, verbose=0))
    (paper_backbone, paper_predictors) = _gate_loss_gradients(paper, images, labels)
    (scaled_backbone, scaled_predictors) = _gate_loss_gradients(scaled, images, labels)
    reached = [(a, b) for a, b in zip(paper_backbone, scaled_backbone) if a is not None]
    assert reached and any(float(tf.reduce_max(tf.abs(a))) > 0 for a, _ in reached)
    for a, b in reached:
        np.testing.assert_allclose(b, 0.25 * a, rtol=1e-4, atol=1e-7)
    for a, b in zip(paper_predictors, scaled_predictors):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    # Saved and restored with its scale.
    layer = scaled.gated_layers[3]
    assert type(layer).from_config(layer.get_config()).joint_gradient_scale == 0.25


@pytest.mark.parametrize("scale", [-1.0, "1", True, float("nan")])
def test_joint_gradient_scale_is_validated(scale):
    with pytest.raises(ValueError, match="joint_gradient_scale"):
        fk.gate(fk.models.mobilenet_v1(alpha=0.25), mode="joint", joint_gradient_scale=scale)


def test_each_optimizer_updates_only_its_variables(images):
    model = _compiled()
    labels = np.arange(8) % 10
    # Each optimizer keeps momentum slots for its own variables only.
    backbone_slots = [v.path for v in model.optimizer.variables if "momentum" in v.path]
    gate_slots = [v.path for v in model.gate_optimizer.variables if "momentum" in v.path]
    assert len(backbone_slots) == len(model.backbone_variables)
    assert len(gate_slots) == len(model.predictor_variables)
    assert all("predictor" in path for path in gate_slots)
    assert not any("predictor" in path for path in backbone_slots)
    model.train_on_batch(images, labels)
    assert int(model.optimizer.iterations) == 1 and int(model.gate_optimizer.iterations) == 1
    # Warm-up trains the predictors toward "on" and leaves the backbone alone.
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    before = [v.numpy().copy() for v in model.backbone_variables]
    predictors_before = [v.numpy().copy() for v in model.predictor_variables]
    history = model.warm_up_gates(ds, steps=3, verbose=0)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.backbone_variables))
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(predictors_before, model.predictor_variables))
    assert int(model.optimizer.iterations) == 1
    assert history.history["gate_loss"][0] > 0


def test_fit_logs_ftwt_metrics_and_cooldown(images):
    model = _compiled()
    labels = np.arange(8) % 10
    history = model.fit(
        images, labels, batch_size=4, epochs=2, verbose=0, validation_data=(images, labels),
        callbacks=[fk.callbacks.GateCooldown(0.5), fk.callbacks.FlopsLogger(verbose=False)],
    )
    logs = history.history
    for key in ("task_loss", "gate_loss", "gate_accuracy", "flops_reduction", "target_flops_reduction", "accuracy",
                "val_flops_reduction", "dense_macs", "dynamic_macs", "val_dynamic_macs"):
        assert key in logs, key
    assert logs["gate_loss_weight"] == [1.0, 0.0]
    # Loss = task + gate in epoch 1, task only after the cooldown.
    np.testing.assert_allclose(logs["loss"][1], logs["task_loss"][1], rtol=1e-5)
    assert logs["loss"][0] > logs["task_loss"][0]
    assert logs["dense_macs"][0] == fk.flops.count_macs(model)
    np.testing.assert_allclose(logs["dynamic_macs"][0], logs["dense_macs"][0] * (1 - logs["flops_reduction"][0]))
    gates = fk.static_gates.static_gates_of(model).values()  # after the last epoch
    assert logs["gates_decided_by_weights"][-1] == sum(g.decided for g in gates) / sum(len(g.always_on) for g in gates)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    return [not np.array_equal(a, v.numpy()) for a, v in zip(before, variables)]


@pytest.mark.parametrize("mode", ["decoupled", "joint"])
def test_with_untrained_gates_only_the_task_loss_trains_the_backbone(images, mode):
    labels = np.arange(8) % 10
    model = _compiled(mode)
    reference = _compiled(mode)
    reference.set_weights(model.get_weights())
    force_gates(model, on=True)  # the same masks in both models' compiled passes
    force_gates(reference, on=True)
    model.train_gates = False
    # The reference: gate loss weighted 0, so only the predictors' own step tells them apart.
    reference.gate_loss_weight.assign(0.0)
    predictors = _values(model.predictor_variables)
    logs = model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    reference.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert not any(_changed(predictors, model.predictor_variables))
    assert int(model.gate_optimizer.iterations) == 0
    assert not {"gate_loss", "gate_accuracy", "target_flops_reduction"} & set(logs)  # not measured, not 0
    np.testing.assert_allclose(logs["loss"], logs["task_loss"], rtol=1e-6)
    for a, b in zip(reference.backbone_variables, model.backbone_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # Evaluation still measures the gates against their targets.
    assert "gate_accuracy" in model.evaluate(images, labels, verbose=0, return_dict=True)
    with pytest.raises(ValueError, match="train_gates = True"):
        model.warm_up_gates(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat(), steps=1, verbose=0)


def test_cooldown_stops_training_the_gates_and_restores_the_setting(images):
    labels = np.arange(8) % 10
    model = _compiled()
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((model.train_gates, _values(model.predictor_variables)))

    # GateCooldown first: the probe sees the setting the epoch trains with.
    logs = model.fit(images, labels, batch_size=4, epochs=3, verbose=0,
                     callbacks=[fk.callbacks.GateCooldown(1 / 3), Probe()]).history
    assert [trained for trained, _ in seen] == [True, False, False]
    assert any(_changed(seen[0][1], model.predictor_variables))  # trained in epoch 1 ...
    assert not any(_changed(seen[1][1], model.predictor_variables))  # ... and not moved afterwards
    assert len(logs["gate_loss"]) == 1 and len(logs["loss"]) == 3
    assert model.train_gates  # back to the default for the next fit


def test_evaluate_logs_image_weighted_reductions_of_masks_and_targets(images):
    model = _compiled(threshold=0.7)
    labels = np.arange(8) % 10
    logs = model.evaluate(images, labels, batch_size=3, verbose=0, return_dict=True)  # batches of 3, 3, 2
    dense = fk.flops.count_macs(model)
    predicted = 1.0 - fk.flops.dynamic_macs(model, images) / dense
    with record_gates(targets=True) as recorder:
        model(images, training=False)
    targets = {name: record.target for name, record in recorder.by_layer_name().items()}
    target = 1.0 - keras.ops.convert_to_numpy(fk.flops.executed_macs(model.mac_terms, targets)) / dense
    # Preconditions: per-image costs differ, so weighing batches instead of images would show.
    for per_image in (predicted, target):
        per_batch = np.mean([per_image[:3].mean(), per_image[3:6].mean(), per_image[6:].mean()])
        assert abs(per_batch - per_image.mean()) > 1e-5  # 10x the tolerance of the checks below
    np.testing.assert_allclose(logs["flops_reduction"], predicted.mean(), atol=1e-6)
    np.testing.assert_allclose(logs["target_flops_reduction"], target.mean(), atol=1e-6)
    assert abs(target.mean() - predicted.mean()) > 1e-3  # two different quantities


def test_cooldown_weight_scales_the_gate_loss(images):
    model = _compiled()
    labels = np.arange(8) % 10
    logs = model.fit(images, labels, batch_size=8, epochs=2, verbose=0,
                     callbacks=[fk.callbacks.GateCooldown(0.5, weight=0.25)]).history
    assert logs["gate_loss_weight"] == [0.25, 0.0]
    np.testing.assert_allclose(logs["loss"][0], logs["task_loss"][0] + 0.25 * logs["gate_loss"][0], rtol=1e-4)
    with pytest.raises(ValueError, match="weight"):
        fk.callbacks.GateCooldown(0.5, weight=-1.0)


def test_a_cooldown_that_rounds_to_no_gated_epoch_warns(images):
    labels = np.arange(8) % 10
    with pytest.warns(UserWarning, match=r"GateCooldown\(0.3\) over 2 epochs turns the gate loss off .* >= 0.5"):
        logs = _compiled().fit(images, labels, batch_size=8, epochs=2, verbose=0,
                               callbacks=[fk.callbacks.GateCooldown(0.3)]).history
    assert logs["gate_loss_weight"] == [0.0, 0.0]
    for fraction in (0.0, 0.5):  # neither a deliberate 0 nor one gated epoch warns
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _compiled().fit(images, labels, batch_size=8, epochs=2, verbose=0,
                            callbacks=[fk.callbacks.GateCooldown(fraction)])
        assert not [w for w in caught if "GateCooldown" in str(w.message)]


def test_predict_applies_masks(images):
    model = _compiled()
    force_gates(model, on=False)
    logits = model.predict(images, verbose=0)
    bias = model.network.get_layer("logits").bias.numpy()
    # Every conv output is zero: the classifier sees zeros and returns its bias.
    np.testing.assert_allclose(logits, np.broadcast_to(bias, logits.shape), atol=1e-6)


def test_compile_checks():
    model = fk.gate(small_resnet())
    opt = keras.optimizers.SGD()
    with pytest.raises(ValueError, match="different optimizer"):
        model.compile(optimizer=opt, gate_optimizer=opt, loss="mse")
    teacher = small_resnet()
    with pytest.raises(ValueError, match="`teacher` must be a keras.Model"):
        model.compile(loss="mse", teacher="baseline.keras")
    for weight in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="student_loss_weight"):
            model.compile(loss="mse", teacher=teacher, student_loss_weight=weight)
    for temperature in (0.0, -2.0, True):
        with pytest.raises(ValueError, match="distillation_temperature"):
            model.compile(loss="mse", teacher=teacher, distillation_temperature=temperature)


def test_distillation_loss_is_the_tempered_kl_divergence():
    teacher = np.array([[3.0, 1.0, -2.0], [0.0, 0.0, 0.0]], "float32")
    student = np.array([[1.0, 2.0, 0.5], [40.0, -40.0, 0.0]], "float32")  # saturated row: no inf / nan
    temperature = 2.0
    p = np.exp(teacher / temperature) / np.exp(teacher / temperature).sum(-1, keepdims=True)
    log_q = student / temperature - np.log(np.exp(student / temperature).sum(-1, keepdims=True))
    expected = np.mean(np.sum(p * (np.log(p) - log_q), axis=-1)) * temperature**2
    np.testing.assert_allclose(float(distillation_loss(teacher, student, temperature)), expected, rtol=1e-5)
    assert float(distillation_loss(teacher, teacher, temperature)) == 0.0
    assert float(distillation_loss(teacher, student, 1.0)) > 0.0


def _distilling(teacher, student_loss_weight):
    model = fk.gate(small_resnet(), threshold=0.9)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),  # no momentum: one step moves by -0.1 x the gradient
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        teacher=teacher, student_loss_weight=student_loss_weight, distillation_temperature=2.0,
    )
    return model


def test_distillation_trains_the_backbone_on_the_mixed_loss(images):
    labels = np.arange(8) % 10
    teacher = small_resnet()  # initialized apart from the student: other logits
    logits = teacher.get_layer("logits").kernel  # a confident teacher: its term must not be negligible
    logits.assign(10.0 * logits.numpy())
    teacher_weights = [w.numpy().copy() for w in teacher.weights]
    model = _distilling(teacher, student_loss_weight=0.25)
    # Gates fixed on: a random predictor's logit near 0 could flip between this eager pass and
    # fit's compiled one, and change the gradient for reasons that are not distillation's.
    force_gates(model, on=True)
    with tf.GradientTape(persistent=True) as tape:
        with record_gates(targets=True) as recorder:
            logits = model(images, training=True)
        task = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        distillation = distillation_loss(teacher(images, training=False), logits, temperature=2.0)
        gate, _ = gate_objectives(recorder.records)
        backbone_loss = 0.25 * task + 0.75 * distillation
        task_only = task + 0.0  # what the backbone would follow without the teacher
    gradients = tape.gradient(backbone_loss, model.backbone_variables)
    task_gradients = tape.gradient(task_only, model.backbone_variables)
    before = [v.numpy().copy() for v in model.backbone_variables]
    logs = model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    np.testing.assert_allclose(logs["distillation_loss"][0], float(distillation), rtol=1e-4)
    np.testing.assert_allclose(logs["task_loss"][0], float(task), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"][0], float(backbone_loss + gate), rtol=1e-4)
    assert float(distillation) > 0.1 * float(task)  # the teacher's term is not negligible
    # One SGD step moved the backbone along the mixed loss's gradient. (Compiled and eager
    # gradients of a net at initialization can differ by ~1e-3 relative (ResNet-20), so compare
    # whole updates; following the task loss alone would be off by far more.)
    update = np.concatenate([(v.numpy() - old).ravel() for old, v in zip(before, model.backbone_variables)])
    flat = lambda grads: np.concatenate([-0.1 * g.numpy().ravel() for g in grads])
    relative_error = lambda expected: np.linalg.norm(update - expected) / np.linalg.norm(expected)
    assert relative_error(flat(gradients)) < 0.01
    assert relative_error(flat(task_gradients)) > 0.1
    # The teacher is frozen and not part of the student: not trained, not saved with it.
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(teacher_weights, teacher.weights))
    teacher_ids = {id(w) for w in teacher.weights}
    assert not any(id(w) in teacher_ids for w in model.weights)
    # Compiled again without the teacher, the model no longer logs a distillation loss.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert model.teacher is None
    assert "distillation_loss" not in model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history


def test_student_loss_weight_one_ignores_the_teacher(images):
    labels = np.arange(8) % 10
    trained = []
    for teacher in (None, small_resnet()):
        keras.utils.set_random_seed(0)
        model = _distilling(teacher, student_loss_weight=1.0)
        model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
        trained.append([v.numpy() for v in model.backbone_variables])
    for plain, distilled in zip(*trained):
        np.testing.assert_allclose(plain, distilled, atol=1e-6)


def test_fit_and_evaluate_on_a_backend_without_a_trainer_say_what_to_do():
    """The numpy and OpenVINO backends have no Keras trainer: a clear error, not one from inside Keras."""
    from ftwt_keras import _train_steps

    model = _compiled()
    steps = _train_steps.for_backend("numpy")
    for make, method in ((steps.make_train_function, "fit"), (steps.make_test_function, "evaluate")):
        with pytest.raises(NotImplementedError, match=rf"FTWTModel.{method} runs on the TensorFlow, JAX and PyTorch"):
            make(model)
    assert _train_steps.for_backend("tensorflow") in type(model).__mro__


def _on_backend(backend, script, *args, env=None):
    """Runs `script` with `args` under KERAS_BACKEND=`backend`; skips where that backend is not installed.

    Neither JAX nor PyTorch is a dependency: the check runs where this
    interpreter has the backend, or where FTWT_<BACKEND>_PYTHON names a Python
    that has it and keras (e.g. a separate venv without TensorFlow; it imports
    ftwt_keras from this checkout), and is skipped otherwise.
    """
    python = os.environ.get(f"FTWT_{backend.upper()}_PYTHON")
    if python is None and importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (not a dependency; install it, or set FTWT_{backend.upper()}_PYTHON)")
    result = subprocess.run(
        [python or sys.executable, "-c", script, *map(str, args)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": backend, **(env or {}),
             "PYTHONPATH": os.pathsep.join([_REPOSITORY, os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ON_ANOTHER_BACKEND = """
import sys, numpy as np, keras
import ftwt_keras as fk
model = keras.saving.load_model(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(images, verbose=0))
np.save(sys.argv[4], fk.flops.dynamic_macs(model, images))
targets = lambda scores: fk.masks.mass_mask(scores, 0.5)
if keras.backend.backend() == "jax":
    import jax
    targets = jax.jit(targets)  # static shapes only
np.save(sys.argv[5], keras.ops.convert_to_numpy(targets(images.reshape(len(images), -1))))
fk.flops.COMPILE_FROM_BATCHES = 1  # the passes over batches compiled (jax.jit on JAX), the last one padded
np.save(sys.argv[6], fk.flops.dynamic_macs(model, images, batch_size=3))
np.save(sys.argv[7], fk.target_flops_reduction(model, images, apply_masks=False))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_saved_model_predicts_the_same_on_another_backend(backend, tmp_path, images):
    """The layers are keras.ops only: a model trained and saved on TensorFlow runs on JAX and PyTorch
    (and the mass targets compile with jax.jit, alone and in the compiled passes over batches)."""
    model = fk.gate(fk.models.mobilenet_v1(input_shape=(32, 32, 3), alpha=0.25), threshold=0.9, predictor_rank=4,
                     use_softmax=False)
    rng = np.random.default_rng(0)
    for layer in model.gated_layers:  # gates that differ per image, some of them capped
        for weight in (layer.predictor.projection, layer.predictor.kernel):
            if weight is not None:  # no projection where the rank saves nothing
                weight.assign(rng.normal(0, 1, weight.shape).astype("float32"))
    fk.cap_gates(model, images, ratio=0.9)
    path, data = tmp_path / "m.keras", tmp_path / "x.npy"
    model.save(path)
    np.save(data, images)
    outputs = [tmp_path / f"{name}.npy" for name in ("logits", "macs", "targets", "compiled_macs", "reduction")]
    _on_backend(backend, _ON_ANOTHER_BACKEND, path, data, *outputs)
    expected = model.predict(images, verbose=0)
    macs = fk.flops.dynamic_macs(model, images)
    assert len(set(macs.tolist())) > 1  # the masks differ by image
    np.testing.assert_allclose(np.load(outputs[0]), expected, atol=1e-4 * np.ptp(expected))
    np.testing.assert_array_equal(np.load(outputs[1]), macs)
    # The mass targets (pixels as scores: many ties), compiled with jax.jit on JAX.
    np.testing.assert_array_equal(np.load(outputs[2]), fk.masks.mass_mask(images.reshape(len(images), -1), 0.5))
    np.testing.assert_array_equal(np.load(outputs[3]), macs)
    assert float(np.load(outputs[4])) == pytest.approx(fk.target_flops_reduction(model, images, apply_masks=False),
                                                       abs=1e-6)


_TRAIN_ON_ANOTHER_BACKEND = """
import sys, json, numpy as np, keras
import ftwt_keras as fk
model_path, data_path, step_path, logs_path, fit_path = sys.argv[1:]
data = np.load(data_path)
images, labels = data["images"], data["labels"]

def compiled(**kwargs):
    model = keras.saving.load_model(model_path)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"], **kwargs)
    return model

numpy = keras.ops.convert_to_numpy
model = compiled()
before = [numpy(v) for v in model.trainable_weights]
logs = model.train_on_batch(images, labels, return_dict=True)
np.savez(step_path, *[numpy(v) - b for v, b in zip(model.trainable_weights, before)],
         *[numpy(v) for v in model.gate_optimizer.variables])
json.dump({k: float(v) for k, v in logs.items()}, open(logs_path, "w"))

def batches():
    while True:
        yield images[:4], labels[:4]

model = compiled(teacher=keras.saving.load_model(model_path).network)
model.warm_up_gates(batches(), steps=1, verbose=0)
history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0, validation_data=(images, labels),
                    callbacks=[fk.callbacks.GateCooldown(0.5)])
json.dump({"history": {k: [float(x) for x in v] for k, v in history.history.items()},
           "iterations": [int(numpy(model.optimizer.iterations)), int(numpy(model.gate_optimizer.iterations))]},
          open(fit_path, "w"))

if keras.backend.backend() == "jax":  # the same step data-parallel over 2 host devices (XLA_FLAGS)
    import jax

    assert len(jax.devices()) == 2
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    model = compiled()
    before = [numpy(v) for v in model.trainable_weights]
    model.train_on_batch(images, labels)
    np.savez(step_path.replace(".npz", "_parallel.npz"), *[numpy(v) - b for v, b in zip(model.trainable_weights, before)],
             *[numpy(v) for v in model.gate_optimizer.variables])
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_trains_on_another_backend_as_on_tensorflow(backend, tmp_path, images):
    """One train step on JAX / PyTorch changes every weight, and the gate optimizer's state, as on TensorFlow
    (where batch norm trains through the fused kernel; there `normalization.batch_norm`'s keras.ops); `fit`
    runs there with warm-up, a cooldown, validation and a teacher, and keeps both optimizers' state across steps;
    on JAX the step also data-parallel over 2 host devices (`keras.distribution.DataParallel`)."""
    model = fk.gate(fk.models.mobilenet_v1(input_shape=(32, 32, 3), alpha=0.25), threshold=0.7, predictor_rank=4)
    labels = np.arange(len(images), dtype="int32") % 10
    path, data = tmp_path / "m.keras", tmp_path / "d.npz"
    model.save(path)
    np.savez(data, images=images, labels=labels)
    step, logs, fitted = tmp_path / "step.npz", tmp_path / "logs.json", tmp_path / "fit.json"
    _on_backend(backend, _TRAIN_ON_ANOTHER_BACKEND, path, data, step, logs, fitted,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})

    model = keras.saving.load_model(path)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    before = [w.numpy() for w in model.trainable_weights]
    expected_logs = model.train_on_batch(images, labels, return_dict=True)
    expected = [w.numpy() - b for w, b in zip(model.trainable_weights, before)]
    expected += [np.asarray(v) for v in model.gate_optimizer.variables]
    predictors = {id(v) for v in model.predictor_variables}
    assert any(id(v) in predictors and np.any(d) for v, d in zip(model.trainable_weights, expected))
    for path in [step] + ([tmp_path / "step_parallel.npz"] if backend == "jax" else []):
        got = np.load(path)
        assert len(got.files) == len(expected)
        for name, want in zip(got.files, expected):
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-5 + 1e-2 * np.max(np.abs(want)))
    got_logs = json.loads(logs.read_text())
    assert got_logs.keys() == expected_logs.keys()
    for key, value in expected_logs.items():
        assert got_logs[key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key

    fit = json.loads(fitted.read_text())
    # 2 epochs of 2 steps train the backbone; the gates train in the warm-up step and the first epoch only.
    assert fit["iterations"] == [4, 3]
    history = fit["history"]
    assert history["gate_loss_weight"] == [1.0, 0.0]
    assert {"loss", "gate_loss", "flops_reduction", "distillation_loss", "val_loss", "val_gate_accuracy"} <= history.keys()
    assert "val_distillation_loss" not in history  # evaluation computes no teacher logits
    assert all(np.isfinite(v).all() for v in history.values())


def _sgd_step_deltas(model, images, labels):
    """What one `train_on_batch` changes: flattened (backbone, predictors) weight deltas."""
    before = [v.numpy().copy() for v in model.backbone_variables + model.predictor_variables]
    model.train_on_batch(images, labels)
    after = [v.numpy() for v in model.backbone_variables + model.predictor_variables]
    deltas = [(b - a).ravel() for a, b in zip(before, after)]
    split = len(model.backbone_variables)
    return np.concatenate(deltas[:split]), np.concatenate(deltas[split:])


def test_an_xla_compiled_step_trains_as_the_graph_one(images):
    """`compile(jit_compile="auto")` is XLA on a GPU: the same targets, losses and updates as without it."""
    labels = np.arange(8) % 10
    reference = fk.gate(small_resnet(), threshold=0.9)  # mass targets: their top-k once needed a static k
    results = []
    for jit_compile in (False, True):
        model = fk.gate(small_resnet(), threshold=0.9)
        model.set_weights(reference.get_weights())
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
        logs = [model.train_on_batch(images, labels, return_dict=True) for _ in range(2)]
        results.append((logs, model.evaluate(images, labels, return_dict=True, verbose=0), model.get_weights()))
    (graph_logs, graph_eval, graph_weights), (xla_logs, xla_eval, xla_weights) = results
    for graph, xla in (*zip(graph_logs, xla_logs), (graph_eval, xla_eval)):
        assert graph.keys() == xla.keys()
        for name in graph:
            np.testing.assert_allclose(float(xla[name]), float(graph[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    for graph, xla in zip(graph_weights, xla_weights):
        np.testing.assert_allclose(xla, graph, atol=1e-5)

def test_fit_with_ema_leaves_each_optimizer_s_average_in_its_own_variables(images):
    """`use_ema=True`: Keras's `fit` ends by writing the optimizer's averages over the model's
    trainable weights; each of the two optimizers must write only its own."""
    labels = np.arange(8) % 10
    reference = fk.gate(small_resnet(), threshold=0.9)
    compiled = functools.partial(sgd_compiled_copy, reference)

    one_step = compiled()
    one_step.train_on_batch(images[:4], labels[:4])
    # An average of momentum 1 holds the weights its first update left (Keras averages with
    # momentum 0 on the first step): three steps later, those are what `fit` leaves.
    model = compiled(use_ema=True, ema_momentum=1.0)
    model.fit(images, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for name in ("backbone_variables", "predictor_variables"):
        for got, expected in zip(getattr(model, name), getattr(one_step, name)):
            np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6, err_msg=got.path)

def test_mixed_float16_scales_the_loss_for_both_optimizers_and_steps_like_float32(images):
    labels = np.arange(8) % 10
    reference = fk.gate(small_resnet(), threshold=0.9)
    with global_dtype_policy("mixed_float16"):
        mixed = fk.gate(small_resnet(), threshold=0.9)
    mixed.set_weights(reference.get_weights())
    for model in (reference, mixed):
        model.compile(optimizer=keras.optimizers.SGD(0.01), gate_optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(mixed.gate_optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(reference.gate_optimizer, keras.optimizers.LossScaleOptimizer)
    # The gate optimizer's own scale differs (after warm-up steps, say): the predictors' gradients,
    # scaled by the backbone optimizer's, are rescaled to it.
    mixed.gate_optimizer.dynamic_scale.assign(2.0**12)
    for expected, got in zip(_sgd_step_deltas(reference, images, labels), _sgd_step_deltas(mixed, images, labels)):
        # float16 activations move the step a little; an unscaled gradient would be 2**12-2**15 times larger.
        assert 0.95 < np.linalg.norm(got) / np.linalg.norm(expected) < 1.05  # 0.998-1.001 on three seeds
        assert np.dot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected)) > 0.99
    # An overflow anywhere: both optimizers skip the step and halve their scales together.
    mixed.optimizer.dynamic_scale.assign(3e38)
    scales = [float(o.dynamic_scale) for o in (mixed.optimizer, mixed.gate_optimizer)]
    backbone, predictors = _sgd_step_deltas(mixed, images, labels)
    assert not backbone.any() and not predictors.any()
    assert [float(o.dynamic_scale) for o in (mixed.optimizer, mixed.gate_optimizer)] == [s / 2 for s in scales]
    # Either optimizer passed as a LossScaleOptimizer: the other is wrapped too, in any policy.
    model = fk.gate(small_resnet(), threshold=0.9)
    model.compile(optimizer="sgd", gate_optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()),
                  loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_a_non_finite_gradient_on_one_side_skips_both_optimizers():
    with global_dtype_policy("mixed_float16"):
        model = fk.gate(small_resnet(), threshold=0.9)
    model.compile(optimizer="sgd", gate_optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.optimizer.dynamic_scale.assign(4.0)
    model.gate_optimizer.dynamic_scale.assign(8.0)
    finite = [np.ones(3, "float32"), np.ones(2, "float32")]
    backbone, predictor = model._gradients_for_loss_scaling(finite, 1)
    np.testing.assert_array_equal(np.asarray(backbone), finite[0])
    np.testing.assert_array_equal(np.asarray(predictor), 2.0 * finite[1])  # from scale 4 to scale 8
    for overflow in ([np.ones(3, "float32"), np.array([1.0, np.inf], "float32")],
                     [np.array([np.nan, 1.0, 1.0], "float32"), np.ones(2, "float32")]):
        assert all(np.isnan(np.asarray(g)).all() for g in model._gradients_for_loss_scaling(overflow, 1))


def test_distillation_loss_of_16_bit_logits_is_computed_in_float32():
    rng = np.random.default_rng(0)
    teacher, student = (rng.normal(0, 3, (4, 10)).astype("float32") for _ in range(2))
    exact = float(distillation_loss(teacher, student))
    low = distillation_loss(teacher.astype("float16"), student.astype("float16"))
    assert low.dtype == "float32"
    # float16 rounds the logits themselves (~1e-3 of them); a float16 softmax would add its own error.
    assert float(low) == pytest.approx(exact, rel=2e-3)
