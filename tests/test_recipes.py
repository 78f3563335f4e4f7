import json
import os
import subprocess
import sys


def _run(args, env):
    return subprocess.run([sys.executable, "-m", "ftwt_keras.recipes.mobilenet_cifar", *args],
                          capture_output=True, text=True, env=env, timeout=900)


def test_recipe_runs_both_stages_and_resumes(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "run"
    args = [f"--output_dir={out}", "--alpha=0.25", "--train_take=256", "--test_take=256",
            "--baseline_epochs=1", "--epochs=2", "--estimate_images=128", "--batch_size=64",
            "--threshold=0.9", "--warmup_steps=2"]
    result = _run(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("threshold", "mode", "baseline_accuracy", "accuracy", "flops_reduction",
                "estimated_flops_reduction", "gate_accuracy"):
        assert key in results
    assert results["test_images"] == 256 and results["threshold"] == 0.9
    assert (out / "model.keras").exists() and (out / "baseline.keras").exists()
    assert (out / "logs" / "ftwt").is_dir()
    assert "FLOPs reduction" in result.stdout
    # Re-running skips finished stages.
    again = _run(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Stage 1 already done" in again.stderr and "Stage 2 already done" in again.stderr


def test_recipe_help_and_bad_flags():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "ftwt_keras.recipes.resnet_cifar", "--helpfull"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "--threshold" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "ftwt_keras.recipes.vgg_cifar", "--mode=both"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "mode" in bad.stderr
