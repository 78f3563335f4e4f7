"""Which gates pay, by timing (ftwt_keras.export.measured)."""

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import ftwt_keras as fk  # noqa: E402
from ftwt_keras.export import tflite as export  # noqa: E402

from export_helpers import two_paying_convs  # noqa: E402


def _two_chains(cifar_images):
    """`two_paying_convs` gated, masks drawn at keep 0.3: conv1 and conv2 compact."""
    model = export.set_keep_ratio(fk.gate(two_paying_convs()), 0.3)
    images = np.asarray(keras.ops.image.resize(cifar_images[:4], (28, 28)))
    return model, export.calibrate(model, images).with_capacity_ratio(model, 1.26), images


def test_measured_plan_leaves_out_the_smallest_saving_until_no_slower(cifar_images):
    """A timer that finds the network slower than dense with two compact convs, faster with one: the plan drops
    conv1 (its mask removes fewer multiply-adds) and keeps conv2; a timer that always finds it slower, or faster
    by less than the margin: no gate."""
    model, calibration, images = _two_chains(cifar_images)
    assert export.paying_gates(model, calibration=calibration, static_gates=False) == ["conv1", "conv2"]

    def one_chain_pays(flatbuffers):  # each compact conv has a TOPK_V2
        chains = export.op_names(flatbuffers["gated"], subgraph=0).count("TOPK_V2")
        return {"dense": 10.0, "gated": 9.0 if chains == 1 else 11.0}

    plan = export.measured_paying_gates(model, calibration, images, static_gates=False, timer=one_chain_pays)
    assert plan.gates == ["conv2"] and plan.dense_ms == 10.0 and plan.gated_ms == 9.0
    assert plan.tried == [(2, 11.0, 10.0), (1, 9.0, 10.0), (1, 9.0, 10.0)]  # a pass is timed twice

    plan = export.measured_paying_gates(model, calibration, images, static_gates=False,
                                        timer=lambda flatbuffers: {"dense": 10.0, "gated": 11.0})
    assert plan.gates == [] and plan.gated_ms is None and plan.tried == [(2, 11.0, 10.0), (1, 11.0, 10.0)]

    # Within the margin (1%) is not faster; a pass that does not hold when timed again is not kept.
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False,
                                        timer=lambda flatbuffers: {"dense": 10.0, "gated": 9.95})
    assert plan.gates == [] and [gated for _, gated, _ in plan.tried] == [9.95, 9.95]
    spells = iter([9.0, 11.0, 9.0, 9.0])
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False,
                                        timer=lambda flatbuffers: {"dense": 10.0, "gated": next(spells)})
    assert plan.gates == ["conv2"] and [(count, gated) for count, gated, _ in plan.tried] == [
        (2, 9.0), (2, 11.0), (1, 9.0), (1, 9.0)]


def test_a_timing_in_a_slow_spell_of_the_host_is_taken_again(cifar_images):
    """Dense more than 15% slower than the fastest dense so far: a spell, which need not slow both models alike."""
    model, calibration, images = _two_chains(cifar_images)

    def scripted(*timings):  # (dense ms, gated ms) of each timing in turn
        timings = iter(timings)
        return lambda flatbuffers: dict(zip(("dense", "gated"), next(timings)))

    # Both timings of the one-gate network in a spell that favours it: without the guard it would be kept.
    spell = [(10.0, 11.0), (14.0, 9.0), (14.0, 9.0), (10.0, 11.0)]
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False, timer=scripted(*spell))
    assert plan.gates == [] and plan.tried == [(2, 11.0, 10.0), (1, 9.0, 14.0), (1, 9.0, 14.0), (1, 11.0, 10.0)]
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False, timer=scripted(*spell),
                                        spell_retries=0)
    assert plan.gates == ["conv2"] and plan.tried == [(2, 11.0, 10.0), (1, 9.0, 14.0), (1, 9.0, 14.0)]
    # A spell that outlasts the retries is taken as it is; one within 15% is no spell.
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False, timer=scripted(
        (10.0, 11.0), (14.0, 9.0), (14.0, 9.0), (14.0, 9.0), (11.4, 9.0)))
    assert plan.gates == ["conv2"] and [dense for _, _, dense in plan.tried] == [10.0, 14.0, 14.0, 14.0, 11.4]
    with pytest.raises(ValueError, match="spell_retries"):
        export.measured_paying_gates(model, calibration, images, spell_retries=-1)


def test_measured_plan_times_on_this_machine(cifar_images):
    """With its own timer: the dense and gated exports timed side by side; what it keeps ran no slower."""
    model, calibration, images = _two_chains(cifar_images)
    plan = export.measured_paying_gates(model, calibration, images, static_gates=False, loops=1, warmup=1)
    assert plan.dense_ms > 0 and 1 <= len(plan.tried) <= 4
    assert set(plan.gates) <= {"conv1", "conv2"}
    assert plan.gated_ms is None if not plan.gates else plan.gated_ms <= plan.dense_ms
    with pytest.raises(export.ExportError, match="needs the `calibration`"):
        export.measured_paying_gates(model, None, images)
