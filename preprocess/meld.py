"""MELD layout: the three annotation CSVs, the clip of each row, entropy-ranked frames.

    --data DIR/
        train_sent_emo.csv  dev_sent_emo.csv  [test_sent_emo.csv]
        [train_splits/  dev_splits_complete/  output_repeated_splits_test/]   dia{D}_utt{U}.mp4

CSV columns (as released, UTF-8 with typographic and some mis-encoded characters): Sr No., Utterance,
Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime, the times
as `hh:mm:ss,ms`. Dialogue ids restart at 0 in every split, so an utterance's key is `split/diaD_uttU`.
"""
import csv
import heapq
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import InputError

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENT_OF = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
                "sadness": "negative", "disgust": "negative", "fear": "negative"}
SPLIT_CSV = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
SPLIT_CLIP_DIRS = {"train": ("train_splits",), "dev": ("dev_splits_complete",),
                   "test": ("output_repeated_splits_test", "test_splits_complete")}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
TIME_PATTERN = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")
# cp1252 bytes that the release sometimes carries as C1 control characters, and typographic punctuation
TEXT_FIXES = str.maketrans({"\x91": "'", "\x92": "'", "\x93": '"', "\x94": '"', "\x85": "...", "\x96": "-",
                            "\x97": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "—": "-", "–": "-"})


@dataclass(frozen=True)
class Utterance:
    split: str
    dialogue: int
    utterance: int
    text: str
    speaker: str
    emotion: str
    start_s: float | None
    end_s: float | None

    @property
    def clip_name(self):
        return f"dia{self.dialogue}_utt{self.utterance}.mp4"

    @property
    def key(self):
        return f"{self.split}/dia{self.dialogue}_utt{self.utterance}"


def parse_time(text):
    """'00:16:16,059' -> 976.059 seconds; None when empty or malformed (times are informative only)."""
    match = TIME_PATTERN.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds, millis = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def clean_text(text):
    """Typographic / cp1252 punctuation to ASCII, whitespace collapsed (what the text encoder sees)."""
    return " ".join(text.translate(TEXT_FIXES).split())


def read_split(data_dir, split, problems=None):
    """The rows of one split's CSV as Utterances in file order, or None when the CSV is absent. A row with an
    unknown emotion or non-integer ids raises InputError, or, when a `problems` list is given, is skipped and
    appended to it as (item, problem)."""
    path = Path(data_dir) / SPLIT_CSV[split]
    if not path.is_file():
        return None
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        reader = csv.DictReader(file)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (expected the MELD header)")
        rows = []
        for line, row in enumerate(reader, start=2):
            emotion = (row["Emotion"] or "").strip().lower()
            try:
                if emotion not in EMOTIONS:
                    raise InputError(f"{path}:{line}: unknown emotion {row['Emotion']!r} (expected one of {', '.join(EMOTIONS)})")
                try:
                    dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                except (TypeError, ValueError):
                    raise InputError(f"{path}:{line}: Dialogue_ID/Utterance_ID must be integers") from None
            except InputError as error:
                if problems is None:
                    raise
                problems.append((f"{split}/{path.name}:{line}", str(error).split(": ", 1)[1]))
                continue
            rows.append(Utterance(split, dialogue, utterance, clean_text(row["Utterance"] or ""), (row["Speaker"] or "").strip(),
                                  emotion, parse_time(row.get("StartTime") or ""), parse_time(row.get("EndTime") or "")))
    if not rows:
        raise InputError(f"{path}: no rows")
    duplicates = len(rows) - len({u.key for u in rows})
    if duplicates:
        raise InputError(f"{path}: {duplicates} duplicate (Dialogue_ID, Utterance_ID) pairs")
    return rows


def find_clip(data_dir, utterance):
    """Path of the utterance's mp4 in its split folder, or None."""
    for folder in SPLIT_CLIP_DIRS[utterance.split]:
        path = Path(data_dir) / folder / utterance.clip_name
        if path.is_file():
            return path
    return None


def dialogues(utterances):
    """Utterances grouped by dialogue, each group sorted by utterance id: [[Utterance, ...], ...]."""
    groups = {}
    for utterance in utterances:
        groups.setdefault(utterance.dialogue, []).append(utterance)
    return [sorted(groups[d], key=lambda u: u.utterance) for d in sorted(groups)]


# ---------------------------------------------------------------- entropy-ranked frames

def frame_entropy(rgb):
    """Shannon entropy (bits) of the 256-bin histogram of the frame's grayscale (ITU-R 601 luma)."""
    gray = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).round().astype(np.uint8)
    probabilities = np.bincount(gray.ravel(), minlength=256) / gray.size
    probabilities = probabilities[probabilities > 0]
    return float(-(probabilities * np.log2(probabilities)).sum())


def top_entropy_frames(frames, k):
    """The k frames of highest grayscale entropy from an iterable (consumed one at a time, so at most k
    are held), returned in their original time order as uint8 (k', H, W, 3); ties keep the earlier frame."""
    kept = []  # min-heap of (entropy, -index, frame)
    for index, frame in enumerate(frames):
        item = (frame_entropy(frame), -index, frame)
        if len(kept) < k:
            heapq.heappush(kept, item)
        elif item[:2] > kept[0][:2]:
            heapq.heapreplace(kept, item)
    return np.stack([frame for _, _, frame in sorted(kept, key=lambda item: -item[1])]) if kept else None
