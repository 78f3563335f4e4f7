"""Running and timing .tflite models (`ftwt_keras.export.runtime`)."""

import numpy as np
import pytest

from ftwt_keras.export import runtime


def _scaling_flatbuffer(scale):
    """A builtins-only .tflite multiplying its (1, 4, 4, 3) input by `scale`."""
    import tensorflow as tf

    function = tf.function(lambda x: x * scale, input_signature=[tf.TensorSpec((1, 4, 4, 3), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    return converter.convert()


def test_run_and_time_side_by_side_invoke_each_model_on_each_image():
    images = np.random.default_rng(0).normal(size=(5, 4, 4, 3)).astype("float32")
    flatbuffers = {"double": _scaling_flatbuffer(2.0), "triple": _scaling_flatbuffer(3.0)}
    np.testing.assert_allclose(runtime.run(flatbuffers["triple"], images), 3.0 * images, rtol=1e-6)
    times = runtime.time_side_by_side(flatbuffers, images, warmup=2)
    assert list(times) == ["double", "triple"]
    assert all(values.shape == (5,) and (values > 0).all() for values in times.values())


def test_compiled_model_api_runs_and_times_a_model_as_the_interpreter_does():
    images = np.random.default_rng(0).normal(size=(5, 4, 4, 3)).astype("float32")
    flatbuffer = _scaling_flatbuffer(3.0)
    by_api = {api: runtime.run(flatbuffer, images, api=api) for api in runtime.RUNTIMES}
    np.testing.assert_allclose(by_api["compiled_model"], 3.0 * images, rtol=1e-6)
    np.testing.assert_array_equal(by_api["compiled_model"], by_api["interpreter"])
    # The same file under both APIs in one loop.
    times = runtime.time_side_by_side({"a": flatbuffer, "b": flatbuffer}, images, warmup=2,
                                      api={"a": "interpreter", "b": "compiled_model"})
    assert all(values.shape == (5,) and (values > 0).all() for values in times.values())
    with pytest.raises(ValueError, match="no API for the model 'b'"):
        runtime.time_side_by_side({"a": flatbuffer, "b": flatbuffer}, images, api={"a": "interpreter"})
    with pytest.raises(ValueError, match="`api` must be one of interpreter, compiled_model; got 'nnapi'"):
        runtime.run(flatbuffer, images, api="nnapi")
    with pytest.raises(ValueError, match=r"takes input of shape \(1, 4, 4, 3\); got \(1, 8, 8, 3\)"):
        runtime.run(flatbuffer, np.zeros((1, 8, 8, 3)), api="compiled_model")


def test_loop_medians_moves_each_model_through_the_loop_order(monkeypatch):
    orders = []

    def recorded(flatbuffers, images, num_threads, warmup, api):
        orders.append(list(flatbuffers))
        return {name: np.full(len(images), 1e-3 * (1 + len(orders))) for name in flatbuffers}

    monkeypatch.setattr(runtime, "time_side_by_side", recorded)
    medians = runtime.loop_medians({"a": b"", "b": b"", "c": b""}, np.zeros((4, 1, 1, 1)), repeats=4)
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert list(medians) == ["a", "b", "c"]  # the caller's order, whatever the loops' order
    assert medians["b"] == [2.0, 3.0, 4.0, 5.0]
    times = runtime.loop_times({"a": b"", "b": b""}, np.zeros((4, 1, 1, 1)), repeats=2)
    assert [len(loop) for loop in times["a"]] == [4, 4] and times["b"][1][0] == pytest.approx(1e-3 * 7)
