import keras
import numpy as np
import pytest
from conftest import small_resnet

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
