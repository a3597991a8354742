"""RAVDESS audio-visual emotion classifier (seed 002), trained and tested on disjoint actors.

Audio only, offline log-mel CNN, 5 folds over the actors present (each fold: 1/5 of the actors test, the rest
train, the last epoch of the fixed schedule kept):
    python train_av.py --data RAVDESS/ -mod a --folds 5 --val-actors none --out runs/av/mel-5fold
The same with the next 1/5 of the actors as validation, which picks each fold's checkpoint:
    python train_av.py --data RAVDESS/ -mod a --folds 5 --out runs/av/mel-5fold-val
Audio-visual on the full release, the published peers' test actors:
    python train_av.py --data RAVDESS/ -mod av --test-actors 5,10,16,19 --val-actors 1,2,3,4 --video-weights weights/resnet18.pth
Any labelled corpus (CSV with path,label,group), wav2vec2 from a local folder:
    python train_av.py --manifest clips.csv -mod a --audio-encoder wav2vec2 --audio-model weights/wav2vec2-base
Predict with a trained run (the checkpoint carries its settings); an audio model also gives per-second emotions over
any length (windows of --window s centred every --hop s; with --out: OUT/<file stem>/timeline.csv, preprocess/timeline.py):
    python train_av.py --predict clip.mp4 other.wav --ckpt runs/av/001/model.pt
    python train_av.py --predict interview.mp4 --ckpt runs/speech-emotion/model.pt --out runs/av/interview
Several processes or GPUs (DDP; --batch-size is split over the processes):
    torchrun --nproc_per_node=2 train_av.py --data DIR -mod av

The mel encoder standardises each mel bin by the statistics of the speaker's clips (--speaker-norm, on by default;
labels unused, test actors by their own clips); --predict and the timeline treat a file as one speaker, starting from
the training speakers' mean statistics (kept in model.pt) and adding the file's speech as it is heard.
--augment P adds reverb, noise, codec and gain changes while training.

Outputs in --out (default runs/av/NNN): args.json, split.json, failures.csv, model.pt (best on
validation, or the last epoch with --val-actors none), last.pt (for --resume), metrics.json {"val": ...,
"test": ...}; with --folds, one fold_K/ folder each and a top-level metrics.json with the pooled test
predictions of all folds. Validation picks the checkpoint; the test actors are evaluated once, at the end.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from common import (InputError, add_logistics_args, argument_parser, atomic_write, autocast, classification_report,
                    cleanup_distributed, format_table, keep_freed_memory, load_checkpoint, make_run_dir, parse_ids, progress,
                    resolve_device, resume_training_state, run_main, save_checkpoint, save_training_state,
                    seed_everything, setup_distributed, to_device, write_failures, write_json)
from models.av_emotion import AUDIO_ENCODERS, AVEmotionClassifier, VideoEncoder
from preprocess.cache import ensure_cached
from preprocess.augment import augment_wave
from preprocess.features import crop_seconds, trim_silence
from preprocess.media import MediaError, load_audio, read_frames
from preprocess.timeline import SpeechEmotion, build_timeline, evaluation_wave, iter_seconds, write_timeline
from preprocess.ravdess import EMOTIONS, FOUR_CLASSES, read_manifest, scan_ravdess

SAMPLE_RATE = 16000
MIN_AUDIO_SAMPLES = SAMPLE_RATE // 4  # shorter clips are zero-padded (masked by their lengths) for the encoders' pooling


def build_parser():
    parser = argument_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--data", help="RAVDESS folder: Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4|wav (default: none, give it or --manifest)")
    data.add_argument("--manifest", help="CSV with columns path,label,group (group = speaker), instead of --data (default: none)")
    data.add_argument("--channel", default="speech", choices=["speech", "song", "all"], help="RAVDESS vocal channel (default %(default)s)")
    data.add_argument("--classes", type=int, default=8, choices=[8, 4], help="8 emotions, or 4: sad, happy, disgust, angry (default %(default)s)")
    data.add_argument("--cache", default="cache/av", help="folder of decoded waveforms and frames, reused across runs (default %(default)s)")
    split = parser.add_argument_group("Splits (by actor / group only)")
    split.add_argument("--test-actors", "--test-groups", default="21-24", help="actors (1,2,5-7) or manifest groups held out for test (default %(default)s)")
    split.add_argument("--val-actors", "--val-groups", default="17-20", help="actors or groups that pick the checkpoint; none: last epoch kept (default %(default)s)")
    split.add_argument("--folds", type=int, default=0, help="K > 1: K-fold by actor, fold k tests on group k, validates on k+1 (default %(default)s: off)")
    model = parser.add_argument_group("Model")
    model.add_argument("-mod", "--modalities", default="av", choices=["a", "v", "av"], help="audio, video or both (default %(default)s)")
    model.add_argument("--audio-encoder", default="mel", choices=sorted(AUDIO_ENCODERS), help="mel: log-mel CNN from scratch; wav2vec2: pretrained (default %(default)s)")
    model.add_argument("--audio-model", default="facebook/wav2vec2-base", help="wav2vec2 name or local folder (default %(default)s)")
    model.add_argument("--audio-trainable-layers", type=int, default=2, help="wav2vec2 layers fine-tuned, from the top (default %(default)s)")
    model.add_argument("--n-mels", type=int, default=128, help="mel encoder: mel bins, a multiple of 8 (default %(default)s)")
    model.add_argument("--mel-window-ms", type=float, default=50, help="mel encoder: analysis window in ms, 10-ms hop (default %(default)s)")
    model.add_argument("--mel-norm", default="clip", choices=["clip", "bin"], help="mel encoder: standardise per clip or per mel bin (default %(default)s)")
    model.add_argument("--max-bin-shift", type=int, default=6, help="mel encoder: random shift of up to N mel bins per training clip, 0 = off (default %(default)s)")
    model.add_argument("--trim-db", type=float, default=35.0, help="trim leading/trailing audio this many dB below the peak, 0 = off (default %(default)s)")
    model.add_argument("--max-audio-seconds", type=float, default=6.0, help="longer audio is cut: random window in training, centre otherwise (default %(default)s)")
    model.add_argument("--speaker-norm", action=argparse.BooleanOptionalAction, default=True,
                       help="mel encoder: standardise mel bins by each speaker's clips (default: on)")
    model.add_argument("--augment", type=float, default=0.0, metavar="P", help="reverb, noise, codec, gain each with probability P (default %(default)s)")
    model.add_argument("--train-crop-seconds", type=float, default=3.0, help="random audio crop while training, 0 = whole clip (default %(default)s)")
    model.add_argument("--video-fps", type=float, default=6.0, help="frames sampled per second (default %(default)s)")
    model.add_argument("--video-frames", type=int, default=30, help="frames kept per clip, uniformly subsampled (default %(default)s)")
    model.add_argument("--frame-size", type=int, default=112, help="side of the centre-cropped square frames in pixels (default %(default)s)")
    model.add_argument("--video-weights", help="torchvision ResNet-18 ImageNet weights, .pth file or folder (default: random init)")
    model.add_argument("--video-frozen-stages", type=int, default=None, help="ResNet stages (0-4) kept frozen (default: 2 with --video-weights, else 0)")
    train = parser.add_argument_group("Training")
    train.add_argument("--epochs", type=int, default=40, help="training epochs (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=32, help="global batch size, split over the processes (default %(default)s)")
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of AdamW, one-cycle schedule (default %(default)s)")
    train.add_argument("--weight-decay", type=float, default=5e-2, help="AdamW weight decay (default %(default)s)")
    train.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing (default %(default)s)")
    train.add_argument("--mixup", type=float, default=0.0, metavar="A", help="mixup with a ratio drawn from Beta(A, A), 0 = off (default %(default)s)")
    train.add_argument("--ema", type=float, default=0.0, help="decay per step of an averaged model that is evaluated and kept, 0 = off (default %(default)s)")
    train.add_argument("--select", default="accuracy", choices=["accuracy", "macro_f1"], help="validation metric that picks the checkpoint (default %(default)s)")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default %(default)s)")
    train.add_argument("--amp", action="store_true", help="bf16 autocast of the forward passes (default: off)")
    run = parser.add_argument_group("Run")
    run.add_argument("--out", help="run folder (default: a new runs/av/NNN)")
    run.add_argument("--resume", action="store_true", help="continue each split from its last.pt in --out (default: off)")
    run.add_argument("--predict", nargs="+", metavar="FILE", help="classify these wav/mp4 files with --ckpt, print JSON (default: none)")
    run.add_argument("--ckpt", help="model.pt of a trained run, for --predict (default: none)")
    run.add_argument("--window", type=float, default=3.0, help="--predict, audio model: per-second emotion window in s (default %(default)s)")
    run.add_argument("--hop", type=float, default=1.0, help="--predict, audio model: window hop in s (default %(default)s)")
    add_logistics_args(parser)
    return parser


# ---------------------------------------------------------------- data

def decode_trial(trial, args):
    """Cache paths {"audio": .npy float32 (S,), "frames": .npy uint8 (T, H, W, 3)} for one trial."""
    paths = {}
    if "a" in args.modalities:
        source = trial.audio_path()
        if source is None:
            raise MediaError(trial.key, "no audio file for this trial")
        paths["audio"] = ensure_cached(args.cache, source, {"sample_rate": SAMPLE_RATE},
                                       lambda: load_audio(source, sample_rate=SAMPLE_RATE).numpy())
    if "v" in args.modalities:
        source = trial.video_path()
        if source is None:
            raise MediaError(trial.key, "no video file for this trial")
        settings = {"fps": args.video_fps, "size": args.frame_size}
        paths["frames"] = ensure_cached(args.cache, source, settings, lambda: read_frames(
            source, fps=args.video_fps, size=args.frame_size, center_crop=True)[1])
    return paths


class TrialDataset(Dataset):
    def __init__(self, trials, cache_paths, class_names, args, *, training, speaker_stats=None):
        self.trials, self.cache_paths, self.args, self.training = trials, cache_paths, args, training
        self.speaker_stats = speaker_stats  # {group: (2, n_mels) tensor} with --speaker-norm
        self.label_ids = [class_names.index(t.label) for t in trials]

    def __len__(self):
        return len(self.trials)

    def __getitem__(self, index):
        item, paths = {"label": self.label_ids[index]}, self.cache_paths[self.trials[index].key]
        if "audio" in paths:
            wave = trim_silence(np.load(paths["audio"], mmap_mode="r", allow_pickle=False), self.args.trim_db)
            wave = crop_seconds(wave, self.args.max_audio_seconds, at_random=self.training)
            if self.training and self.args.train_crop_seconds > 0:
                wave = crop_seconds(wave, self.args.train_crop_seconds, at_random=True)
            if self.training and self.args.augment > 0:
                wave = augment_wave(wave, np.random.default_rng(int(torch.randint(2 ** 31 - 1, ()))), probability=self.args.augment)
            item["audio"] = torch.from_numpy(np.array(wave, dtype=np.float32))
            if self.speaker_stats is not None:
                item["speaker_stats"] = self.speaker_stats[self.trials[index].group]
        if "frames" in paths:
            frames = np.load(paths["frames"], mmap_mode="r", allow_pickle=False)
            if len(frames) > self.args.video_frames:
                frames = frames[np.linspace(0, len(frames) - 1, self.args.video_frames).round().astype(int)]
            item["frames"] = torch.from_numpy(np.array(frames))
        return item


def collate(items):
    batch = {"label": torch.tensor([item["label"] for item in items])}
    if "speaker_stats" in items[0]:
        batch["speaker_stats"] = torch.stack([item["speaker_stats"] for item in items])  # (B, 2, n_mels)
    for key, length_key in (("audio", "audio_lengths"), ("frames", "frame_lengths")):
        if key in items[0]:
            lengths = torch.tensor([len(item[key]) for item in items])
            width = max(int(lengths.max()), MIN_AUDIO_SAMPLES if key == "audio" else 1)  # the encoders' pooling needs some length
            padded = items[0][key].new_zeros((len(items), width, *items[0][key].shape[1:]))
            for row, item in enumerate(items):
                padded[row, :len(item[key])] = item[key]
            batch[key], batch[length_key] = padded, lengths
    return batch


def load_trials(args):
    if bool(args.data) == bool(args.manifest):
        raise InputError("give exactly one of --data DIR or --manifest FILE.csv")
    if args.data:
        trials, problems = scan_ravdess(args.data, channel=args.channel)
        class_names = list(FOUR_CLASSES) if args.classes == 4 else list(EMOTIONS)
        trials = [t for t in trials if t.label in class_names]
    else:
        trials, problems = read_manifest(args.manifest)
        class_names = sorted({t.label for t in trials})
    return trials, problems, class_names


def actor_splits(trials, args):
    """[(name, {"train": [...], "val": [...], "test": [...]})]: one split from the flags, or K folds."""
    groups = sorted({t.group for t in trials}, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))
    if args.folds > 1:
        if len(groups) < args.folds:
            raise InputError(f"--folds {args.folds}: only {len(groups)} actors/groups in the data")
        fold_groups = [groups[k::args.folds] for k in range(args.folds)]
        assignments = [(f"fold_{k + 1}", fold_groups[k], [] if args.val_actors == "none" else fold_groups[(k + 1) % args.folds])
                       for k in range(args.folds)]
    else:
        def named(text, flag):
            if text == "none":
                return set()
            return {f"{i:02d}" for i in parse_ids(text, flag=flag)} if args.data else {g.strip() for g in text.split(",") if g.strip()}
        assignments = [(".", named(args.test_actors, "--test-actors"), named(args.val_actors, "--val-actors"))]
    splits = []
    for name, test_groups, val_groups in assignments:
        split = {"train": [t for t in trials if t.group not in set(test_groups) | set(val_groups)],
                 "val": [t for t in trials if t.group in set(val_groups)],
                 "test": [t for t in trials if t.group in set(test_groups)]}
        for part in ("train", "val") if args.val_actors != "none" else ("train",):
            if not split[part]:
                raise InputError(f"{args.data or args.manifest}: the {part} split is empty (actors present: {', '.join(groups)})")
        splits.append((name, split))
    return splits


# ---------------------------------------------------------------- model

def build_model(settings, num_classes):
    args = argparse.Namespace(**settings)
    audio = AUDIO_ENCODERS[args.audio_encoder](args) if "a" in args.modalities else None
    video = None
    if "v" in args.modalities:
        frozen = args.video_frozen_stages if args.video_frozen_stages is not None else (2 if args.video_weights else 0)
        video = VideoEncoder(frame_size=args.frame_size, resnet_weights=args.video_weights, frozen_stages=frozen)
    return AVEmotionClassifier(modalities=args.modalities, num_classes=num_classes, audio_encoder=audio, video_encoder=video)


def mix_batch(batch, targets, ratio):
    """Mixup: every example blended with a shuffled partner at `ratio` (inputs and one-hot targets); a mixed
    sequence is as long as the longer of the two."""
    partner = torch.randperm(len(targets), device=targets.device)
    mixed = {key: batch[key] for key in ("label", "speaker_stats") if key in batch}  # a mixed clip keeps its own speaker's statistics
    for key, length_key in (("audio", "audio_lengths"), ("frames", "frame_lengths")):
        if key in batch:
            values = ratio * batch[key].float() + (1 - ratio) * batch[key][partner].float()
            mixed[key] = values.round().to(batch[key].dtype) if not batch[key].is_floating_point() else values
            mixed[length_key] = torch.maximum(batch[length_key], batch[length_key][partner])
    return mixed, ratio * targets + (1 - ratio) * targets[partner]


@torch.no_grad()
def predict_probabilities(model, loader, device, *, amp=False):
    model.eval()
    probabilities, labels = [], []
    for batch in loader:
        with autocast(device, amp):
            logits = model(to_device(batch, device))
        probabilities.append(logits.float().softmax(-1).cpu())
        labels.append(batch["label"])
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def speaker_statistics(trials, cache_paths, args):
    """--speaker-norm: {group: (2, n_mels)} per-bin mean and std of each speaker's (actor's) clips, evaluation
    transform, labels unused; every split's speakers, test ones included, are normalised by their own clips."""
    encoder = AUDIO_ENCODERS["mel"](args)
    waves = {}
    for trial in trials:
        wave = np.load(cache_paths[trial.key]["audio"], allow_pickle=False)
        waves.setdefault(trial.group, []).append(torch.from_numpy(np.array(evaluation_wave(wave, trim_db=args.trim_db, max_seconds=args.max_audio_seconds), dtype=np.float32)))
    return {group: encoder.speaker_statistics(group_waves) for group, group_waves in waves.items()}


