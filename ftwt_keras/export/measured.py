"""Which gates pay on the machine at hand, by timing: `measured_paying_gates`.

`paying_gates` decides by cutoffs measured on one x86 CPU (an AMD EPYC with
1 MB of L2 per core); another CPU moves them. On an Intel Xeon with 2 MB of L2
per core, where XNNPACK's dense convs ran up to 1.4x faster, MobileNetV1-224 gated
where those cutoffs say ran at 0.92x of dense at keep 0.5, and DenseNet121-224
at 0.97x at keep 0.3 (2026-12-05, docs/edge_results.md). Here the network
gated at those layers is timed against the dense one where it will run, and
gates are left out, those whose masks remove the fewest multiply-adds
first, until it is faster.
"""

from typing import NamedTuple

from ftwt_keras.export.checks import ExportError, _check_threads, check_ftwt_model
from ftwt_keras.export.planning import _conv_macs, kept_gates, paying_gates
from ftwt_keras.export.runtime import median_ms
from ftwt_keras.training import FTWTModel


class TimedPlan(NamedTuple):
    """What `measured_paying_gates` chose, and the times it chose by (ms per image, medians over loops)."""

    gates: list  # the gated layers to keep, in the network's order (empty: none pays here)
    dense_ms: float
    gated_ms: object  # the network gated at `gates` (None when none is kept)
    tried: list  # (number of gates kept, its ms, dense ms) of each timing, in order (a kept network: twice;
    # a timing in a slow spell of the host: again)


def measured_paying_gates(model, calibration, images, num_threads=1, static_gates=True, loops=3, warmup=10,
                          margin=0.01, drop_divisor=4, timer=None, spell=0.15, spell_retries=2):
    """The gates of `paying_gates`, fewer until the network gated at them times faster than dense here.

    Converts the dense network once, then repeatedly: the layers
    `kept_gates` picks (`paying_gates`' and, with `static_gates`, those
    pruned by their weights), the network gated at those
    only (`ftwt_keras.ungate` of the others; another model, as for
    `paying_gates`), its export (`convert` with `calibration`), both timed
    side by side on `images` (`median_ms`: the median over `loops` loops).
    It is kept when it runs at least `margin` faster than dense, twice in a
    row: once, a slow spell of the host made both take 17.4 ms (the gated
    networks of the steps before took 10.6-10.9 ms) and let pass a network
    that ran at 0.93x of dense when timed afterwards. Where it is not, the
    paying regular convs whose masks remove the fewest multiply-adds (dense
    MACs x (1 - keep ratio)), a quarter of them (`drop_divisor`; at least
    one), are ungated for good,
    `paying_gates` asked again (a depthwise conv chained to one stops paying
    with it), and so on, down to no gate. Each step costs a conversion and
    2 x `loops` x len(`images`) invokes (MobileNetV1-224: ~7 s); one step
    where the cutoffs fit the machine. A timing whose dense model runs more
    than `spell` slower than the fastest dense time of the plan so far is
    taken in a slow spell of the host and timed again (up to `spell_retries`
    times, then taken as it is): a spell does not slow both models alike.
    With 2 threads on a 2-core host, one that took the second core away cost
    the dense model (both threads in XNNPACK) more than the gated one
    (builtin ops on one thread): a network passed twice there (9.76 / 10.47
    ms, 9.38 / 10.08; dense 7.1-7.5 ms before) and ran at 0.96x of dense
    afterwards (2026-12-06, docs/edge_results.md, "Another CPU"). The times are this
    machine's: run it where the model will run, or take its answer as a
    sketch of that.

    >>> import ftwt_keras as fk, numpy as np
    >>> from ftwt_keras.export import calibrate, measured_paying_gates, set_keep_ratio
    >>> model = set_keep_ratio(fk.gate(fk.models.vgg16_bn()), keep=0.3)   # stand-in masks
    >>> images = np.random.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    >>> plan = measured_paying_gates(model, calibrate(model, images), images, static_gates=False, loops=1)
    >>> plan.gated_ms is None or plan.gated_ms <= plan.dense_ms
    True

    Args:
        model: an `ftwt_keras.FTWTModel`.
        calibration: the `Calibration` the export will use (`calibrate`,
            possibly with a margin); its entries for ungated layers are
            ignored.
        images: `(N, H, W, C)` raw images to time on (a few dozen).
        num_threads: the interpreter threads the `.tflite` will run with.
        static_gates: as `convert`'s (False for masks the weights fix by
            construction, `set_keep_ratio`).
        loops, warmup: as `median_ms`' `repeats` and `warmup`.
        margin: how much faster than dense (a fraction of its time) the gated
            network must time to be kept.
        drop_divisor: each slower step ungates 1 / this of the paying regular
            convs (1: all at once; a large value: one at a time, the finest
            choice and the most steps).
        timer: a function of `{"dense": flatbuffer, "gated": flatbuffer}`
            returning `{name: ms}`; default: `median_ms` on `images`.
        spell, spell_retries: a timing whose dense time exceeds the fastest
            so far by more than this fraction is repeated, up to this many
            times (0: never).

    Returns:
        A `TimedPlan`.
    """
    from ftwt_keras.export.tflite import convert

    check_ftwt_model(model)
    _check_threads(num_threads)
    if calibration is None:
        raise ExportError("`measured_paying_gates` needs the `calibration` the export will use.")
    if not spell >= 0 or not isinstance(spell_retries, int) or spell_retries < 0:
        raise ValueError(f"`spell` must be a fraction >= 0 and `spell_retries` an integer >= 0; got {spell!r}, "
                         f"{spell_retries!r}.")
    if timer is None:
        def timer(flatbuffers):
            return median_ms(flatbuffers, images, loops, num_threads, warmup)

    dense = convert(model, dynamic=False)
    dense_ms, tried = None, []

    def timed_outside_spells(count, flatbuffers):
        # The fastest dense time so far (a timing taken again in a spell was slower, never the fastest).
        fastest = min((ms for _, _, ms in tried), default=None)
        for _ in range(spell_retries + 1):
            times = timer(flatbuffers)
            tried.append((count, times["gated"], times["dense"]))
            if fastest is None or times["dense"] <= (1.0 + spell) * fastest:
                break
        return times

    for kept, gated in gate_candidates(model, calibration, num_threads, static_gates, drop_divisor):
        flatbuffer = convert(gated, calibration=calibration, static_gates=static_gates, num_threads=num_threads)
        for _ in range(2):  # a pass is timed again: a slow spell of the host can even both out
            times = timed_outside_spells(len(kept), {"dense": dense, "gated": flatbuffer})
            dense_ms = times["dense"]
            if times["gated"] > (1.0 - margin) * dense_ms:
                break
        else:
            return TimedPlan(kept, dense_ms, times["gated"], tried)
    if dense_ms is None:
        dense_ms = timer({"dense": dense})["dense"]
    return TimedPlan([], dense_ms, None, tried)


