"""benchmarks/cifar_cpu.py end to end on a tiny slice of real CIFAR-10 (pipeline, not accuracy)."""

import json
import os

import keras
import numpy as np
import pytest

import ftwt_keras as fk
from conftest import ROOT, benchmark_script, refusals, run_python
from ftwt_keras.export import cpu_name

SCRIPT = os.path.join(ROOT, "benchmarks", "cifar_cpu.py")

pytest.importorskip("ai_edge_litert")


def _run(*args):
    return run_python(SCRIPT, *args, timeout=900)


def test_protocol_writes_rows_table_and_plots_and_resumes(tmp_path):
    results = tmp_path / "results" / "cifar10_cpu.json"
    args = [f"--output_dir={tmp_path / 'runs'}", f"--results={results}", "--baseline_epochs=1", "--epochs=1",
            "--train_take=256", "--test_take=64", "--thresholds=0.9", "--joint_thresholds=",
            "--cooldown=0.5",  # the default 0.3 of 1 epoch would train no gates
            "--warmup_steps=1", "--tflite_images=4", "--static_alphas=0.2"]
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads(results.read_text())["rows"]
    assert [(row["threshold"], row["mode"], row["joint_gradient_scale"]) for row in rows] == [(0.9, "decoupled", None)]
    for row in rows:
        for key in ("baseline_accuracy", "accuracy", "estimated_flops_reduction", "gate_accuracy",
                    "flops_reduction_noise", "flops_reduction_blur"):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["flops_reduction"] <= 1.0 and row["target_flops_reduction"] <= 1.0 and row["test_images"] == 64
        assert row["tflite_dense_ms"] > 0 and row["tflite_dynamic_ms"] > 0
        assert row["tflite_speedup"] == pytest.approx(row["tflite_dense_ms"] / row["tflite_dynamic_ms"])
        assert row["tflite_cpu"] == cpu_name()
    analysis = np.load(tmp_path / "runs" / "r0.9_decoupled_uniform" / "analysis.npz")
    assert analysis["macs_clean"].shape == (64,) and analysis["macs_noise"].shape == (64,)
    right = analysis["baseline_correct_clean"]
    assert right.dtype == bool and right.shape == (64,)
    assert right.mean() == pytest.approx(rows[0]["baseline_accuracy"], abs=1e-6)  # the baseline's own top-1
    assert analysis["correct_clean"].mean() == pytest.approx(rows[0]["accuracy"], abs=1e-6)
    assert np.all((analysis["baseline_confidence_clean"] >= 0.1 - 1e-6) & (analysis["baseline_confidence_clean"] <= 1))
    expected = _cifar_cpu().cost_by_difficulty(analysis["macs_clean"], float(analysis["dense_macs"]), right,
                                               analysis["baseline_confidence_clean"])
    for key, value in expected.items():
        assert rows[0][key] == pytest.approx(value), key
    assert np.all(analysis["macs_clean"] <= analysis["dense_macs"] * 1.5)
    # Which filters the image decides: per-filter firing rates, whose layer means are the keep ratios.
    firing, widths = analysis["filter_firing"], analysis["filter_widths"]
    assert firing.shape == (widths.sum(),) and np.all((firing >= 0) & (firing <= 1))
    np.testing.assert_allclose([r.mean() for r in np.split(firing, np.cumsum(widths)[:-1])], analysis["layer_keep"])
    model = keras.saving.load_model(tmp_path / "runs" / "r0.9_decoupled_uniform" / "model.keras")
    dense = fk.flops.count_macs(model)
    predictor_share = fk.flops.count_macs(model, include_predictors=True) / dense - 1.0
    for row in rows:
        assert row["filters_never_on"] + row["filters_always_on"] + row["filters_varying"] == pytest.approx(1.0)
        # Never-firing filters are off in every image's mask, so removing only them saves at most the mean
        # (plus the predictors, which a static pruning does not run).
        assert 0.0 <= row["static_flops_reduction"] <= 1.0 - 1.0 / row["ideal_speedup"] + predictor_share + 1e-9
    assert rows[0]["filters_never_on"] == pytest.approx(np.mean(firing == 0))
    assert rows[0]["filters_on_10_to_90_percent"] == pytest.approx(np.mean((firing >= 0.1) & (firing <= 0.9)))
    assert rows[0]["filters_on_10_to_90_percent"] <= rows[0]["filters_varying"]
    # The .tflite against Keras on every test image (the edge issue's bound, 1e-3 of the logit range).
    error, margin = analysis["tflite_logit_error"], analysis["gate_margin"]
    assert error.shape == margin.shape == analysis["tflite_same_top1"].shape == (64,)
    assert rows[0]["tflite_within_tolerance"] == pytest.approx(np.mean(error <= 1e-3))
    assert rows[0]["tflite_top1_agreement"] >= 0.95 and rows[0]["tflite_max_logit_error"] == pytest.approx(error.max())
    assert np.all(margin >= 0)
    beyond = error > 1e-3
    assert rows[0]["gate_margin_beyond_tolerance"] == (pytest.approx(margin[beyond].max()) if beyond.any() else None)
    table = results.with_suffix(".md").read_text()
    assert table.startswith("MobileNetV1 x0.25, CIFAR-10 (64 test images), seed 0: dense baseline 1 epochs; FTWT 1 "
                            "epochs at backbone LR 0.02, gate loss on for the first 50% of them.\n\n| r | mode |")
    assert table.count("\n| 0.9 |") == 1
    assert f"| {100 * rows[0]['filters_never_on']:.1f}% / {100 * rows[0]['filters_always_on']:.1f}% (" in table
    # The static-width control: a dense x0.2 trained from scratch for baseline + FTWT epochs.
    (static,) = json.loads(results.read_text())["static_rows"]
    assert (static["alpha"], static["epochs"], static["seed"]) == (0.2, 2, 0)
    assert static["baseline_accuracy"] == pytest.approx(rows[0]["baseline_accuracy"])
    macs = {alpha: fk.flops.count_macs(fk.models.mobilenet_v1(alpha=alpha)) for alpha in (0.2, 0.25)}
    assert (static["macs"], static["baseline_macs"]) == (macs[0.2], macs[0.25])
    assert static["flops_reduction"] == pytest.approx(1 - macs[0.2] / macs[0.25])
    assert static["tflite_speedup"] == pytest.approx(static["tflite_baseline_ms"] / static["tflite_ms"])
    assert static["tflite_cpu"] == cpu_name()
    assert 0.0 <= static["accuracy"] <= 1.0 and static["train_seconds"] > 0
    assert "| dense x0.2 from scratch | 2 |" in table
    pytest.importorskip("matplotlib")
    for name in ("accuracy_vs_flops", "layer_keep", "per_image_flops"):
        assert (results.parent / f"cifar10_cpu_{name}.png").stat().st_size > 1000

    # A second run trains nothing: every stage is found finished. An analysis made before a measurement
    # existed (here: one without the firing rates) gains it, and keeps the .tflite timing it has.
    analysis_path = tmp_path / "runs" / "r0.9_decoupled_uniform" / "analysis.npz"
    older = {k: v for k, v in dict(np.load(analysis_path)).items() if k not in ("filter_firing", "static_macs")}
    older["tflite_dense_ms"] = np.array(123.0)  # a timing no re-measurement would give
    np.savez(analysis_path, **older)
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    completed = np.load(analysis_path)
    assert float(completed["tflite_dense_ms"]) == 123.0
    np.testing.assert_array_equal(completed["filter_firing"], firing)
    assert again.stderr.count("already done") >= 3  # the baseline, the FTWT run and the static control
    assert "Static x0.2 control: already done" in again.stderr
    assert "Epoch 1/" not in again.stdout + again.stderr

    # Another FTWT schedule, in joint mode, from the same baseline: nothing of stage 1 is trained again.
    reused_results = tmp_path / "reused" / "cifar10_cpu.json"
    reuse = [f"--output_dir={tmp_path / 'reused_runs'}", f"--results={reused_results}",
             f"--baseline_dir={tmp_path / 'runs'}", "--baseline_epochs=1", "--epochs=1", "--train_take=256",
             "--test_take=64", "--thresholds=", "--joint_thresholds=0.8", "--joint_gradient_scale=0.5",
             "--warmup_steps=1", "--tflite_images=0",
             "--seed=3", "--cooldown=0.6", "--lr=0.01", "--distillation_weight=0.5", "--threshold_ramp_epochs=1",
             "--target=mass"]
    reused = _run(*reuse)
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert "reusing the dense baseline" in reused.stderr
    assert "baseline, 1 epochs" not in reused.stderr and "Stage 1 already done" not in reused.stderr
    (row,) = json.loads(reused_results.read_text())["rows"]
    assert row["threshold"] == 0.8 and row["baseline_accuracy"] == rows[0]["baseline_accuracy"]
    assert (row["mode"], row["joint_gradient_scale"]) == ("joint", 0.5)
    assert (row["seed"], row["cooldown"], row["lr"]) == (3, 0.6, 0.01) and (rows[0]["seed"], rows[0]["lr"]) == (0, 0.02)
    assert (row["distillation_weight"], row["threshold_ramp_epochs"]) == (0.5, 1)
    assert (row["target"], rows[0]["target"]) == ("mass", "uniform")  # the default: uniform
    reused_table = reused_results.with_suffix(".md").read_text()
    assert "| 0.8 | joint (gradient x0.5) |" in reused_table and "| 0.9 | decoupled, uniform targets |" in table
    assert reused_table.startswith("MobileNetV1 x0.25, CIFAR-10 (64 test images), seed 3: dense baseline 1 epochs; "
                                   "FTWT 1 epochs at backbone LR 0.01, gate loss on for the first 60% of them, with "
                                   "distillation 0.5 and r ramped over 1 epochs (not in the paper).\n\n")
    assert (rows[0]["distillation_weight"], rows[0]["threshold_ramp_epochs"]) == (0.0, 0)
    joint = json.loads((tmp_path / "reused_runs" / "r0.8_joint_g0.5" / "results.json").read_text())
    assert joint["config"]["target"] == "mass"
    assert joint["config"]["joint_gradient_scale"] == 0.5 and joint["config"]["gate_lr"] == pytest.approx(0.1)
    with open(tmp_path / "reused_runs" / "r0.8_joint_g0.5" / "ftwt_history.csv") as file:
        history = file.read().splitlines()
    column = history[0].split(",").index("learning_rate")
    assert float(history[1].split(",")[column]) == pytest.approx(0.01)  # the backbone optimizer's, epoch 1
    assert float(history[1].split(",")[history[0].split(",").index("threshold")]) == pytest.approx(0.8)  # ramped
    assert "distillation_loss" in history[0]
    assert row["baseline_train_seconds"] == rows[0]["baseline_train_seconds"] is not None
    assert not any((tmp_path / "reused_runs" / name).exists() for name in ("baseline.keras", "baseline_history.csv"))
    # Any dense .keras of the right width can be the baseline; its epochs are recorded as given.
    model_results = tmp_path / "from_model" / "cifar10_cpu.json"
    from_model = [f"--output_dir={tmp_path / 'model_runs'}", f"--results={model_results}",
                  f"--baseline_model={tmp_path / 'runs' / 'baseline.keras'}", "--baseline_epochs=7", "--epochs=1",
                  "--train_take=256", "--test_take=64", "--thresholds=0.8", "--joint_thresholds=",
                  "--warmup_steps=1", "--tflite_images=0"]
    given = _run(*from_model)
    assert given.returncode == 0, given.stderr[-3000:]
    (row,) = json.loads(model_results.read_text())["rows"]
    assert row["baseline_accuracy"] == rows[0]["baseline_accuracy"] and row["baseline_epochs"] == 7
    assert row["baseline_train_seconds"] is None

    # Refused, before anything trains: a finished run under other settings (it is never silently reused),
    # a reused baseline trained with other settings than the rows would record, baselines that are not one.
    def without(flags, prefix):
        return [flag for flag in flags if not flag.startswith(prefix)]

    other_baseline = without(from_model, "--baseline_model")
    expected = [
        ((*without(args, "--epochs"), "--epochs=2"),
         "holds a finished run with other settings (epochs: 1 there, 2 now)"),
        ((*without(reuse, "--baseline_epochs"), "--baseline_epochs=2"),
         "was trained for 1 epoch; pass --baseline_epochs=1"),
        ((*without(reuse, "--alpha"), "--alpha=0.5"), "pass the --alpha it was trained with"),
        ((*without(reuse, "--baseline_dir"), f"--baseline_dir={tmp_path}"), "holds no baseline.keras"),
        ((*other_baseline, f"--baseline_model={tmp_path / 'runs' / 'r0.9_decoupled_uniform' / 'model.keras'}"),
         "is a gated FTWT model. Save it dense first"),
        ((*other_baseline, f"--baseline_model={tmp_path / 'missing.keras'}"), "missing.keras does not exist"),
        ((*from_model, f"--baseline_dir={tmp_path / 'runs'}"), "Pass --baseline_dir or --baseline_model, not both"),
        ((*from_model, "--thresholds=0.7", "--static_alphas=0.2,wide"), "positive width multipliers"),
    ]
    said, asked = refusals(SCRIPT, *(argv for argv, _ in expected))
    for (argv, message), answer in zip(expected, said):
        assert answer is not None and message in answer, (argv, answer)
    assert "Epoch 1/" not in asked.stdout + asked.stderr


