"""MELD text + audio + video emotion recognition (seed 003): trained on train, selected on dev, tested once.

Text only, MiniLM sentence embeddings (`make weights` puts them in weights/all-MiniLM-L6-v2), no clips needed;
frozen encoder, or fine-tuned for one epoch on train first:
    python train_meld.py --data MELD/ -mod t --text-model weights/all-MiniLM-L6-v2 --out runs/meld/text
    python train_meld.py --data MELD/ -mod t --text-model weights/all-MiniLM-L6-v2 --text-finetune-epochs 1 --text-finetune-lr 1e-4 --epochs 10 --out runs/meld/text-ft
The best text recipe (--recipe text, `make weights-mpnet` first: all-mpnet-base-v2 trained together with the
dialogue model (--text-joint) for 3 epochs, encoder at 5e-5, 4 dialogues a batch, class weights (N / (K n_c))^(1/4),
bf16 encoder); the same as
    python train_meld.py --data MELD/ --recipe text
    python train_meld.py --data MELD/ -mod t --text-model weights/all-mpnet-base-v2 --text-joint --text-finetune-lr 5e-5 --epochs 3 --batch-size 4 --class-weights fourth-root --amp --seed 0
An ensemble of 2 runs (seeds 0 and 1, mean probabilities), trained side by side, one process and half the threads each:
    python train_meld.py --data MELD/ --recipe text --ensemble 2 --member-processes 2
Text + audio + video with the released clips, wav2vec2 and ResNet-50 ImageNet weights from local folders:
    python train_meld.py --data MELD.Raw/ -mod tav --text-model weights/all-MiniLM-L6-v2 --audio-model weights/wav2vec2-base-960h --video-weights weights/resnet50.pth
Per-utterance model (no dialogue context) with an SVM head fitted on the train features:
    python train_meld.py --data DIR -mod ta --context none --svm --text-model weights/all-MiniLM-L6-v2
A tiny synthetic tree in the real layout (clips included):
    python -m preprocess.fixtures meld data/demo/meld

Several processes or GPUs (DDP; each global --batch-size batch of dialogues is split over the processes, the clip
features are extracted in per-rank shards into the shared --cache first, rank 0 writes the run folder):
    torchrun --nproc_per_node=2 train_meld.py --data DIR -mod tav --text-model weights/all-MiniLM-L6-v2

--data holds {train,dev}_sent_emo.csv (test_sent_emo.csv optional) and, for -mod a/v, the clip folders
train_splits/, dev_splits_complete/, output_repeated_splits_test/. Features are computed once by frozen encoders
and cached in --cache (atomic .npy files): text = the L2-normalised sentence embedding of models/text_encoder.py
(mean pooling for sentence-transformers folders such as MiniLM, the first token otherwise; with
--text-finetune-epochs, of an encoder first fine-tuned on the train split only, through a temporary linear head
and class-weighted cross-entropy; with --text-context N, the previous N utterances as 'Speaker: text' after [SEP]
are seen by the attention but not pooled; with --text-joint, not cached: the encoder is part of the model and trained
with it at --text-finetune-lr, models.meld_emotion.JointTextClassifier, and model.pt holds it); audio = wav2vec2 mean (with --audio-model) + 25 MFCC means + 5 prosody
values; video = the 10 frames of highest grayscale-histogram entropy (kept in time order) -> ResNet-50, mean over
the frames (2048-d; random init without --video-weights). --amp runs the text fine-tuning and the encoders in
bf16 (their own cache entries); the dialogue model always trains in float32. Missing or undecodable clips are
skipped and listed in failures.csv; a split without its CSV is skipped with a message (test is optional).
Features are standardised with train statistics. Model: per-modality BiLSTM over a dialogue's utterances
(--context dialogue) or each utterance alone (--context none), multi-head attention over the modality tokens,
Linear -> 7, class-weighted cross-entropy. Outputs in --out (default runs/meld/NNN): args.json, split.json,
failures.csv, model.pt (best dev weighted-F1), last.pt (--resume), predictions.npz ({dev,test}_probabilities and
_keys), metrics.json {"dev": ..., "test": ...[, "svm": ...]}; with --ensemble N (seeds --seed .. --seed+N-1, --svm
per member only; --member-processes M trains M at a time, one at a time under torchrun) those files per member in
member_K/, and a top-level metrics.json {"members": [...], "dev": ..., "test": ...} of the mean of the members'
probabilities.
"""
import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel

