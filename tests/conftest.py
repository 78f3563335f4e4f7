import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Real CIFAR-10 test images the export tests run on (`cifar_images`).
NUM_IMAGES = 24


@contextlib.contextmanager
def global_dtype_policy(name):
    """Keras's global dtype policy set to `name` inside (layers built there take it), restored after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def force_gates(model, on):
    """Sets every predictor so that all its gates are on (or off) for any input."""
    for layer in model.gated_layers:
        force_gates_of(layer, on)


def force_gates_of(layer, on):
    """Sets the predictor of GatedConv `layer` so that all its gates are on (or off) for any input."""
    layer.predictor.kernel.assign(np.zeros(layer.predictor.kernel.shape, "float32"))
    layer.predictor.bias.assign(np.full(layer.predictor.bias.shape, 50.0 if on else -50.0, "float32"))


def randomize_weights(layer, rng):
    """Random normal values for every weight of `layer`; variances made positive.

    Batch-norm scales come out negative for some channels, as can happen in training.
    """
    for variable in layer.weights:
        value = rng.normal(size=variable.shape).astype("float32")
        if "variance" in variable.path:
            value = np.abs(value) + 0.1
        variable.assign(value)


def small_resnet(name="small_resnet"):
    """A plain CNN with residual adds, six gateable convs and a "logits" layer: ResNet-CIFAR's shape at a
    fraction of its tracing time, for tests of training mechanics rather than of an architecture."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)

    def unit(x, filters, strides, name, relu=True):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    x = unit(x, 8, 1, "stem")
    for stage, (filters, strides) in enumerate(((8, 1), (16, 2))):
        if strides > 1:
            x = unit(x, filters, strides, f"down{stage}")
        y = unit(unit(x, filters, 1, f"res{stage}a"), filters, 1, f"res{stage}b", relu=False)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def sgd_compiled_copy(reference, **optimizer_kwargs):
    """A gated `small_resnet` (r = 0.9) with the weights of `reference` (one such model), compiled with SGD
    for both optimizers (0.01 for the backbone, 0.1 for the predictors), each taking `optimizer_kwargs`
    (e.g. `use_ema=True`): twins that start alike, to compare what training does to each."""
    import ftwt_keras as fk

    model = fk.gate(small_resnet(), threshold=0.9)
    model.set_weights(reference.get_weights())
    model.compile(optimizer=keras.optimizers.SGD(0.01, **optimizer_kwargs),
                  gate_optimizer=keras.optimizers.SGD(0.1, **optimizer_kwargs),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def short_mobilenet(blocks=6, alpha=0.25):
    """MobileNetV1 x`alpha` on CIFAR cut after its first `blocks` depthwise-separable blocks (same layers,
    names and padding), then pool and "logits": its layers at a fraction of its tracing and conversion time."""
    from ftwt_keras.models import _blocks

    layout = importlib.import_module("ftwt_keras.models.mobilenet_v1").BLOCKS  # the package exports the function
    inputs = keras.Input((32, 32, 3), name="images")
    x = _blocks.pixel_normalization(*_blocks.default_normalization((32, 32, 3)))(inputs)
    x = _blocks.conv_bn(x, int(32 * alpha), 3, 1, name="conv1")
    for index, (filters, stride) in enumerate(layout[:blocks], start=1):
        x = _blocks.conv_bn(x, None, 3, stride, name=f"block{index}_dw", depthwise=True)
        x = _blocks.conv_bn(x, int(filters * alpha), 1, 1, name=f"block{index}_pw")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=f"mobilenet_v1_{blocks}_blocks")


def run_python(*args, timeout=600):
    """`python *args` in a subprocess from the checkout's root, this checkout importable, TF's C++ logs quiet.

    `args`: a script's path and its flags, `-m module ...` or `-c code ...`. Returns the
    `subprocess.CompletedProcess`, stdout and stderr captured as text.
    """
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def benchmark_script(name):
    """The module of `benchmarks/<name>.py` (the benchmarks are scripts, not a package).

    Importing a script defines its absl flags in this process, for good: two scripts that define the same flag
    name cannot both be imported (absl's DuplicateFlagError), and pytest-xdist puts tests together in one worker
    at random. So only for flag-free modules or scripts whose flags no other imported one shares (cifar_cpu,
    export_exactness); run the others in a subprocess (`run_python`, `refusals`).
    """
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


# Run by `refusals` in its subprocess: argv[1] the app (module or script), argv[2] the dotted name of its
# absl `main` in it, argv[3] a JSON list of flag lists, argv[4] where the answers go.
_ASK_APP = """
import contextlib, functools, importlib, importlib.util, io, json, sys
from absl import flags
target, main_name, argvs, answers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if target.endswith(".py"):
    spec = importlib.util.spec_from_file_location("app_under_test", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(target)
main = functools.reduce(getattr, main_name.split("."), module)
said = []
for argv in argvs:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            flags.FLAGS([target, *argv])
            status = main([target])  # app.run exits with it
        said.append(f"exit status {status}: {printed.getvalue()}" if status else None)
    except (Exception, SystemExit) as error:
        said.append(str(error))
    finally:
        flags.FLAGS.unparse_flags()
with open(answers, "w") as file:
    json.dump(said, file)
"""


def refusals(app, *argvs, main="main"):
    """What the absl app `app` says to each of `argvs` (lists of flags), all asked in one subprocess.

    `app`: a module name (`ftwt_keras.recipes.mobilenet_cifar`) or a script's path; `main`: the dotted
    name of the function its `app.run` calls. For each argv the flags are parsed and `main` called as
    `app.run` does, and the refusal kept: a flag validator's or `main`'s error message (or, where `main`
    returns a non-zero exit status, what it printed to stderr), or None where the app ran without
    refusing. One TensorFlow import for all of them, not one per refusal (~6 s each); tests keep one
    plain run of each app for its `app.run` wiring.

    Returns:
        `(messages, completed)`: one message per argv, and the `subprocess.CompletedProcess`.
    """
    with tempfile.TemporaryDirectory() as folder:
        answers = os.path.join(folder, "refusals.json")
        completed = run_python("-c", _ASK_APP, app, main, json.dumps([list(argv) for argv in argvs]), answers)
        assert completed.returncode == 0, completed.stderr[-3000:]
        with open(answers) as file:
            return json.load(file), completed


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def cifar_images():
    """A few real CIFAR-10 test images (raw RGB 0..255); random ones if CIFAR-10 is not prepared."""
    try:
        from ftwt_keras import data

        batch = next(iter(data.cifar("cifar10", f"test[:{NUM_IMAGES}]", batch_size=NUM_IMAGES, training=False)))
        return np.asarray(batch[0], np.float32)
    except (FileNotFoundError, ImportError) as error:  # pragma: no cover - machine without the data
        pytest.skip(f"CIFAR-10 is not prepared: {error}")
