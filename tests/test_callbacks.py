import functools

import keras
import numpy as np
import pytest
from conftest import sgd_compiled_copy, small_resnet

import ftwt_keras as fk


def _model(threshold=1.0):
    model = fk.gate(small_resnet(), threshold=threshold)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_threshold_scheduler_retargets_training_and_evaluation(images):
    labels = np.arange(8) % 10
    model = _model()
    ramp = fk.callbacks.ThresholdScheduler.linear(1.0, 0.7, epochs=2)
    logs = model.fit(images, labels, batch_size=8, epochs=3, verbose=0, validation_data=(images, labels),
                     callbacks=[ramp]).history
    np.testing.assert_allclose(logs["threshold"], [0.85, 0.7, 0.7])
    assert all(layer.threshold == 0.7 for layer in model.gated_layers)
    # Each epoch's targets (training and validation) are those of its threshold.
    assert logs["target_flops_reduction"][1] > logs["target_flops_reduction"][0] + 0.05
    assert logs["val_target_flops_reduction"][1] > logs["val_target_flops_reduction"][0] + 0.02
    after = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(after["target_flops_reduction"], logs["val_target_flops_reduction"][2], atol=1e-6)
    # The last threshold is saved with the model.
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model.gated_layers[3])).threshold == 0.7
    for layer in model.gated_layers:
        layer.threshold = 1.0
    model.make_test_function(force=True)
    dense_targets = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    assert logs["val_target_flops_reduction"][0] > dense_targets["target_flops_reduction"] + 0.05


def test_threshold_scheduler_checks_its_schedule(images):
    with pytest.raises(ValueError, match="function epoch -> threshold"):
        fk.callbacks.ThresholdScheduler(0.9)
    with pytest.raises(ValueError, match="`end` must be in \\(0, 1\\]"):
        fk.callbacks.ThresholdScheduler.linear(1.0, 1.2, epochs=2)
    with pytest.raises(ValueError, match="`epochs` must be a positive integer"):
        fk.callbacks.ThresholdScheduler.linear(1.0, 0.9, epochs=0)
    plain = fk.models.mobilenet_v1(alpha=0.25)
    plain.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="needs an FTWT model"):
        plain.fit(images, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0,
                  callbacks=[fk.callbacks.ThresholdScheduler.linear(1.0, 0.9, epochs=1)])
    model = _model()
    with pytest.raises(ValueError, match="schedule\\(0\\)"):
        model.fit(images, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0,
                  callbacks=[fk.callbacks.ThresholdScheduler(lambda epoch: 0.0)])


def test_swap_ema_weights_evaluates_with_both_optimizers_averages(images):
    labels = np.arange(8) % 10
    reference = fk.gate(small_resnet(), threshold=0.9)
    compiled = functools.partial(sgd_compiled_copy, reference)

    # An average of momentum 1 holds the weights of the first step (Keras averages with momentum 0 on it).
    one_step = compiled()
    one_step.train_on_batch(images[:4], labels[:4])
    averaged = [v.numpy() for v in one_step.backbone_variables + one_step.predictor_variables]

    class Recorder(keras.callbacks.Callback):
        seen = {}

        def on_test_begin(self, logs=None):
            self.seen["evaluated"] = [v.numpy() for v in self.model.backbone_variables + self.model.predictor_variables]

        def on_test_end(self, logs=None):
            self.seen["after"] = [v.numpy() for v in self.model.backbone_variables + self.model.predictor_variables]

    def fit(swap, epochs=1):
        model = compiled(use_ema=True, ema_momentum=1.0)
        model.fit(images, labels, batch_size=4, epochs=epochs, shuffle=False, verbose=0,
                  validation_data=(images, labels), callbacks=[swap, Recorder()])
        return model

    split = len(fit(fk.callbacks.SwapEMAWeights()).backbone_variables)
    for got, expected in zip(Recorder.seen["evaluated"], averaged):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # Swapped back after the evaluation: the weights of the second step, not the averages.
    assert not np.allclose(Recorder.seen["after"][split], averaged[split])
    assert not np.allclose(Recorder.seen["after"][0], averaged[0])
    # Swapped at each epoch's end, and left in the model when training ends.
    model = fit(fk.callbacks.SwapEMAWeights(swap_on_epoch=True), epochs=2)
    for got, expected in zip(model.backbone_variables + model.predictor_variables, averaged):
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    # Keras's callback swaps the backbone's averages only.
    fit(keras.callbacks.SwapEMAWeights())
    np.testing.assert_allclose(Recorder.seen["evaluated"][0], averaged[0], atol=1e-6)
    assert not np.allclose(Recorder.seen["evaluated"][split], averaged[split])


