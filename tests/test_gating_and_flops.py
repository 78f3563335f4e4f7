import keras
import numpy as np
import pytest
from conftest import force_gates

import ftwt_keras as fk
from ftwt_keras import flops


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


def test_gate_places_gates_like_the_paper():
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    names = [layer.name for layer in model.gated_layers]
    assert len(names) == 19 and names[0] == "conv1"
    conv2 = model.network.get_layer("stage1_block1_conv2")
    assert conv2.activation.__name__ == "linear"  # target read before the add
    mobilenet = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    assert len(mobilenet.gated_layers) == 27
    assert sum(layer.is_depthwise for layer in mobilenet.gated_layers) == 13


def test_gate_refuses_what_it_cannot_gate():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="ok")(inputs)
    x = keras.layers.SeparableConv2D(8, 3, name="separable")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="'separable'.*SeparableConv2D"):
        fk.gate(model)
    partly = fk.gate(model, layers_to_gate=lambda layer: layer.name == "ok")
    assert [layer.name for layer in partly.gated_layers] == ["ok"]
    with pytest.raises(ValueError, match="threshold"):
        fk.gate(model, threshold=0.0)
    with pytest.raises(ValueError, match="mode"):
        fk.gate(model, mode="fused")

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


def test_dense_macs_equal_a_hand_count():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*9*3*4 = 6912
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False)(x)  # 4*4*9*4 = 576
    x = keras.layers.Conv2D(5, 1)(x)  # 4*4*4*5 = 320
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10)(x)  # 80*10 = 800
    model = keras.Model(inputs, x)
    assert flops.count_macs(model) == 6912 + 576 + 320 + 800
    gated = fk.gate(model)
    assert flops.count_macs(gated) == 6912 + 576 + 320 + 800
    predictors = 3 * 4 + 4 * 4 + 4 * 5
    assert flops.count_macs(gated, include_predictors=True) == 8608 + predictors


def test_zoo_macs_match_the_official_profile():
    # Official FTWT nw_profile (thop) minus what it also counts: the final
    # average pool (1024 adds) and, for VGG, conv bias adds.
    assert flops.count_macs(fk.models.mobilenet_v1()) == 46355456 - 1024
    assert flops.count_macs(fk.models.resnet_cifar(56)) == 125485760 - 64


def test_dynamic_macs_all_on_all_off_and_partial(images):
    model = fk.gate(fk.models.mobilenet_v1(alpha=0.25))
    dense = flops.count_macs(model)
    predictors = flops.count_macs(model, include_predictors=True) - dense
    force_gates(model, on=True)
    np.testing.assert_allclose(flops.dynamic_macs(model, images), dense + predictors)
    force_gates(model, on=False)
    # Only the classifier's bias-free inputs vanish: every conv and dense term is 0.
    np.testing.assert_allclose(flops.dynamic_macs(model, images), predictors)
    # Half the filters of one pointwise layer: its own cost halves, and so does
    # the next depthwise layer's.
    force_gates(model, on=True)
    layer = model.network.get_layer("block3_pw")
    bias = np.full(layer.predictor.bias.shape, 50.0, "float32")
    bias[::2] = -50.0
    layer.predictor.bias.assign(bias)
    terms = {t.layer_name: t for t in flops.mac_terms(model)}
    saved = terms["block3_pw"].dense_macs / 2 + terms["block4_dw"].dense_macs / 2 + terms["block4_pw"].dense_macs / 2
    # block4_pw reads block4_dw's output, whose gates are all on: dense input.
    saved -= terms["block4_pw"].dense_macs / 2
    np.testing.assert_allclose(flops.dynamic_macs(model, images), dense + predictors - saved)


def test_residual_add_makes_the_input_dense_again(images):
    model = fk.gate(fk.models.resnet_cifar(depth=20))
    terms = {t.layer_name: t for t in flops.mac_terms(model)}
    assert terms["stage1_block1_conv2"].in_gate == "stage1_block1_conv1"
    assert terms["stage1_block2_conv1"].in_gate is None  # after the add
    assert terms["logits"].in_gate is None


def test_estimate_flops_reduction_from_baseline_targets(images):
    base = fk.models.resnet_cifar(depth=20)
    low = fk.estimate_flops_reduction(base, images, threshold=0.5)
    high = fk.estimate_flops_reduction(base, images, threshold=0.99)
    assert 0.0 < high < low < 1.0
    with pytest.raises(ValueError, match="threshold"):
        fk.estimate_flops_reduction(base, images, threshold=2.0)
