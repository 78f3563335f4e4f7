"""The documentation as written: the README's "Use" example runs on a batch of real CIFAR-10, and the CLIs'
usage examples print as they are written."""

import glob
import io
import os
import re
import tokenize
import warnings

import pytest
import tensorflow as tf

from conftest import ROOT


def test_the_use_example_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md")) as file:
        example = re.search(r"## Use\n\n```python\n(.*?)```", file.read(), re.S)
    assert example, "README.md has no ```python block right under '## Use'"
    code = example.group(1)
    # One batch of each split and one epoch, else as written (`epochs=...` is the reader's to fill in).
    for split in ("train", "test"):
        call = f'fk.data.cifar("cifar10", "{split}")'
        assert call in code
        code = code.replace(call, call + ".take(1)")
    assert code.count("epochs=...") == 2
    code = code.replace("epochs=...", "epochs=1")
    monkeypatch.chdir(tmp_path)  # it saves m.keras
    namespace = {}
    # Eagerly: tracing the train and test steps of MobileNetV1 x1.0 took most of this test's 45 s; the
    # compiled steps are tested everywhere else, this test is about the README's calls.
    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GateCooldown(0.5) over one epoch says it never trains the gates
            exec(compile(code, "README.md (## Use)", "exec"), namespace)
    except FileNotFoundError as error:  # pragma: no cover - machine without the data
        pytest.skip(f"CIFAR-10 is not prepared: {error}")
    finally:
        tf.config.run_functions_eagerly(False)
    assert (tmp_path / "m.keras").exists() and (tmp_path / "m.tflite").exists()
    assert type(namespace["model"]).__name__ == "FTWTModel"


def test_cli_usage_lines_print_as_written():
    """A usage example continued with a backslash must not be joined into one line by the docstring itself.

    absl prints a CLI's module docstring as its --help; in a plain string literal a backslash at a line's end
    joins the next line onto it (edge/convert.py's --help ran its example together until 2026-12-07).
    """
    scripts = [path for folder in ("edge", "benchmarks", os.path.join("ftwt_keras", "recipes"))
               for path in sorted(glob.glob(os.path.join(ROOT, folder, "*.py")))]
    assert len(scripts) > 20
    joined = []
    for path in scripts:
        with open(path) as file:
            for token in tokenize.generate_tokens(io.StringIO(file.read()).readline):
                if token.type == tokenize.STRING:  # the first string is the module docstring
                    raw = token.string.lstrip("bBuU")[:1] in "rR"
                    if not raw and re.search(r"(?<!\\)(\\\\)*\\\n", token.string):  # a line ends in an odd run of backslashes
                        joined.append(os.path.relpath(path, ROOT))
                    break
    assert not joined, f"end the continued usage lines of these docstrings with \\\\ (or make them raw): {joined}"
