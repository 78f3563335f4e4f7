"""Running and timing `.tflite` models with LiteRT (XNNPACK on), batch 1."""

import os
import platform

import numpy as np


def interpreter(flatbuffer, num_threads=1):
    """A LiteRT interpreter (XNNPACK on, the default) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(flatbuffer, (str, os.PathLike)):
        runner = Interpreter(model_path=os.fspath(flatbuffer), num_threads=num_threads)
    else:
        runner = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    runner.allocate_tensors()
    return runner


def time_invokes(flatbuffer, images, num_threads=1, warmup=10):
    """Seconds taken by each `invoke()` alone, one image at a time (after `warmup` runs)."""
    import time

    runner = interpreter(flatbuffer, num_threads)
    input_index = runner.get_input_details()[0]["index"]
    images = np.asarray(images, np.float32)
    for i in range(warmup):
        runner.set_tensor(input_index, images[i % len(images)][None])
        runner.invoke()
    times = np.empty(len(images))
    for i, image in enumerate(images):
        runner.set_tensor(input_index, image[None])
        start = time.perf_counter()
        runner.invoke()
        times[i] = time.perf_counter() - start
    return times


def time_side_by_side(flatbuffers, images, num_threads=1, warmup=10):
    """Times several models on the same images, alternating models image by image.

    Args:
        flatbuffers: `{name: .tflite bytes or path}`.
        images: (N, H, W, C) float32; each invoke is timed alone.

    Returns:
        `{name: np.ndarray of N seconds}`.
    """
    import time

    runners = {name: interpreter(fb, num_threads) for name, fb in flatbuffers.items()}
    inputs = {name: r.get_input_details()[0]["index"] for name, r in runners.items()}
    images = np.asarray(images, np.float32)
    times = {name: np.empty(len(images)) for name in runners}
    for step in range(-warmup, len(images)):
        image = images[step % len(images)][None]
        for name, runner in runners.items():
            runner.set_tensor(inputs[name], image)
            start = time.perf_counter()
            runner.invoke()
            elapsed = time.perf_counter() - start
            if step >= 0:
                times[name][step] = elapsed
    return times


def loop_times(flatbuffers, images, repeats, num_threads=1, warmup=10):
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
        for name, values in time_side_by_side(order, images, num_threads, warmup).items():
            times[name].append(values)
    return times


def loop_medians(flatbuffers, images, repeats, num_threads=1, warmup=10):
    """`loop_times` as `{name: [median ms per invoke of each loop]}`: compare the median over loops."""
    return {name: [1e3 * float(np.median(values)) for values in loops]
            for name, loops in loop_times(flatbuffers, images, repeats, num_threads, warmup).items()}


def median_ms(flatbuffers, images, repeats, num_threads=1, warmup=10):
    """`{name: ms}`: the median over `repeats` side-by-side loops of each loop's median (`loop_medians`)."""
    return {name: float(np.median(values))
            for name, values in loop_medians(flatbuffers, images, repeats, num_threads, warmup).items()}


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
            name = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), None)
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def run(flatbuffer_or_interpreter, images, num_threads=1):
    """Runs a batch-1 .tflite model on each image of `images` (N, H, W, C); returns (N, classes)."""
    runner = flatbuffer_or_interpreter
    if not hasattr(runner, "invoke"):
        runner = interpreter(runner, num_threads)
    input_index = runner.get_input_details()[0]["index"]
    output_index = runner.get_output_details()[0]["index"]
    outputs = []
    for image in np.asarray(images, np.float32):
        runner.set_tensor(input_index, image[None])
        runner.invoke()
        outputs.append(np.array(runner.get_tensor(output_index)[0]))
    return np.stack(outputs)
