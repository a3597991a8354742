"""IEMOCAP for FV2ES: raw release -> processed layout, the processed-layout reader the trainer uses (IEMOCAP and
CMU-MOSEI), hand-crafted features for the lf_* baselines, and `make_iemocap`, a tiny raw + processed fixture.

    python -m preprocess.iemocap RAW_DIR OUT_DIR [--img-interval 500] [--image-size 224]

Raw (as released): RAW_DIR/Session{1..5}/dialog/
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
import json
import math
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from common import InputError, atomic_write, progress, write_failures, write_json
from preprocess.features import log_mel, mfcc
from preprocess.media import iter_frames, load_audio
from preprocess.mtcnn import FaceCropper

EMOTIONS = ("ang", "exc", "fru", "hap", "neu", "sad")
MOSEI_EMOTIONS = ("anger", "disgust", "fear", "happy", "sad", "surprise")
HCF_SIZES = (300, 144, 35)  # text, audio, visual
LAYOUT = {"iemocap": ("IEMOCAP_RAW_PROCESSED", "IEMOCAP_SPLIT", "IEMOCAP_HCF_FEATURES"),
          "mosei": ("MOSEI_RAW_PROCESSED", "MOSEI_SPLIT", "MOSEI_HCF_FEATURES")}
LABEL_LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)")
TEXT_LINE = re.compile(r"^(\S+) \[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]: ?(.*)$")


def speaker_side(utt_id):
    """'L' when the session's gender letter (Ses01F_...) equals the speaker letter (..._F000), else 'R'."""
    return "L" if utt_id[5] == utt_id.split("_")[-1][0] else "R"


def session_of(utt_id):
    return int(utt_id[3:5])


# ---------------------------------------------------------------- shared by both preprocessors

def grid_times(start, end, step):
    """The sampling-grid times (seconds, multiples of step) for a segment: those in [start, end), or the first
    at or after start."""
    first = math.ceil(round(start / step, 6))
    last = math.ceil(round(end / step, 6)) - 1
    return [k * step for k in range(first, max(first, last) + 1)]


def frames_for_segments(video, segments, *, interval_ms):
    """One streaming pass over `video`: yields (key, index, rgb) for every grid time of every segment
    {key: (start_s, end_s)} (grid_times), frames sampled by timestamp every interval_ms."""
    step = interval_ms / 1000
    wanted = {}
    for key, (start, end) in segments.items():
        for index, time in enumerate(grid_times(start, end, step)):
            wanted.setdefault(round(time / step), []).append((key, index))
    last = max(wanted, default=-1)
    for time, rgb in iter_frames(video, interval_ms=interval_ms):
        tick = round(time / step)
        for key, index in wanted.get(tick, []):
            yield key, index, rgb
        if tick >= last:
            break


def square_jpeg(path, rgb, size):
    """Central square of rgb resized to size x size, written as JPEG."""
    from PIL import Image
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = Image.fromarray(rgb[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    atomic_write(path, lambda file: image.save(file, format="JPEG", quality=90))


def write_wave(path, wave, sample_rate=16000):
    atomic_write(path, lambda file: soundfile.write(file, np.asarray(wave, np.float32), sample_rate, format="WAV", subtype="PCM_16"))


def load_channels(path, sample_rate=16000):
    """(mono (S,), [channel (S,) ...]) float32 tensors at sample_rate; wav/flac keep their channels."""
    mono = load_audio(path, sample_rate=sample_rate)
    if Path(path).suffix.lower() not in (".wav", ".flac"):
        return mono, [mono]
    samples, native_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    channels = [torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(samples[:, c])), native_rate, sample_rate)
                for c in range(samples.shape[1])]
    return mono, channels


def make_cropper(weights_dir="weights/mtcnn", device="cpu"):
    """48-px face crops with margin 2: MTCNN when weights_dir holds pnet/rnet/onet.pt, else the true centre crop."""
    return FaceCropper(weights_dir=weights_dir, size=48, margin=2, device=device)


