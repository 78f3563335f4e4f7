"""Images/s of the FTWT train step vs the plain Keras train step, side by side.

    python benchmarks/train_overhead.py --model=mobilenet_v1 --alpha=1.0 --batch_size=128

Both models are the same zoo network with the same batch; the FTWT one is
`ftwt_keras.gate(...)` of it (predictors, targets, two optimizers). Each compiled
train step is timed alone, plain and FTWT alternating step by step so that
machine noise hits both alike; reported: the median images/s of each and the
median of the per-pair ratios FTWT / plain (robust to drifts of the machine's
speed over the run).

`--batch_norm=both` times each step twice more, side by side: with batch norm
as Keras 3 computes it (separate element-wise ops) and through TensorFlow's
fused kernel (`ftwt_keras.normalization`, the default since 2026-12-02), and
prints the speed-up of the fused kernel for each.

`--after_cooldown` times a third model side by side: the FTWT step with
`train_gates=False`, as `GateCooldown` runs the epochs after it turns the gate
loss off (no targets, no gate loss, predictors frozen).

`--dtype_policies=float32,mixed_bfloat16` times every step once per Keras
dtype policy, side by side (the models built under it: 16-bit activations,
float32 weights; oneDNN runs bfloat16 convs on AMX / AVX512-BF16 where the CPU
has them), and prints each policy's speed-up over the first.

`--profile_steps=N` then runs N more steps of each under the TensorFlow
profiler and prints where the time goes: CPU milliseconds per step by op type
(op times summed over threads), plain vs FTWT, largest differences first.

Under `KERAS_BACKEND=jax` or `torch` (TensorFlow need not be installed) it
times the same two steps on that backend, each by `train_on_batch` (on JAX that
includes handing the variables to the compiled step and back, ~1 ms); batch
norm is Keras's own there (`--batch_norm` and `--profile_steps` are
TensorFlow's).
"""

import os
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow loads

from absl import app, flags

