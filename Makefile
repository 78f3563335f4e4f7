# The README's two commands: `make demo` and `make test`. Both create .venv with
# python3 and install the package into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TFDS_DATA_DIR ?= $(HOME)/tensorflow_datasets
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test install data clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Real CIFAR-10 for tfds, built offline from ../shared/data (no-op once built).
data: $(STAMP)
	@if [ -f ../shared/data/build_tfds_cifar10.py ]; then \
		$(BIN)/python ../shared/data/build_tfds_cifar10.py "$(TFDS_DATA_DIR)"; \
	else echo "../shared/data not found: prepare cifar10 for tfds in $(TFDS_DATA_DIR) yourself"; fi

# Trains (dense, then FTWT), then writes the trained model's .tflite, checks it against Keras on 1,000
# test images and times it against the dense export on this CPU.
demo: data
	TFDS_DATA_DIR="$(TFDS_DATA_DIR)" $(BIN)/python -m ftwt_keras.recipes.mobilenet_cifar --flagfile=recipes/demo_cpu.flags
	TFDS_DATA_DIR="$(TFDS_DATA_DIR)" $(BIN)/python edge/convert.py --model=runs/demo/model.keras \
		--output=runs/demo/model.tflite --calibration='cifar10:train[:64]' --check='cifar10:test[:1000]' --time

test: data
	TFDS_DATA_DIR="$(TFDS_DATA_DIR)" $(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs build *.egg-info
