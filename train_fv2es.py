"""FV2ES (seed 004, built on MME2E): end-to-end text + audio + face emotion recognition on IEMOCAP / CMU-MOSEI.

Processed data (SPEC 5) from the raw releases, or a tiny synthetic tree (raw + processed):
    python -m preprocess.iemocap IEMOCAP_full_release data/iemocap      # -> data/iemocap/IEMOCAP_RAW_PROCESSED ...
    python -m preprocess.mosei CMU-MOSEI/Raw data/mosei
    python -m preprocess.fixtures iemocap data/demo/iemocap              # raw/ and processed/
Train (the published recipe, GPU), leave-one-session-out, text only offline, a hand-crafted baseline:
    python train_fv2es.py -lr 4.5e-6 -mod tav --data data/iemocap --text-model weights/all-MiniLM-L6-v2
    python train_fv2es.py -lr=4.5e-6 -mod tav --data data/iemocap --protocol loso --test-session 5 --text-model DIR
    python train_fv2es.py -lr 1e-4 -mod t --data data/mosei --dataset mosei --text-model weights/all-MiniLM-L6-v2
    python train_fv2es.py -lr 1e-3 -mo lf_rnn --hand-crafted -mod tav --data data/iemocap -bi
MELD text in the same layout (python -m preprocess.meld_to_fv2es MELD/ data/meld_fv2es; 7 classes, text only):
    python train_fv2es.py -lr 1e-3 --loss ce -bs 32 -mod t --dataset meld --data data/meld_fv2es --text-model weights/all-MiniLM-L6-v2
Several processes or GPUs (DDP; --batch-size is split over the processes), resume after a crash:
    torchrun --nproc_per_node=2 train_fv2es.py -lr 4.5e-6 -mod tav --data data/iemocap --text-model DIR --out runs/fv2es/ddp
    python train_fv2es.py -lr 4.5e-6 -mod tav --data data/iemocap --text-model DIR --out runs/fv2es/ddp --resume
Evaluate a checkpoint (no other flag needed), predict on any video:
    python train_fv2es.py --test --ckpt runs/fv2es/001/model.pt
    python train_fv2es.py --predict talk.mp4 [--transcript talk.txt] --ckpt runs/fv2es/001/model.pt --out runs/fv2es/talk

Model mme2e: faces (48x48 crops cached by the preprocessors; MTCNN when weights/mtcnn holds P/R/O-Net, else a
centre crop) -> RepVGG CNN; 128-bin log-mel in 0.4-s chunks (4x32x32) -> nested transformer; per modality a
transformer with CLS token and key-padding mask -> Linear -> 6 logits; text: models/text_encoder.py (mean pooling
for sentence-transformers folders, the first token otherwise -> Linear), trained with the model at --text-lr (the
encoder family's fine-tuning rate unless given; lr / --text-lr-factor when that is given); learned weighted late
fusion Linear(M -> 1, no bias). -mod t on one process trains on batches of texts of similar length.
Loss bce with pos_weight = neg/pos on train. Per class the sigmoid threshold in {0.05, ..., 0.95} with the best F1
on VALID is chosen and applied to test. Outputs in --out (default runs/fv2es/NNN): args.json, split.json,
model.pt (best mean valid F1; carries args and thresholds), last.pt (--resume), metrics.json {"valid", "test",
"thresholds"}.
--audio-size presets of the nested transformer: paper = patch 1, 8x8 blocks, dims 128/256/512, depths 2/2/20
(NesT-B); cpu = patch 2, dims 64/128/256, depths 1/1/2; tiny for tests. --protocol loso tests on --test-session
and validates on 10% of the other sessions' dialogues. The original's flag spellings work:
--datapath, -lr/--learning-rate, -hs/--hidden-size and -nl/--num-layers are --data, --lr, --hidden and --layers
(lf_transformer takes its layers from --trans-nlayers); --feature-dim, -st/--sparse-threshold and -aft are
accepted and ignored (no model here uses them, as in the original's mme2e).
Deviations from the original: --ckpt/--valid/--test work; the text encoder trains at its family's fine-tuning rate
(was lr / --text-lr-factor 10) and pools as its folder says (was the first token); the visual head is optimised;
RepVGG is fused on a copy for inference only; -lr is required only for training; -bs defaults to 2 (was required); --fusion
late (the original default 'early' was ignored by mme2e); audio NesT preset 'cpu' (the paper's is
--audio-size paper); splits grouped (--protocol loso). Other defaults are the original README's training command's (-ep 30
-bs 2 -es 6 --trans-dim 64 --trans-nlayers 4 --trans-nheads 4 --num-emotions 6 --text-max-len 100); the original
cli.py defaults differ (-ep and -bs required, -es 5, --trans-dim 512, --trans-nlayers 2, --trans-nheads 8,
--num-emotions 4, --text-max-len 300).
"""
import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from common import (InputError, UNREADABLE_ARRAY_ERRORS, argument_parser, atomic_write, autocast, best_f1_threshold, broadcast_object, classification_report,
                    cleanup_distributed, format_table, keep_freed_memory, load_checkpoint, make_run_dir, progress, resolve_device,
                    resume_training_state, run_main, save_checkpoint, save_training_state, seed_everything, setup_distributed, to_device,
                    write_failures, write_json)