flags.DEFINE_enum("model", "mobilenet_v1", ["mobilenet_v1", "resnet_cifar", "vgg16_bn"], "Zoo model (CIFAR size).")
flags.DEFINE_float("alpha", 1.0, "MobileNetV1 width multiplier.")
flags.DEFINE_integer("depth", 56, "CIFAR ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 30, "Timed steps of each model (alternating plain / FTWT).")
flags.DEFINE_float("threshold", 0.95, "FTWT threshold r.")
flags.DEFINE_enum("mode", "decoupled", ["decoupled", "joint"], "FTWT mode.")
flags.DEFINE_integer("predictor_rank", None, "Low-rank mask predictors (default: the paper's full ones).")
flags.DEFINE_integer("profile_steps", 0, "Steps of each model to profile by op type afterwards (0: none).")
flags.DEFINE_enum("batch_norm", "fused", ["fused", "keras", "both"],
                  "Batch norm in training: TensorFlow's fused kernel, Keras 3's element-wise ops, or both side by side.")
flags.DEFINE_bool("after_cooldown", False,
                  "Also time the FTWT step as it runs after GateCooldown (`train_gates=False`).")
flags.DEFINE_bool("jit_compile", False, "Compile both train steps with XLA (`compile(jit_compile=True)`); "
                  "default Keras's choice (`\"auto\"`: XLA on JAX, and on TensorFlow where it sees a GPU).")
flags.DEFINE_list("dtype_policies", ["float32"],
                  "Keras dtype policies to time side by side (float32, mixed_bfloat16, mixed_float16).")
FLAGS = flags.FLAGS


def _build():
    import ftwt_keras as fk

    if FLAGS.model == "mobilenet_v1":
        return fk.models.mobilenet_v1(alpha=FLAGS.alpha)
    if FLAGS.model == "resnet_cifar":
        return fk.models.resnet_cifar(FLAGS.depth)
    return fk.models.vgg16_bn()


def _step_seconds(model, iterator):
    """Wall time of one train step (waits for its results).

    `iterator`: on TensorFlow an iterator over the dataset, which the compiled
    step reads itself; on other backends the `(images, labels)` batch.
    """
    import keras
    import numpy as np

    start = time.perf_counter()
    if keras.backend.backend() == "tensorflow":
        logs = model.train_function(iterator)
    else:
        logs = model.train_on_batch(*iterator, return_dict=True)
    np.asarray(keras.ops.convert_to_numpy(logs["loss"]))  # block until the step is done
    return time.perf_counter() - start


def _op_milliseconds(model, iterator, steps, logdir):
    """CPU ms per step of each op type over `steps` profiled train steps."""
    import collections
    import glob

    import numpy as np
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        np.asarray(model.train_function(iterator)["loss"])
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1], "rb") as file:
        space.ParseFromString(file.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # TF op events are "scope/op_name:OpType"; runtime events
                # ("ExecutorState::Process", "EagerLocalExecute: f") are not ops.
                if ":" in name and "::" not in name and ": " not in name and "#" not in name:
                    totals[name.rsplit(":", 1)[-1]] += event.duration_ps / 1e9 / steps
    return totals


def _print_profile(models, iterators):
    import tempfile

    with tempfile.TemporaryDirectory() as logdir:
        totals = {name: _op_milliseconds(model, iterators[name], FLAGS.profile_steps, os.path.join(logdir, str(i)))
                  for i, (name, model) in enumerate(models)}
    names = list(totals)
    diff = names == ["plain", "ftwt"]  # one kernel: a difference column, largest differences first
    ops = set().union(*totals.values())
    if diff:
        ops = sorted(ops, key=lambda op: totals["plain"][op] - totals["ftwt"][op])
    else:
        ops = sorted(ops, key=lambda op: -sum(t[op] for t in totals.values()))  # most time first
    print(f"\nCPU ms per step by op type (TensorFlow profiler, {FLAGS.profile_steps} steps each; "
          "op times summed over threads, so a step's total exceeds its wall time):")
    print(f"  {'op type':44s}" + "".join(f" {n:>16s}" for n in names) + (f" {'FTWT - plain':>13s}" if diff else ""))
    for op in ops[:25]:
        print(f"  {op:44s}" + "".join(f" {totals[n][op]:16.1f}" for n in names)
              + (f" {totals['ftwt'][op] - totals['plain'][op]:+13.1f}" if diff else ""))
    sums = {n: sum(totals[n].values()) for n in names}
    print(f"  {'all op types':44s}" + "".join(f" {sums[n]:16.1f}" for n in names)
          + (f" {sums['ftwt'] - sums['plain']:+13.1f}" if diff else ""))


def main(argv):
    del argv
    import keras
    import numpy as np

    import ftwt_keras as fk

    backend = keras.backend.backend()
    if backend != "tensorflow" and (FLAGS.batch_norm != "fused" or FLAGS.profile_steps):
        raise app.UsageError(f"--batch_norm and --profile_steps are TensorFlow's; KERAS_BACKEND={backend} runs "
                             "Keras's own batch norm and has no TensorFlow profiler. Leave them out.")
    # The zoo and Keras check --depth, --alpha and --dtype_policies: their words, before anything is timed.
    try:
        _build()
        for policy in FLAGS.dtype_policies:
            keras.mixed_precision.Policy(policy)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (FLAGS.batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, FLAGS.batch_size).astype("int32")
    if backend == "tensorflow":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
        version = f"oneDNN={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, TF {tf.__version__}"
    else:
        dataset = None  # each timed step gets the batch itself
        version = f"{backend} {__import__(backend).__version__}"

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def ftwt_model():
        model = fk.gate(_build(), threshold=FLAGS.threshold, mode=FLAGS.mode, predictor_rank=FLAGS.predictor_rank)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      gate_optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss(), metrics=["accuracy"],
                      jit_compile=FLAGS.jit_compile or "auto")
        return model

    kernels = ("keras", "fused") if FLAGS.batch_norm == "both" else (FLAGS.batch_norm,)
    policies = FLAGS.dtype_policies
    settings = [(kernel, policy) for policy in policies for kernel in kernels]

    def kernel_label(kernel):
        return f" ({kernel} BN)" if len(kernels) > 1 else ""

    def policy_label(policy):
        return f" [{policy}]" if len(policies) > 1 else ""

    def suffix_of(kernel, policy):
        return kernel_label(kernel) + policy_label(policy)

    models, iterators = {}, {}
    for kernel, policy in settings:
        suffix = suffix_of(kernel, policy)
        # The kernel is chosen when the step is traced, the policy when the layers are built: build,
        # compile and warm up inside both.
        keras.mixed_precision.set_global_policy(policy)
        with fk.normalization.fused_kernel(kernel == "fused"):
            plain = _build()
            plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss(), metrics=["accuracy"],
                          jit_compile=FLAGS.jit_compile or "auto")
            variants = [("plain" + suffix, plain), ("ftwt" + suffix, ftwt_model())]
            if FLAGS.after_cooldown:
                cooled = ftwt_model()
                cooled.train_gates = False
                variants.append(("ftwt after cooldown" + suffix, cooled))
            for name, model in variants:  # trace and warm up
                if backend == "tensorflow":
                    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
                    model.make_train_function()
                    iterators[name] = iter(dataset)
                else:
                    iterators[name] = (images, labels)
                for _ in range(2):
                    _step_seconds(model, iterators[name])
                models[name] = model
        keras.mixed_precision.set_global_policy("float32")
    seconds = {name: [] for name in models}
    for step in range(FLAGS.steps):
        for name, model in models.items():
            seconds[name].append(_step_seconds(model, iterators[name]))
        if (step + 1) % 10 == 0:
            recent = ", ".join(f"{k} {FLAGS.batch_size / np.median(v[-10:]):.0f}" for k, v in seconds.items())
            print(f"steps {step - 8}-{step + 1}, img/s: {recent}")
    name = f"{FLAGS.model}" + (f" alpha={FLAGS.alpha:g}" if FLAGS.model == "mobilenet_v1" else "")
    print(f"\n{name}, batch {FLAGS.batch_size}, {os.cpu_count()} CPUs, "
          f"{version}, Keras {keras.__version__}, jit_compile={next(iter(models.values())).jit_compile}")

    def ratio(slow, fast):
        """(ratio of medians, median of the paired ratios) of images/s, fast over slow."""
        return (float(np.median(seconds[slow]) / np.median(seconds[fast])),
                float(np.median(np.array(seconds[slow]) / np.array(seconds[fast]))))

    for kernel, policy in settings:
        suffix = suffix_of(kernel, policy)
        plain_ips, ftwt_ips = (FLAGS.batch_size / float(np.median(seconds[k + suffix])) for k in ("plain", "ftwt"))
        print(f"plain train step{suffix}: {plain_ips:.0f} images/s (median of {FLAGS.steps} steps)")
        print(f"FTWT  train step{suffix}: {ftwt_ips:.0f} images/s ({FLAGS.mode}, r={FLAGS.threshold:g})")
        print("FTWT / plain{}:     {:.2f}x (ratio of medians), {:.2f}x (median of the {} paired step ratios)".format(
            suffix, *ratio("plain" + suffix, "ftwt" + suffix), FLAGS.steps))
        if FLAGS.after_cooldown:
            cooled = "ftwt after cooldown" + suffix
            print(f"FTWT after cooldown{suffix}: {FLAGS.batch_size / float(np.median(seconds[cooled])):.0f} images/s "
                  "(train_gates=False)")
            (ftwt_medians, ftwt_paired), (plain_medians, plain_paired) = (
                ratio(slow + suffix, cooled) for slow in ("ftwt", "plain"))
            print(f"  / FTWT: {ftwt_medians:.2f}x, / plain: {plain_medians:.2f}x "
                  f"(ratios of medians; paired: {ftwt_paired:.2f}x, {plain_paired:.2f}x)")
    if len(kernels) > 1:
        for step in ("plain", "ftwt"):
            for policy in policies:
                print("{} step{}, fused BN / Keras BN: {:.2f}x (ratio of medians), {:.2f}x (paired)".format(
                    step, policy_label(policy),
                    *ratio(f"{step}{suffix_of('keras', policy)}", f"{step}{suffix_of('fused', policy)}")))
    for policy in policies[1:]:
        for kernel in kernels:
            for step in ("plain", "ftwt"):
                print("{} step{}, {} / {}: {:.2f}x (ratio of medians), {:.2f}x (paired)".format(
                    step, kernel_label(kernel), policy, policies[0],
                    *ratio(f"{step}{suffix_of(kernel, policies[0])}", f"{step}{suffix_of(kernel, policy)}")))
    if FLAGS.profile_steps:
        _print_profile([(name, models[name]) for name in models], iterators)


if __name__ == "__main__":
    app.run(main)
