"""AI-Hub "video content highlight editing" layout -> one record per video with per-second labels.

Videos are `유튜브_<category>_<id>.mp4` (any depth); each annotator's labels are a JSON file beside it,
`<video_stem>_<annotatorId>.json`, holding `metadata` {file_name, annotator_id, length (s), type,
quality, date, license, class_code 1-8} and `timelines` [{id, start, end (whole seconds, end inclusive),
attributes {place, action, emotion, relationship}}]. Dataset sanity rules: start <= end < length and
highlights cover 5-25% of a video. A timeline that breaks the first rule is dropped and reported; a
coverage outside 5-25% is only reported. Names are compared in Unicode NFC (macOS writes NFD).
"""
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import InputError

CATEGORIES = {"기타": "Others", "반려동물및동물": "PetsAndAnimals", "스타일링및뷰티": "StylingAndBeauty",
              "스포츠": "Sports", "여행": "Travel", "음식": "Food", "일상": "DailyLife", "자동차": "Automobile"}
CATEGORY_BY_CODE = dict(enumerate(CATEGORIES, start=1))
NAME_PATTERN = re.compile(r"^유튜브_(?P<category>.+)_(?P<id>[^_]+)$")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi"}
COVERAGE_RANGE = (0.05, 0.25)
MAX_LENGTH_S = 48 * 3600  # a label file claiming more is corrupt (labels are one float per second)


def nfc(text):
    return unicodedata.normalize("NFC", text)


@dataclass
class Video:
    stem: str
    path: Path
    category: str                     # the Korean name from the file name (or class_code)
    length_s: float = 0.0
    annotations: list = field(default_factory=list)  # one list of (start, end) per annotator

    @property
    def category_en(self):
        return CATEGORIES.get(self.category, self.category)

    def labels(self, agg="or"):
        """float32 (ceil(length),): 1 where any annotator marked the second ("or"), or the fraction of
        annotators who did ("mean")."""
        marks = np.zeros((max(1, len(self.annotations)), math.ceil(self.length_s)), np.float32)
        for row, spans in enumerate(self.annotations):
            for start, end in spans:
                marks[row, start:end + 1] = 1.0
        return marks.max(0) if agg == "or" else marks.mean(0)


def parse_label_file(path):
    """(metadata, [(start, end)], problems) of one annotator's JSON; raises InputError when unreadable."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        metadata, timelines = payload["metadata"], payload["timelines"]
        length = float(metadata["length"])
        timelines = [(entry.get("id"), int(entry["start"]), int(entry["end"])) for entry in timelines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise InputError(f"{path}: not an AI-Hub label file ({type(error).__name__}: {error})") from None
    if not 0 < length <= MAX_LENGTH_S:  # also NaN; a huge claim would allocate labels for it
        raise InputError(f"{path}: metadata length {metadata['length']!r} is not a video length in seconds (0 < length <= {MAX_LENGTH_S})")
    spans, problems = [], []
    for timeline_id, start, end in timelines:
        if not 0 <= start <= end < length:
            problems.append(f"timeline {timeline_id}: start {start}, end {end} breaks 0 <= start <= end < length {length:g}; dropped")
        else:
            spans.append((start, end))
    covered = len({s for start, end in spans for s in range(start, end + 1)}) / max(length, 1e-9)
    if not COVERAGE_RANGE[0] <= covered <= COVERAGE_RANGE[1]:
        problems.append(f"highlights cover {covered:.0%} of the video (the dataset's rule is 5-25%); kept")
    return metadata, spans, problems


def scan_aihub(root):
    """(videos, problems): every video under root that has at least one readable label file; problems
    is a list of (path, reason) for files that do not fit the layout."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: AI-Hub folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    videos = {nfc(p.stem): p for p in files if p.suffix.lower() in VIDEO_SUFFIXES}
    records, problems = {}, []
    for label_path in (p for p in files if p.suffix.lower() == ".json"):
        video_stem = nfc(label_path.stem).rsplit("_", 1)[0]
        if video_stem not in videos:
            problems.append((label_path, f"no video {video_stem}.* for this label file"))
            continue
        try:
            metadata, spans, label_problems = parse_label_file(label_path)
        except InputError as error:
            problems.append((label_path, str(error).split(": ", 1)[1]))
            continue
        problems += [(label_path, reason) for reason in label_problems]
        if video_stem not in records:
            match = NAME_PATTERN.match(video_stem)
            category = match["category"] if match else CATEGORY_BY_CODE.get(int(code) if str(code := metadata.get("class_code")).isdecimal() else 0, "unknown")
            records[video_stem] = Video(video_stem, videos[video_stem], category, float(metadata["length"]))
        record = records[video_stem]
        if abs(record.length_s - float(metadata["length"])) > 1.0:
            problems.append((label_path, f"length {metadata['length']} differs from another annotator's {record.length_s:g}"))
        record.annotations.append(spans)
    problems += [(path, "no label file (<stem>_<annotator>.json)") for stem, path in videos.items() if stem not in records]
    return [records[stem] for stem in sorted(records)], problems


def chunk_bounds(length, chunk_seconds):
    """[(start, end)] covering range(length) in chunks of chunk_seconds (the last may be shorter)."""
    return [(start, min(start + chunk_seconds, length)) for start in range(0, max(1, length), chunk_seconds)]