# ---------------------------------------------------------------- hand-crafted features (--hand-crafted)

def text_hcf(text, dim=HCF_SIZES[0]):
    """(words, dim) float32: each lower-cased word -> a fixed pseudo-random unit vector seeded by its CRC32 (a
    hashed embedding standing in for GloVe; no download); one zero row for an empty text."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    rows = [np.random.default_rng(zlib.crc32(word.encode())).standard_normal(dim) / math.sqrt(dim) for word in words]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((1, dim), np.float32)


def audio_hcf(wave, dim=HCF_SIZES[1]):
    """(frames of 0.1 s, 144) float32: 128 log-mel bins + 16 MFCCs (stand-ins for COVAREP)."""
    settings = {"n_fft": 1024, "win_length": 1024, "hop_length": 1600}
    features = torch.cat([log_mel(wave, n_mels=128, **settings), mfcc(wave, n_mfcc=dim - 128, n_mels=40, **settings)])
    return features.T.numpy().astype(np.float32)  # (F, T) -> (T, F)


def visual_hcf(faces, dim=HCF_SIZES[2]):
    """(frames, 35) float32 from uint8 face crops (N, 48, 48, 3): mean R, G, B / 255 + a 32-bin grey histogram
    (stand-ins for FACET)."""
    if len(faces) == 0:
        return np.zeros((1, dim), np.float32)
    faces = faces.astype(np.float32) / 255
    grey = faces.mean(-1).reshape(len(faces), -1)
    histograms = np.stack([np.histogram(row, bins=dim - 3, range=(0, 1))[0] for row in grey]) / grey.shape[1]
    return np.concatenate([faces.mean((1, 2)), histograms], axis=1).astype(np.float32)


def write_hcf(path, text, wave, faces):
    atomic_write(path, lambda file: np.savez(file, t=text_hcf(text), a=audio_hcf(wave), v=visual_hcf(faces)))


def write_split(split_dir, items_by_group, *, seed, fractions=(0.8, 0.1, 0.1)):
    """{train,valid,test}_split.txt, grouped: whole groups (dialogues, videos) go to one split."""
    groups = sorted(items_by_group)
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    n_test = max(1, round(fractions[2] * len(order))) if len(order) >= 3 else 0
    n_valid = max(1, round(fractions[1] * len(order))) if len(order) >= 3 else 0
    parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}
    for split, chosen in parts.items():
        ids = sorted(item for group in chosen for item in items_by_group[group])
        atomic_write(Path(split_dir) / f"{split}_split.txt", lambda f, ids=ids: f.write("".join(f"{i}\n" for i in ids)), binary=False)
    return parts


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


# ---------------------------------------------------------------- the processed-layout reader (train_fv2es.py)

@dataclass
class Item:
    id: str
    folder: Path
    text: str
    label: np.ndarray   # float32 (6,): one-hot (IEMOCAP) or presence (MOSEI)
    side: str           # 'L'/'R' for IEMOCAP, '' for MOSEI
    group: str          # dialogue or video: splits never cut one
    session: int        # IEMOCAP session, 0 for MOSEI


def _label_vector(label, names, where):
    if isinstance(label, str):
        if label not in names:
            raise InputError(f"{where}: label {label!r} is none of {', '.join(names)}")
        vector = np.zeros(len(names), np.float32)
        vector[names.index(label)] = 1
        return vector
    try:
        if np.ndim(label) == 0:
            if not 0 <= int(label) < len(names):
                raise IndexError
            vector = np.zeros(len(names), np.float32)
            vector[int(label)] = 1
            return vector
        vector = np.asarray(label, np.float32).reshape(-1)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise InputError(f"{where}: label {str(label)[:40]!r} is not a class name, class index or {len(names)}-vector") from None
    if not np.isfinite(vector).all():
        raise InputError(f"{where}: label holds NaN or inf")
    if len(vector) != len(names):
        raise InputError(f"{where}: label has {len(vector)} values, expected {len(names)}")
    return (vector > 0).astype(np.float32)


def read_meta(folder):
    """meta.json (ours) or meta.pkl (the released processed sets; the only pickle this project reads)."""
    for name in ("meta.json", "meta.pkl"):
        if (folder / name).is_file():
            try:
                if name == "meta.json":
                    meta = json.loads((folder / name).read_text(encoding="utf-8"))
                else:
                    with open(folder / name, "rb") as file:
                        meta = pickle.load(file)
            except Exception as error:  # json and pickle raise many types for a corrupt file
                raise InputError(f"{folder / name}: not readable ({type(error).__name__}: {str(error)[:120]})") from None
            if not isinstance(meta, dict):
                raise InputError(f"{folder / name}: expected {{utterance id: {{label, text, ...}}}}")
            return meta
    raise InputError(f"{folder}: no meta.json or meta.pkl (run python -m preprocess.iemocap / preprocess.mosei)")


def read_processed(datapath, dataset):
    """({id: Item}, {split: [id]}, failures [(id, problem)]) from <datapath>/<DATASET>_RAW_PROCESSED and
    <DATASET>_SPLIT. An entry whose label does not parse is skipped and listed, and so is a split id that has
    no usable entry; an unreadable meta or split file, or nothing usable at all, is one InputError."""
    processed_dir, split_dir = Path(datapath) / LAYOUT[dataset][0], Path(datapath) / LAYOUT[dataset][1]
    meta = read_meta(processed_dir)
    names = EMOTIONS if dataset == "iemocap" else MOSEI_EMOTIONS
    items, failures = {}, []
    for key, entry in meta.items():
        where = f"{processed_dir}/meta: {key}"
        try:
            if not isinstance(entry, dict) or "label" not in entry:
                raise InputError(f"{where}: expected {{label, text, ...}}")
            label = _label_vector(entry["label"], names, where)
        except InputError as error:
            failures.append((key, str(error)))
            continue
        if dataset == "iemocap":
            group = key.rsplit("_", 1)[0]
            items[key] = Item(key, processed_dir / group / key, str(entry.get("text", "")), label, speaker_side(key), group, session_of(key))
        else:
            items[key] = Item(key, processed_dir / key, str(entry.get("text", "")), label, "", str(entry.get("video", key.rsplit("_", 1)[0])), 0)
    if not items:
        raise InputError(f"{processed_dir}: no usable utterance in meta ({failures[0][1] if failures else 'it is empty'})")
    splits = {}
    for split in ("train", "valid", "test"):
        path = split_dir / f"{split}_split.txt"
        if not path.is_file():
            raise InputError(f"{path}: split file not found")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        failures += [(i, f"{path}: listed but has no usable entry in meta") for i in ids if i not in items and i not in meta]
        splits[split] = [i for i in ids if i in items]
    return items, splits, failures


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


# ---------------------------------------------------------------- fixture

CUE_WORDS = {"ang": "furious", "exc": "thrilled", "fru": "annoying", "hap": "glad", "neu": "okay", "sad": "crying",
             "anger": "furious", "disgust": "gross", "fear": "scared", "happy": "glad", "sad_m": "crying", "surprise": "wow"}
FILLER = ["the", "we", "it", "then", "so", "and", "really", "maybe", "today", "there"]


def planted_segment(emotion_index, duration_s, rng, *, sample_rate=16000):
    """A tone at 300 * 1.25^k Hz with noise: the audio cue of class k."""
    times = np.arange(round(duration_s * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 300 * 1.25 ** emotion_index * times) + rng.normal(0, 0.02, len(times))).astype(np.float32)


def planted_picture(emotion_index, height, width, rng):
    """A grey textured picture with a centred square of hue 60 * k: the visual cue of class k."""
    from preprocess.fixtures import hue_rgb, solid_frame
    picture = solid_frame(height, width, (100, 100, 100), noise=10, rng=rng)
    side = min(height, width) // 2
    top, left = (height - side) // 2, (width - side) // 2
    picture[top:top + side, left:left + side] = hue_rgb(60 * emotion_index, 0.8, 0.9)
    return picture


def make_iemocap(out_dir, *, seed=0, sessions=(1, 2), dialogs_per_session=3, utterance_s=1.2, gap_s=0.3, fps=10,
                 height=64, width=128, img_interval=500):
    """out_dir/raw: the raw release layout (sessions x dialogues, 6 utterances each, every class once per dialogue,
    speakers alternating, one `xxx` utterance that is dropped); out_dir/processed: preprocess(raw) of it.
    Planted signal: transcript cue word, a tone per class, a hue square on the speaker's half (no faces: crops are
    centre crops whether or not weights/mtcnn exists). Defects: the
    last dialogue's avi is missing (its utterances go to failures.csv). Returns the sorted files written."""
    from preprocess.fixtures import solid_frame, write_wav
    out_dir, written = Path(out_dir), []
    raw = out_dir / "raw"
    for session in sessions:
        gender = "FM"[session % 2 == 0]
        for dialog in range(1, dialogs_per_session + 1):
            rng = np.random.default_rng([seed, session, dialog])
            name = f"Ses{session:02d}{gender}_impro{dialog:02d}"
            base = raw / f"Session{session}" / "dialog"
            labels, texts, spans = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], [], []
            for turn in range(7):
                start = 0.5 + turn * (utterance_s + gap_s)
                emotion = "xxx" if turn == 6 else EMOTIONS[(turn + dialog + session) % 6]
                utt_id = f"{name}_{'FM'[turn % 2]}{turn:03d}"
                labels += [f"[{start:.4f} - {start + utterance_s:.4f}]\t{utt_id}\t{emotion}\t[2.5000, 2.5000, 2.5000]", ""]
                cue = CUE_WORDS.get(emotion, "hmm")
                words = list(rng.choice(FILLER, size=3))
                words.insert(int(rng.integers(0, 4)), cue)
                texts.append(f"{utt_id} [{start:08.4f}-{start + utterance_s:08.4f}]: {' '.join(words).capitalize()}.")
                spans.append((start, start + utterance_s, EMOTIONS.index(emotion) if emotion in EMOTIONS else None, speaker_side(utt_id)))
            duration = 0.5 + 7 * (utterance_s + gap_s)
            wave = rng.normal(0, 0.01, round(duration * 16000)).astype(np.float32)
            for start, end, index, _ in spans:
                if index is not None:
                    segment = planted_segment(index, end - start, rng)
                    wave[round(start * 16000):round(start * 16000) + len(segment)] += segment
            written.append(write_wav(base / "wav" / f"{name}.wav", np.stack([wave, wave * 0.5], 1), 16000))
            written.append(_write_text(base / "EmoEvaluation" / f"{name}.txt", labels))
            written.append(_write_text(base / "transcriptions" / f"{name}.txt", texts))
            if session == sessions[-1] and dialog == dialogs_per_session:
                continue  # the missing avi
            frames = []
            for frame_index in range(round(duration * fps)):
                time = frame_index / fps
                frame = solid_frame(height, width, (60, 60, 60), noise=8, rng=rng)
                for start, end, index, side in spans:
                    if index is not None and start <= time < end:
                        half = slice(0, width // 2) if side == "L" else slice(width // 2, width)
                        frame[:, half] = planted_picture(index, height, width // 2, rng)
                frames.append(frame)
            written.append(write_divx(base / "avi" / "DivX" / f"{name}.avi", frames, fps=fps))
    preprocess(raw, out_dir / "processed", img_interval=img_interval, seed=seed, cropper=make_cropper(None))
    written += [p for p in (out_dir / "processed").rglob("*") if p.is_file()]
    return sorted(written)


def write_divx(path, frames, *, fps):
    """An .avi of MPEG-4 part 2 (DivX-like, no B-frames, as the release): AVI keeps no presentation times, so
    B-frames would leave the decoder guessing them."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"qscale": "3"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _write_text(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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