def test_a_learning_rate_that_is_not_positive_is_refused_before_anything_runs(tmp_path):
    refused = _run(f"--output_dir={tmp_path}", "--lr=0")  # the app's own report of a bad flag
    assert refused.returncode != 0 and "--lr must be a positive learning rate" in refused.stderr
    said, _ = refusals(SCRIPT, (f"--output_dir={tmp_path}", "--distillation_weight=1"),
                       (f"--output_dir={tmp_path}", "--epochs=2", "--threshold_ramp_epochs=3"),
                       (f"--output_dir={tmp_path}", "--ungated_layers=conv1,blok1_*"))
    assert "--distillation_weight must be in [0, 1)" in said[0]
    assert "--threshold_ramp_epochs must be in [0, --epochs]" in said[1]
    assert "['blok1_*'] match no conv layer" in said[2]
    assert not any(tmp_path.iterdir())


def test_help_lists_the_shared_fine_tuning_flags():
    result = _run("--help")
    for flag in ("--thresholds:", "--distillation_weight:", "--distillation_temperature:", "--threshold_ramp_epochs:"):
        assert flag in result.stdout


def _cifar_cpu():
    return benchmark_script("cifar_cpu")


def test_cost_by_difficulty_splits_by_the_baseline_and_ranks_with_ties():
    cost = _cifar_cpu().cost_by_difficulty
    macs = np.array([40.0, 60.0, 60.0, 80.0])
    right = np.array([True, True, False, False])
    result = cost(macs, 100.0, right, baseline_confidence=[0.9, 0.7, 0.5, 0.3])
    assert result["flops_reduction_baseline_right"] == pytest.approx(0.5)  # mean cost 50 of 100
    assert result["flops_reduction_baseline_wrong"] == pytest.approx(0.3)
    # Ranks with the tie averaged: MACs 1, 2.5, 2.5, 4 against confidence 4, 3, 2, 1.
    a, b = np.array([1, 2.5, 2.5, 4]), np.array([4, 3, 2, 1.0])
    assert result["macs_confidence_correlation"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert result["macs_confidence_correlation"] < -0.9  # less confident images cost more here
    all_right = cost(macs, 100.0, np.ones(4, bool), [0.9, 0.7, 0.5, 0.3])
    assert all_right["flops_reduction_baseline_wrong"] is None  # an empty group has no mean
    flat = cost(np.full(4, 50.0), 100.0, right, [0.9, 0.7, 0.5, 0.3])
    assert flat["macs_confidence_correlation"] is None  # every image costs the same: no ranking


def test_shifted_images_keep_range_and_shape():
    cifar_cpu = _cifar_cpu()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    for kind in ("noise", "blur"):
        shifted = cifar_cpu.shifted_images(images, kind, noise_std=25.0, blur_sigma=1.0)
        assert shifted.shape == images.shape and shifted.dtype == np.float32
        assert shifted.min() >= -1e-3 and shifted.max() <= 255 + 1e-3
        assert not np.allclose(shifted, images)
    flat = np.full((1, 32, 32, 3), 100.0, np.float32)
    np.testing.assert_allclose(cifar_cpu.shifted_images(flat, "blur"), flat, rtol=1e-5)  # blur keeps a flat image


def test_the_mass_flagfile_restores_the_settings_of_the_committed_mass_target_results():
    module = _cifar_cpu()
    path = os.path.join(ROOT, "benchmarks", "cifar_cpu_mass.flags")
    settings = dict(arg[2:].split("=", 1) for arg in module.FLAGS.read_flags_from_files([f"--flagfile={path}"]))
    with open(os.path.join(ROOT, "benchmarks", "results", "cifar10_cpu_mass.json")) as file:
        rows = json.load(file)["rows"]
    # Rows written before the target was recorded are all mass-target runs.
    assert {(row.get("target", "mass"), row["epochs"], row["cooldown"]) for row in rows} == {
        (settings["target"], int(settings["epochs"]), float(settings["cooldown"]))}
    assert [row["threshold"] for row in rows if row["mode"] == "decoupled"] == [
        float(t) for t in settings["thresholds"].split(",")]
    assert [row["threshold"] for row in rows if row["mode"] == "joint"] == [
        float(t) for t in settings["joint_thresholds"].split(",")]
    # Every setting it names differs from today's default, or it would not be needed.
    for name, value in settings.items():
        assert module.FLAGS[name].parser.parse(value) != module.FLAGS[name].default, name
