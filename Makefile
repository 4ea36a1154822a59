# Two commands on a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Test assets live outside the repository (never copied in); tests skip when they are absent.
export VISIONSTREAM_TEST_ASSETS ?= $(abspath ../shared/assets)
SHARED_WEIGHTS := $(wildcard $(VISIONSTREAM_TEST_ASSETS)/models/squeezenet1_1_imagenet.pth)
# A shared portrait the demo enrols and then identifies in a camera frame (skipped when absent).
DEMO_PORTRAIT := $(firstword $(wildcard $(VISIONSTREAM_TEST_ASSETS)/media/faces/*/1.jpg))
# The shared arcade clip the demo plays on the same camera and counts the distinct visitors of (skipped when absent).
DEMO_CLIP := $(wildcard $(VISIONSTREAM_TEST_ASSETS)/media/arcade_pedestrians_1080p.mp4)

.PHONY: install demo test test-unit bench stack-up stack-down clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulled in by another package resolves to a new CUDA build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[local,test]'
	# facenet-pytorch 2.6.0 pins torch<2.3 and numpy<2, which we do not want: install it alone.
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	touch $@

# Uses the shared real weights when present (or VISIONSTREAM_MODEL_WEIGHTS / the torch hub cache).
# `make demo DEMO_ARGS=--keep-stack` leaves the stack, the worker and the dashboard running.
demo: install
	VISIONSTREAM_MODEL_WEIGHTS="$${VISIONSTREAM_MODEL_WEIGHTS:-$(SHARED_WEIGHTS)}" $(VENV)/bin/visionstream demo $(if $(DEMO_PORTRAIT),--enroll $(DEMO_PORTRAIT)) $(if $(DEMO_CLIP),--clip $(DEMO_CLIP)) $(DEMO_ARGS)

test: install
	$(PY) -m pytest tests

# No servers, no worker processes: about 12 s.
test-unit: install
	$(PY) -m pytest tests -m "not integration"

# The bench extra (Ray Data for the peer, py-spy) goes into the same venv, never into install_requires.
bench: install $(VENV)/.bench-installed
	$(PY) bench/run_all.py

$(VENV)/.bench-installed: setup.cfg
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

stack-up: install
	$(VENV)/bin/visionstream stack up

stack-down: install
	$(VENV)/bin/visionstream stack down

clean:
	rm -rf $(VENV) .visionstream build *.egg-info
