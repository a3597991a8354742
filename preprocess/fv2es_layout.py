"""The processed layout FV2ES reads (SPEC 5), as both preprocessors (preprocess.iemocap, preprocess.mosei)
write it: the folder names, frames sampled on one timestamp grid, 224-px square JPEGs, 16-kHz PCM wavs, face
crops, the hand-crafted features of the lf_* baselines and grouped split files. The reader of
the same layout is preprocess.fv2es_reader.

    <OUT_DIR>/<DATASET>_RAW_PROCESSED/   meta.json and one folder per utterance/clip
    <OUT_DIR>/<DATASET>_SPLIT/{train,valid,test}_split.txt
    <OUT_DIR>/<DATASET>_HCF_FEATURES/<id>.npz   t (T, 300), a (T, 144), v (T, 35)
    <OUT_DIR>/failures.csv               item,problem
"""
import math
import re
import zlib
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from common import atomic_write
from preprocess.features import log_mel, mfcc
from preprocess.media import load_audio
from preprocess.mtcnn import FaceCropper
from preprocess.timeline import iter_segments

HCF_SIZES = (300, 144, 35)  # text, audio, visual
LAYOUT = {"iemocap": ("IEMOCAP_RAW_PROCESSED", "IEMOCAP_SPLIT", "IEMOCAP_HCF_FEATURES"),
          "mosei": ("MOSEI_RAW_PROCESSED", "MOSEI_SPLIT", "MOSEI_HCF_FEATURES"),
          "meld": ("MELD_RAW_PROCESSED", "MELD_SPLIT", "MELD_HCF_FEATURES")}  # text only (preprocess.meld_to_fv2es)


# ---------------------------------------------------------------- frames, audio, faces

def frames_for_segments(video, segments, *, interval_ms):
    """One streaming pass over `video` (preprocess.timeline.iter_segments): yields (key, index, rgb) for every grid
    time of every segment {key: (start_s, end_s)} (timeline.grid_times), frames sampled by timestamp every interval_ms."""
    for key, frames, _ in iter_segments(video, segments, interval_ms=interval_ms, audio=False):
        for index, rgb in frames:
            yield key, index, rgb


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


# ---------------------------------------------------------------- splits and failures

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
