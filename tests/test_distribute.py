import textwrap

from conftest import run_python

SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, ftwt_keras as fk
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        base = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0)]
                                + [layer for filters in (8, 16) for layer in (
                                    keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False),
                                    keras.layers.BatchNormalization(), keras.layers.ReLU())]
                                + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        model = fk.gate(base, threshold=0.9)
        # Moving averages: fit ends writing each optimizer's over its own variables, on every replica.
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, use_ema=True),
                      gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    x = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = np.arange(32) % 10
    before = [v.numpy().copy() for v in model.predictor_variables]
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = [v.numpy() for v in model.predictor_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert np.isfinite(history.history["loss"]).all()
    print("OK", history.history["gate_accuracy"], model.evaluate(x, y, verbose=0, return_dict=True)["gate_accuracy"])
    """
)


def test_fit_under_mirrored_strategy_with_two_cpu_replicas():
    result = run_python("-c", SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