from models.fv2es import MME2E, HandCrafted, normalise_faces
from models.repvgg import fuse_repvgg
from models.text_encoder import finetune_lr
from preprocess.cache import cached_array
from preprocess.features import log_mel
from preprocess.fv2es_layout import HCF_SIZES, LAYOUT, make_cropper
from preprocess.fv2es_reader import CLASS_NAMES as READER_CLASS_NAMES, read_processed
from preprocess.iemocap import loso_splits

CLASS_NAMES = {dataset: list(names) for dataset, names in READER_CLASS_NAMES.items()}
SINGLE_LABEL = ("iemocap", "meld")  # one emotion per utterance: also scored by argmax (accuracy, weighted F1)
SELECT_BY = {"iemocap": "mean_f1", "mosei": "mean_f1", "meld": "weighted_f1"}  # the valid score that picks model.pt
MODULES_OF = {m: (f"heads.{m}.", f"encoders.{m}.", f"projections.{m}.") for m in "tav"}
MODULES_OF["t"] += ("text.",)
MODULES_OF["a"] += ("audio.", "audio_temporal.")
MODULES_OF["v"] += ("visual.", "visual_temporal.")


def build_parser():
    parser = argument_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--data", "--datapath", help="folder of <DATASET>_RAW_PROCESSED, <DATASET>_SPLIT, <DATASET>_HCF_FEATURES (default: none)")
    data.add_argument("--dataset", default="iemocap", choices=sorted(CLASS_NAMES), help="dataset layout under --data (meld: preprocess.meld_to_fv2es, text only) (default %(default)s)")
    data.add_argument("-mod", "--modalities", default="tav", help="any subset of t(ext), a(udio), v(isual) (default %(default)s)")
    data.add_argument("--protocol", default="split", choices=["split", "loso"], help="the split files, or IEMOCAP leave-one-session-out (default %(default)s)")
    data.add_argument("--test-session", type=int, default=5, help="--protocol loso: the held-out session (default %(default)s)")
    data.add_argument("--img-interval", type=int, default=500, help="ms between frames, as preprocessed; --predict samples at it (default %(default)s)")
    data.add_argument("--text-max-len", type=int, default=100, help="tokens per utterance, longer ones are cut (default %(default)s)")
    data.add_argument("--hand-crafted", action="store_true", help="read the <DATASET>_HCF_FEATURES files, implied by lf_* models (default: off)")
    data.add_argument("-hfcs", "--hfc-sizes", type=int, nargs=3, default=list(HCF_SIZES), metavar=("T", "A", "V"), help="hand-crafted feature widths, checked against the files (default %(default)s)")
    data.add_argument("-aft", "--audio-feature-type", type=int, default=0, choices=[0], help="accepted, ignored: log-mel chunks are the only type (default %(default)s)")
    data.add_argument("--cache", default="cache/fv2es", help="cached mel chunks and face crops (default %(default)s)")
    data.add_argument("--mtcnn", default="weights/mtcnn", help="MTCNN weights, centre crops without them (default %(default)s)")
    model = parser.add_argument_group("Model")
    model.add_argument("-mo", "--model", default="mme2e", choices=["mme2e", "lf_rnn", "lf_transformer"], help="end-to-end model, or a hand-crafted baseline (default %(default)s)")
    model.add_argument("--text-model-size", default="base", choices=["base", "large", "xlarge"], help="albert-<size>-v2 from the hub when no --text-model (default %(default)s)")
    model.add_argument("--text-model", help="transformers text encoder name or local folder (default: ALBERT, --text-model-size)")
    model.add_argument("--fusion", default="late", choices=["late", "early"], help="learned weighted sum of the modality logits, or concatenation (default %(default)s)")
    model.add_argument("--trans-dim", type=int, default=64, help="width of the temporal transformers (default %(default)s)")
    model.add_argument("--trans-nlayers", type=int, default=4, help="layers of the temporal transformers (default %(default)s)")
    model.add_argument("--trans-nheads", type=int, default=4, help="attention heads of the temporal transformers (default %(default)s)")
    model.add_argument("--audio-size", default="cpu", choices=["tiny", "cpu", "paper"], help="nested-transformer audio encoder preset (default %(default)s)")
    model.add_argument("--num-emotions", type=int, help="classes, must match --dataset (default: 6 for iemocap and mosei, 7 for meld)")
    model.add_argument("--feature-dim", type=int, default=256, help="accepted, ignored (default %(default)s)")
    model.add_argument("-st", "--sparse-threshold", type=float, default=0.9, help="accepted, ignored (default %(default)s)")
    model.add_argument("-dr", "--dropout", type=float, default=0.1, help="dropout rate (default %(default)s)")
    model.add_argument("--layers", "-nl", "--num-layers", type=int, default=1, help="lf_rnn layers (default %(default)s)")
    model.add_argument("--hidden", "-hs", "--hidden-size", type=int, default=300, help="lf_rnn hidden units (default %(default)s)")
    model.add_argument("-bi", "--bidirectional", action="store_true", help="lf_rnn: bidirectional (default: off)")
    model.add_argument("--gru", action="store_true", help="lf_rnn: GRU instead of LSTM (default: off)")
    train = parser.add_argument_group("Training")
    train.add_argument("--lr", "-lr", "--learning-rate", type=float, help="learning rate, required for training (default: none)")
    train.add_argument("-bs", "--batch-size", type=int, default=2, help="global batch size, split over the processes (default %(default)s)")
    train.add_argument("-wd", "--weight-decay", type=float, default=0.0, help="weight decay (default %(default)s)")
    train.add_argument("-ep", "--epochs", type=int, default=30, help="training epochs (default %(default)s)")
    train.add_argument("-es", "--early-stop", type=int, default=6, help="stop after this many epochs without a better valid mean F1 (default %(default)s)")
    train.add_argument("-cl", "--clip", type=float, default=-1, help="gradient-norm clipping, <= 0 = off (default %(default)s)")
    train.add_argument("-sc", "--scheduler", action="store_true", help="halve the rate after 2 epochs without a better valid mean F1 (default: off)")
    train.add_argument("--loss", default="bce", choices=["bce", "ce", "l1", "mse"], help="bce with pos_weight, ce, or l1/mse on sigmoids (default %(default)s)")
    train.add_argument("--optim", default="adam", choices=["adam", "sgd"], help="optimiser; sgd with momentum 0.9 (default %(default)s)")
    train.add_argument("--text-lr", type=float, help="learning rate of the text encoder (default: 5e-5 sentence-transformers, 2e-5 others)")
    train.add_argument("--text-lr-factor", type=float, help="the text encoder trains at lr / this instead (default: none, --text-lr)")
    run = parser.add_argument_group("Run")
    run.add_argument("--out", help="run, --predict or evaluation.json folder (default: runs/fv2es/NNN, beside --ckpt)")
    run.add_argument("--resume", action="store_true", help="continue from last.pt in --out, same flags (default: off)")
    run.add_argument("--ckpt", help="model.pt: evaluated, predicted with, or the start point of training (default: none)")
    run.add_argument("--ckpt-mod", help="load only these modalities' weights from --ckpt, e.g. t (default: all it shares)")
    run.add_argument("--valid", action="store_true", help="evaluate --ckpt on valid (default: off)")
    run.add_argument("--test", action="store_true", help="evaluate --ckpt on test, thresholds chosen on valid (default: off)")
    run.add_argument("--predict", metavar="VIDEO", help="per-segment emotions of a video with --ckpt: predictions.json, report.html (default: none)")
    run.add_argument("--transcript", help="--predict: `start end text` lines giving the segments and their text (default: none)")
    run.add_argument("--window", type=float, default=4.0, help="--predict without --transcript: segment length in s (default %(default)s)")
    run.add_argument("--no-fuse", action="store_true", help="--predict with the multi-branch RepVGG, to compare latency (default: off)")
    logistics = parser.add_argument_group("Logistics")
    logistics.add_argument("-se", "--seed", type=int, default=0, help="random seed for torch, numpy and random (default %(default)s)")
    logistics.add_argument("-cu", "--cuda", default="0", help="GPU index when --device resolves to CUDA (default %(default)s)")
    logistics.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default %(default)s)")
    logistics.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default %(default)s)")
    logistics.add_argument("--amp", action="store_true", help="bf16 autocast of the forward passes (default: off)")
    logistics.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors (default: off)")
    return parser


