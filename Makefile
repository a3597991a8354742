# Set-up:  make install   (builds .venv from nothing)
#          make test      (offline test suite)
PYTHON ?= .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test bench

install:
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install -r requirements.txt

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) bench/lstm.py
	$(PYTHON) bench/video.py