def fit_split(name, split, cache_paths, class_names, args, run_dir, device, dist, speaker_stats=None):
    """Train on split["train"], select on split["val"], test once. Returns (metrics, test probabilities, test labels)."""
    split_dir = run_dir / name
    if dist.is_main:
        write_json(split_dir / "split.json", {part: {"groups": sorted({t.group for t in trials}), "trials": [t.key for t in trials]}
                                              for part, trials in split.items()})
    datasets = {part: TrialDataset(trials, cache_paths, class_names, args, training=part == "train", speaker_stats=speaker_stats)
                for part, trials in split.items()}
    sampler = DistributedSampler(datasets["train"], shuffle=True, seed=args.seed) if dist.enabled else None
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(datasets["train"], batch_size=max(1, args.batch_size // dist.world_size), shuffle=sampler is None,
                              sampler=sampler, generator=generator, collate_fn=collate, num_workers=args.workers,
                              pin_memory=device.type == "cuda", drop_last=len(datasets["train"]) > args.batch_size)
    eval_loaders = {part: DataLoader(datasets[part], batch_size=args.batch_size, collate_fn=collate, num_workers=args.workers,
                                     pin_memory=device.type == "cuda")
                    for part in ("val", "test") if split[part]}
    model = build_model(vars(args), len(class_names)).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=max(1, args.epochs * len(train_loader)))
    train_model = DistributedDataParallel(model) if dist.enabled else model
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
           if args.ema > 0 else None)
    evaluated = ema.module if ema is not None else model  # the weights validation sees and model.pt keeps
    train_counts = np.bincount(datasets["train"].label_ids, minlength=len(class_names))
    start_epoch, best_score, best_epoch = 0, -1.0, -1
    if args.resume and (split_dir / "last.pt").is_file():
        start_epoch, best_score, best_epoch = resume_training_state(split_dir / "last.pt", model=model, optimizer=optimizer,
                                                                   scheduler=scheduler, ema=ema)
    checkpoint_info = {"args": vars(args), "class_names": class_names, "train_class_counts": train_counts.tolist()}
    if speaker_stats is not None:  # what predict starts a new file's statistics from
        checkpoint_info["speaker_prior"] = torch.stack([speaker_stats[t.group] for t in split["train"]]).mean(0)
    for epoch in range(start_epoch, args.epochs):
        train_model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        generator.manual_seed(args.seed + epoch)
        started, loss_sum = time.time(), 0.0
        for batch in progress(train_loader, enabled=dist.is_main, desc=f"{name} epoch {epoch + 1}/{args.epochs}", leave=False):
            batch = to_device(batch, device)
            targets = F.one_hot(batch["label"], len(class_names)).float()
            if args.mixup > 0:
                batch, targets = mix_batch(batch, targets, float(np.random.beta(args.mixup, args.mixup)))
            with autocast(device, args.amp):
                logits = train_model(batch)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.item()
        if dist.is_main:
            if "val" in eval_loaders:
                val_probabilities, val_labels = predict_probabilities(evaluated, eval_loaders["val"], device, amp=args.amp)
                val = classification_report(val_labels, val_probabilities.argmax(1), class_names=class_names)
            else:  # no validation split: the last epoch of the fixed schedule is the model
                val = {"accuracy": float("nan"), "macro_f1": float("nan"), args.select: float(epoch)}
            improved = val[args.select] > best_score
            if improved:
                best_score, best_epoch = val[args.select], epoch
                save_checkpoint(split_dir / "model.pt", {"model": evaluated.state_dict(), "epoch": epoch, **checkpoint_info})
            save_training_state(split_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                epoch=epoch, best_score=best_score, best_epoch=best_epoch)
            scores = f"  val accuracy {val['accuracy']:.3f}  macro-F1 {val['macro_f1']:.3f}" if "val" in eval_loaders else ""
            print(f"{name} epoch {epoch + 1}: loss {loss_sum / max(1, len(train_loader)):.3f}{scores}"
                  f"{'  *' if improved else ''}  ({time.time() - started:.0f} s)", flush=True)
        if dist.enabled:
            torch.distributed.barrier()
    if not dist.is_main:
        return None, None, None
    model.load_state_dict(load_checkpoint(split_dir / "model.pt")["model"])
    selection = f"best validation {args.select}" if "val" in eval_loaders else "last epoch, no validation split"
    metrics = {"protocol": f"actor-disjoint; checkpoint = {selection} (epoch {best_epoch + 1}); "
                           "majority baseline = most frequent training class",
               "train_groups": sorted({t.group for t in split["train"]})}
    test_probabilities, test_labels = np.zeros((0, len(class_names))), np.zeros(0, dtype=int)
    for part in ("val", "test"):
        if part in eval_loaders:
            probabilities, labels = predict_probabilities(model, eval_loaders[part], device, amp=args.amp)
            metrics[part] = classification_report(labels, probabilities.argmax(1), class_names=class_names,
                                                  train_labels=datasets["train"].label_ids)
            metrics[part]["groups"] = sorted({t.group for t in split[part]})
            if part == "test":
                test_probabilities, test_labels = probabilities, labels
        else:
            print(f"{name}: no {part} actors/groups in the data, {part} metrics skipped")
    atomic_write(split_dir / "test_predictions.npz", lambda f: np.savez(f, probabilities=test_probabilities, labels=test_labels))
    write_json(split_dir / "metrics.json", metrics)
    return metrics, test_probabilities, test_labels