# ---------------------------------------------------------------- data

def mel_chunks(wave):
    """16 kHz wave -> float32 (K, 4, 32, 32): 128-bin log-mel (win 400, hop 200), z-scored per utterance, cut
    into K chunks of 32 frames (0.4 s; the last zero-padded), the 128 bins folded into 4 x 32."""
    mel = log_mel(wave, n_mels=128, n_fft=1024, win_length=400, hop_length=200)  # (128, frames)
    mel = (mel - mel.mean()) / (mel.std() + 1e-5)
    chunks = -(-mel.shape[1] // 32)
    mel = F.pad(mel, (0, chunks * 32 - mel.shape[1]))
    return mel.view(4, 32, chunks, 32).permute(2, 0, 1, 3).numpy().astype(np.float32)  # (128, K*32) -> (K, 4, 32, 32)


class Utterances(torch.utils.data.Dataset):
    """Item i of `ids` -> {"id", "text", "label" (6,), and per modality: "faces" uint8 (T, 48, 48, 3), "mel" (K, 4, 32, 32),
    "hcf" {m: (T, F)}}; only what the model needs is read."""

    def __init__(self, items, ids, args):
        self.items, self.ids, self.args, self.cropper = items, list(ids), args, None
        self.hcf_dir = Path(args.data) / LAYOUT[args.dataset][2]

    def __len__(self):
        return len(self.ids)

    def faces(self, item):
        suffix = f"_{item.side}" if item.side else ""
        cached = item.folder / f"faces{suffix}.npy"
        if cached.is_file():
            try:
                return np.load(cached, allow_pickle=False)
            except UNREADABLE_ARRAY_ERRORS:
                pass  # cut short or corrupt: crop the jpgs again (into --cache) below
        images = sorted(item.folder.glob(f"image{suffix}_*.jpg"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if not images:
            raise InputError(f"{item.folder}: no faces{suffix}.npy or image{suffix}_*.jpg")

        def crop():
            from PIL import Image
            self.cropper = self.cropper or make_cropper(self.args.mtcnn)
            return self.cropper.crop_batch([np.asarray(Image.open(p).convert("RGB")) for p in images])[0]
        return cached_array(self.args.cache, images[0], {"faces": len(images), "mtcnn": str(self.args.mtcnn)}, crop)

    def __getitem__(self, index):
        item = self.items[self.ids[index]]
        sample = {"id": item.id, "text": item.text, "label": item.label}
        if self.args.model != "mme2e":
            path = self.hcf_dir / f"{item.id}.npz"
            if not path.is_file():
                raise InputError(f"{path}: hand-crafted features not found (python -m preprocess.{self.args.dataset} writes them)")
            try:
                with np.load(path, allow_pickle=False) as saved:
                    sample["hcf"] = {m: saved[m] for m in self.args.modalities}
            except UNREADABLE_ARRAY_ERRORS as error:
                raise InputError(f"{path}: unreadable hand-crafted features ({type(error).__name__}: {str(error)[:100]})") from None
            for m, size in zip("tav", self.args.hfc_sizes):
                if m in sample["hcf"] and sample["hcf"][m].shape[1] != size:
                    raise InputError(f"{path}: {m} features are {sample['hcf'][m].shape[1]}-d but --hfc-sizes says {size}")
                if m in sample["hcf"] and not np.isfinite(sample["hcf"][m]).all():
                    raise InputError(f"{path}: {m} features hold NaN or inf")
            return sample
        if "v" in self.args.modalities:
            sample["faces"] = self.faces(item)
        if "a" in self.args.modalities:
            wav = item.folder / "audio.wav"
            from preprocess.media import load_audio
            sample["mel"] = cached_array(self.args.cache, wav, {"mel": "n_mels128-n_fft1024-win400-hop200-z"}, lambda: mel_chunks(load_audio(wav)))
        return sample


def collate(samples, *, tokenizer, text_max_len):
    """Samples -> (batch for the model, labels (B, 6), ids). Faces and mel chunks of all items are concatenated
    with per-item counts (the model encodes them in one pass and pads them back per item)."""
    batch = {}
    if tokenizer is not None:
        encoded = tokenizer([s["text"] for s in samples], padding=True, truncation=True, max_length=text_max_len, return_tensors="pt")
        batch["text"] = (encoded["input_ids"], encoded["attention_mask"])
    if "faces" in samples[0]:
        batch["faces"] = torch.from_numpy(np.concatenate([s["faces"] for s in samples]))  # uint8 (N_v, 48, 48, 3)
        batch["face_counts"] = torch.tensor([len(s["faces"]) for s in samples])
    if "mel" in samples[0]:
        batch["mel_chunks"] = torch.from_numpy(np.concatenate([s["mel"] for s in samples]))
        batch["chunk_counts"] = torch.tensor([len(s["mel"]) for s in samples])
    if "hcf" in samples[0]:
        batch["hcf"], batch["hcf_lengths"] = {}, {}
        for m in samples[0]["hcf"]:
            sequences = [torch.from_numpy(s["hcf"][m]) for s in samples]
            batch["hcf"][m] = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)  # (B, T_max, F)
            batch["hcf_lengths"][m] = torch.tensor([len(x) for x in sequences])
    labels = torch.from_numpy(np.stack([s["label"] for s in samples]))
    return batch, labels, [s["id"] for s in samples]


def model_inputs(batch, device):
    """The batch on `device`, its uint8 faces (N, 48, 48, 3) normalised to float (N, 3, 48, 48) for the CNN."""
    batch = to_device(batch, device)
    if "faces" in batch:
        batch["faces"] = normalise_faces(batch["faces"])
    return batch


# ---------------------------------------------------------------- model, loss, evaluation

def text_model_name(args):
    return args.text_model or f"albert-{args.text_model_size}-v2"


def build_model(args):
    num_classes = args.num_emotions or len(CLASS_NAMES[args.dataset])
    if args.model == "mme2e":
        return MME2E(modalities=args.modalities, num_classes=num_classes, trans_dim=args.trans_dim, trans_nlayers=args.trans_nlayers,
                     trans_nheads=args.trans_nheads, audio_size=args.audio_size, dropout=args.dropout, fusion=args.fusion,
                     text_model=text_model_name(args) if "t" in args.modalities else None)
    return HandCrafted(kind=args.model, modalities=args.modalities, input_dims=dict(zip("tav", args.hfc_sizes)), num_classes=num_classes,
                       hidden=args.hidden, num_layers=args.layers, bidirectional=args.bidirectional, gru=args.gru,
                       trans_dim=args.trans_dim, trans_nlayers=args.trans_nlayers, trans_nheads=args.trans_nheads, dropout=args.dropout,
                       fusion=args.fusion)


def make_tokenizer(args):
    if args.model != "mme2e" or "t" not in args.modalities:
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(text_model_name(args))
    except (OSError, ValueError) as error:
        raise InputError(f"{text_model_name(args)}: cannot load its tokenizer ({str(error).splitlines()[0][:160]}); give --text-model DIR") from None


def compute_loss(logits, labels, args, pos_weight):
    if args.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    if args.loss == "ce":
        return F.cross_entropy(logits, labels / labels.sum(1, keepdim=True).clamp(min=1))
    scores = torch.sigmoid(logits)
    return F.l1_loss(scores, labels) if args.loss == "l1" else F.mse_loss(scores, labels)


@torch.no_grad()
def predict_scores(model, loader, args, device):
    """(labels (N, 6), scores (N, 6), ids) of a loader, in its order."""
    model.eval()
    all_labels, all_scores, all_ids = [], [], []
    for batch, labels, ids in loader:
        with autocast(device, getattr(args, "amp", False)):
            logits = model(model_inputs(batch, device)).float()
        all_scores.append((logits.softmax(-1) if args.loss == "ce" else logits.sigmoid()).cpu().numpy())
        all_labels.append(labels.numpy())
        all_ids += ids
    return np.concatenate(all_labels), np.concatenate(all_scores), all_ids


def choose_thresholds(labels, scores):
    """Per class the F1-best threshold in {0.05, ..., 0.95}: call on VALID only."""
    return [best_f1_threshold(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]


def evaluate(labels, scores, thresholds, class_names, train_labels, dataset):
    """Per-emotion accuracy, precision, recall, F1, AUC at the given thresholds, their means, the all-positive
    baseline, the per-class majority baseline (train) and, for IEMOCAP and MELD, argmax accuracy / weighted F1."""
    labels = labels.astype(int)
    predicted = (scores >= np.asarray(thresholds)[None, :]).astype(int)
    majority = (train_labels.mean(0) > 0.5).astype(int)
    report = {"n": int(len(labels)), "thresholds_from": "valid", "per_emotion": {}}
    for c, name in enumerate(class_names):
        truth, guess = labels[:, c], predicted[:, c]
        both = 0 < truth.sum() < len(truth)
        report["per_emotion"][name] = {
            "accuracy": float(skm.accuracy_score(truth, guess)), "precision": float(skm.precision_score(truth, guess, zero_division=0)),
            "recall": float(skm.recall_score(truth, guess, zero_division=0)), "f1": float(skm.f1_score(truth, guess, zero_division=0)),
            "auc": float(skm.roc_auc_score(truth, scores[:, c])) if both else float("nan"), "threshold": float(thresholds[c]),
            "positives": int(truth.sum()), "all_positive_f1": float(skm.f1_score(truth, np.ones_like(truth), zero_division=0)),
            "all_positive_accuracy": float(truth.mean()), "majority_accuracy": float((truth == majority[c]).mean())}
    for key in ("accuracy", "precision", "recall", "f1", "auc", "all_positive_f1", "all_positive_accuracy", "majority_accuracy"):
        values = [v[key] for v in report["per_emotion"].values()]
        report[f"mean_{key}"] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
    if dataset in SINGLE_LABEL:
        way = f"{len(class_names)}way"  # accuracy_6way for IEMOCAP, accuracy_7way for MELD
        argmax = classification_report(labels.argmax(1), scores.argmax(1), class_names=class_names, train_labels=train_labels.argmax(1))
        report.update({f"accuracy_{way}": argmax["accuracy"], "weighted_f1": argmax["weighted_f1"], f"macro_f1_{way}": argmax["macro_f1"],
                       f"majority_baseline_accuracy_{way}": argmax["majority_baseline_accuracy"],
                       "majority_baseline_weighted_f1": argmax["majority_baseline_weighted_f1"], "confusion_matrix": argmax["confusion_matrix"]})
    return report


def load_weights(model, state, modalities=None):
    """Load the checkpoint tensors that `model` has with the same shape; with `modalities`, only those of these
    modalities' modules (plus shared ones such as the fusion weights). Returns the names loaded."""
    own = model.state_dict()
    chosen = {}
    for key, value in state.items():
        owner = next((m for m, prefixes in MODULES_OF.items() if key.startswith(prefixes)), None)
        if key in own and own[key].shape == value.shape and (modalities is None or owner is None or owner in modalities):
            chosen[key] = value
    if not chosen:
        raise InputError("--ckpt: no weights fit this model (different -mo/-mod or sizes?)")
    model.load_state_dict(chosen, strict=False)
    return sorted(chosen)


# ---------------------------------------------------------------- --predict on any video

def predict(cli, device):
    """Segments (transcript times or fixed windows) of one video -> per-segment probabilities, JSON + HTML."""
    from preprocess.fv2es_layout import audio_hcf, text_hcf, visual_hcf
    from preprocess.media import probe
    from preprocess.report import jpeg_data_uri
    from preprocess.timeline import iter_segments, read_transcript
    if not cli.ckpt or not cli.out:
        raise InputError("--predict needs --ckpt RUN/model.pt and --out DIR")
    started = time.perf_counter()
    state = load_checkpoint(cli.ckpt)
    args = merged_args(state["args"], cli)
    model = build_model(args).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    if args.model == "mme2e" and "v" in args.modalities and not cli.no_fuse:
        model = fuse_repvgg(model)  # a copy: the single-conv RepVGG form, equal in eval mode
    collate_fn = functools.partial(collate, tokenizer=make_tokenizer(args), text_max_len=args.text_max_len)
    cropper = make_cropper(args.mtcnn) if "v" in args.modalities else None
    loaded = time.perf_counter()
    info = probe(cli.predict)
    duration = info["duration_s"] or 0.0
    if cli.transcript:
        segments = read_transcript(cli.transcript)
    else:
        starts = np.arange(0.0, max(duration, 1e-3), cli.window)
        segments = [(float(s), float(min(s + cli.window, duration or s + cli.window)), "") for s in starts]
    needs_audio = "a" in args.modalities
    if needs_audio and not info["has_audio"]:
        raise InputError(f"{cli.predict}: no audio stream, but the checkpoint's model uses audio (-mod {args.modalities})")
    if "v" in args.modalities and not info["has_video"]:
        raise InputError(f"{cli.predict}: no video stream, but the checkpoint's model uses faces (-mod {args.modalities})")
    samples, thumbnails = [None] * len(segments), {}
    # one decode through the timeline: each segment's frames (every --img-interval ms) and audio, segment by segment
    spans = {index: (start, end) for index, (start, end, _) in enumerate(segments)}
    for index, frames, audio in iter_segments(cli.predict, spans, interval_ms=args.img_interval, audio=needs_audio):
        if frames:
            thumbnails[index] = jpeg_data_uri(frames[0][1])
        face_array = np.zeros((0, 48, 48, 3), np.uint8)
        if cropper is not None and frames:
            face_array = cropper.crop_batch([rgb for _, rgb in frames])[0]
        text = segments[index][2]
        sample = {"id": str(index), "text": text, "label": np.zeros(args.num_emotions or len(CLASS_NAMES[args.dataset]), np.float32)}
        if args.model == "mme2e":
            if "v" in args.modalities:
                sample["faces"] = face_array
            if needs_audio:
                sample["mel"] = mel_chunks(audio)
        else:
            features = {"t": lambda: text_hcf(text), "a": lambda: audio_hcf(audio), "v": lambda: visual_hcf(face_array)}
            sample["hcf"] = {m: features[m]() for m in args.modalities}
        samples[index] = sample
    frames_done = time.perf_counter()
    loader = [collate_fn(samples[i:i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
    model_started = time.perf_counter()
    _, scores, _ = predict_scores(model, loader, args, device)
    timings = {"model_load_s": loaded - started, "media_and_features_s": frames_done - loaded,
               "batching_s": model_started - frames_done, "model_s": time.perf_counter() - model_started}
    names, thresholds = state["class_names"], state["thresholds"]
    rows = [{"start": round(start, 3), "end": round(end, 3), "text": text, "probabilities": dict(zip(names, map(float, row))),
             "detected": [n for n, p, t in zip(names, row, thresholds) if p >= t], "top": names[int(row.argmax())]}
            for (start, end, text), row in zip(segments, scores)]
    elapsed, processing = time.perf_counter() - started, time.perf_counter() - loaded
    per_video_second = processing / max(duration, 1e-6)
    out = Path(cli.out)
    write_json(out / "predictions.json", {"video": str(cli.predict), "checkpoint": str(cli.ckpt), "duration_s": duration,
                                          "segmentation": "transcript" if cli.transcript else f"{cli.window} s windows",
                                          "thresholds": dict(zip(names, thresholds)), "fused_repvgg": not cli.no_fuse,
                                          "seconds_per_video_second": per_video_second, "timings": timings, "segments": rows})
    write_emotion_report(out / "report.html", Path(cli.predict).name, rows, names, thresholds, thumbnails)
    print(f"{cli.predict}: {len(rows)} segment(s); {duration:.1f} s of video processed in {processing:.2f} s = {per_video_second:.3f} s "
          f"per second of video (+ {loaded - started:.1f} s loading the model; {elapsed:.1f} s in all); outputs in {out}")
    print("  " + ", ".join(f"{name} {value:.2f}" for name, value in timings.items()))
    return {"segments": rows, "seconds_per_video_second": per_video_second}


def write_emotion_report(path, title, rows, names, thresholds, thumbnails):
    """Self-contained HTML: one row per segment with its thumbnail (data URI) and a bar per emotion."""
    from preprocess.report import _escape
    head = "".join(f"<th>{_escape(n)}<br><small>t={t:.2f}</small></th>" for n, t in zip(names, thresholds))
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="{"on" if n in row["detected"] else ""}"><div class="bar" style="width:{60 * p:.0f}px"></div>{p:.2f}</td>'
                        for n, p in row["probabilities"].items())
        image = f'<img src="{thumbnails[index]}">' if index in thumbnails else ""
        body.append(f"<tr><td>{row['start']:.1f}-{row['end']:.1f}</td><td>{image}</td><td>{_escape(row['text'])}</td>{cells}"
                    f"<td>{_escape(', '.join(row['detected']) or '-')}</td></tr>")
    html = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Emotions: {_escape(title)}</title><style>"
            "body{font:14px sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 6px}"
            ".bar{height:8px;background:#1565c0}.on{background:#ffe0b2}img{height:48px}</style></head><body>"
            f"<h1>Emotions: {_escape(title)}</h1><p>{len(rows)} segment(s); a shaded cell is at or above its valid-chosen threshold t.</p>"
            f"<table><tr><th>time (s)</th><th>frame</th><th>text</th>{head}<th>detected</th></tr>{''.join(body)}</table></body></html>")
    atomic_write(path, lambda file: file.write(html), binary=False)
    return path


# ---------------------------------------------------------------- main

def data_splits(args):
    items, splits, failures = read_processed(args.data, args.dataset)
    if args.protocol == "loso":
        if args.dataset != "iemocap":
            raise InputError("--protocol loso is for IEMOCAP (sessions); MOSEI uses its split files")
        splits = loso_splits(items, args.test_session, seed=args.seed)
    empty = [split for split, ids in splits.items() if not ids and split != "test"]
    if empty:
        raise InputError(f"{args.data}: the {' and '.join(empty)} split is empty (train and valid are needed)")
    if not splits["test"]:
        print("the test split is empty: trained on train, selected and reported on valid")
    if failures:
        print(f"{len(failures)} utterance(s) skipped (meta entries that do not parse, split ids without one); listed in failures.csv")
    return items, splits, failures


class LengthBatches(torch.utils.data.Sampler):
    """Training batches of texts of similar length, for -mod t on one process (padding is most of a text batch's
    cost): each epoch the items are shuffled, sorted by character length within windows of 50 batches, cut into
    batches, and the batches shuffled; the order depends only on the seed and the epoch."""

    def __init__(self, lengths, batch_size, seed):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order, window, batches = torch.randperm(len(self.lengths), generator=generator).tolist(), 50 * self.batch_size, []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        window = 50 * self.batch_size
        return sum(-(-min(window, len(self.lengths) - start) // self.batch_size) for start in range(0, len(self.lengths), window))


def loaders(items, splits, args, dist=None):
    """DataLoaders of every split; with DDP the train split is sharded by a DistributedSampler and --batch-size is
    split over the processes; -mod t on one process trains on LengthBatches. The train order depends only on --seed
    and the epoch (reseed_for_epoch)."""
    collate_fn = functools.partial(collate, tokenizer=make_tokenizer(args), text_max_len=args.text_max_len)
    sharded = dist is not None and dist.enabled
    made = {}
    for split, ids in splits.items():
        dataset, training = Utterances(items, ids, args), split == "train"
        if training and not sharded and args.modalities == "t" and args.model == "mme2e":
            made[split] = torch.utils.data.DataLoader(dataset, batch_sampler=LengthBatches([len(items[i].text) for i in ids], args.batch_size, args.seed),
                                                      collate_fn=collate_fn, num_workers=args.workers)
            continue
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed) if training and sharded else None
        made[split] = torch.utils.data.DataLoader(dataset, batch_size=max(1, args.batch_size // dist.world_size) if training and sharded else args.batch_size,
                                                  shuffle=training and sampler is None, sampler=sampler, collate_fn=collate_fn,
                                                  num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
                                                  pin_memory=args.device != "cpu" and torch.cuda.is_available())
    return made


def reseed_for_epoch(loader, seed, epoch):
    if isinstance(loader.batch_sampler, LengthBatches):
        loader.batch_sampler.set_epoch(epoch)
    elif isinstance(loader.sampler, torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)


def check_args(args):
    if not args.modalities or set(args.modalities) - set("tav") or len(set(args.modalities)) != len(args.modalities):
        raise InputError(f"-mod {args.modalities}: give a subset of t, a, v such as tav or t")
    args.modalities = "".join(m for m in "tav" if m in args.modalities)
    if args.ckpt_mod and set(args.ckpt_mod) - set(args.modalities):
        raise InputError(f"--ckpt-mod {args.ckpt_mod}: load only modalities that -mod {args.modalities} uses")
    classes = len(CLASS_NAMES[args.dataset])
    if args.num_emotions not in (None, classes):
        raise InputError(f"--num-emotions {args.num_emotions}: --dataset {args.dataset} has {classes} emotion labels")
    args.num_emotions = classes
    if args.text_lr is None and args.lr is not None:
        args.text_lr = args.lr / args.text_lr_factor if args.text_lr_factor else finetune_lr(text_model_name(args))
    if args.dataset == "meld" and (args.modalities != "t" or args.model != "mme2e"):
        raise InputError("--dataset meld: the converted MELD text has no audio, faces or hand-crafted features; use -mod t with mme2e")
    if args.model != "mme2e":
        args.hand_crafted = True
    if getattr(args, "amp", False) and args.model == "lf_rnn":
        raise InputError("--amp: the lf_rnn model's LSTM (models/lstm.py) runs in float32 only; drop --amp for it")


def train(args, device):
    if args.lr is None:
        raise InputError("training needs -lr (the published run used -lr 4.5e-6)")
    if not args.data:
        raise InputError("training needs --data DIR (python -m preprocess.iemocap RAW DIR writes it)")
    dist = setup_distributed(device)
    keep_freed_memory(device)
    items, splits, failures = data_splits(args)
    run_dir = Path(broadcast_object(dist, str(make_run_dir(args.out, args, default_root="runs/fv2es")) if dist.is_main else None))
    if dist.is_main:
        write_json(run_dir / "split.json", {"protocol": args.protocol, **splits})
        write_failures(run_dir, failures)
    data = loaders(items, splits, args, dist)
    train_labels = np.stack([items[i].label for i in splits["train"]])
    positives = train_labels.sum(0)
    pos_weight = torch.tensor((len(train_labels) - positives) / np.maximum(positives, 1), dtype=torch.float32, device=device)
    model = build_model(args).to(device)
    if args.ckpt:
        loaded = load_weights(model, load_checkpoint(args.ckpt)["model"], args.ckpt_mod)
        print(f"{args.ckpt}: {len(loaded)} tensors loaded" + (f" (modalities {args.ckpt_mod})" if args.ckpt_mod else ""))
    text_ids = {id(p) for p in model.text_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in text_ids]}]
    if text_ids:
        groups.append({"params": model.text_parameters(), "lr": args.text_lr})
    optimizer = (torch.optim.Adam(groups, lr=args.lr, weight_decay=args.weight_decay) if args.optim == "adam"
                 else torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2) if args.scheduler else None
    start_epoch, best_score, best_epoch = 0, -1.0, -1
    if args.resume and (run_dir / "last.pt").is_file():
        start_epoch, best_score, best_epoch = resume_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler)
    # the text encoder's pooler never reaches the loss, so DDP must allow unused parameters
    train_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if dist.enabled else model
    for epoch in range(start_epoch, args.epochs):
        if epoch - best_epoch > args.early_stop:
            break  # a resumed run that had already stopped early
        train_model.train()
        reseed_for_epoch(data["train"], args.seed, epoch)
        started, loss_sum = time.time(), 0.0
        for batch, labels, _ in progress(data["train"], enabled=dist.is_main, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            with autocast(device, args.amp):
                logits = train_model(model_inputs(batch, device))
            loss = compute_loss(logits.float(), labels.to(device, non_blocking=True), args, pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            loss_sum += loss.item()
        valid, thresholds = None, None
        if dist.is_main:
            valid_labels, valid_scores, _ = predict_scores(model, data["valid"], args, device)
            thresholds = choose_thresholds(valid_labels, valid_scores)
            valid = evaluate(valid_labels, valid_scores, thresholds, CLASS_NAMES[args.dataset], train_labels, args.dataset)
        score = broadcast_object(dist, valid[SELECT_BY[args.dataset]] if valid else None)
        if scheduler:
            scheduler.step(score)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        if dist.is_main:
            if improved:
                save_checkpoint(run_dir / "model.pt", {"model": model.state_dict(), "args": vars(args), "epoch": epoch,
                                                       "thresholds": thresholds, "class_names": CLASS_NAMES[args.dataset]})
            save_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                best_score=best_score, best_epoch=best_epoch)
            print(f"epoch {epoch + 1}: loss {loss_sum / max(1, len(data['train'])):.4f}  valid {SELECT_BY[args.dataset]} {score:.3f}  "
                  f"mean acc {valid['mean_accuracy']:.3f}{'  *' if improved else ''}  ({time.time() - started:.0f} s)", flush=True)
        if epoch - best_epoch >= args.early_stop:
            if dist.is_main:
                print(f"early stop: no better valid {SELECT_BY[args.dataset]} for {args.early_stop} epochs")
            break
    if not dist.is_main:
        cleanup_distributed(dist)
        return None
    model.load_state_dict(load_checkpoint(run_dir / "model.pt")["model"])
    metrics = evaluate_splits(model, data, args, device, train_labels, ["valid", "test"] if splits["test"] else ["valid"])
    metrics["protocol"] = (f"{args.dataset}, protocol {args.protocol}; trained on train, checkpoint = best valid {SELECT_BY[args.dataset]} (epoch {best_epoch + 1}); "
                           f"per-class thresholds in {{0.05..0.95}} chosen on valid, applied to test; means over the {args.num_emotions} emotions; "
                           "baselines: all-positive and train-majority per class" + (f"; {args.num_emotions}-way = argmax" if args.dataset in SINGLE_LABEL else "")
                           + ("" if splits["test"] else "; no test split: valid is both the selection and the reported split"))
    write_json(run_dir / "metrics.json", metrics)
    print(f"run folder: {run_dir}")
    cleanup_distributed(dist)
    return metrics


def evaluate_splits(model, data, args, device, train_labels, splits):
    """Thresholds from valid (always), reports for `splits`: {"thresholds", split: report}."""
    valid_labels, valid_scores, _ = predict_scores(model, data["valid"], args, device)
    thresholds = choose_thresholds(valid_labels, valid_scores)
    metrics = {"thresholds": thresholds}
    for split in splits:
        labels, scores = (valid_labels, valid_scores) if split == "valid" else predict_scores(model, data[split], args, device)[:2]
        metrics[split] = evaluate(labels, scores, thresholds, CLASS_NAMES[args.dataset], train_labels, args.dataset)
    columns = ["split", "n", "mean_accuracy", "mean_f1", "mean_auc", "mean_all_positive_f1", "mean_majority_accuracy"]
    columns += [f"accuracy_{len(CLASS_NAMES[args.dataset])}way", "weighted_f1", "majority_baseline_weighted_f1"] if args.dataset in SINGLE_LABEL else []
    print(format_table([{"split": s, **metrics[s]} for s in splits], columns))
    return metrics


def evaluate_checkpoint(cli, device):
    """--valid / --test with --ckpt: the checkpoint's args, overridden only by flags given on the command line."""
    state = load_checkpoint(cli.ckpt)
    args = merged_args(state["args"], cli)
    items, splits, _ = data_splits(args)
    data = loaders(items, splits, args)
    model = build_model(args).to(device)
    model.load_state_dict(state["model"])
    train_labels = np.stack([items[i].label for i in splits["train"]])
    if cli.test and not splits["test"]:
        raise InputError(f"--test: {args.data} has an empty test split")
    metrics = evaluate_splits(model, data, args, device, train_labels, ["valid"] + (["test"] if cli.test else []))
    out = Path(cli.out) if cli.out else Path(cli.ckpt).parent
    write_json(out / "evaluation.json", {"checkpoint": str(cli.ckpt), **metrics})
    return metrics


# a checkpoint's args under the names older versions of this script saved them
RENAMED_ARGS = {"datapath": "data", "learning_rate": "lr", "hidden_size": "hidden", "num_layers": "layers"}


def merged_args(saved, cli, keep=("data", "device", "cuda", "cache", "batch_size", "workers", "mtcnn", "amp")):
    args = argparse.Namespace(**{RENAMED_ARGS.get(key, key): value for key, value in saved.items()})
    explicit = {k: v for k, v in vars(cli).items() if k in keep and v != build_parser().get_default(k)}
    for key, value in explicit.items():
        setattr(args, key, value)
    return args


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda" and args.device in ("auto", "cuda"):
        device = torch.device(f"cuda:{args.cuda}")
    seed_everything(args.seed)
    if args.predict:
        return predict(args, device)
    if args.valid or args.test:
        if not args.ckpt:
            raise InputError("--valid/--test need --ckpt RUN/model.pt")
        return evaluate_checkpoint(args, device)
    check_args(args)
    return train(args, device)


if __name__ == "__main__":
    run_main(main)
