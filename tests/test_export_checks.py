"""What the exporter refuses (ftwt_keras.export.checks, parse_policy), with errors that say what to do."""

import keras
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402


def test_rejects_a_model_that_is_not_ftwt():
    with pytest.raises(export.ExportError, match="FTWTModel"):
        export.convert(fk.models.mobilenet_v1(alpha=0.25))


def test_rejects_a_keras_backend_other_than_tensorflow(monkeypatch):
    """The graph is traced through Keras layers; on JAX they fail on TF tensors with an error naming neither."""
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(export.ExportError, match="needs Keras's TensorFlow backend; this process runs 'jax'"):
        export.convert(model)


def test_rejects_missing_and_wrong_files(tmp_path):
    with pytest.raises(export.ExportError, match="does not exist"):
        export.load_ftwt_model(tmp_path / "missing.keras")
    wrong = tmp_path / "model.h5"
    wrong.write_bytes(b"not a model")
    with pytest.raises(export.ExportError, match=r"not a \.keras file"):
        export.load_ftwt_model(wrong)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(export.ExportError, match="Could not load"):
        export.load_ftwt_model(broken)


def test_rejects_an_unsupported_layer():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = fk.gate(keras.Model(inputs, keras.layers.Dense(2)(x)))
    with pytest.raises(export.ExportError, match="layer_norm.*LayerNormalization.*not supported"):
        export.convert(model)


def test_rejects_a_bad_policy():
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    with pytest.raises(export.ExportError, match="Policy"):
        export.convert(model, policy="fast")
    with pytest.raises(export.ExportError, match="not gated layers"):
        export.convert(model, policy={"nope": "dense"})
    assert export.parse_policy("gather_inputs") == "gather_inputs" and export.parse_policy("0.4") == 0.4
    with pytest.raises(export.ExportError, match="gather_inputs"):
        export.parse_policy("fast")