def predict_files(args):
    """Per file: the clip-level prediction (train_av's evaluation transform of the whole file) and, for audio models,
    the per-second speech emotion of the timeline (windows of --window s every --hop s); one decode per file through
    preprocess.timeline."""
    if not args.ckpt:
        raise InputError("--predict needs --ckpt RUN/model.pt")
    state = load_checkpoint(args.ckpt)
    settings, names = {**state["args"], "video_weights": None}, state["class_names"]  # the checkpoint holds the trained trunk
    settings.setdefault("video_frames", settings.get("max_frames"))  # a checkpoint saved before --max-frames was renamed
    model = build_model(settings, len(names))
    model.load_state_dict(state["model"])
    model.eval()
    audio_only = settings["modalities"] == "a"
    prior = state.get("speaker_prior")  # --speaker-norm: the training speakers' mean statistics
    speech = SpeechEmotion(model, names, settings, window_s=args.window, hop_s=args.hop, speaker_prior=prior) if audio_only else None
    results = []
    for path in args.predict:
        waves, frames, item = [], [], {}

        def keep(media):
            waves.extend([media.wave] if media.wave is not None else [])
            frames.extend(rgb for _, rgb in media.frames)
        if audio_only:
            timeline = build_timeline(path, speech=speech, second_hooks=[keep])
        else:
            for media in iter_seconds(path, fps=settings["video_fps"], size=settings["frame_size"], center_crop=True,
                                      audio="a" in settings["modalities"], video="v" in settings["modalities"]):
                keep(media)
        if "a" in settings["modalities"]:
            if not waves:
                raise MediaError(path, "no audio stream")
            wave = evaluation_wave(torch.cat(waves), trim_db=settings.get("trim_db", 0), max_seconds=settings["max_audio_seconds"])
            item.update(audio=F.pad(wave, (0, max(0, MIN_AUDIO_SAMPLES - len(wave))))[None], audio_lengths=torch.tensor([len(wave)]))
            if settings.get("speaker_norm"):  # the file is one speaker: the statistics of its speech seconds (else this wave)
                spoken = ([w for w, said in zip(waves, timeline["speech"]) if said]
                          if audio_only and len(waves) == len(timeline["speech"]) else [])
                item["speaker_stats"] = model.audio.speaker_statistics(spoken or [wave], prior)[None]
        if "v" in settings["modalities"]:
            if not frames:
                raise MediaError(path, "no video frames decoded")
            chosen = np.linspace(0, len(frames) - 1, min(len(frames), settings["video_frames"])).round().astype(int)
            item.update(frames=torch.from_numpy(np.stack([frames[i] for i in chosen]))[None], frame_lengths=torch.tensor([len(chosen)]))
        with torch.no_grad():
            probabilities = model(item).softmax(-1)[0].tolist()
        ranked = sorted(zip(names, probabilities), key=lambda pair: -pair[1])
        results.append({"file": str(path), "prediction": ranked[0][0], "probabilities": dict(ranked)})
        if audio_only:  # per second: the top class where the energy rule hears speech, else null
            top = timeline["speech_probabilities"].argmax(1)
            results[-1]["per_second"] = [names[c] if spoken else None for c, spoken in zip(top, timeline["speech"])]
            if args.out:
                results[-1]["timeline"] = str(write_timeline(Path(args.out) / Path(path).stem, timeline))
        print(json.dumps(results[-1]))
    if args.out:
        write_json(Path(args.out) / "predictions.json", results)
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.speaker_norm = args.speaker_norm and "a" in args.modalities and args.audio_encoder == "mel"  # mel audio only
    if args.predict:
        return predict_files(args)
    device = resolve_device(args.device)
    dist = setup_distributed(device)
    keep_freed_memory(device)
    seed_everything(args.seed)
    trials, problems, class_names = load_trials(args)
    run_dir = make_run_dir(args.out, args, default_root="runs/av") if dist.is_main else Path(args.out or "runs/av/unused")
    cache_paths, failures = {}, [(str(path), reason) for path, reason in problems]
    for trial in progress(trials[dist.rank::dist.world_size], enabled=dist.is_main, desc="decoding", leave=False):
        try:
            cache_paths[trial.key] = decode_trial(trial, args)
        except MediaError as error:
            failures.append((trial.key, str(error)))
    if dist.enabled:  # every rank needs every cache path
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (cache_paths, failures))
        cache_paths = {k: v for part, _ in gathered for k, v in part.items()}
        failures = [f for _, part in gathered for f in part]
    if dist.is_main:
        write_failures(run_dir, failures)
        if failures:
            print(f"{len(failures)} file(s) skipped, listed in {run_dir / 'failures.csv'}")
    trials = [t for t in trials if t.key in cache_paths]
    if not trials:
        raise InputError(f"{args.data or args.manifest}: no usable trials for -mod {args.modalities}")
    stats = speaker_statistics(trials, cache_paths, args) if args.speaker_norm else None
    results = [fit_split(name, split, cache_paths, class_names, args, run_dir, device, dist, stats)
               for name, split in actor_splits(trials, args)]
    cleanup_distributed(dist)
    if not dist.is_main:
        return None
    if args.folds > 1:
        probabilities = np.concatenate([r[1] for r in results])
        labels = np.concatenate([r[2] for r in results]).astype(int)
        summary = {"protocol": f"{args.folds}-fold by actor, pooled test predictions of all folds (each fold's own "
                               "majority baseline is in its fold entry)",
                   "folds": {f"fold_{k + 1}": r[0] for k, r in enumerate(results)},
                   "test": classification_report(labels, probabilities.argmax(1), class_names=class_names),
                   "fold_test_accuracy": [r[0]["test"]["accuracy"] for r in results]}
        write_json(run_dir / "metrics.json", summary)
        metrics = summary
    else:
        metrics = results[0][0]
    rows = [{"split": part, **{k: metrics[part][k] for k in ("n", "accuracy", "macro_f1", "weighted_f1", "majority_baseline_accuracy")}}
            for part in ("val", "test") if part in metrics]
    print(format_table(rows, ["split", "n", "accuracy", "macro_f1", "weighted_f1", "majority_baseline_accuracy"]))
    print(f"run folder: {run_dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