from common import (InputError, add_logistics_args, argument_parser, atomic_write, autocast, barrier, broadcast_object,
                    classification_report, cleanup_distributed, format_table, global_mean, rank_share, setup_distributed,
                    keep_freed_memory, load_checkpoint, make_run_dir, progress, resolve_device, resume_training_state, run_main,
                    save_checkpoint, save_training_state, seed_everything, to_device, write_failures, write_json)
from models.meld_emotion import FrameEncoder, JointTextClassifier, MELDEmotionClassifier, SentenceEncoder, Wav2Vec2Mean
from models.text_encoder import finetune_lr, pooling_of
from preprocess.cache import cached_array
from preprocess.features import mfcc, prosody
from preprocess.media import MediaError, iter_frames, load_audio
from preprocess.meld import EMOTIONS, SPLIT_CLIP_DIRS, SPLIT_CSV, dialogues, find_clip, read_split, top_entropy_frames

MODALITIES = ["t", "a", "v", "ta", "tv", "av", "tav"]
# --recipe NAME: the best measured single command, as defaults that explicit flags still override (RESULTS.md)
RECIPES = {"text": {"modalities": "t", "text_model": "weights/all-mpnet-base-v2", "text_joint": True, "text_finetune_lr": 5e-5,
                    "epochs": 3, "batch_size": 4, "class_weights": "fourth-root", "amp": True, "seed": 0}}