def gate_candidates(model, calibration, num_threads=1, static_gates=True, drop_divisor=4):
    """The networks `measured_paying_gates` times, in its order, without timing them.

    First `model` gated at `kept_gates` only; then, again and again, the
    paying regular convs whose masks remove the fewest multiply-adds (dense
    MACs x (1 - keep ratio)), a `drop_divisor`-th of them (at least one),
    ungated for good and `kept_gates` asked again, until no gate is left.
    Each network gates a subset of the one before. Where no Python runs (a
    phone), export them and time them there (`edge/candidates.py`).

    Args:
        model, calibration, num_threads, static_gates, drop_divisor: as
            `measured_paying_gates`'.

    Yields:
        `(names, network)`: the gated layers kept, in the network's order,
        and the model gated at those only (`ftwt_keras.ungate` of the others).
    """
    from ftwt_keras import gating

    current = model
    while isinstance(current, FTWTModel):  # `ungate` of its last gate gives a plain model
        kept = kept_gates(current, calibration, num_threads, static_gates)
        if not kept:
            return
        yield kept, gating.ungate(current, [layer.name for layer in current.gated_layers if layer.name not in kept])
        macs = _conv_macs(current)
        paying = paying_gates(current, calibration=calibration, num_threads=num_threads, static_gates=static_gates)
        droppable = sorted((layer.name for layer in current.gated_layers
                            if layer.name in paying and not layer.is_depthwise),
                           key=lambda name: macs[name] * (1.0 - calibration.keep_ratios[name]))
        if not droppable:
            return
        current = gating.ungate(current, droppable[: max(1, len(droppable) // drop_divisor)])
