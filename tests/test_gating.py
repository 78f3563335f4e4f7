import keras
import numpy as np
import pytest
from conftest import force_gates

import ftwt_keras as fk


@pytest.mark.parametrize(
    "build",
    [
        lambda: fk.models.mobilenet_v1(alpha=0.25),
        lambda: fk.models.resnet_cifar(depth=20),
        lambda: fk.models.vgg16_bn(),
    ],
    ids=["mobilenet", "resnet20", "vgg16"],
)
def test_gate_keeps_baseline_outputs_with_every_gate_on(build, images):
    base = build()
    # Non-trivial BN statistics, so that a wrong fusion would show.
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    model = fk.gate(base, threshold=0.9)
    force_gates(model, on=True)
    expected = base.predict(images, verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)
    # gate() copied the weights: the baseline is untouched and independent.
    assert all(v is not w for v in model.weights for w in base.weights)
    force_gates(model, on=False)
    assert not np.allclose(model.predict(images, verbose=0), expected, atol=1e-3)


def test_convs_with_their_own_activation_gate_alone(images):
    """Conv2D(activation="relu") (keras.applications.VGG16's style) is a unit; a batch norm after it stays plain."""
    inputs = keras.Input(images.shape[1:])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    base = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    base.get_layer("bn_a").set_weights([np.full(8, value, "float32") for value in (1.5, 0.2, 0.1, 2.0)])
    model = fk.gate(base)
    assert [(layer.name, layer.batch_norm, layer.activation.__name__) for layer in model.gated_layers] == [
        ("conv_a", None, "relu"), ("conv_b", None, "relu")]
    assert type(model.network.get_layer("bn_a")) is keras.layers.BatchNormalization
    force_gates(model, on=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), base.predict(images, verbose=0), rtol=1e-5, atol=1e-5)


def test_gate_places_gates_like_the_paper():
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    names = [layer.name for layer in model.gated_layers]
    assert len(names) == 19 and names[0] == "conv1"
    conv2 = model.network.get_layer("stage1_block1_conv2")
    assert conv2.activation.__name__ == "linear"  # target read before the add
    mobilenet = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    assert len(mobilenet.gated_layers) == 27
    assert sum(layer.is_depthwise for layer in mobilenet.gated_layers) == 13


def test_layers_except_leaves_the_named_convs_dense():
    base = fk.models.mobilenet_v1(alpha=0.25)
    model = fk.gate(base, layers_to_gate=fk.gating.layers_except(base, ["conv1", "block1_*"]))
    names = [layer.name for layer in model.gated_layers]
    assert len(names) == 24 and names[0] == "block2_dw"
    assert isinstance(model.network.get_layer("block1_pw"), keras.layers.Conv2D)  # plain, weights kept
    np.testing.assert_array_equal(model.network.get_layer("block1_pw").kernel.numpy(),
                                  base.get_layer("block1_pw").kernel.numpy())
    single = fk.gate(base, layers_to_gate=fk.gating.layers_except(base, "block13_pw"))
    assert [layer.name for layer in single.gated_layers][-1] == "block13_dw"
    with pytest.raises(ValueError, match=r"\['blok1_\*'\] match no conv layer .* 'block1_dw'"):
        fk.gating.layers_except(base, ["conv1", "blok1_*"])


