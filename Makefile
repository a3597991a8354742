# Set-up:  make install   (builds .venv from nothing)
#          make test      (offline test suite)
# Systems: make av [DATA=/path/to/RAVDESS]   (no DATA: a synthetic demo tree in the real layout)
#          make bench
PYTHON ?= .venv/bin/python
DEVICE ?= auto
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test bench av

install:
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install -r requirements.txt

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) bench/lstm.py
	$(PYTHON) bench/video.py

ifdef DATA
av:
	$(PYTHON) train_av.py --data $(DATA) -mod av --device $(DEVICE) --out runs/av/latest
else
av:
	$(PYTHON) -m preprocess.fixtures ravdess data/demo/ravdess
	$(PYTHON) train_av.py --data data/demo/ravdess -mod av --test-actors 6 --val-actors 5 --frame-size 64 \
		--epochs 10 --device $(DEVICE) --out runs/av/demo
endif
