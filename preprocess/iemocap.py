"""IEMOCAP for FV2ES: raw release -> the processed layout train_fv2es.py reads (written with preprocess.fv2es_layout,
read by preprocess.fv2es_reader), and leave-one-session-out splits.

    python -m preprocess.iemocap RAW_DIR OUT_DIR [--img-interval 500] [--image-size 224]

Raw (as released; a Session folder may be a symbolic link): RAW_DIR/Session{1..5}/dialog/
    EmoEvaluation/<dialog>.txt       lines `[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]`
    transcriptions/<dialog>.txt      lines `utt_id [start-end]: text`
    avi/DivX/<dialog>.avi            720x480, the two speakers side by side
    wav/<dialog>.wav
Processed (what train_fv2es.py reads, SPEC 5), under OUT_DIR:
    IEMOCAP_RAW_PROCESSED/meta.json  utt_id -> {start_time, end_time, label, text, sr, fps}; the released
                                     processed set ships the same as meta.pkl, which the reader also accepts
    IEMOCAP_RAW_PROCESSED/<dialog>/<utt_id>/audio.wav, audio_L.wav, audio_R.wav (channels 0/1; copies of the
                                     mono mix for a mono wav), image_{L,R}_{i}.jpg (224x224, the central square
                                     of each half frame), faces_<side>.npy (ours: uint8 (N, 48, 48, 3) face crops
                                     of the speaker's half, cached so training never runs the detector)
    IEMOCAP_SPLIT/{train,valid,test}_split.txt   one utt_id per line (ours: grouped by dialogue, 80/10/10)
    IEMOCAP_HCF_FEATURES/<utt_id>.npz            t (T, 300), a (T, 144), v (T, 35) for --hand-crafted
    failures.csv                                 items skipped, with the problem
Frames are sampled by timestamp every --img-interval ms on one grid per video (0, step, 2 step, ...): an
utterance gets the grid times in [start, end), or the first one at or after start when none falls inside
(the original took every 15th extracted file, about one per 7.5 s). Only the six classes ang, exc, fru, hap,
neu, sad are kept. Speaker side: L when the session's gender letter (Ses01F) equals the speaker's (_F000).
"""
import argparse
import re
from pathlib import Path

import numpy as np

from common import InputError, atomic_write, progress, write_failures, write_json
from preprocess.fv2es_layout import (LAYOUT, frames_for_segments, load_channels, make_cropper, square_jpeg, write_hcf,
                                     write_split, write_wave)

EMOTIONS = ("ang", "exc", "fru", "hap", "neu", "sad")
LABEL_LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)")
TEXT_LINE = re.compile(r"^(\S+) \[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]: ?(.*)$")


def speaker_side(utt_id):
    """'L' when the session's gender letter (Ses01F_...) equals the speaker letter (..._F000), else 'R'."""
    return "L" if utt_id[5] == utt_id.split("_")[-1][0] else "R"


def session_of(utt_id):
    return int(utt_id[3:5])


# ---------------------------------------------------------------- raw IEMOCAP -> processed

def parse_dialog(dialog_dir, name):
    """[(utt_id, start, end, label, text)] of one dialogue, the six classes only."""
    labels_path = dialog_dir / "EmoEvaluation" / f"{name}.txt"
    texts = {}
    transcript = dialog_dir / "transcriptions" / f"{name}.txt"
    if transcript.is_file():
        for line in transcript.read_text(encoding="utf-8", errors="replace").splitlines():
            match = TEXT_LINE.match(line.strip())
            if match:
                texts[match.group(1)] = match.group(4).strip()
    rows = []
    for line in labels_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = LABEL_LINE.match(line)
        if match and match.group(4) in EMOTIONS:
            utt_id = match.group(3)
            rows.append((utt_id, float(match.group(1)), float(match.group(2)), match.group(4), texts.get(utt_id, "")))
    return rows


