import keras
import numpy as np

import ftwt_keras as fk
from conftest import short_mobilenet


def test_gated_model_round_trips_without_custom_objects(tmp_path, images):
    model = fk.gate(short_mobilenet(blocks=3), threshold=0.93, mode="joint", pooling="max",
                    predictor_rank=8)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        gate_optimizer=keras.optimizers.SGD(0.2, momentum=0.8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    model.gate_loss_weight.assign(0.0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, fk.FTWTModel)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    layer = loaded.gated_layers[5]
    assert (layer.threshold, layer.mode, layer.pooling, layer.predictor_rank) == (0.93, "joint", "max", 8)
    assert layer.predictor.projection is not None  # its map goes through 8 channels
    assert loaded.network.get_layer("block2_dw").predictor.input_padding == ((1, 1), (1, 1))
    assert float(loaded.gate_loss_weight.numpy()) == 0.0
    assert float(loaded.gate_optimizer.learning_rate.numpy()) == np.float32(0.2)
    for a, b in zip(loaded.gate_optimizer.variables, model.gate_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training can go on after loading.
    loaded.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)


def test_a_distilling_model_saves_without_its_teacher(tmp_path, images):
    teacher = short_mobilenet(blocks=3)
    model = fk.gate(short_mobilenet(blocks=3), threshold=0.93)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  teacher=teacher)
    model.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.teacher is None and len(loaded.weights) == len(model.weights)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    loaded.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   teacher=teacher)  # distillation goes on once the teacher is given again
    assert "distillation_loss" in loaded.fit(images, np.arange(8) % 10, batch_size=4, verbose=0).history


def test_backup_and_restore_resumes_both_optimizers(tmp_path, images):
    """A fit killed after an epoch and run again with `BackupAndRestore` (as the recipes resume) restarts at the
    next epoch with the backbone's and the predictors' optimizer states as they were."""
    labels = np.arange(len(images)) % 10
    numpy = keras.ops.convert_to_numpy

    def compiled():
        keras.utils.set_random_seed(0)
        model = fk.gate(short_mobilenet(), threshold=0.7)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), gate_optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    class Killed(Exception):
        pass

    class KillAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Killed

    killed = compiled()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    try:
        killed.fit(images, labels, batch_size=4, epochs=4, verbose=0, callbacks=[backup, KillAfterSecondEpoch()])
    except Killed:
        pass
    states = [[numpy(v) for v in optimizer.variables] for optimizer in (killed.optimizer, killed.gate_optimizer)]
    assert int(killed.gate_optimizer.iterations) == 4

    resumed_states, epochs = [], []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

        def on_train_batch_begin(self, batch, logs=None):
            if not resumed_states:
                resumed_states.extend([[numpy(v) for v in optimizer.variables]
                                       for optimizer in (self.model.optimizer, self.model.gate_optimizer)])

    resumed = compiled()
    resumed.fit(images, labels, batch_size=4, epochs=4, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), Record()])
    assert epochs == [2, 3]
    for before, after in zip(states, resumed_states):  # the backbone's optimizer, then the predictors'
        assert len(before) == len(after) and all(np.array_equal(b, a) for b, a in zip(before, after))
    assert int(resumed.optimizer.iterations) == int(resumed.gate_optimizer.iterations) == 8