def test_swap_ema_weights_says_when_no_optimizer_averages(images):
    model = _model()
    with pytest.raises(ValueError, match="use_ema=True"):
        model.fit(images, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0, validation_data=(images, np.arange(8) % 10),
                  callbacks=[fk.callbacks.SwapEMAWeights()])


def _log_epochs(logger, epochs):
    """Runs `logger` as `fit` would over `epochs`: a list of (epoch, logs)."""
    logger.set_model(keras.Sequential())
    logger.on_train_begin()
    for epoch, logs in epochs:
        logger.on_epoch_end(epoch, dict(logs))
    logger.on_train_end()


def test_resumable_csv_logger_appends_under_the_columns_of_the_file(tmp_path):
    import csv

    path = str(tmp_path / "history.csv")
    gates = {"loss": 3.0, "gate_loss": 2.0, "gate_accuracy": 0.5, "val_loss": 4.0}
    _log_epochs(fk.callbacks.ResumableCSVLogger(path), [(0, gates), (1, gates)])
    # A resumed run after the cooldown: the gate metrics are gone from the logs.
    _log_epochs(fk.callbacks.ResumableCSVLogger(path), [(2, {"loss": 1.0, "val_loss": 1.5})])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert rows[2] == {"epoch": "2", "loss": "1.0", "gate_accuracy": "NA", "gate_loss": "NA", "val_loss": "1.5"}
    # A key the file lacks adds a column; the rows before it get "NA".
    _log_epochs(fk.callbacks.ResumableCSVLogger(path), [(3, {"loss": 0.5, "val_loss": 0.7, "lr": 0.1})])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [row["lr"] for row in rows] == ["NA", "NA", "NA", "0.1"]
    assert [row["val_loss"] for row in rows] == ["4.0", "4.0", "1.5", "0.7"]
    assert [row["gate_loss"] for row in rows] == ["2.0", "2.0", "NA", "NA"]
    # Keras's own logger shifts the resumed row under the old header, which is what this one is for.
    keras_path = str(tmp_path / "keras.csv")
    _log_epochs(keras.callbacks.CSVLogger(keras_path, append=True), [(0, gates)])
    _log_epochs(keras.callbacks.CSVLogger(keras_path, append=True), [(1, {"loss": 1.0, "val_loss": 1.5})])
    assert list(csv.DictReader(open(keras_path, newline="")))[1]["gate_accuracy"] == "1.0"  # the loss, shifted
    # Resuming onto a file Keras's logger wrote a row longer than its header into still logs.
    longer = str(tmp_path / "longer.csv")
    _log_epochs(keras.callbacks.CSVLogger(longer, append=True), [(0, {"loss": 1.0, "val_loss": 1.5})])
    _log_epochs(keras.callbacks.CSVLogger(longer, append=True), [(1, gates)])
    _log_epochs(fk.callbacks.ResumableCSVLogger(longer), [(2, {"loss": 0.5, "val_loss": 0.7, "lr": 0.1})])
    assert [row["lr"] for row in csv.DictReader(open(longer, newline=""))] == ["NA", "NA", "0.1"]
    # append=False overwrites, as Keras's (which adds val_ columns to logs without any).
    _log_epochs(fk.callbacks.ResumableCSVLogger(path, append=False), [(0, {"loss": 9.0})])
    assert list(csv.DictReader(open(path, newline=""))) == [{"epoch": "0", "loss": "9.0", "val_loss": "NA"}]