def preprocess(raw_dir, out_dir, *, img_interval=500, image_size=224, seed=0, cropper=None):
    """Write the processed layout of every dialogue under raw_dir; returns (kept utterance count, failures)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    evaluations = sorted(raw_dir.glob("Session*/dialog/EmoEvaluation/*.txt"))
    if not evaluations:
        raise InputError(f"{raw_dir}: no Session*/dialog/EmoEvaluation/*.txt (the raw IEMOCAP release)")
    processed, hcf_dir = out_dir / LAYOUT["iemocap"][0], out_dir / LAYOUT["iemocap"][2]
    cropper = cropper or make_cropper()
    meta, by_dialog, failures = {}, {}, []
    for evaluation in progress(evaluations, desc="IEMOCAP dialogues"):
        name, dialog_dir = evaluation.stem, evaluation.parent.parent
        rows = parse_dialog(dialog_dir, name)
        video, wav = dialog_dir / "avi" / "DivX" / f"{name}.avi", dialog_dir / "wav" / f"{name}.wav"
        try:
            mono, channels = load_channels(wav)
            segments = {row[0]: (row[1], row[2]) for row in rows}
            frames = {utt_id: [] for utt_id in segments}
            for utt_id, _, rgb in frames_for_segments(video, segments, interval_ms=img_interval):
                frames[utt_id].append(rgb)
        except InputError as error:
            failures += [(row[0], str(error)) for row in rows]
            continue
        for utt_id, start, end, label, text in rows:
            folder = processed / name / utt_id
            if not frames[utt_id]:
                failures.append((utt_id, f"{video}: no frame at or after {start:.2f} s"))
                continue
            span = slice(int(start * 16000), max(int(start * 16000) + 1, int(end * 16000)))
            write_wave(folder / "audio.wav", mono[span])
            for side, channel in zip("LR", channels if len(channels) >= 2 else [mono, mono]):
                write_wave(folder / f"audio_{side}.wav", channel[span])
            side, width = speaker_side(utt_id), frames[utt_id][0].shape[1]
            halves = {"L": [f[:, :width // 2] for f in frames[utt_id]], "R": [f[:, width // 2:] for f in frames[utt_id]]}
            for half, images in halves.items():
                for index, rgb in enumerate(images):
                    square_jpeg(folder / f"image_{half}_{index}.jpg", rgb, image_size)
            faces, _ = cropper.crop_batch(halves[side])
            atomic_write(folder / f"faces_{side}.npy", lambda f, faces=faces: np.save(f, faces, allow_pickle=False))
            write_hcf(hcf_dir / f"{utt_id}.npz", text, mono[span], faces)
            meta[utt_id] = {"start_time": start, "end_time": end, "label": label, "text": text, "sr": 16000,
                            "fps": 1000 / img_interval}
            by_dialog.setdefault(name, []).append(utt_id)
    write_json(processed / "meta.json", meta)
    write_split(out_dir / LAYOUT["iemocap"][1], by_dialog, seed=seed)
    write_failures(out_dir, failures)
    return len(meta), failures


# ---------------------------------------------------------------- splits

def loso_splits(items, test_session, *, seed=0, valid_fraction=0.1):
    """Leave one session out: test = that session; valid = about valid_fraction of the other dialogues."""
    others = sorted({item.group for item in items.values() if item.session != test_session})
    if len(others) == len({item.group for item in items.values()}):
        raise InputError(f"--test-session {test_session}: no utterance of that session in the data")
    order = [others[i] for i in np.random.default_rng(seed).permutation(len(others))]
    valid_groups = set(order[:max(1, round(valid_fraction * len(order)))])
    splits = {"train": [], "valid": [], "test": []}
    for key, item in sorted(items.items()):
        split = "test" if item.session == test_session else "valid" if item.group in valid_groups else "train"
        splits[split].append(key)
    return splits


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m preprocess.iemocap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw_dir", type=Path, help="the raw release: the folder holding Session1..Session5")
    parser.add_argument("out_dir", type=Path, help="where the processed layout goes (train_fv2es.py --data)")
    parser.add_argument("--img-interval", type=int, default=500, help="ms between sampled frames (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the saved square images (default %(default)s)")
    parser.add_argument("--mtcnn", default="weights/mtcnn", help="folder with MTCNN pnet/rnet/onet.pt (`make weights`); without them faces are centre crops (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dialogue-grouped split (default %(default)s)")
    args = parser.parse_args(argv)
    kept, failures = preprocess(args.raw_dir, args.out_dir, img_interval=args.img_interval, image_size=args.image_size,
                                seed=args.seed, cropper=make_cropper(args.mtcnn))
    print(f"IEMOCAP: {kept} utterances written under {args.out_dir}; {len(failures)} skipped (failures.csv)")


if __name__ == "__main__":
    from common import run_main
    run_main(main)
