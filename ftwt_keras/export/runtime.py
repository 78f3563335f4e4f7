"""Running and timing `.tflite` models with LiteRT (XNNPACK on), batch 1.

Two LiteRT APIs run a file (`RUNTIMES`): the `Interpreter` (LiteRT 1.x's, and
what `benchmark_model` runs) and LiteRT 2.x's `CompiledModel`, which Android
apps written for LiteRT 2.x use. Every function taking `api` runs the files
through the one named.
"""

import os
import platform

import numpy as np

# The LiteRT APIs `api=` names: LiteRT 1.x's Interpreter, LiteRT 2.x's CompiledModel (CPU).
RUNTIMES = ("interpreter", "compiled_model")


def interpreter(flatbuffer, num_threads=1):
    """A LiteRT interpreter (XNNPACK on, the default) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(flatbuffer, (str, os.PathLike)):
        loaded = Interpreter(model_path=os.fspath(flatbuffer), num_threads=num_threads)
    else:
        loaded = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    loaded.allocate_tensors()
    return loaded


class _InterpreterRunner:
    """A batch-1 model in an `Interpreter` (tensors allocated): `feed` an image, `invoke`, read its `output`."""

    def __init__(self, loaded):
        self._interpreter = loaded
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def feed(self, image):
        self._interpreter.set_tensor(self._input, image)

    def invoke(self):
        self._interpreter.invoke()

    def output(self):
        return np.array(self._interpreter.get_tensor(self._output)[0])


class _CompiledModelRunner:
    """A batch-1 model in LiteRT 2.x's `CompiledModel` on the CPU (XNNPACK), with the same interface.

    The file's first signature (a file without one, as `convert` writes it,
    gets a placeholder signature) and its first input and output.
    """

    def __init__(self, flatbuffer, num_threads):
        try:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator
            from ai_edge_litert.options import CpuOptions, Options
        except ImportError as error:
            raise ImportError("api='compiled_model' needs LiteRT 2.x's CompiledModel: pip install -U "
                              f"'ai-edge-litert>=2.3' ({error}).") from error
        options = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=num_threads))
        if isinstance(flatbuffer, (str, os.PathLike)):
            self._model = CompiledModel.from_file(os.fspath(flatbuffer), options=options)
        else:
            self._model = CompiledModel.from_buffer(bytes(flatbuffer), options=options)
        signature = next(iter(self._model.get_signature_list()))
        self._input_shape = tuple(next(iter(self._model.get_input_tensor_details(signature).values()))["shape"])
        output = next(iter(self._model.get_output_tensor_details(signature).values()))
        self._output_shape, self._output_dtype = tuple(output["shape"]), np.dtype(output["dtype"])
        self._inputs = self._model.create_input_buffers(0)
        self._outputs = self._model.create_output_buffers(0)

    def feed(self, image):
        if tuple(image.shape) != self._input_shape:  # a buffer takes any bytes that fit: say what was wrong
            raise ValueError(f"The model takes input of shape {self._input_shape}; got {tuple(image.shape)}.")
        self._inputs[0].write(image)

    def invoke(self):
        self._model.run_by_index(0, self._inputs, self._outputs)

    def output(self):
        count = int(np.prod(self._output_shape))
        values = np.asarray(self._outputs[0].read(count, self._output_dtype))
        return values.reshape(self._output_shape)[0]


def runner(flatbuffer, num_threads=1, api="interpreter"):
    """A batch-1 model ready to run: `feed(image)` (1, H, W, C) float32, `invoke()`, `output()` (the logits).

    Args:
        flatbuffer: `.tflite` bytes or path.
        num_threads: CPU threads.
        api: one of `RUNTIMES`: "interpreter" (LiteRT's `Interpreter`) or
            "compiled_model" (LiteRT 2.x's `CompiledModel`, CPU).

    Raises:
        ValueError: `api` is not one of `RUNTIMES`.

    Example (an app on LiteRT 2.x runs the file through `CompiledModel`: the same logits):

    >>> import numpy as np, ftwt_keras as fk
    >>> from ftwt_keras import export
    >>> flatbuffer = export.convert(fk.gate(fk.models.resnet_cifar(depth=20)))
    >>> image = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    >>> model = export.runner(flatbuffer, api="compiled_model")
    >>> model.feed(image); model.invoke()
    >>> bool(np.array_equal(model.output(), export.run(flatbuffer, image)[0]))
    True
    """
    if api == "interpreter":
        return _InterpreterRunner(interpreter(flatbuffer, num_threads))
    if api == "compiled_model":
        return _CompiledModelRunner(flatbuffer, num_threads)
    raise ValueError(f"`api` must be one of {', '.join(RUNTIMES)}; got {api!r}.")


def _api_of(api, name):
    """The API to run model `name` with: `api` itself, or its entry when a `{name: api}` mapping."""
    if not isinstance(api, dict):
        return api
    if name not in api:
        raise ValueError(f"`api` names no API for the model {name!r}: give one for each of the models.")
    return api[name]


def time_invokes(flatbuffer, images, num_threads=1, warmup=10, api="interpreter"):
    """Seconds taken by each `invoke()` alone, one image at a time (after `warmup` runs), through `api` (`runner`'s)."""
    import time

    model = runner(flatbuffer, num_threads, api)
    images = np.asarray(images, np.float32)
    for i in range(warmup):
        model.feed(images[i % len(images)][None])
        model.invoke()
    times = np.empty(len(images))
    for i, image in enumerate(images):
        model.feed(image[None])
        start = time.perf_counter()
        model.invoke()
        times[i] = time.perf_counter() - start
    return times


def time_side_by_side(flatbuffers, images, num_threads=1, warmup=10, api="interpreter"):
    """Times several models on the same images, alternating models image by image.

    Args:
        flatbuffers: `{name: .tflite bytes or path}`.
        images: (N, H, W, C) float32; each invoke is timed alone.
        num_threads: CPU threads of every model.
        warmup: untimed runs per model first.
        api: one of `RUNTIMES` for every model, or `{name: api}` (the same
            file under both APIs, side by side).

    Returns:
        `{name: np.ndarray of N seconds}`.
    """
    import time

    runners = {name: runner(fb, num_threads, _api_of(api, name)) for name, fb in flatbuffers.items()}
    images = np.asarray(images, np.float32)
    times = {name: np.empty(len(images)) for name in runners}
    for step in range(-warmup, len(images)):
        image = images[step % len(images)][None]
        for name, model in runners.items():
            model.feed(image)
            start = time.perf_counter()
            model.invoke()
            elapsed = time.perf_counter() - start
            if step >= 0:
                times[name][step] = elapsed
    return times


def loop_times(flatbuffers, images, repeats, num_threads=1, warmup=10, api="interpreter"):
    """`time_side_by_side` run `repeats` times: `{name: [N seconds of each loop]}`.

    Loops apart show how much the host's noise moves a time. Each loop
    builds its interpreters afresh, in an order rotated by one model: the
    interpreter instance and its place in the loop move a model's times by
    a few percent (one export under four names in one loop, MobileNetV1
    x1.0 at 32x32: 1.39-1.45 ms), which a fixed order would keep on the same
    model; over 5 rotated loops the four medians lie within 0.7%. With 2
    threads on a 2-core host an instance can even run in one of two modes
    (one MobileNetV1-224 export: 5.3 ms in two loops, 6.8 ms in three).
    """
    names = list(flatbuffers)
    times = {name: [] for name in names}
    for repeat in range(repeats):
        start = repeat % len(names)
        order = {name: flatbuffers[name] for name in names[start:] + names[:start]}
        for name, values in time_side_by_side(order, images, num_threads, warmup, api).items():
            times[name].append(values)
    return times


def loop_medians(flatbuffers, images, repeats, num_threads=1, warmup=10, api="interpreter"):
    """`loop_times` as `{name: [median ms per invoke of each loop]}`: compare the median over loops."""
    return {name: [1e3 * float(np.median(values)) for values in loops]
            for name, loops in loop_times(flatbuffers, images, repeats, num_threads, warmup, api).items()}


def median_ms(flatbuffers, images, repeats, num_threads=1, warmup=10, api="interpreter"):
    """`{name: ms}`: the median over `repeats` side-by-side loops of each loop's median (`loop_medians`)."""
    return medians_over_loops(loop_times(flatbuffers, images, repeats, num_threads, warmup, api))


def medians_over_loops(loops):
    """`{name: ms}` from `loop_times`'s `{name: [seconds of each loop]}`: the median of each loop's median."""
    return {name: float(np.median([1e3 * np.median(times) for times in values])) for name, values in loops.items()}


def cpu_name():
    """The CPU timings come from, e.g. "Intel(R) Xeon(R) Processor, 2 cores": recorded beside measured rows.

    Another CPU moves every cutoff of the export (see `planning`), so a time
    without its CPU cannot be compared. Linux's /proc/cpuinfo model name,
    else `platform.processor()` or the machine type; cores as the OS counts them.

    >>> "cores" in cpu_name()
    True
    """
    name = None
    try:
        with open("/proc/cpuinfo") as file:
            name = _cpu_name_from(file.read())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def _cpu_name_from(cpuinfo):
    """The CPU's name in a /proc/cpuinfo text: x86's model name; an ARM's hardware, or its cores' part numbers.

    >>> _cpu_name_from("processor : 0\\nmodel name : AMD EPYC\\n")
    'AMD EPYC'
    >>> _cpu_name_from("CPU implementer : 0x41\\nCPU part : 0xd05\\n\\nCPU part : 0xd0b\\nCPU part : 0xd05\\n")
    'ARM CPU parts 0xd05, 0xd0b'
    """
    fields = [[part.strip() for part in line.split(":", 1)] for line in cpuinfo.splitlines() if ":" in line]
    for key in ("model name", "Hardware"):
        value = next((value for name, value in fields if name == key and value), None)
        if value:
            return value
    parts = sorted({value for name, value in fields if name == "CPU part"})
    return f"ARM CPU parts {', '.join(parts)}" if parts else None


def run(flatbuffer, images, num_threads=1, api="interpreter"):
    """Runs a batch-1 .tflite model on each image of `images` (N, H, W, C); returns (N, classes).

    `flatbuffer`: `.tflite` bytes or path, or a `runner` (or an `Interpreter`
    with tensors allocated) to run again without loading the file anew.
    """
    if hasattr(flatbuffer, "feed"):
        model = flatbuffer
    elif hasattr(flatbuffer, "invoke"):  # an Interpreter
        model = _InterpreterRunner(flatbuffer)
    else:
        model = runner(flatbuffer, num_threads, api)
    outputs = []
    for image in np.asarray(images, np.float32):
        model.feed(image[None])
        model.invoke()
        outputs.append(model.output())
    return np.stack(outputs)
