"""ftwt_keras.export.suite: a model's exports timed side by side (edge/benchmark.py's rows)."""

import os

import numpy as np
import pytest

import ftwt_keras as fk
from conftest import short_mobilenet
from ftwt_keras import flops
from ftwt_keras.export import ExportError, ExportSuite, latency, set_keep_ratio


@pytest.mark.parametrize("options, said", [
    (dict(threads=()), "`threads` is empty"),
    (dict(threads=(1, 0)), "`num_threads` must be a positive int"),
    (dict(loops=0), "`loops` must be a positive int"),
    (dict(policy="fastest"), "Policy must be one of"),
    (dict(drawn_capacities=0.9), "`drawn_capacities` takes 'binomial' or a number >= 1; got 0.9"),
    (dict(drawn_capacities="wide"), "`drawn_capacities` takes 'binomial' or a number >= 1; got 'wide'"),
    (dict(lean_plan="timed"), "`lean_plan` must be one of ['rules', 'measured']"),
    (dict(capped_ratio=0.5), "`capped_ratio` must be >= 1"),
])
def test_suite_refuses_what_it_cannot_time(options, said):
    with pytest.raises(ExportError) as error:
        ExportSuite(**options)
    assert said in str(error.value)


def test_suite_takes_policies_as_convert_or_the_command_line_does():
    assert ExportSuite(policy="0.6").policy == 0.6 and ExportSuite(policy=0.6).policy == 0.6
    assert ExportSuite(policy="chain").policy == "chain" and ExportSuite(drawn_capacities="1.5").drawn_capacities == 1.5


def test_suite_times_every_export_of_drawn_masks_and_leaves_the_model_as_it_came(tmp_path, cifar_images, capsys):
    """Every layer compact (policy chain): dense, int8, predictors, masked dense, dynamic, lean, capped and capped
    with int8 weights in one loop; the model's own cap survives the capped export's caps."""
    model = fk.gate(short_mobilenet(blocks=4))
    set_keep_ratio(model, 0.3, seed=0)
    own = [layer for layer in model.gated_layers if not layer.is_depthwise][1]  # capped again below
    fk.set_gate_capacities(model, {own.name: own.filters})  # a cap of its own that never binds
    suite = ExportSuite(threads=(1,), policy="chain", loops=2, warmup=1, capped_ratio=1.2, save_dir=str(tmp_path))
    images, calibration = cifar_images[:3], cifar_images[3:8]
    [row] = suite.measure(model, images, "mnv1", drawn_keep=0.3, calibration=calibration)

    assert {layer.name: layer.capacity for layer in model.gated_layers} == {
        layer.name: own.filters if layer is own else None for layer in model.gated_layers}
    assert (row["model"], row["resolution"], row["threads"], row["images"], row["loops"]) == ("mnv1", 32, 1, 3, 2)
    assert row["masks"] == "random, keep 0.3 per layer" and row["policy"] == "chain"
    assert row["drawn_capacities"] == "1.26" and row["calibration_images"] == 5 and row["gates"] == 9
    for name in ("dense", "dynamic", "predictors", "masked_dense", "dense_int8", "lean", "capped",
                 "capped_int8_weights"):
        assert row[f"{name}_ms"] > 0, name
    assert row["speedup"] == pytest.approx(row["dense_ms"] / row["dynamic_ms"], rel=0.01)
    executed = np.mean(flops.dynamic_macs(model, images))
    assert row["flops_reduction"] == round(1 - executed / flops.count_macs(model), 3)
    # Chain compacts every layer: each regular conv is capped. Drawn masks are the same on every image: the 1.2x
    # caps never bind. At 32x32 no gate of so small a network pays (`paying_gates`, whatever the policy): the lean
    # network is the dense one.
    regular = [layer for layer in model.gated_layers if not layer.is_depthwise]
    assert row["capped_gates"] == len(regular) == 5 and row["capped_ratio"] == 1.2
    assert row["capped_flops_reduction"] == row["flops_reduction"]
    assert row["lean_plan"] == "rules" and row["lean_gates"] == 0 and row["lean_flops_reduction"] == 0
    assert os.path.exists(tmp_path / "mnv1_32_keep0.3_threads1.tflite")
    assert "dense+predictors" in capsys.readouterr().out


def test_suite_on_a_models_own_masks_without_calibration_times_the_per_image_export(cifar_images, capsys):
    """The model's own masks, no calibration (a builtin IF per image, no lean network), the references made
    once and passed in, nothing printed."""
    model = fk.gate(short_mobilenet(blocks=2), predictor_rank=4)
    suite = ExportSuite(threads=(1, 2), warmup=1, capped_ratio=0, int8_reference=False, verbose=False)
    references = suite.references(model)
    assert set(references) == {"dense"}
    rows = suite.measure(model, cifar_images[:2], "own", references=references)

    assert [row["threads"] for row in rows] == [1, 2]
    for row in rows:
        assert row["masks"] == "predicted" and row["drawn_capacities"] is None and row["calibration_images"] == 0
        assert row["predictor_rank"] == 4 and row["dynamic_ms"] > 0
        assert not any(field.startswith(("lean", "capped", "dense_int8")) for field in row)
    assert capsys.readouterr().out == ""
    with pytest.raises(ExportError, match="`int8_reference` needs `int8_images`"):
        ExportSuite().references(model)
    with pytest.raises(ExportError, match=r"drawn_keep=0.3 labels masks drawn by `set_keep_ratio`.*'own''s masks vary"):
        suite.measure(model, cifar_images[:4], "own", drawn_keep=0.3, references=references)
    with pytest.raises(ExportError, match="lean_plan='measured' times the lean network here"):
        ExportSuite(lean_plan="measured").measure(model, cifar_images[:2], "own", device=latency.DeviceFolder("x"))