# --class-weights NAME: (N / (K n_c)) ** power from the train counts n_c of the K classes (N utterances)
CLASS_WEIGHT_POWERS = {"none": 0, "inverse": 1, "sqrt": 0.5, "fourth-root": 0.25}
CLASS_WEIGHTS = {name: lambda counts, power=power: (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** power
                 for name, power in CLASS_WEIGHT_POWERS.items()}


def build_parser():
    parser = argument_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--data", required=True, help="MELD folder: the split CSVs and, for -mod a/v, their clip folders (required)")
    data.add_argument("--cache", default="cache/meld", help="folder of cached feature arrays, reused across runs (default %(default)s)")
    features = parser.add_argument_group("Features (frozen encoders, computed once)")
    features.add_argument("--text-model", help="local folder of a transformers sentence encoder, needed for t (default: none)")
    features.add_argument("--text-finetune-epochs", type=int, default=0, help="fine-tune the text encoder on train for N epochs first, 0 = frozen (default %(default)s)")
    features.add_argument("--text-finetune-lr", type=float, help="fine-tuning AdamW learning rate, linear decay (default: 5e-5 sentence-transformers, 2e-5 others)")
    features.add_argument("--text-context", type=int, default=0, help="previous utterances of the dialogue encoded with each one (default %(default)s)")
    features.add_argument("--text-joint", action="store_true", help="train the text encoder with the dialogue model, -mod t only (default: off)")
    features.add_argument("--text-max-len", type=int, default=128, help="tokens per utterance, longer ones are cut (default %(default)s)")
    features.add_argument("--audio-model", help="local wav2vec2 folder, adds its mean to the MFCC and prosody values (default: none)")
    features.add_argument("--video-weights", help="torchvision ResNet-50 ImageNet weights, .pth file or folder (default: seeded random init)")
    features.add_argument("--amp", action="store_true", help="bf16 autocast of the text fine-tuning and the feature encoders (default: off)")
    features.add_argument("--video-fps", type=float, default=4.0, help="frames sampled per second before the entropy ranking (default %(default)s)")
    features.add_argument("--video-frames", type=int, default=10, help="frames of highest grayscale entropy kept per clip (default %(default)s)")
    features.add_argument("--frame-size", type=int, default=224, help="side of the resized, centre-cropped square frames (default %(default)s)")
    model = parser.add_argument_group("Model")
    model.add_argument("-mod", "--modalities", default="t", choices=MODALITIES, help="t(ext), a(udio), v(ideo) or any combination (default %(default)s)")
    model.add_argument("--context", default="dialogue", choices=["dialogue", "none"], help="BiLSTM over a dialogue's utterances, or each alone (default %(default)s)")
    model.add_argument("--hidden", type=int, default=256, help="BiLSTM units per direction (default %(default)s)")
    model.add_argument("--d-model", type=int, default=512, help="width of the modality tokens and the attention (default %(default)s)")
    model.add_argument("--heads", type=int, default=8, help="attention heads (default %(default)s)")
    model.add_argument("--dropout", type=float, default=0.3, help="dropout rate (default %(default)s)")
    model.add_argument("--svm", action="store_true", help="also fit an SVM on the selected model's fused train vectors, reported under svm (default: off)")
    model.add_argument("--svm-c", type=float, default=1.0, help="SVM regularisation C (default %(default)s)")
    train = parser.add_argument_group("Training")
    train.add_argument("--epochs", type=int, default=20, help="training epochs (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=16, help="global dialogues (utterances with --context none) per batch (default %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW, one-cycle schedule (default %(default)s)")
    train.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default %(default)s)")
    train.add_argument("--class-weights", default="sqrt", choices=sorted(CLASS_WEIGHTS), help="loss class weights (N / (K n_c))^p: none 0, inverse 1, sqrt 1/2, fourth-root 1/4 (default %(default)s)")
    run = parser.add_argument_group("Run")
    run.add_argument("--out", help="run folder (default: a new runs/meld/NNN)")
    run.add_argument("--recipe", choices=sorted(RECIPES), help="defaults of the best measured recipe, flags given still win (default: none)")
    run.add_argument("--ensemble", type=int, default=1, help="N > 1: N runs with seeds --seed.., scored by their mean probabilities (default %(default)s)")
    run.add_argument("--member-processes", type=int, default=1, help="ensemble members trained at once, a process and a share of the threads each (default %(default)s)")
    run.add_argument("--resume", action="store_true", help="continue from last.pt in --out, same flags (default: off)")
    add_logistics_args(parser, default_seed=3)
    return parser


# ---------------------------------------------------------------- data and features

def load_splits(data_dir, problems=None):
    """{split: [Utterance]} for the splits whose CSV exists; train and dev are required. Rows that do not parse
    are skipped and appended to `problems` (raised when it is None)."""
    if not Path(data_dir).is_dir():
        raise InputError(f"--data {data_dir}: not a folder")
    splits = {}
    for split in ("train", "dev", "test"):
        rows = read_split(data_dir, split, problems)
        if rows is None:
            if split != "test":
                raise InputError(f"{Path(data_dir) / SPLIT_CSV[split]}: not found (train and dev CSVs are required)")
            print(f"{SPLIT_CSV[split]} not in {data_dir}: the {split} split is skipped")
            continue
        splits[split] = rows
    return splits


def file_fingerprint(folder):
    """Names, sizes and times of a model folder's files, so new weights give new cache entries."""
    if not folder:
        return None
    folder = Path(folder)
    files = sorted(folder.rglob("*")) if folder.is_dir() else [folder]
    return [str(folder.resolve())] + [[str(f.relative_to(folder) if folder.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns]
                                      for f in files if f.is_file()]


class TextFeatures:
    """(N, hidden) float32 sentence embeddings of one split's CSV, cached as one array per split. With
    --text-finetune-epochs the encoder is first fine-tuned on the train split's texts and labels only."""

    def __init__(self, splits, args, device):
        if not args.text_model:
            raise InputError("-mod with t needs --text-model DIR (run `make weights` for weights/all-MiniLM-L6-v2)")
        self.train, self.args, self.device, self.encoder = splits["train"], args, device, None
        self.settings = {"text_encoder": file_fingerprint(args.text_model), "pooling": pooling_of(args.text_model), "max_length": args.text_max_len}
        if args.text_context:
            self.settings["context"] = args.text_context
        if args.amp:
            self.settings["amp"] = "bf16"
        if args.text_finetune_epochs:
            self.settings["finetune"] = {"epochs": args.text_finetune_epochs, "lr": args.text_finetune_lr, "seed": args.seed,
                                         "class_weights": args.class_weights, "train_csv": file_fingerprint(Path(args.data) / SPLIT_CSV["train"])}

    def build_encoder(self):
        encoder = SentenceEncoder(self.args.text_model, device=self.device, max_length=self.args.text_max_len)
        if self.args.text_finetune_epochs:
            labels = [EMOTIONS.index(u.emotion) for u in self.train]
            weights = torch.tensor(CLASS_WEIGHTS[self.args.class_weights](np.bincount(labels, minlength=len(EMOTIONS))), dtype=torch.float32)
            encoder.finetune([u.text for u in self.train], labels, contexts=self.contexts(self.train), num_classes=len(EMOTIONS), epochs=self.args.text_finetune_epochs,
                             lr=self.args.text_finetune_lr, class_weights=weights, seed=self.args.seed, amp=self.args.amp,
                             progress=lambda items, desc: progress(items, desc=desc, leave=False))
        return encoder

    def contexts(self, utterances):
        """Per utterance, its dialogue's previous --text-context utterances as 'Speaker: text ...' (None without context)."""
        if not self.args.text_context:
            return None
        previous = {}
        for group in dialogues(utterances):
            for position, utterance in enumerate(group):
                previous[utterance.key] = " ".join(f"{u.speaker}: {u.text}" for u in group[max(0, position - self.args.text_context):position])
        return [previous[u.key] for u in utterances]

    def __call__(self, split, utterances):
        def compute():
            self.encoder = self.encoder or self.build_encoder()
            contexts = self.contexts(utterances)
            order = np.argsort([len(u.text) + (len(contexts[i]) if contexts else 0) for i, u in enumerate(utterances)])  # similar lengths share a batch
            embeddings = np.zeros((len(utterances), self.encoder.model.config.hidden_size), np.float32)
            for start in progress(range(0, len(order), 64), desc=f"encoding {split} text", leave=False):
                rows = order[start:start + 64]
                with autocast(self.device, self.args.amp):
                    encoded = self.encoder([utterances[i].text for i in rows], None if contexts is None else [contexts[i] for i in rows])
                embeddings[rows] = encoded.float().numpy()
            return embeddings
        return cached_array(self.args.cache, Path(self.args.data) / SPLIT_CSV[split], self.settings, compute)


class ClipFeatures:
    """Per-clip audio (wav2vec2 mean + 25 MFCC means + 5 prosody) and video (entropy top-k -> ResNet-50) vectors."""

    def __init__(self, args, device):
        self.args, self.device, self.encoders = args, device, {}
        self.settings = {"a": {"audio_model": file_fingerprint(args.audio_model), "n_mfcc": 25},
                         "v": {"video_weights": file_fingerprint(args.video_weights) or "random-seed0", "fps": args.video_fps,
                               "frames": args.video_frames, "size": args.frame_size}}
        if args.amp:  # bf16 encoders give other numbers: their own cache entries
            self.settings["v"]["amp"] = "bf16"
            if args.audio_model:
                self.settings["a"]["amp"] = "bf16"

    def encoder(self, name):  # built on first use: a fully cached run never loads the big models
        if name not in self.encoders:
            self.encoders[name] = (Wav2Vec2Mean(self.args.audio_model, device=self.device) if name == "wav2vec2"
                                   else FrameEncoder(self.args.video_weights).to(self.device))
        return self.encoders[name]

    def audio(self, clip):
        wave = load_audio(clip)
        parts = [mfcc(wave, n_mfcc=25).mean(-1), prosody(wave)]
        if self.args.audio_model:
            with autocast(self.device, self.args.amp):
                parts.insert(0, self.encoder("wav2vec2")(wave).float())
        return torch.cat(parts).numpy().astype(np.float32)

    def video(self, clip):
        frames = top_entropy_frames((frame for _, frame in iter_frames(clip, fps=self.args.video_fps, size=self.args.frame_size,
                                                                        center_crop=True)), self.args.video_frames)
        if frames is None:
            raise MediaError(clip, "no video frames decoded")
        with autocast(self.device, self.args.amp):
            return self.encoder("resnet50")(frames).float().numpy()

    def __call__(self, modality, clip):
        compute = self.audio if modality == "a" else self.video
        return cached_array(self.args.cache, clip, self.settings[modality], lambda: compute(clip))


def warm_caches(splits, args, device, dist):
    """Under torchrun: each rank computes its strided share of the clip features (and of the per-split text arrays)
    into the shared --cache, then all wait; build_features then reads them all from the cache on every rank."""
    clip_features = ClipFeatures(args, device)
    if "t" in args.modalities and not args.text_joint:
        text_features = TextFeatures(splits, args, device)
        for split in rank_share(splits, dist):
            text_features(split, splits[split])
    for split, utterances in splits.items():
        for modality in (m for m in "av" if m in args.modalities):
            for utterance in progress(rank_share(utterances, dist), enabled=dist.is_main, desc=f"{split} {modality} shard", leave=False):
                clip = find_clip(args.data, utterance)
                if clip is not None:
                    try:
                        clip_features(modality, clip)
                    except MediaError:
                        pass  # recorded in failures.csv by build_features
    barrier(dist)


def build_features(splits, args, device, *, show=True):
    """{split: {"utterances": kept, modality: float32 (N, F)}} and the failures [(key, problem)]."""
    clip_features, failures, data = ClipFeatures(args, device), [], {}
    text_features = TextFeatures(splits, args, device) if "t" in args.modalities and not args.text_joint else None
    for split, utterances in splits.items():
        per_modality = {}
        if "t" in args.modalities:  # --text-joint: the texts themselves, encoded by the model
            per_modality["t"] = [u.text for u in utterances] if args.text_joint else list(text_features(split, utterances))
        kept = np.ones(len(utterances), bool)
        for modality in (m for m in "av" if m in args.modalities):
            vectors = []
            for index, utterance in enumerate(progress(utterances, enabled=show, desc=f"{split} {'audio' if modality == 'a' else 'video'}", leave=False)):
                clip, vector = find_clip(args.data, utterance), None
                if clip is None:
                    failures.append((utterance.key, f"no {utterance.clip_name} in {args.data}/{SPLIT_CLIP_DIRS[split][0]}/"))
                elif kept[index]:
                    try:
                        vector = clip_features(modality, clip)
                    except MediaError as error:
                        failures.append((utterance.key, str(error)))
                kept[index] &= vector is not None
                vectors.append(vector)
            per_modality[modality] = vectors
        data[split] = {"utterances": [u for u, keep in zip(utterances, kept) if keep]}
        for modality, vectors in per_modality.items():
            vectors = [v for v, keep in zip(vectors, kept) if keep]
            data[split][modality] = vectors if args.text_joint and modality == "t" else np.stack(vectors) if vectors else None
        if not kept.any():
            if show:
                print(f"{split}: no utterance has every modality of -mod {args.modalities}; the split is skipped")
            del data[split]
    for split in ("train", "dev"):
        if split not in data:
            raise InputError(f"{args.data}: no usable {split} utterances for -mod {args.modalities} (see failures.csv)")
    return data, sorted(set(failures))


def standardise(data, modalities):
    """z-score every feature with the train split's mean and std (train statistics only)."""
    stats = {}
    for modality in modalities:
        train = data["train"][modality]
        stats[modality] = (train.mean(0), train.std(0) + 1e-6)
        for split in data.values():
            split[modality] = torch.from_numpy((split[modality] - stats[modality][0]) / stats[modality][1]).float()
    return stats


def sequences(utterances, context):
    """Index lists into `utterances`: one per dialogue (in utterance order), or one per utterance."""
    if context == "none":
        return [[i] for i in range(len(utterances))]
    position = {u.key: i for i, u in enumerate(utterances)}
    return [[position[u.key] for u in group] for group in dialogues(utterances)]


def make_batch(split, index_lists, modalities, device):
    """features {m: (B, T, F)} (--text-joint: "t" is [[text] per sequence]), lengths (B,), labels (B, T) with -100 at
    padding, keys [[key]]."""
    lengths = torch.tensor([len(indices) for indices in index_lists])
    steps, labels = int(lengths.max()), torch.full((len(index_lists), int(lengths.max())), -100)
    arrays = [m for m in modalities if isinstance(split[m], torch.Tensor)]
    features = {m: split[m].new_zeros(len(index_lists), steps, split[m].shape[1]) for m in arrays}
    if device.type == "cuda":  # page-locked, so the copies below run asynchronously
        features, labels = {m: f.pin_memory() for m, f in features.items()}, labels.pin_memory()
    for row, indices in enumerate(index_lists):
        labels[row, :len(indices)] = torch.tensor([EMOTIONS.index(split["utterances"][i].emotion) for i in indices])
        for m in arrays:
            features[m][row, :len(indices)] = split[m][indices]
    for m in set(modalities) - set(arrays):
        features[m] = [[split[m][i] for i in indices] for indices in index_lists]
    keys = [[split["utterances"][i].key for i in indices] for indices in index_lists]
    return (*to_device((features, lengths, labels), device), keys)


def global_batches(sequence_count, args, dist):
    """[(start, end)] of the global batches of one epoch; under torchrun a last batch with fewer sequences than
    processes is dropped (a process with no sequence could not join the gradient all-reduce)."""
    bounds = [(start, min(start + args.batch_size, sequence_count)) for start in range(0, sequence_count, args.batch_size)]
    return [(start, end) for start, end in bounds if end - start >= dist.world_size]


def training_batches(split, args, generator, device, dist):
    """The only place training batches come from: shuffled sequences of the train split, the same global order on
    every rank (seeded generator); each rank takes its strided share of every global batch."""
    index_lists = sequences(split["utterances"], args.context)
    order = torch.randperm(len(index_lists), generator=generator).tolist()
    for start, end in global_batches(len(order), args, dist):
        yield make_batch(split, rank_share([index_lists[i] for i in order[start:end]], dist), args.modalities, device)


@torch.no_grad()
def predict(model, split, args, device, *, fused=False):
    """Per-utterance probabilities (N, C) (or fused vectors with fused=True) in split["utterances"] order."""
    model.eval()
    index_lists = sequences(split["utterances"], args.context)
    outputs = [None] * len(split["utterances"])
    for start in range(0, len(index_lists), args.batch_size):
        chunk = index_lists[start:start + args.batch_size]
        features, lengths, _, _ = make_batch(split, chunk, args.modalities, device)
        values = model.fuse(features, lengths) if fused else model(features, lengths).softmax(-1)
        for row, indices in enumerate(chunk):
            for step, index in enumerate(indices):
                outputs[index] = values[row, step].float().cpu()
    return torch.stack(outputs).numpy()


def labels_of(split):
    return np.array([EMOTIONS.index(u.emotion) for u in split["utterances"]])


def fit_svm(keys, vectors, labels, args):
    """SVC on the fused vectors of the train split only (keys are passed so tests can check that)."""
    from sklearn.svm import SVC
    assert all(key.startswith("train/") for key in keys)
    return SVC(C=args.svm_c, class_weight=None if args.class_weights == "none" else "balanced").fit(vectors, labels)


# ---------------------------------------------------------------- main

def fit_member(splits, csv_problems, args, run_dir, device, dist):
    """One complete run with args.seed (text fine-tuning included): features, training on train, the checkpoint
    with the best dev weighted-F1, dev/test evaluated once. Writes run_dir's failures.csv, split.json, model.pt,
    last.pt, predictions.npz and metrics.json; returns (metrics, {split: probabilities (N, classes)}, labels) on
    rank 0, None on the other ranks."""
    seed_everything(args.seed)
    if dist.enabled:
        warm_caches(splits, args, device, dist)
    data, failures = build_features(splits, args, device, show=dist.is_main)
    failures = csv_problems + failures
    if dist.is_main:
        write_failures(run_dir, failures)
        if failures:
            print(f"{len(failures)} utterance(s) skipped for missing or unreadable clips, listed in {run_dir / 'failures.csv'}")
        write_json(run_dir / "split.json", {split: [u.key for u in part["utterances"]] for split, part in data.items()})
    stats = standardise(data, args.modalities.replace("t", "") if args.text_joint else args.modalities)

    train_labels = labels_of(data["train"])
    counts = np.bincount(train_labels, minlength=len(EMOTIONS))
    class_weights = torch.tensor(CLASS_WEIGHTS[args.class_weights](counts), dtype=torch.float32, device=device)
    torch.manual_seed(args.seed)  # the initial weights depend on --seed only, not on which features were cached
    sizes = {"num_classes": len(EMOTIONS), "hidden": args.hidden, "d_model": args.d_model, "heads": args.heads, "dropout": args.dropout}
    if args.text_joint:
        model = JointTextClassifier(args.text_model, max_length=args.text_max_len, amp=args.amp, **sizes).to(device)
        input_dims = {"t": model.encoder.hidden_size}
        groups = [{"params": model.encoder_parameters(), "lr": args.text_finetune_lr},
                  {"params": list(model.classifier.parameters()), "lr": args.lr}]
    else:
        input_dims = {m: data["train"][m].shape[1] for m in args.modalities}
        model = MELDEmotionClassifier(input_dims=input_dims, **sizes).to(device)
        groups = [{"params": list(model.parameters()), "lr": args.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay, fused=True)  # fused: one kernel updates every parameter (the joint encoder has 110M)
    steps_per_epoch = len(global_batches(len(sequences(data["train"]["utterances"], args.context)), args, dist))
    total_steps = max(1, args.epochs * steps_per_epoch)
    if args.text_joint:  # the pre-trained encoder's fine-tuning schedule: linear decay from the peak rates
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
    start_epoch, best_score, best_epoch = 0, -1.0, -1
    if args.resume and (run_dir / "last.pt").is_file():
        start_epoch, best_score, best_epoch = resume_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler)
    checkpoint_info = {"args": vars(args), "class_names": list(EMOTIONS), "input_dims": input_dims,
                       "feature_mean": {m: torch.from_numpy(s[0]) for m, s in stats.items()},
                       "feature_std": {m: torch.from_numpy(s[1]) for m, s in stats.items()}}
    train_model = DistributedDataParallel(model) if dist.enabled else model
    generator = torch.Generator()
    best_dev_in_memory = None  # dev probabilities of the best checkpoint while the model holds its weights
    tag = f"seed {args.seed} " if args.member_processes > 1 else ""  # members side by side: whose line it is
    for epoch in range(start_epoch, args.epochs):
        train_model.train()
        generator.manual_seed(args.seed + epoch)
        started, loss_sum, batches = time.time(), 0.0, 0
        for features, lengths, labels, _ in progress(training_batches(data["train"], args, generator, device, dist), total=steps_per_epoch,
                                                     enabled=dist.is_main, desc=f"{tag}epoch {epoch + 1}/{args.epochs}", leave=False):
            logits = train_model(features, lengths)
            # class-weighted mean over the utterances of the GLOBAL batch (the ranks' dialogues differ in length)
            labels = labels.flatten()
            loss = global_mean(F.cross_entropy(logits.flatten(0, 1), labels, weight=class_weights, ignore_index=-100, reduction="sum"),
                               class_weights[labels[labels != -100]].sum(), dist)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum, batches = loss_sum + loss.item(), batches + 1  # rank 0's estimate of the global-batch loss
        if not dist.is_main:
            barrier(dist)  # rank 0 evaluates and writes
            continue
        dev_probabilities = predict(model, data["dev"], args, device)
        dev = classification_report(labels_of(data["dev"]), dev_probabilities.argmax(1), class_names=list(EMOTIONS))
        improved = dev["weighted_f1"] > best_score
        best_dev_in_memory = dev_probabilities if improved else None  # the weights in memory are model.pt's
        if improved:
            best_score, best_epoch = dev["weighted_f1"], epoch
            save_checkpoint(run_dir / "model.pt", {"model": model.state_dict(), "epoch": epoch, **checkpoint_info})
        save_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler,
                            epoch=epoch, best_score=best_score, best_epoch=best_epoch)
        print(f"{tag}epoch {epoch + 1}: loss {loss_sum / max(1, batches):.3f}  dev weighted-F1 {dev['weighted_f1']:.3f}  accuracy {dev['accuracy']:.3f}  "
              f"macro-F1 {dev['macro_f1']:.3f}{'  *' if improved else ''}  ({time.time() - started:.0f} s)", flush=True)
        barrier(dist)
    if not dist.is_main:
        return None

    if best_dev_in_memory is None:
        model.load_state_dict(load_checkpoint(run_dir / "model.pt")["model"])
    metrics = {"protocol": f"MELD official splits; trained on train, checkpoint = best dev weighted-F1 (epoch {best_epoch + 1}), test evaluated "
                           f"once; -mod {args.modalities}, context {args.context}, seed {args.seed}; F1 averaged per class (macro) and "
                           "weighted by support; majority baseline = most frequent train class",
               "skipped_utterances": len(failures)}
    evaluated = [split for split in ("dev", "test") if split in data]
    probabilities = {split: best_dev_in_memory if split == "dev" and best_dev_in_memory is not None else predict(model, data[split], args, device)
                     for split in evaluated}  # (N, classes) each
    labels = {"train": train_labels, **{split: labels_of(data[split]) for split in evaluated}}
    for split in evaluated:
        metrics[split] = classification_report(labels[split], probabilities[split].argmax(1), class_names=list(EMOTIONS), train_labels=train_labels)
    atomic_write(run_dir / "predictions.npz", lambda f: np.savez(f, **{
        name: value for split in evaluated for name, value in ((f"{split}_probabilities", probabilities[split]),
                                                               (f"{split}_keys", np.array([u.key for u in data[split]["utterances"]])))}))
    if args.svm:
        vectors = {split: predict(model, data[split], args, device, fused=True) for split in ["train", *evaluated]}
        svm = fit_svm([u.key for u in data["train"]["utterances"]], vectors["train"], train_labels, args)
        metrics["svm"] = {"protocol": "SVC on the selected model's fused vectors, fitted on train only",
                          **{split: classification_report(labels[split], svm.predict(vectors[split]), class_names=list(EMOTIONS),
                                                          train_labels=train_labels) for split in evaluated}}
    write_json(run_dir / "metrics.json", metrics)
    return metrics, probabilities, labels


def parse_args(argv):
    """Flags, with --recipe's values as the defaults of the flags not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe:
        parser.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    return args


def start_member_process(threads, device):
    """Each --member-processes worker: its share of the threads, and the parent's malloc setting."""
    torch.set_num_threads(threads)
    keep_freed_memory(device)


def main(argv=None):
    args = parse_args(argv)
    if args.ensemble < 1:
        raise InputError(f"--ensemble {args.ensemble}: give 1 or more members")
    if args.member_processes < 1:
        raise InputError(f"--member-processes {args.member_processes}: give 1 or more")
    if args.text_joint and (args.modalities != "t" or not args.text_model or args.text_finetune_epochs or args.text_context):
        raise InputError("--text-joint trains the text encoder itself: -mod t and --text-model DIR, without --text-finetune-epochs and --text-context")
    if args.text_finetune_lr is None and args.text_model:
        args.text_finetune_lr = finetune_lr(args.text_model)  # the encoder family's rate (models/text_encoder.py)
    device = resolve_device(args.device)
    dist = setup_distributed(device)
    args.member_processes = 1 if dist.enabled else min(args.member_processes, args.ensemble)  # torchrun's ranks share each member
    keep_freed_memory(device)
    csv_problems = []  # unparsable CSV rows: skipped, listed in failures.csv
    splits = load_splits(args.data, csv_problems)
    run_dir = Path(broadcast_object(dist, str(make_run_dir(args.out, args, default_root="runs/meld")) if dist.is_main else None))
    # member k: the same flags with --seed seed + k, in run_dir/member_k (one run: run_dir)
    members = [(splits, csv_problems, argparse.Namespace(**{**vars(args), "seed": args.seed + k}),
                run_dir / f"member_{k + 1}" if args.ensemble > 1 else run_dir, device, dist) for k in range(args.ensemble)]
    if args.member_processes > 1:
        # small steps keep few threads busy: on a CPU, two members side by side on one thread each finish sooner
        # than one after the other on two (RESULTS.md)
        threads = max(1, torch.get_num_threads() // args.member_processes)
        print(f"{args.ensemble} ensemble members (seeds {args.seed}-{args.seed + args.ensemble - 1}), {args.member_processes} at a time, "
              f"{threads} thread(s) each", flush=True)
        with ProcessPoolExecutor(args.member_processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=start_member_process, initargs=(threads, device)) as pool:
            results = list(pool.map(fit_member, *zip(*members)))
    else:
        results = []
        for k, member in enumerate(members):
            if dist.is_main and args.ensemble > 1:
                print(f"ensemble member {k + 1}/{args.ensemble} (seed {args.seed + k})", flush=True)
            results.append(fit_member(*member))
    cleanup_distributed(dist)
    if not dist.is_main:
        return None

    metrics, _, labels = results[0]
    if args.ensemble > 1:
        evaluated = [split for split in ("dev", "test") if split in metrics]
        metrics = {"protocol": f"mean of the class probabilities of {args.ensemble} runs (seeds {args.seed}-{args.seed + args.ensemble - 1}, "
                               "each with its own fine-tuning and its own checkpoint chosen on dev, in member_K/); test evaluated once",
                   "members": [{split: {key: member[0][split][key] for key in ("weighted_f1", "accuracy", "macro_f1")} for split in evaluated}
                               for member in results],
                   "skipped_utterances": metrics["skipped_utterances"]}
        for split in evaluated:
            mean_probabilities = np.mean([member[1][split] for member in results], axis=0)  # (N, classes)
            metrics[split] = classification_report(labels[split], mean_probabilities.argmax(1), class_names=list(EMOTIONS), train_labels=labels["train"])
        write_json(run_dir / "metrics.json", metrics)
    evaluated = [split for split in ("dev", "test") if split in metrics]
    columns = ["split", "n", "weighted_f1", "accuracy", "macro_f1", "majority_baseline_weighted_f1"]
    rows = [{"split": split, **metrics[split]} for split in evaluated]
    rows += [{"split": f"{split} (svm)", **metrics["svm"][split]} for split in evaluated if "svm" in metrics]
    print(format_table(rows, columns))
    print(f"run folder: {run_dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
