"""AI-Hub "video content highlight editing" layout -> one record per video with per-second labels.

Videos are `유튜브_<category>_<id>.mp4` (any depth, linked folders followed); each annotator's labels are a JSON
file beside it, `<video_stem>_<annotatorId>.json`, holding `metadata` {file_name, annotator_id, length (s), type,
quality, date, license, class_code (integer 1-8)} and `timelines` [{id, start, end (whole seconds, end inclusive),
attributes {place 1-21, action 1-65, emotion 1-7, relationship 1-12 (integer codes)}}]. The category is the file
name's, or class_code's when the name has none of the eight. Dataset sanity rules: start <= end < length and
highlights cover 5-25% of a video. A timeline whose end reaches the video's end (end = length, or past the last
second) is clipped to the last second, as the seed's loader does, and reported; one that starts outside the video
or ends before it starts is dropped and reported; a coverage outside 5-25% is only reported. Names are compared in
Unicode NFC (macOS writes NFD).
"""
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import InputError
from preprocess.tree import walk_files

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
    spans, problems, last_second = [], [], math.ceil(length) - 1
    for timeline_id, start, end in timelines:
        if not 0 <= start <= end or start > last_second:
            problems.append(f"timeline {timeline_id}: start {start}, end {end} is no span of the video (0 <= start <= end, "
                            f"start <= last second {last_second}); dropped")
            continue
        if end > last_second:
            problems.append(f"timeline {timeline_id}: end {end} reaches the end of the video (length {length:g}); clipped to its "
                            f"last second {last_second}")
            end = last_second
        spans.append((start, end))
    covered = len({s for start, end in spans for s in range(start, end + 1)}) / max(length, 1e-9)
    if not COVERAGE_RANGE[0] <= covered <= COVERAGE_RANGE[1]:
        problems.append(f"highlights cover {covered:.0%} of the video (the dataset's rule is 5-25%); kept")
    return metadata, spans, problems


def video_category(video_stem, class_code):
    """(Korean category, problem or None): the file name's category when it is one of the eight, else class_code's
    (an integer 1-8; a decimal string is read too), else the name's or 'unknown'."""
    match = NAME_PATTERN.match(video_stem)
    named = match["category"] if match else None
    coded = CATEGORY_BY_CODE.get(int(str(class_code).strip())) if str(class_code).strip().isdecimal() else None
    if named in CATEGORIES:
        mismatch = coded is not None and coded != named
        return named, f"class_code {class_code} is {coded} but the file name says {named}; the name kept" if mismatch else None
    return coded or named or "unknown", None


def scan_aihub(root):
    """(videos, problems): every video under root that has at least one readable label file; problems
    is a list of (path, reason) for files that do not fit the layout."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: AI-Hub folder not found")
    files = walk_files(root)
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
            category, problem = video_category(video_stem, metadata.get("class_code"))
            problems += [(label_path, problem)] if problem else []
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
