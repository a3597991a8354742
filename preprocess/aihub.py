"""AI-Hub "video content highlight editing" layout -> one record per video with per-second labels, and
`make_aihub`, the synthetic demo set in that layout.

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


# -------------------------------------------------------------------------------- the demo fixture

def make_aihub(out_dir, *, seed=0, categories=tuple(CATEGORIES), videos_per_category=4, annotators=3,
               duration_s=40, fps=8, height=64, width=80, sample_rate=16000):
    """Synthetic AI-Hub layout: per category `videos_per_category` videos 유튜브_<category>_<id>.mp4
    (h264 + AAC) and `annotators` label files each. Returns the sorted list of files written.

    Planted signal, so that only both modalities separate highlights fully. Each video holds three kinds
    of 3-5 s events at random non-overlapping places: highlights (2), audio decoys (2), visual decoys (2).
    - audio cue (highlights and audio decoys): a loud 745 Hz tone with its 2nd harmonic (the "surprised,
      strong" voice of the RAVDESS fixture); otherwise a quiet 220-260 Hz hum; white noise throughout.
    - visual cue (highlights and visual decoys): a magenta square in the centre; otherwise only the
      video's own background hue (random per video) with per-frame noise.
    Audio alone or video alone therefore reach precision 1/2 at best (F1 ~0.67); both reach F1 1.
    Annotator k marks highlight k mod 2 and each other one with probability 1/2, so a single annotator
    often misses one while the union (OR) of two or more recovers them all.
    """
    from preprocess.fixtures import hue_rgb, solid_frame, tone, write_video
    out_dir = Path(out_dir)
    written = []
    for category_index, category in enumerate(categories):
        for number in range(1, videos_per_category + 1):
            rng = np.random.default_rng([seed, category_index, number])
            events = _place_events(rng, duration_s, kinds=("highlight", "highlight", "audio", "audio", "visual", "visual"))
            audio_on = np.zeros(duration_s, bool)
            visual_on = np.zeros(duration_s, bool)
            for kind, start, end in events:
                audio_on[start:end + 1] |= kind in ("highlight", "audio")
                visual_on[start:end + 1] |= kind in ("highlight", "visual")
            hum = tone(rng.uniform(220, 260), duration_s, sample_rate, amplitude=0.08)
            cue = tone(745, duration_s, sample_rate, amplitude=0.35) + tone(1490, duration_s, sample_rate, amplitude=0.12)
            on = np.repeat(audio_on, sample_rate)[:len(hum)]
            wave = np.where(on, cue, hum) + rng.normal(0.0, 0.03, len(hum))
            background = hue_rgb(rng.uniform(0, 360), saturation=0.4, value=0.6)
            plain = solid_frame(height, width, background)
            marked = plain.copy()
            side = height // 2
            marked[(height - side) // 2:(height + side) // 2, (width - side) // 2:(width + side) // 2] = (230, 40, 220)

            def frames(visual_on=visual_on, plain=plain, marked=marked, rng=rng):
                for index in range(duration_s * fps):
                    base = marked if visual_on[index // fps] else plain
                    yield np.clip(base + rng.normal(0.0, 6.0, base.shape), 0, 255).astype(np.uint8)

            stem = f"유튜브_{category}_{number:04d}"
            folder = out_dir / category
            written.append(write_video(folder / f"{stem}.mp4", frames(), fps=fps, audio=np.clip(wave, -1, 1),
                                       sample_rate=sample_rate, crf=28, audio_bit_rate=48000))
            highlights = [(start, end) for kind, start, end in events if kind == "highlight"]
            for annotator in range(1, annotators + 1):
                chosen = [span for k, span in enumerate(highlights) if k == annotator % len(highlights) or rng.random() < 0.5]
                written.append(_write_label(folder / f"{stem}_{annotator:03d}.json", stem, annotator, duration_s,
                                            list(CATEGORIES).index(category) + 1 if category in CATEGORIES else 1, chosen))
    return sorted(written)


def _place_events(rng, duration_s, *, kinds, min_len=3, max_len=5, gap=1):
    """[(kind, start, end)] in random order, non-overlapping, at least `gap` seconds apart."""
    lengths = rng.integers(min_len, max_len + 1, len(kinds))
    free = duration_s - int(lengths.sum()) - gap * (len(kinds) + 1)
    if free < 0:
        raise ValueError(f"duration_s {duration_s} is too short for {len(kinds)} events")
    extra_gaps = np.diff(np.concatenate([[0], np.sort(rng.integers(0, free + 1, len(kinds)))]))
    order = rng.permutation(len(kinds))
    events, position = [], gap
    for slot, (length, extra) in enumerate(zip(lengths, extra_gaps)):
        start = position + int(extra)
        events.append((kinds[order[slot]], start, start + int(length) - 1))
        position = start + int(length) + gap
    return events


def _write_label(path, stem, annotator, duration_s, class_code, spans):
    payload = {"metadata": {"file_name": f"{stem}.mp4", "annotator_id": f"{annotator:03d}", "length": float(duration_s),
                            "type": "video", "quality": "FHD", "date": "2021-09-01", "license": "synthetic",
                            "class_code": class_code},
               "timelines": [{"id": k + 1, "start": start, "end": end,
                              "attributes": {"place": "실내", "action": "기타", "emotion": "기쁨", "relationship": "없음"}}
                             for k, (start, end) in enumerate(spans)]}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
