"""Per-second speech emotion (preprocess.timeline: a train_av.py -mod a checkpoint over sliding windows) on RAVDESS
clips joined into one long file, against the clip labels, beside the same checkpoint's clip-level accuracy.

    python bench/speech_timeline.py --data ../shared/data/ravdess-16k --actors 17-20 --ckpt runs/av/speech-01-16/model.pt

The speech clips of --actors (audio files) are shuffled (--seed) and joined with --gap s of silence between them into
one 16-kHz wav in --out, which goes through build_timeline with the speech model (--window, --hop). A second belongs
to a clip when at least half of it lies inside the clip. Printed as key=value lines and written to --out/metrics.json:
  per_second_accuracy          over the clip seconds the energy rule marks as speech (the headline)
  per_second_accuracy_all      over every clip second
  clip_accuracy                the checkpoint on each whole clip (train_av's evaluation transform: its --predict)
  clip_accuracy_from_seconds   argmax of the mean per-second probabilities over each clip's speech seconds
  speech_share_of_clip_seconds, speech_false_alarm   the energy rule inside the clips (which open and close with
                               silence) and in the gaps
  arousal_strong, arousal_normal      mean speech_arousal over the speech seconds of intensity 02 / 01 clips
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import atomic_write, parse_ids, write_json  # noqa: E402
from preprocess.media import load_audio  # noqa: E402
from preprocess.ravdess import scan_ravdess  # noqa: E402
from preprocess.timeline import SAMPLE_RATE, SpeechEmotion, build_timeline  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="RAVDESS folder")
    parser.add_argument("--actors", default="17-20", help="actors whose clips are joined (default %(default)s)")
    parser.add_argument("--ckpt", required=True, help="train_av.py -mod a model.pt trained without those actors")
    parser.add_argument("--gap", type=float, default=1.0, help="silence between clips in s (default %(default)s)")
    parser.add_argument("--window", type=float, default=3.0, help="speech window in s (default %(default)s)")
    parser.add_argument("--hop", type=float, default=1.0, help="speech window hop in s (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="clip order (default %(default)s)")
    parser.add_argument("--out", default="runs/speech-timeline", help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    actors = {f"{a:02d}" for a in parse_ids(args.actors, flag="--actors")}
    trials, _ = scan_ravdess(args.data)
    trials = [t for t in trials if t.group in actors and t.audio_path() is not None]
    trials = [trials[i] for i in np.random.default_rng(args.seed).permutation(len(trials))]
    speech = SpeechEmotion.from_checkpoint(args.ckpt, window_s=args.window, hop_s=args.hop)
    names = speech.class_names
    trials = [t for t in trials if t.label in names]

    waves, spans, cursor = [], [], 0  # spans: (start sample, end sample, label index, intensity)
    gap = np.zeros(int(args.gap * SAMPLE_RATE), np.float32)
    clip_probabilities = []
    for trial in trials:
        wave = load_audio(trial.audio_path(), sample_rate=SAMPLE_RATE)
        clip_probabilities.append(speech.classify([wave])[0])
        spans.append((cursor, cursor + len(wave), names.index(trial.label), int(trial.key.split("-")[2])))
        waves += [wave.numpy(), gap]
        cursor += len(wave) + len(gap)
    out = Path(args.out)
    joined = out / "joined.wav"
    atomic_write(joined, lambda f: soundfile.write(f, np.concatenate(waves), SAMPLE_RATE, format="WAV", subtype="FLOAT"))
    timeline = build_timeline(joined, speech=speech)
    seconds = len(timeline["second"])

    owner = np.full(seconds, -1)  # clip index per second, -1 in the gaps
    for index, (start, end, _, _) in enumerate(spans):
        for second in range(start // SAMPLE_RATE, min(seconds, -(-end // SAMPLE_RATE))):
            overlap = min(end, (second + 1) * SAMPLE_RATE) - max(start, second * SAMPLE_RATE)
            if overlap >= SAMPLE_RATE // 2:
                owner[second] = index
    labels = np.array([spans[i][2] if i >= 0 else -1 for i in owner])
    predicted = timeline["speech_probabilities"].argmax(1)
    speech_flag, in_clip = timeline["speech"] == 1, owner >= 0
    scored = in_clip & speech_flag
    clip_labels = np.array([label for _, _, label, _ in spans])
    from_seconds = np.array([timeline["speech_probabilities"][(owner == i) & speech_flag].mean(0).argmax()
                             if ((owner == i) & speech_flag).any() else -1 for i in range(len(spans))])
    intensity = np.array([spans[i][3] if i >= 0 else 0 for i in owner])
    metrics = {
        "protocol": f"actors {sorted(actors)} ({len(spans)} speech clips, shuffled with seed {args.seed}) joined with "
                    f"{args.gap} s of silence: {seconds} s; window {args.window} s, hop {args.hop} s; a second belongs to "
                    "the clip covering at least half of it; checkpoint " + str(args.ckpt),
        "seconds": seconds, "clip_seconds": int(in_clip.sum()), "speech_clip_seconds": int(scored.sum()),
        "per_second_accuracy": float((predicted[scored] == labels[scored]).mean()),
        "per_second_accuracy_all": float((predicted[in_clip] == labels[in_clip]).mean()),
        "clip_accuracy": float((np.array(clip_probabilities).argmax(1) == clip_labels).mean()),
        "clip_accuracy_from_seconds": float((from_seconds == clip_labels).mean()),
        "speech_share_of_clip_seconds": float(speech_flag[in_clip].mean()),
        "speech_false_alarm": float(speech_flag[~in_clip].mean()) if (~in_clip).any() else 0.0,
        "arousal_strong": float(timeline["speech_arousal"][scored & (intensity == 2)].mean()),
        "arousal_normal": float(timeline["speech_arousal"][scored & (intensity == 1)].mean()),
        "per_second_chance": float(np.bincount(labels[scored]).max() / scored.sum()),
    }
    write_json(out / "metrics.json", metrics)
    print(json.dumps({"protocol": metrics.pop("protocol")}))
    for key, value in metrics.items():
        print(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}")
    return metrics


if __name__ == "__main__":
    main()