def test_convs_behind_zero_padding_pool_their_unpadded_input():
    """PyTorch pads inside a strided conv; the Keras zoo pads in front. The predictor must not see that border."""
    mobilenet = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    padded = {layer.name: layer.input_padding for layer in mobilenet.gated_layers if layer.input_padding}
    assert padded == {name: ((1, 1), (1, 1)) for name in ("block2_dw", "block4_dw", "block6_dw", "block12_dw")}
    assert all(layer.predictor.input_padding == layer.input_padding for layer in mobilenet.gated_layers)
    # keras.applications style: asymmetric padding; a pad that feeds a pooling layer, not the conv, does not count.
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="strided")(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, name="after_pool")(x)
    model = fk.gate(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    assert model.network.get_layer("strided").input_padding == ((0, 1), (0, 1))
    assert model.network.get_layer("after_pool").input_padding is None


def test_convs_on_pooled_features_stay_dense():
    """A squeeze-and-excitation unit and a classifier conv read pooled features, not feature maps."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    squeezed = keras.layers.Reshape((1, 1, 8))(keras.layers.GlobalAveragePooling2D()(features))
    squeezed = keras.layers.Conv2D(2, 1, activation="relu", name="se_reduce")(squeezed)
    excited = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(squeezed)
    x = keras.layers.Conv2D(8, 3, padding="same", name="after_se")(keras.layers.Multiply()([features, excited]))
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Dropout(0.1)(x)
    logits = keras.layers.Reshape((4,))(keras.layers.Conv2D(4, 1, name="classifier")(x))
    model = fk.gate(keras.Model(inputs, logits))
    assert [layer.name for layer in model.gated_layers] == ["features", "after_se"]
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    assert model.predict(images, verbose=0).shape == (2, 4)


def test_operations_that_are_not_layers_are_kept(tmp_path):
    """`keras.applications.MobileNetV3` writes hard sigmoid as `relu6(x + 3) / 6` on symbolic tensors: ops, not layers."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="features")(inputs)
    x = keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    base = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1, name="last")(x)))
    model = fk.gate(base)
    assert [layer.name for layer in model.gated_layers] == ["features", "last"]
    force_gates(model, on=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0), base.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


def test_gate_refuses_what_it_cannot_gate():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="ok")(inputs)
    x = keras.layers.SeparableConv2D(8, 3, name="separable")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="'separable'.*SeparableConv2D"):
        fk.gate(model)
    partly = fk.gate(model, layers_to_gate=lambda layer: layer.name == "ok")
    assert [layer.name for layer in partly.gated_layers] == ["ok"]
    with pytest.raises(ValueError, match="callable.*got a list.*layer.name in names"):
        fk.gate(model, layers_to_gate=["ok"])
    with pytest.raises(ValueError, match="threshold"):
        fk.gate(model, threshold=0.0)
    with pytest.raises(ValueError, match="mode"):
        fk.gate(model, mode="fused")
    with pytest.raises(ValueError, match="predictor rank"):
        fk.gate(model, predictor_rank=0)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        fk.gate(Subclassed())
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no Conv2D"):
        fk.gate(dense_only)
    with pytest.raises(ValueError, match="already"):
        fk.gate(partly)


def test_wrong_input_shape_is_a_clear_error():
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    with pytest.raises(ValueError, match=r"expects images of shape .*\(32, 32, 3\)"):
        model(np.zeros((1, 64, 64, 3), "float32"))


def test_ungate_turns_chosen_gates_back_into_plain_units(images, tmp_path):
    base = fk.models.mobilenet_v1(alpha=0.25)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    model = fk.gate(base, threshold=0.9)
    names = ["conv1", "block2_dw", "block7_pw"]
    lean = fk.ungate(model, names)
    assert isinstance(lean, fk.FTWTModel) and len(lean.gated_layers) == 24
    assert len(fk.ungate(model, "conv1").gated_layers) == 26  # one name as a string
    assert not {layer.name for layer in lean.gated_layers} & set(names)
    assert isinstance(lean.network.get_layer("block2_dw"), keras.layers.DepthwiseConv2D)
    # An ungated layer computes every filter: like the gated model with those gates forced on.
    for layer in model.gated_layers:
        if layer.name in names:
            layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, "float32"))
            layer.predictor.bias.assign(np.full(layer.predictor.bias.shape, 50.0, "float32"))
    np.testing.assert_allclose(lean.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "lean.keras")
    lean.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(images, verbose=0), lean.predict(images, verbose=0))
    plain = fk.ungate(model, [layer.name for layer in model.gated_layers])
    assert not isinstance(plain, fk.FTWTModel)
    np.testing.assert_allclose(plain.predict(images, verbose=0), base.predict(images, verbose=0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\['pool'\] are not gated layers"):
        fk.ungate(model, ["pool"])
    with pytest.raises(ValueError, match="FTWTModel"):
        fk.ungate(base, ["conv1"])
